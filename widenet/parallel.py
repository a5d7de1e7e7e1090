"""Expert parallelism, applied from outside the single-device model as a plan keyed by module name.

Layout (``shared.parallel.topology.build_topology("expert", grid_size=R)``): the R ranks of an
expert group each hold ``E / R`` experts of every MoE layer and their own share of the batch; every
other parameter (embeddings, attention, LayerNorms, router, head) is replicated on all ranks. Each
rank routes its own tokens with capacity ``C = floor(T_local cf k / E)`` (per-device capacity, as
in the official TPU code), so a rank's output equals the single-process layer applied to its
local batch.

The plan (:func:`expert_plan`) maps ``blocks.*.ffn.experts`` to :func:`expert_parallel`, which
swaps each distinct :class:`~widenet.models.moe.Experts` for a :class:`ShardedExperts` holding the
local experts (their weights copied from the full module, so a seed gives the serial model) and
exchanging the dispatch buffer by all-to-all::

    buffer (E, C, d) --all_to_all(scatter experts, gather slots)--> (E/R, R*C, d)
        local experts --> (E/R, R*C, d) --all_to_all(scatter slots, gather experts)--> (E, C, d)

A WideNet's one shared MoE appears once in ``named_modules()``, so it is swapped once and every
block keeps using the same object. The local experts keep the serial parameter names
(``...experts.w1.<e>`` with the global expert id ``e``), so the union of the ranks' state dicts
is the serial model's state dict.

Gradients (:func:`grad_plans`, executed by the training core after each backward). Each rank's
loss is the mean over its local batch, and the job's loss is the mean over all ranks:

* replicated parameters: averaged over the expert and the data groups (all ranks);
* expert shards: the all-to-all backward already sums, on the rank that owns an expert, the
  contributions of the R ranks of its expert group; they are averaged over the data group (the
  ranks holding the same shard) and divided by R.

The global gradient norm counts the expert shards summed over the expert group and the
replicated parameters once, so every rank clips by the same factor and replicas never drift apart.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from shared.parallel.comm import all_to_all
from shared.parallel.plan import apply_plan, swap
from shared.parallel.topology import Group, TopologyError
from shared.train.gradients import GradSync, NormPart

from .models.moe import Experts

EXPERTS = "blocks.*.ffn.experts"
"""module-name pattern of the experts of every MoE layer (WideNet: the one shared MoE)"""


class ShardedExperts(Experts):
    """The experts ``[rank*E/R, (rank+1)*E/R)`` of an :class:`Experts`, with all-to-all dispatch:
    ``(E, C, d) -> (E, C, d)`` like the serial module, over the R ranks of ``group``."""

    def __init__(self, experts: Experts, group: Group):
        E, R = experts.num_experts, group.size
        if E % R:
            raise TopologyError(f"{E} experts cannot be split evenly over {R} expert-parallel "
                                f"ranks; use --expert_ranks dividing {E} (or --num_experts a "
                                f"multiple of {R})")
        n = E // R
        lo = group.rank * n
        with torch.device("meta"):              # no allocation, no draw from the RNG
            super().__init__(E, experts.dim, experts.hidden, experts.drop.p,
                             experts.second_gelu, ids=range(lo, lo + n))
        self.to_empty(device=next(experts.parameters()).device)
        self.group, self.num_local = group, n
        with torch.no_grad():
            for name in ("w1", "b1", "w2", "b2"):
                for k, p in getattr(self, name).items():
                    p.copy_(getattr(experts, name)[k])
        self.train(experts.training)

    def forward(self, buffer: torch.Tensor) -> torch.Tensor:
        # buffer: (E, C, d) slots of this rank's tokens, for all experts
        x = all_to_all(buffer, self.group, scatter_dim=0, gather_dim=1)   # (E/R, R*C, d)
        y = super().forward(x)                                            # (E/R, R*C, d)
        return all_to_all(y, self.group, scatter_dim=1, gather_dim=0)     # (E, C, d)


def expert_parallel(group: Group):
    """The style that shards an :class:`Experts` module over ``group``."""
    return swap({Experts: lambda m: ShardedExperts(m, group)})


def expert_plan(group: Group) -> dict:
    """``{module-name pattern: style}``: the experts of every MoE layer sharded over ``group``."""
    return {EXPERTS: expert_parallel(group)}


def parallelize(model: nn.Module, group: Group) -> nn.Module:
    """Apply :func:`expert_plan` to ``model`` in place (it must have MoE layers)."""
    return apply_plan(model, expert_plan(group))


def expert_parameters(model: nn.Module) -> list:
    """The parameters of the expert shards (each once), in module order."""
    seen, out = set(), []
    for m in model.modules():
        if isinstance(m, ShardedExperts):
            for p in m.parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    out.append(p)
    return out


def grad_plans(model: nn.Module, expert: Group | None, data: Group | None):
    """``(GradSync list, NormPart list)`` for the training core (see the module docstring)."""
    experts = expert_parameters(model)
    ids = {id(p) for p in experts}
    others = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
    size = expert.size if expert is not None else 1
    sync = [GradSync(others, [expert, data], average=True)]
    norm = [NormPart(others, None)]
    if experts:
        sync.append(GradSync(experts, [data], average=True, scale=1.0 / size))
        norm.append(NormPart(experts, expert))
    return sync, norm
