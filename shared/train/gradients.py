"""Gradient synchronisation and clipping by the global norm, for any mix of sharded and
replicated parameters.

A paper's ``parallel.py`` describes its parameters with two small plans, and the training core
executes them after every backward pass:

* :class:`GradSync` — the gradients of ``params`` are all-reduced over each of ``groups`` (the
  data-parallel group, and for expert parallelism also the expert group for the parameters that
  every expert rank holds), averaged over the product of the group sizes or summed;
* :class:`NormPart` — the squared norm of ``params``'s gradients is summed over ``group`` when the
  parameters are *sharded* over it (each rank holds a different piece), and counted once when they
  are replicated (``group=None``).

``global_grad_norm`` is therefore the norm of the one logical gradient that the serial model
would have, so clipping means the same thing on 1 process and on N ranks, and every replica
clips by the same factor (replicas never drift apart).
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

import torch
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from ..parallel.comm import raw_all_reduce
from ..parallel.topology import Group


@dataclass
class GradSync:
    """All-reduce the gradients of ``params`` over every group in ``groups``; ``average`` divides
    by the product of their sizes (a mean over replicas), otherwise they are summed. ``scale``
    multiplies them afterwards, also when no group has more than one rank (e.g. ``1/R`` for
    expert shards whose gradients already sum the losses of R expert ranks through an
    all-to-all)."""
    params: list
    groups: list = field(default_factory=list)
    average: bool = True
    scale: float = 1.0


@dataclass
class NormPart:
    """``params`` whose gradients are sharded over ``group`` (sum of squares across it), or
    replicated (``group=None``: counted once).

    ``replicas``: how many ranks of ``group`` hold each piece (e.g. 2.5D tensor parallelism,
    whose ``d`` depth slices hold the same ``q²`` pieces): the sum over ``group`` is divided by
    it, so every piece still counts once. Default 1: every rank of ``group`` holds its own piece.
    """
    params: list
    group: Group | None = None
    replicas: int = 1


def _active(groups) -> list[Group]:
    return [g for g in groups if g is not None and g.size > 1]


def sync_gradients(plan: list[GradSync]) -> None:
    """Execute a :class:`GradSync` plan: one flattened all-reduce per entry, dtype and group.

    A parameter with no gradient on this rank takes part with zeros, plus a flag; when no rank of
    the group produced a gradient for it, it stays ``None`` (as in a single process), so the
    optimizer skips it exactly as the serial run does.
    """
    for entry in plan:
        groups = _active(entry.groups)
        if not groups:
            if entry.scale != 1.0:
                grads = [p.grad for p in entry.params if p.grad is not None]
                if grads:
                    torch._foreach_mul_(grads, entry.scale)
            continue
        by_dtype = defaultdict(list)
        for p in entry.params:
            by_dtype[p.dtype].append(p)
        for params in by_dtype.values():
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
            has = torch.tensor([p.grad is not None for p in params], dtype=grads[0].dtype,
                               device=grads[0].device)
            flat = _flatten_dense_tensors(grads + [has])
            for g in groups:
                flat = raw_all_reduce(flat, g)
            if entry.average:
                flat = flat / math.prod(g.size for g in groups)
            if entry.scale != 1.0:
                flat = flat * entry.scale
            *new, seen = _unflatten_dense_tensors(flat, grads + [has])
            for p, value, any_rank in zip(params, new, seen.tolist()):
                if any_rank == 0:
                    p.grad = None
                elif p.grad is None:
                    p.grad = value
                else:
                    p.grad.copy_(value)


def global_grad_norm(parts: list[NormPart]) -> torch.Tensor:
    """The L2 norm of the whole logical gradient (float32 scalar on the gradients' device)."""
    local = None
    sharded: dict[str, tuple[Group, torch.Tensor]] = {}
    for part in parts:
        grads = [p.grad for p in part.params if p.grad is not None]
        if grads:
            sq = torch.stack([n.float() for n in torch._foreach_norm(grads)]).square().sum()
        else:
            sq = None
        group = part.group if part.group is not None and part.group.size > 1 else None
        if group is None:
            if sq is not None:
                local = sq if local is None else local + sq
        else:
            if sq is None:
                device = part.params[0].device if part.params else torch.device("cpu")
                sq = torch.zeros((), device=device)
            if part.replicas != 1:
                sq = sq / part.replicas
            prev = sharded.get(group.name)
            sharded[group.name] = (group, sq if prev is None else prev[1] + sq)
    total = local if local is not None else None
    for group, sq in sharded.values():
        reduced = raw_all_reduce(sq.reshape(1), group)[0]
        total = reduced if total is None else total + reduced
    if total is None:
        return torch.zeros(())
    return total.sqrt()


def clip_gradients(parts: list[NormPart], max_norm: float) -> torch.Tensor:
    """Scale every gradient by ``min(1, max_norm / (norm + 1e-6))``; ``max_norm <= 0`` leaves
    them alone (clipping off). Returns the global norm before clipping."""
    norm = global_grad_norm(parts)
    if max_norm > 0:
        coef = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
        grads = [p.grad for part in parts for p in part.params if p.grad is not None]
        if grads:
            torch._foreach_mul_(grads, coef.to(grads[0].device))
    return norm


def replicated_plan(params, data_group: Group | None, average: bool = True):
    """The plans of a model replicated on every data-parallel rank: one all-reduce over the
    data group, and a norm counted once."""
    params = [p for p in params if p.requires_grad]
    return [GradSync(params, [data_group], average)], [NormPart(params, None)]
