"""The per-voxel detector: a sparse U-Net whose final 1x1 convolution outputs the heads.

Heads (brief Sec. 1), for ``C`` object classes (background is class ``C``):

* ``joint`` (one model for all classes): class-specific LCC ``(C, 3)``, class-specific log half
  extents ``(C, 3)`` and ``C + 1`` class logits; ScanNet: 9 * 3 + 9 * 3 + 10 = 64 channels.
* ``separate`` (one model per class): LCC (3), log half extents (3) and 2 objectness logits: the
  joint layout with ``C = 1``.
* ``regression`` (the baseline, VoteNet-style direct regression): a centre offset (3), heading
  bin logits and residuals (``heading_bins`` each, as VoteNet), class-specific log half extents
  ``(C, 3)`` and ``C + 1`` class logits.

:func:`predict` turns the outputs of one scene into a :class:`canonical_voting.detect.
ScenePrediction`: the weight is the largest non-background class probability, the class its
argmax, and the LCC / half extents are gathered at that class.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..detect import ScenePrediction
from .minkunet import create_backbone
from .sparse import SparseTensor

HEADS = ("joint", "separate", "regression")


def head_channels(head: str, num_classes: int, heading_bins: int = 12) -> int:
    if head in ("joint", "separate"):
        return 7 * num_classes + 1
    if head == "regression":
        return 3 + 2 * heading_bins + 4 * num_classes + 1
    raise ValueError(f"unknown head {head!r}; choose one of {', '.join(HEADS)}")


class Detector(nn.Module):
    """``forward(SparseTensor) -> dict`` of per-voxel outputs (see :func:`split_outputs`)."""

    def __init__(self, backbone: str, in_channels: int, head: str, num_classes: int,
                 heading_bins: int = 12, bn_momentum: float = 0.1):
        super().__init__()
        self.head, self.num_classes, self.heading_bins = head, num_classes, heading_bins
        self.backbone = create_backbone(backbone, in_channels,
                                        head_channels(head, num_classes, heading_bins),
                                        bn_momentum)

    def forward(self, x: SparseTensor) -> dict:
        return split_outputs(self.backbone(x).feats.float(), self.head, self.num_classes,
                             self.heading_bins)


def split_outputs(out: torch.Tensor, head: str, num_classes: int, heading_bins: int = 12) -> dict:
    C, n = num_classes, len(out)
    if head in ("joint", "separate"):
        return {"lcc": out[:, :3 * C].reshape(n, C, 3),
                "log_half": out[:, 3 * C:6 * C].reshape(n, C, 3),
                "logits": out[:, 6 * C:]}
    H = heading_bins
    return {"offset": out[:, :3], "heading_logits": out[:, 3:3 + H],
            "heading_res": out[:, 3 + H:3 + 2 * H],
            "log_half": out[:, 3 + 2 * H:3 + 2 * H + 3 * C].reshape(n, C, 3),
            "logits": out[:, 3 + 2 * H + 3 * C:]}


def heading_from_bins(logits: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """Yaw = centre of the argmax bin + its residual (in bin widths)."""
    H = logits.shape[1]
    width = 2 * math.pi / H
    b = logits.argmax(1)
    return b.to(residual.dtype) * width + residual.gather(1, b[:, None]).squeeze(1) * width


def predict(outputs: dict, positions: torch.Tensor, head: str) -> ScenePrediction:
    """Per-voxel predictions of one scene (``outputs`` restricted to its voxels)."""
    logits = outputs["logits"].float()
    C = logits.shape[1] - 1
    prob = torch.softmax(logits, 1)[:, :C]
    weight, label = prob.max(1)
    rows = torch.arange(len(label), device=label.device)
    scale = torch.exp(outputs["log_half"][rows, label].float())
    if head == "regression":
        yaw = heading_from_bins(outputs["heading_logits"].float(), outputs["heading_res"].float())
        return ScenePrediction(positions, weight, label, scale, offset=outputs["offset"].float(),
                               yaw=yaw)
    return ScenePrediction(positions, weight, label, scale, lcc=outputs["lcc"][rows, label].float())


def slice_outputs(outputs: dict, start: int, stop: int) -> dict:
    return {k: v[start:stop] for k, v in outputs.items()}
