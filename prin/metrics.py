"""Part-segmentation mIoU and classification accuracy, from per-shape lists (brief §4).

For each test shape: predict the argmax over the parts of its ground-truth category only; the IoU
of a part is ``|P ∩ G| / |P ∪ G|``, 1 when the part is absent from both; the shape's IoU is the
mean over its category's parts. **Instance mIoU** = mean over shapes; **class mIoU** = mean over
the categories present of their shapes' mean. Both are computed from the list of per-shape IoUs
(the reference SPRIN averaged per-batch means instead, which weights shapes unequally).
"""
from __future__ import annotations

import numpy as np
import torch


def restricted_argmax(logits: torch.Tensor, labels: torch.Tensor, part_mask: torch.Tensor) -> torch.Tensor:
    """``logits (B, N, P)``, ``labels (B,)``, ``part_mask (n_cat, P)`` -> ``(B, N)`` part ids, each
    among the parts of the shape's category."""
    allowed = part_mask.to(logits.device)[labels][:, None, :]
    return logits.float().masked_fill(~allowed, float("-inf")).argmax(-1)


def shape_ious(pred: torch.Tensor, target: torch.Tensor, labels: torch.Tensor,
               part_ranges) -> list[float]:
    """Per-shape IoU (mean over the category's parts) of ``pred, target (B, N)``."""
    out = []
    for p, t, c in zip(pred.cpu().numpy(), target.cpu().numpy(), labels.cpu().numpy()):
        lo, hi = part_ranges[int(c)]
        ious = []
        for part in range(lo, hi):
            inter = np.sum((p == part) & (t == part))
            union = np.sum((p == part) | (t == part))
            ious.append(1.0 if union == 0 else inter / union)
        out.append(float(np.mean(ious)))
    return out


def miou(ious, labels, num_categories: int) -> tuple[float, float, list[float]]:
    """``(instance mIoU, class mIoU, per-category mIoU (nan if absent))`` from per-shape lists."""
    ious = np.asarray(ious, dtype=np.float64)
    labels = np.asarray(labels)
    per_cat = [float(ious[labels == c].mean()) if np.any(labels == c) else float("nan")
               for c in range(num_categories)]
    present = [v for v in per_cat if v == v]
    return float(ious.mean()), float(np.mean(present)), per_cat


def accuracy(pred, target) -> float:
    pred, target = np.asarray(pred), np.asarray(target)
    return float((pred == target).mean())
