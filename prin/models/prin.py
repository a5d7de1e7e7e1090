"""PRIN (TPAMI version): DAAS voxels -> spherical voxel convolutions -> γ-mean -> point features.

Architecture (reference ``prin/model.py``, brief §1b-1c), bandwidth ``b`` everywhere:

    points (B, N, 3) --DAAS--> [2b, 2b, 2b (radius in the γ slot), B, 1]
    S2HConvolution(1 -> c1), then for each SO3Convolution: BatchNorm + ReLU before it
    BatchNorm + ReLU, GammaMean: mean over γ, then Linear(1 -> 2b) along γ
    trilinear sampling at each point (β, α from its direction, γ from its radius) -> (B, N, c3)

The sampled feature of a point depends on the cloud only through rotation-equivariant spherical
signals, read at the point's own direction, and on the point through its radius: it is
rotation invariant up to the discretisation of DAAS and of the grid (the tests state the bound).

Segmentation head: concat the category one-hot, Linear(c3 + n_cat, 50), ReLU, Linear(50, parts).
Classification (``ModelCls``): S2H(1 -> c), 2 x [BN, ReLU, SO3(c -> c)], BN, ReLU, mean over γ,
max over the sphere, Linear 256 -> BN -> ReLU -> 128 -> BN -> ReLU -> classes.

Point sampling differs from the reference where it was off: the reference normalises the β
coordinate as ``β_f / (2b-1)`` with ``align_corners=True``, half a row away from the grid
(row ``j`` lies at ``β_f = j + ½``), and does not wrap α around; here the map is read at
``β_f - ½`` (clamped to the first/last row) and periodically in α. The radius coordinate is
``ρ (2b-1)`` as in the reference. Because GammaMean is affine along γ, trilinear sampling of its
output equals bilinear sampling of the γ-mean times the interpolated Linear weight plus the
interpolated bias, which is what :func:`sample_points` computes (no [2b]³ volume is built).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .daas import daas, spherical_coordinates
from .so3 import S2HConvolution, SO3Convolution


def _bn(bn: nn.BatchNorm1d, x: torch.Tensor) -> torch.Tensor:
    """BatchNorm over every axis but the last (channels), as BatchNorm3d on [B, C, β, α, γ]."""
    return bn(x.reshape(-1, x.shape[-1])).reshape(x.shape)


class GammaMean(nn.Module):
    """Mean over γ, then ``Linear(1, 2b)`` re-expands along γ (one affine map per γ index).
    Returns the γ-mean ``[2b, 2b, B, C]``; the expansion is applied where the volume is read
    (:func:`sample_points`), which is exact because it is affine."""

    def __init__(self, b: int):
        super().__init__()
        self.fc = nn.Linear(1, 2 * b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(2)


def sample_points(mean: torch.Tensor, gamma: GammaMean, points: torch.Tensor, b: int) -> torch.Tensor:
    """Trilinear reading of the GammaMean volume ``fc(mean)`` at the points: ``mean [2b, 2b, B, C]``,
    ``points (B, N, 3)`` -> ``(B, N, C)``. β is clamped at the poles, α is periodic, the radius
    index ``ρ (2b-1)`` is clamped to ``[0, 2b-1]``."""
    N2 = 2 * b
    B, N, _ = points.shape
    C = mean.shape[-1]
    rho, beta_f, alpha_f = spherical_coordinates(points.to(mean.dtype), b)
    bi = (beta_f - 0.5).clamp(0, N2 - 1)
    j0 = bi.floor().clamp(max=N2 - 2).long()
    wb = (bi - j0).unsqueeze(-1)
    k0f = alpha_f.floor()
    wa = (alpha_f - k0f).unsqueeze(-1)
    k0 = k0f.long() % N2
    k1 = (k0 + 1) % N2
    batch = torch.arange(B, device=points.device)[:, None]
    flat = mean.reshape(N2 * N2 * B, C)

    def at(j, k):
        return flat[((j * N2 + k) * B + batch).reshape(-1)].reshape(B, N, C)

    m = ((1 - wb) * ((1 - wa) * at(j0, k0) + wa * at(j0, k1))
         + wb * ((1 - wa) * at(j0 + 1, k0) + wa * at(j0 + 1, k1)))
    gi = (rho * (N2 - 1)).clamp(0, N2 - 1)
    g0 = gi.floor().clamp(max=N2 - 2).long()
    wg = gi - g0
    w = gamma.fc.weight[:, 0].to(m.dtype)
    bias = gamma.fc.bias.to(m.dtype)
    scale = ((1 - wg) * w[g0] + wg * w[g0 + 1]).unsqueeze(-1)
    shift = ((1 - wg) * bias[g0] + wg * bias[g0 + 1]).unsqueeze(-1)
    return m * scale + shift


class PRINEncoder(nn.Module):
    """DAAS + S2H + SO(3) convolutions with BatchNorm/ReLU; ``forward`` returns the last
    activation ``[2b, 2b, 2b, B, C]`` (after its BatchNorm + ReLU)."""

    def __init__(self, channels: tuple[int, ...], b: int):
        super().__init__()
        self.b = b
        self.s2h = S2HConvolution(1, channels[0], b)
        self.convs = nn.ModuleList(SO3Convolution(ci, co, b)
                                   for ci, co in zip(channels[:-1], channels[1:]))
        self.norms = nn.ModuleList(nn.BatchNorm1d(c) for c in channels)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        grid = daas(points.float() if points.dtype not in (torch.float32, torch.float64)
                    else points, self.b)                                 # [2b, 2b, 2b, B]
        x = self.s2h(grid.to(self.s2h.kernel.dtype).unsqueeze(-1))
        for norm, conv in zip(self.norms, self.convs):
            x = conv(F.relu(_bn(norm, x)))
        return F.relu(_bn(self.norms[-1], x))


class PRINSeg(nn.Module):
    """PRIN part segmentation: ``points (B, N, 3)``, ``category (B, n_cat)`` one-hot ->
    part logits ``(B, N, num_parts)``."""

    def __init__(self, num_categories: int, num_parts: int, bandwidth: int = 32,
                 channels: tuple[int, ...] = (40, 40, 50), hidden: int = 50):
        super().__init__()
        self.b = bandwidth
        self.encoder = PRINEncoder(channels, bandwidth)
        self.gamma = GammaMean(bandwidth)
        self.head = nn.Sequential(nn.Linear(channels[-1] + num_categories, hidden), nn.ReLU(),
                                  nn.Linear(hidden, num_parts))

    def point_features(self, points: torch.Tensor) -> torch.Tensor:
        """The rotation-invariant per-point features ``(B, N, c3)``."""
        mean = self.gamma(self.encoder(points))
        return sample_points(mean, self.gamma, points, self.b)

    def forward(self, points: torch.Tensor, category: torch.Tensor) -> torch.Tensor:
        f = self.point_features(points)
        cat = category[:, None, :].to(f.dtype).expand(-1, f.shape[1], -1)
        return self.head(torch.cat([f, cat], -1))


class PRINCls(nn.Module):
    """PRIN classification (``ModelCls``): ``points (B, N, 3)`` -> class logits ``(B, classes)``."""

    def __init__(self, num_classes: int, bandwidth: int = 32, channels: tuple[int, ...] = (50, 50, 50)):
        super().__init__()
        self.b = bandwidth
        self.encoder = PRINEncoder(channels, bandwidth)
        self.head = nn.Sequential(nn.Linear(channels[-1], 256), nn.BatchNorm1d(256), nn.ReLU(),
                                  nn.Linear(256, 128), nn.BatchNorm1d(128), nn.ReLU(),
                                  nn.Linear(128, num_classes))

    def global_features(self, points: torch.Tensor) -> torch.Tensor:
        x = self.encoder(points).mean(2)                                  # [2b, 2b, B, C]
        return x.flatten(0, 1).amax(0)                                   # (B, C)

    def forward(self, points: torch.Tensor, category=None) -> torch.Tensor:
        return self.head(self.global_features(points))
