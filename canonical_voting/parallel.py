"""Parallelism of Canonical Voting: data parallel only (the paper trains on one GPU).

The detector is small enough for one device at the paper's scale (MinkUNet34C, batch 3 scenes),
so no module is distributed: every rank holds the whole model (:data:`PLAN` is empty) and trains
on its own share of each global batch of scenes. The training core executes the plans below
after every backward pass:

* :func:`grad_plans`: one gradient all-reduce over the data group, averaged (each rank's loss is
  the mean over its own voxels, so the job's loss is the mean of the ranks' means), and the
  global norm counted once (the parameters are replicated);
* BatchNorm statistics stay per rank (as MinkowskiEngine's BN under DDP in the reference);
* :func:`gather_detections`: evaluation splits the validation scenes over the ranks and gathers
  every rank's detections, so each rank computes the same mAP over all scenes.
"""
from __future__ import annotations

import torch.nn as nn

from shared.parallel.comm import raw_all_gather_object
from shared.parallel.topology import Group
from shared.train.gradients import replicated_plan

PLAN: dict = {}
"""module-name pattern -> style: empty, the model is replicated, not split"""


def grad_plans(model: nn.Module, data_group: Group | None):
    """GradSync / NormPart plans of a replicated model (shared.train.gradients)."""
    return replicated_plan(model.parameters(), data_group)


def shard(n: int, group: Group | None) -> range:
    """The indices ``rank, rank + world, ...`` of ``n`` items that this rank evaluates."""
    if group is None or group.size == 1:
        return range(n)
    return range(group.rank, n, group.size)


def gather_detections(local: dict, group: Group | None) -> dict:
    """Union of every rank's ``{scene index: detections}``."""
    if group is None or group.size == 1:
        return local
    out: dict = {}
    for part in raw_all_gather_object(local, group):
        out.update(part)
    return out
