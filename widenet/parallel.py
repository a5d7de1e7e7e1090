"""Expert parallelism applied from outside the model, and gradient synchronisation.

Layout (``shared.parallel.topology.build_topology("expert", grid_size=R)``): the R ranks of an expert
group each hold ``E / R`` experts of every MoE layer and their own share of the batch; all other
parameters (embeddings, attention, LayerNorms, router, head) are replicated. Each rank routes its
own tokens with capacity ``C = floor(T_local cf k / E)`` (per-device capacity, as in the official
TPU code), so a rank's output equals the single-process layer applied to its local batch.

:func:`apply_expert_parallel` swaps the ``experts`` submodule of every distinct MoE layer for a
:class:`ShardedExperts` that keeps only the local experts' weights (sliced from the full ones, so
a seed gives the same model as serial) and exchanges the dispatch buffer by all-to-all::

    buffer (E, C, d) --all_to_all(scatter experts, gather slots)--> (E/R, R*C, d)
        local experts --> (E/R, R*C, d) --all_to_all(scatter slots, gather experts)--> (E, C, d)

The backward of ``shared.parallel.comm.all_to_all`` is the inverse exchange, so each local expert's
gradient sums the contributions of the tokens of all R ranks.

:func:`sync_gradients` turns per-rank gradients of the local mean loss into gradients of the mean
over all ranks: replicated parameters are all-reduced over the whole world, expert shards over
the data-parallel group (ranks holding the same shard), both divided by the world size.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from shared.parallel.comm import all_to_all, raw_all_reduce
from shared.parallel.topology import Group

from .models.moe import Experts
from .models.vit import moe_modules


class ShardedExperts(nn.Module):
    """The experts ``[rank*E/R, (rank+1)*E/R)`` of an :class:`Experts`, with all-to-all dispatch."""

    def __init__(self, experts: Experts, group: Group):
        super().__init__()
        E, R = experts.num_experts, group.size
        if E % R:
            raise ValueError(f"{E} experts cannot be split evenly over {R} expert-parallel ranks; "
                             f"use a number of ranks that divides {E}")
        self.group, self.num_experts, self.num_local = group, E, E // R
        lo, hi = group.rank * self.num_local, (group.rank + 1) * self.num_local
        self.local = Experts(self.num_local, experts.dim, experts.hidden, experts.drop.p,
                             experts.second_gelu).to(experts.w1.device)
        with torch.no_grad():
            for name in ("w1", "b1", "w2", "b2"):
                getattr(self.local, name).copy_(getattr(experts, name)[lo:hi])
        self.local.train(experts.training)

    def forward(self, buffer: torch.Tensor) -> torch.Tensor:
        # buffer: (E, C, d) slots of this rank's tokens, for all experts
        x = all_to_all(buffer, self.group, scatter_dim=0, gather_dim=1)   # (E/R, R*C, d)
        y = self.local(x)                                                 # (E/R, R*C, d)
        return all_to_all(y, self.group, scatter_dim=1, gather_dim=0)     # (E, C, d)


def apply_expert_parallel(model: nn.Module, group: Group) -> nn.Module:
    """Shard the experts of every distinct MoE layer of ``model`` over ``group`` (in place).

    A WideNet's one shared MoE is swapped once, so every block keeps using the same object.
    """
    for moe in moe_modules(model):
        if not isinstance(moe.experts, ShardedExperts):
            moe.experts = ShardedExperts(moe.experts, group)
    return model


def is_expert_param(model: nn.Module):
    """Set of ids of the parameters that are expert shards (not replicated across the group)."""
    return {id(p) for m in model.modules() if isinstance(m, ShardedExperts)
            for p in m.parameters()}


def sync_gradients(model: nn.Module, world: list[Group], data: Group, world_size: int) -> None:
    """Average gradients over all ranks: replicated params over ``world`` (a list of groups whose
    successive all-reduces span every rank), expert shards over ``data``."""
    if world_size == 1:
        return
    experts = is_expert_param(model)
    params = [p for p in model.parameters() if p.grad is not None]
    for groups, members in ((world, [p for p in params if id(p) not in experts]),
                            ([data], [p for p in params if id(p) in experts])):
        if not members:
            continue
        flat = torch.cat([p.grad.reshape(-1) for p in members])   # one collective per group
        for group in groups:
            flat = raw_all_reduce(flat, group)
        flat = flat / world_size
        offset = 0
        for p in members:
            p.grad = flat[offset:offset + p.numel()].view_as(p.grad).clone()
            offset += p.numel()
