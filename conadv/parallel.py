"""Data parallelism for ConAdv. The model is not distributed: every rank holds all of it, trains
on its share of the global batch and attacks that same share; this file holds the plans and the
only collectives of the paper.

* Gradients (:func:`grad_plans`, executed by the training core after the step): one all-reduce
  (mean) over the data group per optimizer step, after all the micro-batches of the step. The
  attack branch runs on a shadow model whose parameters do not require grad, so it adds nothing
  to the all-reduce and waits on no other rank.
* BatchNorm running statistics are per rank (each rank normalises its own micro-batches, like
  per-core BatchNorm on TPUs). They do not affect training; evaluation uses their mean over the
  data group (:func:`averaged_running_stats`, timm's ``distribute_bn`` with reduce), and each
  rank checkpoints its own (with its own ConAdv queue).
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn as nn

from shared.parallel.comm import raw_all_reduce
from shared.parallel.topology import Group
from shared.train.gradients import GradSync, NormPart, replicated_plan


def grad_plans(model: nn.Module, data_group: Group | None) -> tuple[list[GradSync], list[NormPart]]:
    """A replicated model: gradients averaged over the data group, the norm counted once."""
    return replicated_plan(model.parameters(), data_group)


def running_stats(model: nn.Module) -> list[torch.Tensor]:
    """The floating-point BatchNorm running means and variances (both branches)."""
    return [b for name, b in model.named_buffers()
            if name.endswith(("running_mean", "running_var"))]


@contextlib.contextmanager
def averaged_running_stats(model: nn.Module, group: Group | None):
    """Inside the block, every BatchNorm uses the mean of its running statistics over ``group``;
    each rank's own statistics come back afterwards (a no-op on a group of one)."""
    if group is None or group.size == 1:
        yield model
        return
    stats = running_stats(model)
    saved = [b.clone() for b in stats]
    flat = torch.cat([b.reshape(-1) for b in stats])
    flat = raw_all_reduce(flat, group) / group.size
    means = [m.view_as(b) for m, b in zip(flat.split([b.numel() for b in stats]), stats)]
    with torch.no_grad():
        torch._foreach_copy_(stats, means)
    try:
        yield model
    finally:
        with torch.no_grad():
            torch._foreach_copy_(stats, saved)
