"""Density Aware Adaptive Sampling (DAAS, TPAMI PRIN): points -> a spherical voxel grid.

A point ``p`` has radius ``ρ = |p|``, polar angle ``θ`` and azimuth ``φ``; on the SOFT grid of
bandwidth ``b`` its continuous row and column are ``β_f = 2bθ/π ∈ [0, 2b]`` (row ``j`` is centred
at ``β_f = j + ½``) and ``α_f = bφ/π ∈ [0, 2b)`` (column ``k`` at ``α_f = k``). With ``R`` radial
shells of spacing ``Δ = 1/(R+1)`` (TPAMI: ``R = 2b``), voxel ``(i, j, k)`` is the mean over the
points of row ``j = floor(β_f)`` and shell ``floor(ρ/Δ) ∈ {i, i+1}`` whose ``α_f`` lies strictly
inside the window ``|α_f - k| < 1 / (2 sin β_j)`` of the voxel — wider towards the poles, where
the columns crowd together: the "density aware" part — of the triangular radial kernel
``max(0, 1 - |ρ/Δ - (i+1)|)`` centred at radius ``(i+1)Δ``; 0 where no point falls.

Output: ``[2b (β), 2b (α), R (radius in the γ slot), B]``, grid-major like :mod:`.so3`.

Differences from the reference C++ loop (``prin/src/sampling.cc``), where it was wrong:
* windows are periodic in α (distance on the circle); the C++ clips them to ``[0, 2b]``, which
  drops the points with ``α_f ∈ [2b - ½, 2b)`` and breaks the equivariance under rotations about z;
* a window is symmetric; the C++ scans buckets ``[int(left + ½), int(right + ½))`` and so misses
  the points between the last bucket boundary and the right end of windows wider than a column;
* the radial kernel is clipped at 0 (the C++ lets it go negative for points beyond radius 1,
  which translation augmentation produces).
:func:`reference_daas` is a slow per-voxel loop with these semantics, used by the tests.
"""
from __future__ import annotations

import math

import numpy as np
import torch


def spherical_coordinates(points: torch.Tensor, b: int):
    """``points (..., 3)`` -> ``(ρ, β_f, α_f)``, each ``(...)``: radius and continuous SOFT grid
    row/column coordinates (see the module docstring). The origin gets the direction +z."""
    rho = points.norm(dim=-1)
    z = torch.where(rho > 0, points[..., 2] / rho.clamp_min(1e-30), torch.ones_like(rho))
    theta = torch.arccos(z.clamp(-1.0, 1.0))
    phi = torch.remainder(torch.atan2(points[..., 1], points[..., 0]), 2 * math.pi)
    alpha_f = phi * (b / math.pi)
    alpha_f = torch.where(alpha_f >= 2 * b, alpha_f - 2 * b, alpha_f)       # remainder rounding
    return rho, theta * (2 * b / math.pi), alpha_f


def half_widths(b: int) -> np.ndarray:
    """``1 / (2 sin β_j)``: half-width in columns of the α window of row ``j``."""
    beta = np.pi * (2 * np.arange(2 * b) + 1) / (4 * b)
    return 0.5 / np.sin(beta)


def daas(points: torch.Tensor, b: int, shells: int | None = None) -> torch.Tensor:
    """DAAS grid of a batch of clouds ``points (B, N, 3)`` -> ``[2b, 2b, R, B]`` (vectorised).

    ``shells``: the number R of radial shells (default ``2b``, TPAMI); ``Δ = 1/(R+1)``.
    Not differentiable (a sampling step); computed in the points' dtype.
    """
    if points.dim() != 3 or points.shape[-1] != 3:
        raise ValueError(f"DAAS expects points (B, N, 3); got {tuple(points.shape)}")
    B, N, _ = points.shape
    R = shells or 2 * b
    N2 = 2 * b
    with torch.no_grad():
        rho, beta_f, alpha_f = spherical_coordinates(points, b)
        r = rho * (R + 1)                                                    # ρ / Δ
        s = r.floor().clamp(0, R).long()                                     # shell
        j = beta_f.floor().clamp(0, N2 - 1).long()                           # row
        hw = torch.as_tensor(half_widths(b), dtype=points.dtype, device=points.device)[j]
        diff = (alpha_f[..., None] - torch.arange(N2, device=points.device, dtype=points.dtype)).abs()
        inside = torch.minimum(diff, N2 - diff) < hw[..., None]              # (B, N, 2b)
        shell = torch.stack([s, s - 1], -1)                                  # (B, N, 2): i, i-1
        value = (1 - (r[..., None] - (shell + 1)).abs()).clamp_min(0)
        ok = inside[..., None] & ((shell >= 0) & (shell < R))[:, :, None, :]   # (B, N, 2b, 2)
        batch = torch.arange(B, device=points.device)[:, None, None, None]
        k = torch.arange(N2, device=points.device)[None, None, :, None]
        flat = ((j[:, :, None, None] * N2 + k) * R + shell[:, :, None, :]) * B + batch
        idx = flat.expand_as(ok)[ok]
        vals = value[:, :, None, :].expand_as(ok)[ok]
        total = torch.zeros(N2 * N2 * R * B, dtype=points.dtype, device=points.device)
        count = torch.zeros_like(total)
        total.index_add_(0, idx, vals)
        count.index_add_(0, idx, torch.ones_like(vals))
        grid = torch.where(count > 0, total / count.clamp_min(1), total)
    return grid.reshape(N2, N2, R, B)


def reference_daas(points: np.ndarray, b: int, shells: int | None = None) -> np.ndarray:
    """Slow per-voxel DAAS of one cloud ``(N, 3)`` -> ``(2b, 2b, R)`` (the semantics of
    :func:`daas`, written as the reference's loop over voxels; for tests)."""
    p = np.asarray(points, dtype=np.float64)
    R = shells or 2 * b
    out = np.zeros((2 * b, 2 * b, R))
    rho = np.linalg.norm(p, axis=1)
    coords = []
    for q, rq in zip(p, rho):
        theta = math.acos(max(-1.0, min(1.0, q[2] / rq))) if rq > 0 else 0.0
        phi = math.atan2(q[1], q[0]) % (2 * math.pi)
        a = phi * b / math.pi
        coords.append((rq, theta * 2 * b / math.pi, a - 2 * b if a >= 2 * b else a))
    hw = half_widths(b)
    for i in range(R):
        for jj in range(2 * b):
            for kk in range(2 * b):
                acc, cnt = 0.0, 0
                for rq, bf, af in coords:
                    row = min(max(int(math.floor(bf)), 0), 2 * b - 1)
                    shell = min(max(int(math.floor(rq * (R + 1))), 0), R)
                    if row != jj or shell not in (i, i + 1):
                        continue
                    d = abs(af - kk)
                    if min(d, 2 * b - d) < hw[jj]:
                        acc += max(0.0, 1.0 - abs(rq * (R + 1) - (i + 1)))
                        cnt += 1
                out[jj, kk, i] = acc / cnt if cnt else 0.0
    return out
