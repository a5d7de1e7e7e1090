"""PointNet (Qi et al., CVPR 2017), the non-invariant baseline, without the T-Nets.

Per-point shared MLPs (1x1 convolutions with BatchNorm and ReLU), a max-pool to a global
feature; segmentation concatenates per-point features, the global feature and the category
one-hot, classification feeds the global feature to an MLP. The network sees raw coordinates,
so what it learns in the canonical pose does not carry over to rotated inputs: the point of the
baseline in the rotation protocols.
"""
from __future__ import annotations

import torch
import torch.nn as nn


def _mlp(channels, last_relu=True) -> nn.Sequential:
    layers = []
    for i, (a, b) in enumerate(zip(channels[:-1], channels[1:])):
        layers.append(nn.Conv1d(a, b, 1))
        if last_relu or i < len(channels) - 2:
            layers += [nn.BatchNorm1d(b), nn.ReLU()]
    return nn.Sequential(*layers)


class PointNetSeg(nn.Module):
    """``points (B, N, 3)``, ``category (B, n_cat)`` -> part logits ``(B, N, num_parts)``.
    ``widths``: the per-point MLP (its last entry is the global feature size)."""

    def __init__(self, num_categories: int, num_parts: int, widths=(64, 128, 128, 512, 2048),
                 head=(256, 256, 128)):
        super().__init__()
        self.local = _mlp((3,) + tuple(widths[:2]))
        self.deep = _mlp(tuple(widths[1:]))
        c = widths[0] + widths[1] + widths[-1] + num_categories
        self.head = _mlp((c,) + tuple(head) + (num_parts,), last_relu=False)

    def forward(self, points: torch.Tensor, category: torch.Tensor) -> torch.Tensor:
        x = points.transpose(1, 2)                                   # (B, 3, N)
        f1 = self.local[:3](x)
        f2 = self.local[3:](f1)
        g = self.deep(f2).amax(-1, keepdim=True)                    # (B, G, 1)
        N = x.shape[-1]
        cat = category.to(g.dtype)[:, :, None]
        z = torch.cat([f1, f2, g.expand(-1, -1, N), cat.expand(-1, -1, N)], 1)
        return self.head(z).transpose(1, 2)


class PointNetCls(nn.Module):
    """``points (B, N, 3)`` -> class logits."""

    def __init__(self, num_classes: int, widths=(64, 64, 64, 128, 1024), head=(512, 256)):
        super().__init__()
        self.features = _mlp((3,) + tuple(widths))
        layers, c = [], widths[-1]
        for h in head:
            layers += [nn.Linear(c, h), nn.BatchNorm1d(h), nn.ReLU()]
            c = h
        self.head = nn.Sequential(*layers, nn.Linear(c, num_classes))

    def forward(self, points: torch.Tensor, category=None) -> torch.Tensor:
        return self.head(self.features(points.transpose(1, 2)).amax(-1))
