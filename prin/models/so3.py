"""Harmonic analysis on SO(3) and the sphere in plain PyTorch (CPU and CUDA), for PRIN.

This replaces what the reference code takes from s2cnn (CUDA kernels, the removed ``torch.fft``
API) and lie_learn (Wigner tables): the SOFT grid, Wigner-d matrices, forward and inverse SO(3)
and S² Fourier transforms, and the S²→SO(3) and SO(3)→SO(3) correlations with PRIN's equatorial
kernels. Every convention below is checked in ``tests/test_prin/test_so3.py``.

Conventions
-----------
* **Rotations**: ZYZ Euler angles, ``R(α, β, γ) = Rz(α) Ry(β) Rz(γ)``, active, on column vectors,
  ``Rz(t) = [[c, -s, 0], [s, c, 0], [0, 0, 1]]``, ``Ry(t) = [[c, 0, s], [0, 1, 0], [-s, 0, c]]``.
  ``R e_z`` is the direction of polar angle β and azimuth α, so an S² signal ``f`` lifts to the
  SO(3) signal ``F(R) = f(R e_z)``.
* **SOFT grid** of bandwidth ``b`` (Kostelec & Rockmore 2008): ``β_j = π(2j+1)/(4b)``,
  ``α_k = γ_k = 2πk/(2b)``, ``j, k = 0..2b-1``. Tensors are ``[..., β, α, γ]`` (SO(3)) and
  ``[..., β, α]`` (S²), as in s2cnn.
* **Wigner small-d**: ``d^l_{mn}(β) = <l m| exp(-iβ J_y) |l n>`` with Condon–Shortley phases
  (Sakurai; ``d^1_{1,0}(β) = -sin β / √2``), real; computed by diagonalising ``J_y`` once per
  degree (tested against the Jacobi-polynomial formula).
* **Wigner D**: ``D^l_{mn}(α, β, γ) = exp(-imα) d^l_{mn}(β) exp(-inγ)``, a unitary
  representation: ``D^l(R1 R2) = D^l(R1) D^l(R2)``.
* **Fourier series** of a signal band-limited to degrees ``l < b``:
  ``f(R) = Σ_l Σ_{m,n} f̂^l_{mn} D^l_{mn}(R)``,
  ``f̂^l_{mn} = (2l+1)/(8π²) ∫ f(R) conj(D^l_{mn}(R)) dR`` (Haar measure ``sin β dα dβ dγ``, volume
  8π²), computed exactly on the SOFT grid: FFTs over α and γ, then a weighted sum over β with
  the SOFT quadrature weights ``w_j`` (``Σ_j w_j g(β_j) = ∫_0^π g(β) sin β dβ`` for the products of
  d-functions of degree < b). Signals are real, so ``f̂^l_{-m,-n} = (-1)^{m-n} conj(f̂^l_{mn})``
  and only ``m >= 0`` is stored (**half spectrum**): one complex vector per signal, degree-major,
  then ``m = 0..l``, then ``n = -l..l`` (``Σ_l (l+1)(2l+1)`` entries, :class:`Layout`).
  S² signals have ``n = 0`` only: ``f(x) = Σ_l Σ_m f̂^l_m D^l_{m0}(α, β, 0)`` stored for
  ``m = 0..l``; ``D^l_{m0}(α, β, 0) = sqrt(4π/(2l+1)) conj(Y^l_m(β, α))``.
* **Correlation** (the "convolution" of spherical CNNs): ``[f ⋆ ψ](R) = ∫ f(Q) ψ(R^{-1}Q) dQ``.
  With a kernel of point masses ``w_k`` at rotations ``g_k`` (s2cnn's kernel grids) it is
  ``h(R) = Σ_k w_k f(R g_k)``, i.e. ``ĥ^l_{mp} = Σ_n f̂^l_{mn} M^l_{pn}`` with
  ``M^l = Σ_k w_k D^l(g_k)`` (:func:`so3_correlate`). Rotating the input, ``f'(Q) = f(T^{-1}Q)``,
  rotates the output: ``h'(R) = h(T^{-1}R)``.
* **PRIN's kernels** (brief §1b): the S² equator ring and the SO(3) "equatorial" grid
  ``g_k = R(α_k, π/2, 0)``, ``α_k = 2πk/(2b)``. Then ``M^l_{pn} = d^l_{pn}(π/2) Σ_k w_k e^{-ipα_k}``:
  a fixed matrix times the DFT of the ring weights, so a layer costs ``O(b⁴ C)`` for the
  transforms and ``O(b³ C_in C_out)`` for the channel mixing instead of ``O(b⁴ C_in C_out)``
  (:class:`SO3Convolution`, :class:`S2Convolution`).

s2cnn's ``S2HConvolution`` replicates its ring kernel over 2b values of γ; on band-limited
signals that kernel has only ``n = 0`` coefficients, so the layer sees only the sum over γ of its
input (in TPAMI PRIN: the sum over the radial shells). :class:`S2HConvolution` computes it that way;
``test_s2h_is_the_gamma_sum`` checks it against the full SO(3) transform with the replicated kernel.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn as nn

# ----------------------------------------------------------------------------- rotations


def euler_to_matrix(alpha, beta, gamma) -> np.ndarray:
    """``R(α, β, γ) = Rz(α) Ry(β) Rz(γ)`` for arrays of angles -> ``(..., 3, 3)``."""
    a, b, g = (np.asarray(t, dtype=np.float64) for t in (alpha, beta, gamma))

    def rz(t):
        c, s, o, z = np.cos(t), np.sin(t), np.ones_like(t), np.zeros_like(t)
        return np.stack([c, -s, z, s, c, z, z, z, o], -1).reshape(*t.shape, 3, 3)

    def ry(t):
        c, s, o, z = np.cos(t), np.sin(t), np.ones_like(t), np.zeros_like(t)
        return np.stack([c, z, s, z, o, z, -s, z, c], -1).reshape(*t.shape, 3, 3)
    return rz(a) @ ry(b) @ rz(g)


def matrix_to_euler(R) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ZYZ angles ``(α, β, γ)`` of rotation matrices ``(..., 3, 3)``; at β = 0 or π (where only
    α ± γ is defined) γ = 0."""
    R = np.asarray(R, dtype=np.float64)
    sb = np.hypot(R[..., 0, 2], R[..., 1, 2])
    beta = np.arctan2(sb, R[..., 2, 2])
    regular = sb > 1e-9
    alpha = np.where(regular, np.arctan2(R[..., 1, 2], R[..., 0, 2]),
                     np.where(R[..., 2, 2] > 0, np.arctan2(R[..., 1, 0], R[..., 0, 0]),
                              np.arctan2(-R[..., 0, 1], R[..., 1, 1])))
    gamma = np.where(regular, np.arctan2(R[..., 2, 1], -R[..., 2, 0]), 0.0)
    return alpha, beta, gamma


# ----------------------------------------------------------------------------- grid, weights, Wigner


def soft_grid(b: int) -> tuple[np.ndarray, np.ndarray]:
    """``(β_j, α_k)`` of the SOFT grid of bandwidth ``b`` (γ uses the α values)."""
    return np.pi * (2 * np.arange(2 * b) + 1) / (4 * b), 2 * np.pi * np.arange(2 * b) / (2 * b)


def so3_grid_rotations(b: int) -> np.ndarray:
    """The rotations of the SOFT grid, ``(2b, 2b, 2b, 3, 3)`` in ``[β, α, γ]`` order."""
    beta, alpha = soft_grid(b)
    B, A, G = np.meshgrid(beta, alpha, alpha, indexing="ij")
    return euler_to_matrix(A, B, G)


@functools.lru_cache(maxsize=None)
def quadrature_weights(b: int) -> np.ndarray:
    """SOFT quadrature weights ``w_j`` (Kostelec & Rockmore): ``Σ_j w_j g(β_j) = ∫ g(β) sin β dβ``
    exactly for ``g`` a product of two Wigner-d functions of degree < b."""
    j = np.arange(2 * b)[:, None]
    k = np.arange(b)[None, :]
    s = (np.sin((2 * j + 1) * (2 * k + 1) * np.pi / (4 * b)) / (2 * k + 1)).sum(1)
    return (2.0 / b) * np.sin(np.pi * (2 * np.arange(2 * b) + 1) / (4 * b)) * s


@functools.lru_cache(maxsize=None)
def _jy_eigenvectors(l: int) -> np.ndarray:
    """Eigenvectors of ``J_y`` in the basis ``|l m>, m = -l..l``, for eigenvalues ``-l..l``."""
    m = np.arange(-l, l)
    jp = np.zeros((2 * l + 1, 2 * l + 1))
    jp[m + l + 1, m + l] = np.sqrt((l - m) * (l + m + 1.0))          # J+ |m> = c |m+1>
    jy = (jp - jp.T) / 2j
    _, v = np.linalg.eigh(jy)                                         # ascending: -l, ..., l
    return v


def wigner_d(l: int, beta) -> np.ndarray:
    """Wigner small-d matrices ``d^l(β)``: ``(..., 2l+1, 2l+1)`` float64, rows/cols ``m, n = -l..l``."""
    beta = np.asarray(beta, dtype=np.float64)
    v = _jy_eigenvectors(l)
    lam = np.arange(-l, l + 1)
    phase = np.exp(-1j * np.multiply.outer(beta, lam))                # (..., 2l+1)
    return np.einsum("ik,...k,jk->...ij", v, phase, v.conj()).real


def wigner_D(l: int, alpha, beta, gamma) -> np.ndarray:
    """Wigner D matrices ``D^l(α, β, γ)``: ``(..., 2l+1, 2l+1)`` complex128."""
    m = np.arange(-l, l + 1)
    a = np.asarray(alpha, dtype=np.float64)[..., None, None]
    g = np.asarray(gamma, dtype=np.float64)[..., None, None]
    return np.exp(-1j * m[:, None] * a) * wigner_d(l, beta) * np.exp(-1j * m[None, :] * g)


# ----------------------------------------------------------------------------- spectral layout


class Layout:
    """The half-spectrum layout of bandwidth ``b`` and the β-transform tables.

    Attributes: ``size`` (coefficients per SO(3) signal), ``s2_size`` (per S² signal),
    ``offsets[l]`` / ``s2_offsets[l]`` (start of degree ``l``), per-coefficient ``l, m, n``.
    The β transform is one batched matrix product over the ``b × 2b`` frequency pairs
    ``(m, n mod 2b)``, each with a ``(b, 2b)`` table of ``(2l+1)/2 w_j d^l_{mn}(β_j)`` (zero rows for
    ``l < max(m, |n|)`` and for the unused ``n = ±b`` column), so no gather is needed on the
    grid-sized data; ``select`` picks the valid ``(pair, l)`` rows.
    """

    def __init__(self, b: int):
        if b < 1:
            raise ValueError(f"bandwidth must be >= 1; got {b}")
        self.b = b
        N = 2 * b
        beta, _ = soft_grid(b)
        w = quadrature_weights(b)
        d = [wigner_d(l, beta) for l in range(b)]                   # l: (2b, 2l+1, 2l+1)
        self.offsets = np.cumsum([0] + [(l + 1) * (2 * l + 1) for l in range(b)])
        self.size = int(self.offsets[-1])
        self.l = np.concatenate([np.full((l + 1) * (2 * l + 1), l) for l in range(b)])
        self.m = np.concatenate([np.repeat(np.arange(l + 1), 2 * l + 1) for l in range(b)])
        self.n = np.concatenate([np.tile(np.arange(-l, l + 1), l + 1) for l in range(b)])
        # padded tables over the pairs (m = 0..b-1, n' = 0..2b-1), n = n' or n' - 2b
        fwd = np.zeros((b, N, b, N))                                    # [m, n', l, β]
        for l in range(b):
            for m in range(l + 1):
                for n in range(-l, l + 1):
                    fwd[m, n % N, l] = d[l][:, m + l, n + l]
        self.inv = fwd.transpose(0, 1, 3, 2).reshape(b * N, N, b).copy()  # [pair, β, l]
        scale = ((2 * np.arange(b) + 1) / 2.0)[:, None] * w[None, :]
        self.fwd = (fwd * scale).reshape(b * N, b, N)                       # [pair, l, β]
        self.select = (self.m * N + self.n % N) * b + self.l                # layout -> pair-row
        unselect = np.full(b * N * b, self.size)                            # pair-row -> layout
        unselect[self.select] = np.arange(self.size)
        self.unselect = unselect
        # S²: coefficients (l, m), m = 0..l, degree-major; tables [m, l, β] of (2l+1)/2 w_j d_m0
        self.s2_offsets = np.cumsum([0] + [l + 1 for l in range(b)])
        self.s2_size = int(self.s2_offsets[-1])
        s2 = np.zeros((b, b, N))
        for l in range(b):
            for m in range(l + 1):
                s2[m, l] = d[l][:, m + l, l]
        self.s2_fwd = s2 * scale[None]
        ls2 = np.concatenate([np.full(l + 1, l) for l in range(b)])
        ms2 = np.concatenate([np.arange(l + 1) for l in range(b)])
        self.s2_select = ms2 * b + ls2
        self._torch: dict = {}

    def tensors(self, device, dtype) -> dict:
        """The tables as tensors of ``dtype`` on ``device`` (cached)."""
        key = (torch.device(device), dtype)
        if key not in self._torch:
            t = lambda a: torch.as_tensor(a, dtype=dtype, device=device)     # noqa: E731
            i = lambda a: torch.as_tensor(a, dtype=torch.long, device=device)  # noqa: E731
            self._torch[key] = dict(fwd=t(self.fwd), inv=t(self.inv), select=i(self.select),
                                    unselect=i(self.unselect), s2_fwd=t(self.s2_fwd),
                                    s2_select=i(self.s2_select))
        return self._torch[key]


@functools.lru_cache(maxsize=None)
def layout(b: int) -> Layout:
    return Layout(b)


def _check_grid(x: torch.Tensor, dims: int, what: str) -> int:
    if x.dim() < dims or len(set(x.shape[:dims])) != 1 or x.shape[0] % 2:
        raise ValueError(f"{what} must start with {dims} equal even sizes 2b (a SOFT grid, "
                         f"grid-major layout); got shape {tuple(x.shape)}")
    if x.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"{what} must be float32 or float64; got {x.dtype}")
    return x.shape[0] // 2


# ----------------------------------------------------------------------------- transforms
# Grid-major layout: the grid axes come first and any batch / channel axes last, ``[β, α, γ, ...]``
# and spectra ``[K, ...]`` (as s2cnn's ``[l*m*n, batch, feature]``), so that the FFTs, the
# β-transform products and the channel mixing all read contiguous rows of batch x channels.


def so3_rfft(x: torch.Tensor) -> torch.Tensor:
    """Forward SO(3) Fourier transform of real signals ``[2b, 2b, 2b, ...]`` (β, α, γ, then any
    batch axes) -> half spectra ``[K, ...]`` complex (:class:`Layout`). Differentiable."""
    b = _check_grid(x, 3, "an SO(3) signal")
    N, lay = 2 * b, layout(b)
    tab = lay.tensors(x.device, x.dtype)
    rest = x.shape[3:]
    n = math.prod(rest)
    X = torch.fft.rfftn(x.reshape(N, N, N, n), dim=(2, 1))[:, :b]       # [β, m < b, n', n]
    X = torch.view_as_real(X).reshape(N, b * N, 2 * n).transpose(0, 1)   # [pair, β, 2n]
    S = torch.bmm(tab["fwd"], X).reshape(b * N * b, 2 * n)[tab["select"]]  # [K, 2n]
    # the FFT gave Σ f e^{-i(mα + nγ)}; the series needs Σ f e^{+i(...)} / (2b)² = conj(...)
    S = S.reshape(-1, n, 2) * x.new_tensor([1.0, -1.0]) / (N * N)
    return torch.view_as_complex(S).reshape(lay.size, *rest)


def so3_rifft(spec: torch.Tensor, b: int | None = None) -> torch.Tensor:
    """Inverse of :func:`so3_rfft`: half spectra ``[K, ...]`` -> real signals
    ``[2b, 2b, 2b, ...]`` on the SOFT grid (``b`` found from ``K`` when not given)."""
    b = b or _bandwidth_of(spec.shape[0], "size")
    lay = layout(b)
    if spec.shape[0] != lay.size:
        raise ValueError(f"a half spectrum of bandwidth {b} has {lay.size} entries; got "
                         f"{spec.shape[0]}")
    N = 2 * b
    rest = spec.shape[1:]
    n = math.prod(rest)
    S = torch.view_as_real(spec.reshape(lay.size, n))
    tab = lay.tensors(spec.device, S.dtype)
    # f = Σ G e^{-i(mα + nγ)} = N² irfft2(conj(G)): conj and N² applied on the (smaller) spectrum
    S = (S * S.new_tensor([1.0, -1.0]) * (N * N)).reshape(lay.size, 2 * n)
    S = torch.cat([S, S.new_zeros(1, 2 * n)])[tab["unselect"]].reshape(b * N, b, 2 * n)
    G = torch.bmm(tab["inv"], S)                                        # [pair, β, 2n]
    plane = G.new_zeros(N, b + 1, N, n, 2)                              # m = b stays zero
    plane[:, :b] = G.transpose(0, 1).reshape(N, b, N, n, 2)
    f = torch.fft.irfftn(torch.view_as_complex(plane), s=(N, N), dim=(2, 1))
    return f.reshape(N, N, N, *rest)


def s2_rfft(x: torch.Tensor) -> torch.Tensor:
    """Forward S² transform of real signals ``[2b, 2b, ...]`` (β, α, ...) -> ``[b(b+1)/2, ...]``
    complex coefficients ``f̂^l_m`` (``m = 0..l``, degree-major). Differentiable."""
    b = _check_grid(x, 2, "an S² signal")
    N, lay = 2 * b, layout(b)
    tab = lay.tensors(x.device, x.dtype)
    rest = x.shape[2:]
    n = math.prod(rest)
    X = torch.fft.rfft(x.reshape(N, N, n), dim=1)[:, :b]                # [β, m < b, n]
    X = torch.view_as_real(X).reshape(N, b, 2 * n).transpose(0, 1)     # [m, β, 2n]
    S = torch.bmm(tab["s2_fwd"], X).reshape(b * b, 2 * n)[tab["s2_select"]]
    S = S.reshape(-1, n, 2) * x.new_tensor([1.0, -1.0]) / N
    return torch.view_as_complex(S).reshape(lay.s2_size, *rest)


def _bandwidth_of(size: int, attr: str) -> int:
    for b in range(1, 257):
        s = layout(b).size if attr == "size" else layout(b).s2_size
        if s == size:
            return b
        if s > size:
            break
    raise ValueError(f"{size} is not the length of a half spectrum of any bandwidth")


def so3_blocks(spec: torch.Tensor, b: int):
    """Views of the degree blocks of half spectra: ``l -> [l+1 (m >= 0), 2l+1 (n), ...]``."""
    off = layout(b).offsets
    return [spec[off[l]:off[l + 1]].unflatten(0, (l + 1, 2 * l + 1)) for l in range(b)]


# ----------------------------------------------------------------------------- correlations


def so3_correlate(spec: torch.Tensor, M: list[torch.Tensor], b: int) -> torch.Tensor:
    """General correlation in the spectral domain: ``spec [K, B, C]``, ``M[l] [C, O, 2l+1, 2l+1]``
    (``Σ_k w_k D^l(g_k)`` of a kernel, :func:`kernel_matrices`) -> ``[K, B, O]`` with
    ``ĥ^l_{mp,o} = Σ_{n,c} f̂^l_{mn,c} M^l_{co,pn}``."""
    out = [torch.einsum("mnbc,copn->mpbo", blk, Ml) for blk, Ml in zip(so3_blocks(spec, b), M)]
    return torch.cat([o.flatten(0, 1) for o in out])


def kernel_wigner(rotations: np.ndarray, b: int, dtype=torch.complex128, device=None) -> list[torch.Tensor]:
    """``D^l(g_k)`` of kernel rotations ``(P, 3, 3)``: list over ``l < b`` of ``[P, 2l+1, 2l+1]``
    (the table s2cnn caches; fixed for a kernel grid)."""
    a, be, g = matrix_to_euler(rotations)
    return [torch.as_tensor(wigner_D(l, a, be, g), dtype=dtype, device=device) for l in range(b)]


def kernel_matrices(weights: torch.Tensor, rotations, b: int) -> list[torch.Tensor]:
    """``M^l = Σ_k w_k D^l(g_k)`` for ``weights [C, O, P]`` at rotations ``(P, 3, 3)`` (or their
    :func:`kernel_wigner` table) -> list over ``l < b`` of ``[C, O, 2l+1, 2l+1]`` complex (the
    general kernel of :func:`so3_correlate`)."""
    ctype = torch.complex128 if weights.dtype == torch.float64 else torch.complex64
    table = (kernel_wigner(rotations, b, ctype, weights.device) if isinstance(rotations, np.ndarray)
             else rotations)
    return [torch.einsum("cok,kpn->copn", weights.to(ctype), D.to(ctype)) for D in table]


def equatorial_rotations(b: int) -> np.ndarray:
    """PRIN's kernel grid (s2cnn's equatorial grids): ``R(α_k, π/2, 0)``, ``α_k = 2πk/(2b)``."""
    _, alpha = soft_grid(b)
    return euler_to_matrix(alpha, np.full_like(alpha, np.pi / 2), np.zeros_like(alpha))


@functools.lru_cache(maxsize=None)
def _d_half_pi(b: int) -> tuple[np.ndarray, ...]:
    return tuple(wigner_d(l, np.pi / 2) for l in range(b))


def _kernel_dft(weights: torch.Tensor, b: int) -> torch.Tensor:
    """``Σ_k w_k e^{-ipα_k}`` for ``p = -(b-1)..b-1``: ``[C, O, 2b-1]`` complex."""
    F = torch.fft.fft(weights, dim=-1)                                  # p mod 2b
    p = torch.arange(-(b - 1), b, device=weights.device) % (2 * b)
    return F[..., p]


class _SphericalConv(nn.Module):
    """Shared parameters of PRIN's ring kernels: ``kernel [C_in, C_out, 2b]`` ~ U(-1, 1), scaled
    by ``1 / sqrt(2b · C_in)`` outside the parameter (s2cnn's rule with b_in = b_out), and a
    per-channel bias initialised at 0. Layers take and return grid-major tensors
    ``[2b, 2b, (2b,) B, C]`` and run in float32/float64 (autocast off: no bf16 FFTs)."""

    def __init__(self, c_in: int, c_out: int, b: int):
        super().__init__()
        self.c_in, self.c_out, self.b = c_in, c_out, b
        self.kernel = nn.Parameter(torch.empty(c_in, c_out, 2 * b).uniform_(-1, 1))
        self.bias = nn.Parameter(torch.zeros(c_out))
        self.scaling = 1.0 / math.sqrt(2 * b * c_in)
        self._dcache: dict = {}

    def extra_repr(self) -> str:
        return f"{self.c_in}, {self.c_out}, b={self.b}"

    def _weights(self, dtype) -> torch.Tensor:
        return self.kernel.to(dtype) * self.scaling

    def _d(self, dtype, device) -> tuple[torch.Tensor, ...]:
        key = (dtype, torch.device(device))
        if key not in self._dcache:
            self._dcache[key] = tuple(torch.as_tensor(m, dtype=dtype, device=device)
                                      for m in _d_half_pi(self.b))
        return self._dcache[key]

    def _check(self, x: torch.Tensor, name: str, dims: int) -> torch.Tensor:
        N = 2 * self.b
        if x.dim() != dims + 2 or tuple(x.shape[:dims]) != (N,) * dims or x.shape[-1] != self.c_in:
            grid = ", ".join([str(N)] * dims)
            raise ValueError(f"{name}({self.c_in}, b={self.b}) expects [{grid}, B, {self.c_in}] "
                             f"(grid-major); got {tuple(x.shape)}")
        return x if x.dtype in (torch.float32, torch.float64) else x.float()


class SO3Convolution(_SphericalConv):
    """SO(3) → SO(3) correlation with the equatorial kernel ``g_k = R(α_k, π/2, 0)``:
    ``h_o(R) = bias_o + Σ_{c,k} w_{cok} f_c(R g_k)`` on band-limited signals.
    ``[2b, 2b, 2b, B, C_in] -> [2b, 2b, 2b, B, C_out]``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            x = self._check(x, "SO3Convolution", 3)
            y = so3_rifft(self.mix(so3_rfft(x)), self.b)
            return y + self.bias.to(y.dtype)

    def mix(self, spec: torch.Tensor) -> torch.Tensor:
        """The correlation in the spectral domain: ``[K, B, C_in] -> [K, B, C_out]``,
        ``ĥ^l_{mp,o} = DFT(w)_{co}(p) Σ_n f̂^l_{mn,c} d^l_{pn}(π/2)`` summed over ``c``."""
        b, B = self.b, spec.shape[1]
        kd = _kernel_dft(self._weights(spec.real.dtype), b).permute(2, 0, 1)   # [2b-1 (p), C, O]
        dm = self._d(spec.dtype, spec.device)
        out = []
        for l, blk in enumerate(so3_blocks(spec, b)):                   # [l+1, 2l+1, B, C]
            g = dm[l] @ blk.reshape(l + 1, 2 * l + 1, -1)               # Σ_n d_pn(π/2) f̂_mn
            g = g.reshape(l + 1, 2 * l + 1, B, self.c_in).transpose(0, 1)
            h = torch.bmm(g.reshape(2 * l + 1, -1, self.c_in), kd[b - 1 - l:b + l])
            out.append(h.reshape(2 * l + 1, l + 1, B, self.c_out).transpose(0, 1)
                       .reshape(-1, B, self.c_out))
        return torch.cat(out)


class S2Convolution(_SphericalConv):
    """S² → SO(3) correlation with the equator-ring kernel ``x_k = (α_k, β = π/2)``:
    ``h_o(R) = bias_o + Σ_{c,k} w_{cok} f_c(R x_k)``. ``[2b, 2b, B, C_in] -> [2b, 2b, 2b, B, C_out]``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return self._correlate(self._check(x, "S2Convolution", 2))

    def _correlate(self, x):
        b = self.b
        lay = layout(b)
        f = s2_rfft(x)                                                  # [b(b+1)/2, B, C]
        kd = _kernel_dft(self._weights(x.dtype), b)                     # [C, O, 2b-1]
        dm = self._d(x.dtype, x.device)
        out = []
        for l in range(b):
            fl = f[lay.s2_offsets[l]:lay.s2_offsets[l + 1]]             # [l+1, B, C]
            a = dm[l][:, l] * kd[..., b - 1 - l:b + l]                  # d_p0(π/2) DFT(w)(p)
            out.append(torch.einsum("mbc,cop->mpbo", fl, a).flatten(0, 1))
        y = so3_rifft(torch.cat(out), b)
        return y + self.bias.to(y.dtype)


class S2HConvolution(S2Convolution):
    """TPAMI PRIN's first layer (the s2cnn fork's ``S2HConvolution``): an SO(3)-shaped grid whose
    γ slot holds the radial shells, correlated with the equator-ring kernel replicated over 2b
    values of γ. Only the ``n = 0`` (γ-constant) part of the input survives, so it equals the S²
    correlation of the sum over γ. ``[2b, 2b, 2b, B, C_in] -> [2b, 2b, 2b, B, C_out]``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return self._correlate(self._check(x, "S2HConvolution", 3).sum(2))


# ----------------------------------------------------------------------------- direct evaluation


def _numpy(spec) -> np.ndarray:
    return spec.detach().cpu().numpy() if torch.is_tensor(spec) else np.asarray(spec)


def so3_evaluate(spec, rotations) -> np.ndarray:
    """Evaluate band-limited signals from their half spectra at arbitrary rotations, directly
    (a Wigner-D sum, no FFT): ``spec [K, ...]`` (numpy or torch) and ``rotations (P, 3, 3)`` ->
    ``[..., P]`` float64. ``f(R) = Re Σ_l Σ_{m>=0, n} c_m f̂^l_{mn} D^l_{mn}(R)``, ``c_0 = 1``,
    ``c_m = 2`` (the ``m < 0`` terms are the conjugates of the ``m > 0`` ones)."""
    spec = _numpy(spec)
    b = _bandwidth_of(spec.shape[0], "size")
    a, be, g = matrix_to_euler(rotations)
    off = layout(b).offsets
    out = 0.0
    for l in range(b):
        D = wigner_D(l, a, be, g)[:, l:, :]                               # m >= 0: (P, l+1, 2l+1)
        c = np.where(np.arange(l + 1) == 0, 1.0, 2.0)
        blk = spec[off[l]:off[l + 1]].reshape(l + 1, 2 * l + 1, -1)
        out = out + np.einsum("mnx,pmn->xp", blk * c[:, None, None], D).real
    return out.reshape(*spec.shape[1:], -1)


def s2_evaluate(spec, directions) -> np.ndarray:
    """Evaluate band-limited S² signals from their coefficients ``[b(b+1)/2, ...]`` at the
    directions ``(P, 3)`` -> ``[..., P]`` float64, directly."""
    spec = _numpy(spec)
    b = _bandwidth_of(spec.shape[0], "s2")
    v = np.asarray(directions, dtype=np.float64)
    beta = np.arccos(np.clip(v[:, 2] / np.linalg.norm(v, axis=1), -1, 1))
    alpha = np.arctan2(v[:, 1], v[:, 0])
    off = layout(b).s2_offsets
    out = 0.0
    for l in range(b):
        D = wigner_D(l, alpha, beta, np.zeros_like(beta))[:, l:, l]      # (P, l+1): D_m0, m >= 0
        c = np.where(np.arange(l + 1) == 0, 1.0, 2.0)
        blk = spec[off[l]:off[l + 1]].reshape(l + 1, -1)
        out = out + np.einsum("mx,pm->xp", blk * c[:, None], D).real
    return out.reshape(*spec.shape[1:], -1)
