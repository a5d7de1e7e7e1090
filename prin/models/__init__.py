"""PRIN, SPRIN and the PointNet baseline (single-device models).

    model = create_model("sprin", task="seg", num_categories=16, num_parts=50)
    logits = model(points, category_onehot)        # (B, N, num_parts); cls: (B, classes)

``create_model(name, task, ...)`` is the one way the scripts build a model; ``MODELS`` lists the
names. Spherical machinery: :mod:`.so3` (SOFT grid, Wigner matrices, SO(3)/S² FFTs,
correlations) and :mod:`.daas` (spherical voxel sampling).
"""
from __future__ import annotations

from .pointnet import PointNetCls, PointNetSeg
from .prin import PRINCls, PRINSeg
from .sprin import SPRINCls, SPRINSeg

MODELS = ("sprin", "prin", "pointnet")
TASKS = ("seg", "cls")


def create_model(name: str, task: str, num_categories: int = 16, num_parts: int = 50,
                 num_classes: int = 40, bandwidth: int = 32, prin_channels=None,
                 sprin_levels=(128, 32), sprin_width: float = 1.0, sprin_k_scale: float = 1.0,
                 pointnet_widths=None):
    """Build ``name`` (sprin | prin | pointnet) for ``task`` (seg | cls)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose seg or cls")
    if name == "prin":
        kw = {} if prin_channels is None else {"channels": tuple(prin_channels)}
        return (PRINSeg(num_categories, num_parts, bandwidth, **kw) if task == "seg"
                else PRINCls(num_classes, bandwidth, **kw))
    if name == "sprin":
        return (SPRINSeg(num_categories, num_parts, tuple(sprin_levels), sprin_width, sprin_k_scale)
                if task == "seg" else
                SPRINCls(num_classes, tuple(sprin_levels), sprin_width, sprin_k_scale))
    kw = {} if pointnet_widths is None else {"widths": tuple(pointnet_widths)}
    return (PointNetSeg(num_categories, num_parts, **kw) if task == "seg"
            else PointNetCls(num_classes, **kw))


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["MODELS", "TASKS", "create_model", "count_parameters", "PRINSeg", "PRINCls",
           "SPRINSeg", "SPRINCls", "PointNetSeg", "PointNetCls"]
