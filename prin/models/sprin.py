"""SPRIN: sparse point-wise rotation-invariant network (reference ``sprin/model.py``, brief §2).

Every layer is a :class:`SparseSO3Conv`: for a query point ``s`` and the points ``r`` of its
neighbourhood (mean ``m``), the 8 rotation-invariant pair features

    [angle(ŝ, r̂)/π, |r|, |m - r|, |r - s|, |s - m|, cos(l1, l2), cos(l2, l3), cos(l3, l1)]

(``l1 = m - r, l2 = r - s, l3 = s - m``; hats are directions from the origin) go through a kernel
MLP ``8 -> hidden (Linear, LayerNorm, ReLU) -> rank``; the layer sums ``kernel ⊗ feature`` over
the neighbourhood (``rank x C_in``, a sum, not a mean), then ``Linear(rank C_in -> C_out)`` and
LayerNorm. Distances, angles and kNN sets are invariant under rotations about the origin, so
every feature is: the inputs are centred on their mean and scaled by the largest norm first
(equivariant), and features match to float rounding (tested to 1e-5 in float64).

Neighbourhoods: kNN among the source points (itself included), one random permutation of the k
slots shared by the batch, every ``stride``-th kept (random dilation). ``GlobalInfoProp(C, g)``:
``Linear(C -> g)``, max over points, concatenated. Down-sampling: farthest point sampling (the
shared ``farthest_point_sample``, random start from the torch RNG).

The layer table :data:`SEG_LAYERS` / :data:`CLS_LAYERS` is the reference's; ``width`` and
``k_scale`` scale channels/ranks/hidden units and neighbourhood sizes for CPU presets.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from shared.pointcloud.points import farthest_point_sample, gather_points, knn

# (k, stride, rank, c_out, hidden, global) of each conv; k = 0: dense (all pairs); global g > 0:
# GlobalInfoProp(c_out, g) after it. Levels: "1" = all points, "2" = first FPS level (128 of
# 1024), "3" = second (32). Entries in order of the reference's forward.
SEG_LAYERS = [
    ("conv11", "1", "1", 64, 2, 32, 32, 80, 8),
    ("conv12", "1", "1", 64, 2, 32, 48, 80, 16),
    ("pconv1", "1", "2", 32, 1, 64, 128, 100, 0),
    ("conv21", "2", "2", 32, 1, 64, 128, 140, 16),
    ("conv22", "2", "2", 32, 1, 72, 144, 180, 16),
    ("pconv2", "2", "3", 32, 1, 128, 256, 240, 0),
    ("conv31", "3", "3", 0, 1, 128, 256, 240, 0),
    ("conv32", "3", "3", 0, 1, 128, 256, 240, 32),
    ("upconv4", "3", "2", 16, 1, 32, 128, 128, 0),
    ("conv41", "2", "2", 32, 1, 64, 128, 128, 32),
    ("upconv5", "2", "1", 32, 1, 32, 48, 80, 0),
    ("conv51", "1", "1", 48, 2, 32, 48, 80, 16),
    ("conv52", "1", "1", 96, 3, 32, 64, 80, 16),
]
CLS_LAYERS = [
    ("conv11", "1", "1", 64, 2, 32, 32, 80, 8),
    ("conv12", "1", "1", 64, 2, 32, 48, 80, 16),
    ("pconv1", "1", "2", 72, 3, 64, 128, 100, 0),
    ("conv21", "2", "2", 32, 1, 64, 128, 140, 16),
    ("conv22", "2", "2", 32, 1, 72, 144, 180, 16),
    ("pconv2", "2", "3", 32, 1, 128, 256, 240, 0),
    ("conv31", "3", "3", 0, 1, 128, 256, 240, 0),
    ("conv32", "3", "3", 0, 1, 128, 256, 240, 128),
]
NO_RELU = ("upconv4", "upconv5")          # the two up-convolutions are not followed by ReLU


def pair_features(neighbours: torch.Tensor, query: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """The 8 rotation-invariant features of each (query, neighbour) pair:
    ``neighbours (B, Q, K, 3)``, ``query (B, Q, 3)`` -> ``(B, Q, K, 8)``."""
    s = query[:, :, None, :]
    m = neighbours.mean(-2, keepdim=True)
    l1, l2, l3 = m - neighbours, neighbours - s, s - m
    n1, n2 = l1.norm(dim=-1), l2.norm(dim=-1)
    n3 = l3.norm(dim=-1).expand_as(n1)
    c12 = (l1 * l2).sum(-1) / (n1 * n2 + eps)
    c23 = (l2 * l3).sum(-1) / (n2 * n3 + eps)
    c31 = (l3 * l1).sum(-1) / (n3 * n1 + eps)
    h = neighbours.norm(dim=-1)
    cos = (neighbours * s).sum(-1) / (h * s.norm(dim=-1)).clamp_min(eps)
    angle = torch.arccos(cos.clamp(-1.0, 1.0)) / math.pi
    return torch.stack([angle, h, n1, n2, n3, c12, c23, c31], -1)


class SparseSO3Conv(nn.Module):
    """``(neighbour xyz (B,Q,K,3), neighbour features (B,Q,K,C_in), query xyz (B,Q,3))`` ->
    ``(B, Q, C_out)``: kernel MLP on the pair features, rank-``rank`` contraction, Linear,
    LayerNorm."""

    def __init__(self, rank: int, c_in: int, c_out: int, hidden: int):
        super().__init__()
        self.rank = rank
        self.kernel = nn.Sequential(nn.Linear(8, hidden), nn.LayerNorm(hidden), nn.ReLU(),
                                    nn.Linear(hidden, rank))
        self.out = nn.Linear(rank * c_in, c_out)
        self.norm = nn.LayerNorm(c_out)

    def forward(self, neighbours, features, query):
        kern = self.kernel(pair_features(neighbours, query).to(features.dtype))   # (B,Q,K,rank)
        contracted = torch.einsum("bqkr,bqki->bqri", kern, features).flatten(-2)
        return self.norm(self.out(contracted))


class NeighbourhoodConv(nn.Module):
    """:class:`SparseSO3Conv` over the random-dilated kNN set (``k`` nearest, shuffled, every
    ``stride``-th) of each query among the source points; ``k = 0``: all source points."""

    def __init__(self, k: int, stride: int, rank: int, c_in: int, c_out: int, hidden: int):
        super().__init__()
        self.k, self.stride = k, stride
        self.conv = SparseSO3Conv(rank, c_in, c_out, hidden)

    def forward(self, src_xyz, src_feat, query_xyz):
        B, Q, _ = query_xyz.shape
        S = src_xyz.shape[1]
        if self.k == 0:                                                  # dense: all pairs
            nb = src_xyz[:, None].expand(B, Q, S, 3)
            nf = src_feat[:, None].expand(B, Q, S, src_feat.shape[-1])
        else:
            idx = knn(query_xyz.detach(), src_xyz.detach(), self.k)      # (B, Q, k), self first
            perm = torch.randperm(self.k).to(idx.device)
            idx = idx[..., perm][..., ::self.stride]
            nb, nf = gather_points(src_xyz, idx), gather_points(src_feat, idx)
        return self.conv(nb, nf, query_xyz)


class GlobalInfoProp(nn.Module):
    """``(B, P, C) -> (B, P, C + g)``: a Linear map, max over the points, concatenated."""

    def __init__(self, c: int, g: int):
        super().__init__()
        self.linear = nn.Linear(c, g)

    def forward(self, x):
        g = self.linear(x).amax(1, keepdim=True).expand(-1, x.shape[1], -1)
        return torch.cat([x, g], -1)


def normalize(points: torch.Tensor) -> torch.Tensor:
    """Centre on the mean, divide by the largest norm (rotation equivariant)."""
    p = points - points.mean(1, keepdim=True)
    return p / p.norm(dim=-1).amax(1)[:, None, None].clamp_min(1e-12)


class SPRINBackbone(nn.Module):
    """The layer table as modules, with ``width``/``k_scale`` scaling (1.0 = the reference)."""

    def __init__(self, layers, c_in: int, levels: tuple[int, int], width: float, k_scale: float):
        super().__init__()
        self.levels = levels
        self.convs, self.globs = nn.ModuleDict(), nn.ModuleDict()
        self.order = []
        sc = lambda v: max(1, int(round(v * width)))                   # noqa: E731
        c = c_in                                   # features flow through the layers in order
        for name, src, dst, k, stride, rank, c_out, hidden, g in layers:
            kk = 0 if k == 0 else max(stride, int(round(k * k_scale)))
            self.convs[name] = NeighbourhoodConv(kk, stride, sc(rank), c, sc(c_out), sc(hidden))
            c = sc(c_out)
            if g:
                self.globs[name] = GlobalInfoProp(c, sc(g))
                c += sc(g)
            self.order.append((name, src, dst))
        self.out_channels = c

    def forward(self, xyz: torch.Tensor, feat: torch.Tensor) -> torch.Tensor:
        pts = {"1": xyz}
        n1, n2 = self.levels
        for name, src, dst in self.order:
            if dst not in pts:                                           # a new FPS level
                base = pts[src]
                idx = farthest_point_sample(base.detach(), n1 if dst == "2" else n2)
                pts[dst] = gather_points(base, idx)
            feat = self.convs[name](pts[src], feat, pts[dst])
            if name not in NO_RELU:
                feat = F.relu(feat)
            if name in self.globs:
                feat = self.globs[name](feat)
        return feat


class SPRINSeg(nn.Module):
    """SPRIN part segmentation: ``points (B, N, 3)``, ``category (B, n_cat)`` one-hot (the input
    feature of every point) -> part logits ``(B, N, num_parts)``."""

    def __init__(self, num_categories: int, num_parts: int, levels=(128, 32), width: float = 1.0,
                 k_scale: float = 1.0):
        super().__init__()
        self.backbone = SPRINBackbone(SEG_LAYERS, num_categories, levels, width, k_scale)
        c = self.backbone.out_channels
        self.head = nn.Sequential(nn.Conv1d(c, 128, 1), nn.BatchNorm1d(128), nn.ReLU(),
                                  nn.Conv1d(128, 256, 1), nn.BatchNorm1d(256), nn.ReLU(),
                                  nn.Conv1d(256, num_parts, 1))

    def point_features(self, points: torch.Tensor, category: torch.Tensor) -> torch.Tensor:
        """The rotation-invariant per-point features ``(B, N, C)`` before the head."""
        xyz = normalize(points)
        feat = category[:, None, :].to(xyz.dtype).expand(-1, xyz.shape[1], -1)
        return self.backbone(xyz, feat)

    def forward(self, points: torch.Tensor, category: torch.Tensor) -> torch.Tensor:
        f = self.point_features(points, category)
        return self.head(f.transpose(1, 2)).transpose(1, 2)


class SPRINCls(nn.Module):
    """SPRIN classification: ``points (B, N, 3)`` (constant 1 input feature) -> logits."""

    def __init__(self, num_classes: int, levels=(128, 32), width: float = 1.0, k_scale: float = 1.0):
        super().__init__()
        self.backbone = SPRINBackbone(CLS_LAYERS, 1, levels, width, k_scale)
        c = self.backbone.out_channels
        self.head = nn.Sequential(nn.Linear(2 * c, 256), nn.BatchNorm1d(256), nn.ReLU(),
                                  nn.Linear(256, 64), nn.BatchNorm1d(64), nn.ReLU(),
                                  nn.Linear(64, num_classes))

    def global_features(self, points: torch.Tensor) -> torch.Tensor:
        xyz = normalize(points)
        f = self.backbone(xyz, torch.ones_like(xyz[..., :1]))
        return torch.cat([f.amax(1), f.mean(1)], -1)

    def forward(self, points: torch.Tensor, category=None) -> torch.Tensor:
        return self.head(self.global_features(points))
