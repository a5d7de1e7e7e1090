"""Data parallelism, the only parallelism of PRIN/SPRIN: every rank holds the whole model and
trains on its share of the global batch (the papers train on one GPU). The models are never split,
so there is no module plan; this file holds the data-parallel plans and the few collectives:

* :func:`grad_plans` — the training core averages every gradient over the data group and clips
  by the one global norm (:func:`shared.train.gradients.replicated_plan`).
* BatchNorm normalises with each rank's local batch statistics (like ``DistributedDataParallel``
  without SyncBatchNorm); :func:`average_buffers` replaces the running statistics by their mean
  over the group before an evaluation or a checkpoint (timm's ``distribute_bn`` with reduce), so
  replicas agree on what they evaluate and save.
* :func:`gather_lists` — evaluation: each rank scores a share of the test shapes and the per-shape
  lists (IoU, prediction, label, index) are gathered, so the mIoU is computed from the full lists,
  in test-set order, exactly as one process computes it.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from shared.parallel.comm import raw_all_gather_object, raw_all_reduce
from shared.parallel.topology import Group
from shared.train.gradients import GradSync, NormPart, replicated_plan


def grad_plans(model: nn.Module, group: Group | None) -> tuple[list[GradSync], list[NormPart]]:
    """A replicated model: gradients averaged over the data group, the norm counted once."""
    return replicated_plan(model.parameters(), group)


@torch.no_grad()
def average_buffers(model: nn.Module, group: Group | None) -> None:
    """Floating-point buffers (BatchNorm running statistics) averaged over ``group``, in place."""
    if group is None or group.size == 1:
        return
    bufs = [b for b in model.buffers() if b.is_floating_point()]
    if not bufs:
        return
    flat = torch.cat([b.reshape(-1) for b in bufs])
    flat = raw_all_reduce(flat, group) / group.size
    for b, v in zip(bufs, flat.split([b.numel() for b in bufs])):
        b.copy_(v.view_as(b))


def gather_lists(lists: dict[str, list], group: Group | None) -> dict[str, list]:
    """Concatenate every rank's per-shape lists (same keys everywhere), ordered by ``"index"``."""
    if group is not None and group.size > 1:
        parts = raw_all_gather_object(lists, group)
        lists = {k: [v for p in parts for v in p[k]] for k in lists}
    order = sorted(range(len(lists["index"])), key=lambda i: lists["index"][i])
    return {k: [v[i] for i in order] for k, v in lists.items()}
