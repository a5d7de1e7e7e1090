"""How F2C and its baselines are distributed.

* **F2C is data parallel.** P-Net and G-Net are replicated; each rank embeds its own share of
  the batch. The gallery features and labels of all ranks are all-gathered (no gradient) in rank
  order (:func:`gather_gallery`), so every rank inserts the same list into its pool and the
  pools stay identical without ever being communicated. P-Net gradients are averaged over the
  data group (as the official code's DDP).
* **Full FC and Partial FC** keep the backbone data parallel and shard the class centres over the
  same ranks (model parallelism, insightface's arcface_torch): :func:`classifier_plan` maps the
  module name ``head`` to a style that swaps the single-device head for its sharded version
  (``f2c.parallel_fc``), built directly from the init stream. Their loss is the mean over the
  global batch on every rank, so backbone gradients are *summed* over the data group and the
  centre shards are not synchronised (:func:`grad_plans`); the global gradient norm counts each
  centre shard once.

BatchNorm statistics differ per rank (each sees its own batch); :func:`broadcast_buffers` copies
rank 0's before an evaluation, which is what DDP's ``broadcast_buffers`` leaves in place.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from shared.parallel.comm import raw_all_gather, raw_broadcast
from shared.parallel.plan import apply_plan, swap
from shared.parallel.topology import Group
from shared.train.gradients import GradSync, NormPart

from .models import F2C, MarginFC, PartialFC
from .parallel_fc import ShardedMarginFC, ShardedPartialFC

HEAD = "head"
"""module name of the classifier of a ``FaceClassifier``"""


def shard_classifier(group: Group, device=None):
    """The style that replaces a ``MarginFC`` / ``PartialFC`` (may live on the meta device) by
    this rank's shard of it."""
    return swap({PartialFC: lambda m: ShardedPartialFC(m, group, device),
                 MarginFC: lambda m: ShardedMarginFC(m, group, device)})


def classifier_plan(group: Group, device=None) -> dict:
    """``{module-name pattern: style}``: the class centres sharded over ``group``."""
    return {HEAD: shard_classifier(group, device)}


def parallelize(model: nn.Module, group: Group, device=None) -> nn.Module:
    """Shard a ``FaceClassifier``'s head over ``group`` (also on a group of one, which
    materialises a head built on the meta device); an F2C model is left as it is."""
    if isinstance(model, F2C):
        return model
    return apply_plan(model, classifier_plan(group, device))


def grad_plans(model: nn.Module, group: Group | None):
    """``(GradSync list, NormPart list)`` for the training core (see the module docstring)."""
    backbone = [p for p in model.backbone.parameters() if p.requires_grad]
    if isinstance(model, F2C):
        return [GradSync(backbone, [group], average=True)], [NormPart(backbone, None)]
    head = [p for p in model.head.parameters() if p.requires_grad]
    return ([GradSync(backbone, [group], average=False), GradSync(head, [])],
            [NormPart(backbone, None), NormPart(head, group)])


@torch.no_grad()
def gather_gallery(feats: torch.Tensor, labels: torch.Tensor, group: Group | None):
    """Every rank's gallery features and labels, concatenated in rank order (no gradient)."""
    if group is None or group.size == 1:
        return feats, labels
    return raw_all_gather(feats, 0, group), raw_all_gather(labels, 0, group)


@torch.no_grad()
def broadcast_buffers(module: nn.Module, group: Group | None) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank of ``group``."""
    if group is None or group.size == 1:
        return
    for b in module.buffers():
        if b.is_floating_point() or b.dtype == torch.long:
            b.copy_(raw_broadcast(b, 0, group))
