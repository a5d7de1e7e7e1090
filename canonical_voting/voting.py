"""Canonical voting: every point votes for every yaw, splatted trilinearly into vote maps.

A point ``p`` with predicted LCC ``c``, half extents ``s`` and weight ``w`` does not know its
object's yaw, so it votes for all ``K`` yaws ``theta_k = 2 pi k / K`` (brief Sec. 1):

    centre_k = p - R_y(theta_k) (c * s)

and each vote is splatted trilinearly (8 grid corners) with weight ``w`` into the objectness map
``G_obj``, with ``w (cos theta_k, sin theta_k)`` into the orientation map ``G_rot`` and with
``w s`` into the scale map ``G_scale``; votes whose grid coordinate is ``< 0`` or ``>= dim - 1``
on any axis are dropped. Finally ``G_rot, G_scale /= G_obj + 1e-7``. Only the votes with the
right yaw pile up at the true centre, so a peak of ``G_obj`` gives the centre, the mean
orientation and the mean size.

The grid spans the voxel positions of the scene (origin = their minimum, ``dims = floor((max -
min) / voxel) + 1``); cell ``i`` sits at ``origin + voxel * i``.

:func:`canonical_vote` replaces the reference's CUDA kernel by tensor code: (point, yaw) pairs in
chunks of at most ``chunk_pairs`` (memory ~ ``chunk_pairs * 6 values``), one ``index_add_`` per
trilinear corner per chunk. :func:`canonical_vote_loop` is the
straightforward per-point loop (the kernel's arithmetic, one point at a time) that the tests and
the bench compare it with. :func:`direct_vote` splats one vote per point (the regression
baseline's ``p + offset``) through the same code.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from shared.errors import UsageError
from shared.pointcloud.points import yaw_rotation

class VoteGridError(UsageError):
    """The scene needs more vote cells than the budget allows."""


@dataclass
class VoteGrid:
    origin: torch.Tensor        # (3,) world position of cell (0, 0, 0)
    voxel: float
    dims: tuple[int, int, int]

    @property
    def cells(self) -> int:
        return self.dims[0] * self.dims[1] * self.dims[2]

    def position(self, index) -> torch.Tensor:
        """World position of cell ``index (3,)``."""
        return self.origin + self.voxel * torch.as_tensor(index, dtype=self.origin.dtype,
                                                          device=self.origin.device)


@dataclass
class VoteMaps:
    grid: VoteGrid
    obj: torch.Tensor           # (X, Y, Z) summed vote weight
    rot: torch.Tensor           # (X, Y, Z, 2) mean (cos, sin) of the votes' yaw
    scale: torch.Tensor         # (X, Y, Z, 3) mean half extents


def make_grid(positions: torch.Tensor, voxel: float, max_cells: int) -> VoteGrid:
    """The vote grid over the bounding box of ``positions (N, 3)``; refuses a grid above
    ``max_cells`` with the voxel size that would fit."""
    if len(positions) == 0:
        raise VoteGridError("cannot vote in an empty scene (no points after voxelization); "
                            "check the input scene")
    lo, hi = positions.min(0).values, positions.max(0).values
    dims = tuple(int(d) + 1 for d in torch.floor((hi - lo) / voxel).tolist())
    cells = dims[0] * dims[1] * dims[2]
    if cells > max_cells:
        fit = voxel * (cells / max_cells) ** (1 / 3)
        fit = math.ceil(fit * 1000) / 1000
        ext = " x ".join(f"{e:.2f}" for e in (hi - lo).tolist())
        raise VoteGridError(f"the scene ({ext} m) needs {cells} vote cells at "
                            f"--vote_voxel {voxel:g} m, above --max_vote_cells {max_cells}; raise "
                            f"--vote_voxel to {fit:g} m (or --max_vote_cells to {cells})")
    return VoteGrid(lo.clone(), float(voxel), dims)


def _splat(acc: torch.Tensor, grid: VoteGrid, centres: torch.Tensor, values: torch.Tensor):
    """Trilinear splat of ``values (M, V)`` at ``centres (M, 3)`` into ``acc (cells, V)``: one
    ``index_add_`` per corner (8 passes over M rows, no (8, M, V) temporary)."""
    dims = torch.tensor(grid.dims, device=centres.device)
    g = (centres - grid.origin) / grid.voxel
    valid = ((g >= 0) & (g < (dims - 1))).all(1)
    g, values = g[valid], values[valid]
    base = torch.floor(g)
    fx, fy, fz = (g - base).unbind(1)
    base = base.long()
    flat = (base[:, 0] * dims[1] + base[:, 1]) * dims[2] + base[:, 2]
    sx, sy = grid.dims[1] * grid.dims[2], grid.dims[2]
    for wx, ox in ((1 - fx, 0), (fx, sx)):
        for wy, oy in ((1 - fy, 0), (fy, sy)):
            wxy = wx * wy
            for wz, oz in ((1 - fz, 0), (fz, 1)):
                acc.index_add_(0, flat + (ox + oy + oz), (wxy * wz)[:, None] * values)


def _finish(acc: torch.Tensor, grid: VoteGrid) -> VoteMaps:
    acc = acc.reshape(*grid.dims, 6)
    obj = acc[..., 0]
    norm = obj[..., None] + 1e-7
    return VoteMaps(grid, obj, acc[..., 1:3] / norm, acc[..., 3:6] / norm)


def canonical_vote(positions: torch.Tensor, lcc: torch.Tensor, scale: torch.Tensor,
                   weight: torch.Tensor, grid: VoteGrid, n_rot: int = 120,
                   chunk_pairs: int = 1 << 18) -> VoteMaps:
    """Vote maps of points ``positions (N, 3)`` with predicted ``lcc (N, 3)``, half extents
    ``scale (N, 3)`` and weights ``weight (N,)``, for ``n_rot`` yaws (see the module docstring).
    Computed in the dtype of ``positions``; ``chunk_pairs`` bounds the (point, yaw) pairs
    splatted at once."""
    dt, dev = positions.dtype, positions.device
    theta = torch.arange(n_rot, device=dev, dtype=torch.float64) * (2 * math.pi / n_rot)
    R = yaw_rotation(theta).to(dt)                                         # (K, 3, 3)
    trig = torch.stack([torch.cos(theta), torch.sin(theta)], 1).to(dt)     # (K, 2)
    local = (lcc * scale).to(dt)                                           # (N, 3)
    acc = torch.zeros(grid.cells, 6, dtype=dt, device=dev)
    per = max(1, chunk_pairs // n_rot)
    for i in range(0, len(positions), per):
        p, loc = positions[i:i + per], local[i:i + per]
        w = weight[i:i + per].to(dt)
        centres = p[:, None, :] - torch.einsum("kij,nj->nki", R, loc)      # (n, K, 3)
        n = len(p)
        values = torch.cat([w[:, None, None].expand(n, n_rot, 1),
                            w[:, None, None] * trig[None],
                            w[:, None, None] * scale[i:i + per, None, :].to(dt).expand(n, n_rot, 3)],
                           -1)                                             # (n, K, 6)
        _splat(acc, grid, centres.reshape(-1, 3), values.reshape(-1, 6))
    return _finish(acc, grid)


def direct_vote(positions: torch.Tensor, offset: torch.Tensor, yaw: torch.Tensor,
                scale: torch.Tensor, weight: torch.Tensor, grid: VoteGrid,
                chunk_pairs: int = 1 << 18) -> VoteMaps:
    """Vote maps of one vote per point at ``positions + offset``, with its own predicted ``yaw``
    and half extents (the regression baseline), splatted as :func:`canonical_vote` does."""
    dt = positions.dtype
    acc = torch.zeros(grid.cells, 6, dtype=dt, device=positions.device)
    w = weight.to(dt)[:, None]
    values = torch.cat([w, w * torch.cos(yaw.to(dt))[:, None], w * torch.sin(yaw.to(dt))[:, None],
                        w * scale.to(dt)], 1)
    centres = positions + offset.to(dt)
    for i in range(0, len(positions), chunk_pairs):
        _splat(acc, grid, centres[i:i + chunk_pairs], values[i:i + chunk_pairs])
    return _finish(acc, grid)


def canonical_vote_loop(positions, lcc, scale, weight, grid: VoteGrid, n_rot: int = 120) -> VoteMaps:
    """The straightforward version: a Python loop over points, each voting for its ``n_rot``
    yaws and splatting 8 corners per vote with ``np.add.at`` (float64, numpy). Same maps as
    :func:`canonical_vote` up to the summation order."""
    P = np.asarray(positions, np.float64)
    L = np.asarray(lcc, np.float64) * np.asarray(scale, np.float64)
    S = np.asarray(scale, np.float64)
    W = np.asarray(weight, np.float64)
    origin = np.asarray(grid.origin, np.float64)
    dims = np.array(grid.dims)
    acc = np.zeros((*grid.dims, 6))
    theta = np.arange(n_rot) * (2 * math.pi / n_rot)
    cos, sin = np.cos(theta), np.sin(theta)
    for i in range(len(P)):
        lx, ly, lz = L[i]
        # R_y(theta) (lx, ly, lz) = (c lx + s lz, ly, -s lx + c lz)
        centres = np.stack([P[i, 0] - (cos * lx + sin * lz), np.full(n_rot, P[i, 1] - ly),
                            P[i, 2] - (-sin * lx + cos * lz)], 1)
        g = (centres - origin) / grid.voxel
        ok = ((g >= 0) & (g < dims - 1)).all(1)
        g = g[ok]
        vals = np.concatenate([np.ones((len(g), 1)), np.stack([cos[ok], sin[ok]], 1),
                               np.repeat(S[i][None], len(g), 0)], 1) * W[i]
        base = np.floor(g).astype(np.int64)
        frac = g - base
        for cx in (0, 1):
            for cy in (0, 1):
                for cz in (0, 1):
                    wt = ((frac[:, 0] if cx else 1 - frac[:, 0]) * (frac[:, 1] if cy else 1 - frac[:, 1])
                          * (frac[:, 2] if cz else 1 - frac[:, 2]))
                    np.add.at(acc, (base[:, 0] + cx, base[:, 1] + cy, base[:, 2] + cz),
                              wt[:, None] * vals)
    acc = torch.from_numpy(acc)
    obj = acc[..., 0]
    norm = obj[..., None] + 1e-7
    return VoteMaps(grid, obj, acc[..., 1:3] / norm, acc[..., 3:6] / norm)
