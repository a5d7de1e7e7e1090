"""The spherical machinery of prin.models.so3: Wigner matrices against an independent formula,
the SOFT quadrature, FFT round trips, and the equivariance of the correlations (exact for
grid-aligned rotations, exact for band-limited inputs under any rotation, bounded for sampled
point clouds)."""
import math

import numpy as np
import pytest
import torch
from scipy.special import comb, eval_jacobi

from prin.models import so3
from prin.models.daas import daas


def d_jacobi(l, m, n, beta):
    """Wigner small-d from the Jacobi-polynomial formula (Wikipedia "Wigner D-matrix"), written
    independently of the eigenvector method of so3.wigner_d."""
    k = min(l + n, l - n, l + m, l - m)
    if k == l + n:
        a, lam = m - n, m - n
    elif k == l - n:
        a, lam = n - m, 0
    elif k == l + m:
        a, lam = n - m, 0
    else:
        a, lam = m - n, m - n
    b = 2 * l - 2 * k - a
    return ((-1) ** lam * math.sqrt(comb(2 * l - k, k + a, exact=True) / comb(k + b, b, exact=True))
            * np.sin(beta / 2) ** a * np.cos(beta / 2) ** b * eval_jacobi(k, a, b, np.cos(beta)))


def test_wigner_d_matches_the_jacobi_formula():
    beta = np.random.default_rng(0).uniform(0, np.pi, 9)
    for l in (0, 1, 2, 5, 11, 16):
        d = so3.wigner_d(l, beta)
        ref = np.stack([[d_jacobi(l, m, n, beta) for n in range(-l, l + 1)]
                        for m in range(-l, l + 1)]).transpose(2, 0, 1)
        np.testing.assert_allclose(d, ref, atol=1e-12)
    # the documented phase: d^1_{1,0}(β) = -sin β / √2
    assert so3.wigner_d(1, 0.3)[2, 1] == pytest.approx(-math.sin(0.3) / math.sqrt(2), abs=1e-15)


def test_wigner_D_is_a_representation_and_euler_angles_round_trip():
    rng = np.random.default_rng(1)
    angles = [(rng.uniform(0, 2 * np.pi), np.arccos(rng.uniform(-1, 1)), rng.uniform(0, 2 * np.pi))
              for _ in range(2)]
    R1, R2 = (so3.euler_to_matrix(*a) for a in angles)
    for R in (R1, R2, R1 @ R2, so3.euler_to_matrix(0.4, 0.0, 0.3), so3.euler_to_matrix(0.4, np.pi, 0.3)):
        np.testing.assert_allclose(so3.euler_to_matrix(*so3.matrix_to_euler(R)), R, atol=1e-12)
    for l in (1, 4, 7):
        D12 = so3.wigner_D(l, *so3.matrix_to_euler(R1 @ R2))
        np.testing.assert_allclose(D12, so3.wigner_D(l, *angles[0]) @ so3.wigner_D(l, *angles[1]),
                                   atol=1e-12)
        D = so3.wigner_D(l, *angles[0])
        np.testing.assert_allclose(D @ D.conj().T, np.eye(2 * l + 1), atol=1e-12)
    # R e_z points at polar angle β, azimuth α
    a, b = 0.7, 1.2
    np.testing.assert_allclose(so3.euler_to_matrix(a, b, 2.0) @ [0, 0, 1],
                               [np.sin(b) * np.cos(a), np.sin(b) * np.sin(a), np.cos(b)], atol=1e-15)


@pytest.mark.parametrize("b", [3, 8])
def test_quadrature_integrates_products_of_wigner_d_exactly(b):
    beta, _ = so3.soft_grid(b)
    w = so3.quadrature_weights(b)
    assert w.sum() == pytest.approx(2.0, abs=1e-13)             # ∫ sin β dβ
    for m, n in ((0, 0), (1, -1), (2, 1)):
        ls = [l for l in range(b) if l >= max(abs(m), abs(n))]
        G = np.array([[np.sum(w * so3.wigner_d(l, beta)[:, m + l, n + l]
                              * so3.wigner_d(k, beta)[:, m + k, n + k]) for k in ls] for l in ls])
        np.testing.assert_allclose(G, np.diag([2.0 / (2 * l + 1) for l in ls]), atol=1e-13)


@pytest.mark.parametrize("b,dtype,tol", [(4, torch.float64, 1e-13), (8, torch.float64, 1e-13),
                                         (8, torch.float32, 2e-5)])
def test_so3_fft_round_trip(b, dtype, tol):
    x = torch.randn(2 * b, 2 * b, 2 * b, 3, 2, dtype=dtype, generator=torch.Generator().manual_seed(b))
    spec = so3.so3_rfft(x)
    assert spec.shape == (so3.layout(b).size, 3, 2)
    y = so3.so3_rifft(spec)                    # the band-limited projection of x
    assert (so3.so3_rfft(y) - spec).abs().max() < tol
    assert (so3.so3_rifft(so3.so3_rfft(y)) - y).abs().max() < tol * 10
    # the inverse agrees with the direct Wigner-D sum on the grid
    rot = so3.so3_grid_rotations(b).reshape(-1, 3, 3)
    np.testing.assert_allclose(so3.so3_evaluate(spec[:, 1, 0], rot), y[..., 1, 0].reshape(-1).double(),
                               atol=tol * 10)


def test_so3_fft_of_a_wigner_function_is_one_coefficient():
    b, l, m, n = 5, 3, 2, -1
    rot = so3.so3_grid_rotations(b).reshape(-1, 3, 3)
    D = so3.wigner_D(l, *so3.matrix_to_euler(rot))[:, m + l, n + l]
    f = torch.tensor((D + D.conj()).real.reshape(2 * b, 2 * b, 2 * b))   # D + conj(D), real
    spec = so3.so3_rfft(f)
    lay = so3.layout(b)
    k = np.flatnonzero((lay.l == l) & (lay.m == m) & (lay.n == n))[0]
    assert spec[k].item() == pytest.approx(1.0, abs=1e-12)
    # conj(D^l_{mn}) = (-1)^{m-n} D^l_{-m,-n}: its m >= 0 coefficient is absent here (m > 0)
    others = torch.cat([spec[:k], spec[k + 1:]])
    assert others.abs().max() < 1e-12


def test_s2_fft_against_direct_evaluation():
    b = 6
    x = torch.randn(2 * b, 2 * b, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    f = so3.s2_rfft(x)
    # the band-limited projection, evaluated directly, transforms back to the same coefficients
    beta, alpha = so3.soft_grid(b)
    B, A = np.meshgrid(beta, alpha, indexing="ij")
    dirs = np.stack([np.sin(B) * np.cos(A), np.sin(B) * np.sin(A), np.cos(B)], -1).reshape(-1, 3)
    proj = torch.tensor(so3.s2_evaluate(f, dirs)).T.reshape(2 * b, 2 * b, 4)
    assert (so3.s2_rfft(proj) - f).abs().max() < 1e-12


def _layers(b, dtype=torch.float64):
    torch.manual_seed(3)
    return (so3.SO3Convolution(2, 3, b).to(dtype), so3.S2Convolution(2, 3, b).to(dtype),
            so3.S2HConvolution(2, 3, b).to(dtype))


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_grid_aligned_rotation_rotates_the_output_exactly(dtype, tol):
    """A rotation about z by s grid steps shifts every signal along α by s (any input)."""
    b, s = 5, 3
    so3c, s2c, s2h = _layers(b, dtype)
    g = torch.Generator().manual_seed(1)
    x3 = torch.randn(2 * b, 2 * b, 2 * b, 2, 2, dtype=dtype, generator=g)
    x2 = torch.randn(2 * b, 2 * b, 2, 2, dtype=dtype, generator=g)
    with torch.no_grad():
        for layer, x in ((so3c, x3), (s2c, x2), (s2h, x3)):
            y = layer(x)
            assert (layer(torch.roll(x, s, dims=1)) - torch.roll(y, s, dims=1)).abs().max() < tol


def test_arbitrary_rotation_of_band_limited_inputs_is_exact():
    """f'(Q) = f(T⁻¹Q) sampled exactly (Wigner sum) -> h'(R) = h(T⁻¹R) to float64 rounding."""
    b = 4
    so3c, s2c, _ = _layers(b)
    T = so3.euler_to_matrix(0.7, 1.1, -0.4)
    grid = so3.so3_grid_rotations(b).reshape(-1, 3, 3)
    back = np.linalg.inv(T) @ grid
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        spec = so3.so3_rfft(torch.randn(2 * b, 2 * b, 2 * b, 1, 2, dtype=torch.float64, generator=g))
        x = so3.so3_rifft(spec)
        xr = torch.tensor(so3.so3_evaluate(spec, back)).permute(2, 0, 1).reshape(x.shape)
        h = so3c(x)
        expected = so3.so3_evaluate(so3.so3_rfft(h), back)          # h(T⁻¹ R) at every grid R
        got = so3c(xr).permute(3, 4, 0, 1, 2).reshape(1, 3, -1).numpy()
        np.testing.assert_allclose(got, expected, atol=1e-12)
        # S²: f'(x) = f(T⁻¹x)
        beta, alpha = so3.soft_grid(b)
        B, A = np.meshgrid(beta, alpha, indexing="ij")
        dirs = np.stack([np.sin(B) * np.cos(A), np.sin(B) * np.sin(A), np.cos(B)], -1).reshape(-1, 3)
        f2 = so3.s2_rfft(torch.randn(2 * b, 2 * b, 1, 2, dtype=torch.float64, generator=g))
        x2 = torch.tensor(so3.s2_evaluate(f2, dirs)).permute(2, 0, 1).reshape(2 * b, 2 * b, 1, 2)
        x2r = torch.tensor(so3.s2_evaluate(f2, dirs @ np.linalg.inv(T).T)).permute(2, 0, 1).reshape(x2.shape)
        h2 = s2c(x2)
        expected = so3.so3_evaluate(so3.so3_rfft(h2), back)
        got = s2c(x2r).permute(3, 4, 0, 1, 2).reshape(1, 3, -1).numpy()
        np.testing.assert_allclose(got, expected, atol=1e-12)


def test_factorized_layers_equal_the_general_and_the_direct_correlation():
    """h(R) = Σ_k w_k f(R g_k): the fast equatorial-kernel path, the general kernel path
    (M^l = Σ w_k D^l(g_k)) and a direct evaluation at R g_k agree."""
    b = 4
    so3c, s2c, s2h = _layers(b)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2 * b, 2 * b, 2 * b, 1, 2, dtype=torch.float64, generator=g)
    kernel = so3.equatorial_rotations(b)
    grid = so3.so3_grid_rotations(b).reshape(-1, 3, 3)
    with torch.no_grad():
        spec = so3.so3_rfft(x)
        fast = so3c(x) - so3c.bias
        M = so3.kernel_matrices(so3c._weights(torch.float64), kernel, b)
        general = so3.so3_rifft(so3.so3_correlate(spec, M, b), b)
        assert (fast - general).abs().max() < 1e-13
        w = so3c._weights(torch.float64).numpy()
        direct = sum(np.einsum("co,cp->op", w[:, :, k], so3.so3_evaluate(spec[:, 0], grid @ kernel[k]))
                     for k in range(2 * b))
        np.testing.assert_allclose(fast[..., 0, :].reshape(-1, 3).T.numpy(), direct, atol=1e-13)


def test_s2h_is_the_gamma_sum():
    """s2cnn's S2HConvolution (ring kernel replicated over 2b values of γ in [-π, π)) equals the
    S² correlation of the sum over γ."""
    b = 4
    _, _, s2h = _layers(b)
    x = torch.randn(2 * b, 2 * b, 2 * b, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    _, alpha = so3.soft_grid(b)
    gam = np.linspace(-np.pi, np.pi, 2 * b, endpoint=False)
    A, G = np.meshgrid(alpha, gam, indexing="ij")
    rots = so3.euler_to_matrix(A, np.full_like(A, np.pi / 2), G).reshape(-1, 3, 3)
    w = s2h._weights(torch.float64)[..., None].expand(-1, -1, -1, 2 * b).reshape(2, 3, -1)
    with torch.no_grad():
        full = so3.so3_rifft(so3.so3_correlate(so3.so3_rfft(x), so3.kernel_matrices(w, rots, b), b), b)
        assert (full - (s2h(x) - s2h.bias)).abs().max() < 1e-12


def test_sampled_point_cloud_rotation_is_equivariant_within_a_bound():
    """DAAS of a rotated cloud is not the rotated DAAS grid (voxels are re-sampled), so the S2H
    output of a rotated cloud matches the rotated output only approximately. At b = 8, for a
    2048-point cloud and 6 random rotations, the relative L2 error measured 0.09 to 0.11;
    bound 0.2."""
    b = 8
    torch.manual_seed(6)
    layer = so3.S2HConvolution(1, 4, b).double()
    p = torch.randn(1, 2048, 3, dtype=torch.float64)
    p = p / p.norm(dim=-1, keepdim=True) * torch.rand(1, 2048, 1, dtype=torch.float64) ** (1 / 3)
    p[..., 2] *= 0.5                                                # not isotropic
    grid = so3.so3_grid_rotations(b).reshape(-1, 3, 3)
    with torch.no_grad():
        h = layer(daas(p, b).unsqueeze(-1)) - layer.bias
        spec = so3.so3_rfft(h)
        for seed in range(3):
            T = so3.euler_to_matrix(*np.random.default_rng(seed).uniform(0, 3, 3))
            hr = layer(daas(p @ torch.tensor(T).T, b).unsqueeze(-1)) - layer.bias
            expected = so3.so3_evaluate(spec[:, 0], np.linalg.inv(T) @ grid)       # (4, P)
            got = hr[..., 0, :].reshape(-1, 4).T.numpy()
            err = np.linalg.norm(got - expected) / np.linalg.norm(expected)
            assert err < 0.2, err


def test_layers_gradcheck_and_shape_errors():
    b = 2
    torch.manual_seed(0)
    layer = so3.SO3Convolution(1, 2, b).double()
    x = torch.randn(2 * b, 2 * b, 2 * b, 1, 1, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: layer(t), (x,), eps=1e-6, atol=1e-7)
    s2 = so3.S2Convolution(1, 2, b).double()
    x2 = torch.randn(2 * b, 2 * b, 1, 1, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: s2(t), (x2,), eps=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="grid-major"):
        layer(torch.randn(1, 1, 2 * b, 2 * b, 2 * b))
