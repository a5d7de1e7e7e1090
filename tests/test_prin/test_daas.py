"""DAAS (Density Aware Adaptive Sampling): the vectorised version equals a slow per-voxel loop,
and rotations about z by whole grid columns shift the grid exactly."""
import math

import numpy as np
import torch

from prin.models.daas import daas, half_widths, reference_daas, spherical_coordinates


def _cloud(n, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    p = torch.randn(2, n, 3, dtype=dtype, generator=g)
    p = p / p.norm(dim=-1, keepdim=True) * torch.rand(2, n, 1, dtype=dtype, generator=g) * 1.04
    p[0, :3] = torch.tensor([[0, 0, 0.5], [0.0, 0, -0.7], [0.3, -1e-9, 0.1]], dtype=dtype)  # poles, seam
    return p


def test_daas_equals_the_slow_reference():
    for b in (2, 3):
        p = _cloud(70, b)
        grid = daas(p, b)
        assert grid.shape == (2 * b, 2 * b, 2 * b, 2)
        for i in range(2):
            ref = reference_daas(p[i].numpy(), b)
            np.testing.assert_allclose(grid[..., i].numpy(), ref, atol=1e-12)
        assert (grid > 0).sum() > 20                   # not a vacuous comparison


def test_windows_widen_towards_the_poles_and_cover_every_column():
    b = 8
    hw = half_widths(b)
    assert np.isclose(hw.min(), hw[b - 1]) and hw[0] > 2 * b / math.pi * 0.9 and np.all(hw >= 0.5)
    # one point per row at the equator radius: every column of its row sees it where |Δα| < hw
    p = torch.tensor([[[math.cos(0.3), math.sin(0.3), 0.0]]], dtype=torch.float64) * 0.5
    g = daas(p, b)
    _, _, a = spherical_coordinates(p, b)
    row = b                                              # θ = π/2 -> β_f = b
    cols = torch.nonzero(g[row].sum((1, 2))).flatten().tolist()
    d = np.abs(a.item() - np.arange(2 * b))
    assert cols == np.flatnonzero(np.minimum(d, 2 * b - d) < hw[row]).tolist()


def test_rotation_about_z_by_whole_columns_shifts_the_grid_exactly():
    b, s = 8, 3
    p = _cloud(500, 9)[1:] * 0.8
    t = 2 * math.pi / (2 * b) * s
    Rz = torch.tensor([[math.cos(t), -math.sin(t), 0], [math.sin(t), math.cos(t), 0], [0, 0, 1]],
                      dtype=torch.float64)
    assert (daas(p @ Rz.T, b) - torch.roll(daas(p, b), s, dims=1)).abs().max() < 1e-12
