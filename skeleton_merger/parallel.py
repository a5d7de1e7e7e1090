"""Data parallelism, the only parallelism of Skeleton Merger: every rank holds the whole model
and trains on its share of the global batch (the paper trains on one GPU, batch 8).

The model itself is never split, so this file holds the data-parallel plans and the two places
where the serial model's batch statistics would otherwise depend on the local batch:

* :func:`grad_plans` — the training core all-reduces (averages) every gradient over the data
  group and clips by the one global norm (:func:`shared.train.gradients.replicated_plan`).
* :func:`plan` / :func:`parallelize` — ``{"decoder": data_parallel_decoder(group)}``, a plan keyed
  by module name: the skeleton decoder's sample count per edge is a function of the *batch-mean*
  edge length; on R ranks it becomes the mean over the global batch (an all-reduce of the P local
  means; the local batches are equal), so every rank samples each edge exactly as the serial model
  on the whole batch would.
* :func:`broadcast_buffers` — BatchNorm normalises with local batch statistics (as
  ``DistributedDataParallel`` without SyncBatchNorm); its running statistics are broadcast from
  rank 0 before every step (DDP's ``broadcast_buffers``), so all replicas stay identical, the
  checkpoint (rank 0's) is every rank's state, and evaluation agrees across ranks.

A step on R ranks therefore equals, in the serial model, the average of the gradients of the R
local batches with the sample counts of the global batch (``SkeletonMerger.forward(x, counts)``),
which is what the tests check on 2 gloo processes.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from shared.parallel.comm import raw_all_reduce, raw_broadcast
from shared.parallel.plan import apply_plan, swap
from shared.parallel.topology import Group
from shared.train.gradients import replicated_plan

from .models.skeleton_merger import SkeletonDecoder


class DataParallelDecoder(SkeletonDecoder):
    """A :class:`SkeletonDecoder` whose batch-mean edge lengths are means over the global batch
    of the data group (an all-reduce of ``P`` floats per step)."""

    def __init__(self, decoder: SkeletonDecoder, group: Group):
        with torch.device("meta"):                     # no allocation, no draw from the RNG
            super().__init__(decoder.k, decoder.max_samples, decoder.min_samples,
                             decoder.sample_spacing)
        self.offsets = decoder.offsets                 # the same parameter and buffer
        self.edges = decoder.edges
        self.group = group

    def mean_lengths(self, keypoints: torch.Tensor) -> torch.Tensor:
        local = super().mean_lengths(keypoints)
        return raw_all_reduce(local, self.group) / self.group.size


def data_parallel_decoder(group: Group):
    """The style that makes a :class:`SkeletonDecoder` count its samples over ``group``."""
    return swap({SkeletonDecoder: lambda m: DataParallelDecoder(m, group)})


def plan(group: Group) -> dict:
    """``{module-name pattern: style}`` of data-parallel Skeleton Merger."""
    return {"decoder": data_parallel_decoder(group)}


def parallelize(model: nn.Module, group: Group | None) -> nn.Module:
    """Apply :func:`plan` in place when the data group has more than one rank."""
    if group is None or group.size == 1:
        return model
    return apply_plan(model, plan(group))


def grad_plans(model: nn.Module, group: Group | None):
    """``(GradSync list, NormPart list)``: gradients averaged over the data group, one norm."""
    return replicated_plan(model.parameters(), group)


@torch.no_grad()
def broadcast_buffers(model: nn.Module, group: Group | None) -> None:
    """Every buffer (BatchNorm running statistics and counters) from data rank 0 to the group."""
    if group is None or group.size == 1:
        return
    for buf in model.buffers():
        buf.copy_(raw_broadcast(buf, 0, group))
