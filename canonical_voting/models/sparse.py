"""Sparse voxel convolutions in plain PyTorch (the MinkowskiEngine operations the paper uses).

A :class:`SparseTensor` is a feature matrix ``feats (N, C)`` on integer voxel coordinates
``coords (N, 4) = (batch, x, y, z)`` at a *tensor stride* ``s`` (coordinates are multiples of
``s``, in units of the input voxel). All tensors derived from one input share a
:class:`CoordinateManager`, which caches the coordinate set of every stride and the kernel maps
between them, so a U-Net computes each neighbour search once per forward pass.

Coordinates are *hashed* into one ``int64`` key each (16 bits per axis, offset by ``2**15``; the
batch index in the top bits), so a neighbour at offset ``d`` has key ``key + pack(d)`` and is
found by ``searchsorted`` in the sorted keys (no Python dictionaries, no per-voxel loops).

The three convolutions (``W`` holds one ``(C_in, C_out)`` matrix per kernel offset ``d``):

* **submanifold** (odd kernel, stride 1): outputs on the input's own sites,
  ``out[p] = sum_d in[p + s d] W_d`` over occupied ``p + s d``: the same numbers as a dense
  ``conv3d(padding=k//2)`` on the zero-filled grid, read at the occupied sites;
* **strided** (kernel 2, stride 2): output sites are the occupied cells of the coarser grid,
  ``out[q] = sum_{d in {0,1}^3} in[q + s d] W_d`` (dense ``conv3d(kernel 2, stride 2)``);
* **transposed** (kernel 2, stride 2): back onto the *stored* finer sites (MinkowskiEngine's
  ``generate_new_coords=False``), ``out[q + s d] = in[q] W_d`` (dense ``conv_transpose3d``).

Each is the same kernel-map convolution (:class:`_KernelMapConv`): the (input, output) site
pairs of every offset, found once per forward pass; one gather of the input rows of all pairs,
one matrix product per offset on contiguous slices, one scatter-add (``index_add_``), and the
transposed three in a hand-written backward. The tests check values and every gradient against
dense ``conv3d``/``conv_transpose3d``. Under autocast the products run in bf16.
"""
from __future__ import annotations

import itertools
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from shared.errors import UsageError

_BITS = 16
_SHIFT = 1 << (_BITS - 1)          # coordinates live in [-2**15, 2**15)
_MASK = (1 << _BITS) - 1
COORD_LIMIT = _SHIFT - 64
"""largest |coordinate| accepted (room for kernel offsets at the coarsest stride)"""
MAX_BATCH = 1 << 14


class SparseGridError(UsageError):
    """Coordinates outside what the hashed keys can hold."""


# ----------------------------------------------------------------------------- coordinate keys

def pack(coords: torch.Tensor) -> torch.Tensor:
    """``(N, 4)`` int64 ``(batch, x, y, z)`` -> ``(N,)`` int64 keys (order: batch, x, y, z)."""
    c = coords.long()
    return ((c[:, 0] << (3 * _BITS)) | ((c[:, 1] + _SHIFT) << (2 * _BITS))
            | ((c[:, 2] + _SHIFT) << _BITS) | (c[:, 3] + _SHIFT))


def unpack(keys: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack`."""
    return torch.stack([keys >> (3 * _BITS), ((keys >> (2 * _BITS)) & _MASK) - _SHIFT,
                        ((keys >> _BITS) & _MASK) - _SHIFT, (keys & _MASK) - _SHIFT], 1)


def _offset_keys(offsets: torch.Tensor) -> torch.Tensor:
    """Key increments of ``(K, 3)`` xyz offsets (valid while every coordinate stays in range)."""
    o = offsets.long()
    return (o[:, 0] << (2 * _BITS)) + (o[:, 1] << _BITS) + o[:, 2]


def kernel_offsets(kernel_size: int, device=None) -> torch.Tensor:
    """``(K, 3)`` offsets of a cubic kernel, x slowest: ``{-r..r}^3`` for odd sizes, ``{0,1}^3``
    for size 2 (the layout of dense ``conv3d`` weights ``W[:, :, dx, dy, dz]``)."""
    if kernel_size == 2:
        rng = (0, 1)
    elif kernel_size % 2 == 1:
        r = kernel_size // 2
        rng = range(-r, r + 1)
    else:
        raise ValueError(f"kernel size must be odd (submanifold) or 2 (strided); got {kernel_size}")
    return torch.tensor(list(itertools.product(rng, repeat=3)), dtype=torch.long, device=device)


def check_coords(coords: torch.Tensor) -> None:
    """Refuse coordinates the keys cannot hold (one clear line naming the fix)."""
    if coords.numel() == 0:
        return
    lo, hi = int(coords[:, 1:].min()), int(coords[:, 1:].max())
    if lo < -COORD_LIMIT or hi > COORD_LIMIT:
        raise SparseGridError(f"voxel coordinates span [{lo}, {hi}], beyond the +-{COORD_LIMIT} "
                              f"that the sparse backbone's hashed keys hold; raise --voxel_size "
                              f"or crop the scene")
    if int(coords[:, 0].min()) < 0 or int(coords[:, 0].max()) >= MAX_BATCH:
        raise SparseGridError(f"batch indices must lie in [0, {MAX_BATCH}); lower --batch_size")


# ----------------------------------------------------------------------------- neighbour tables

class KernelMap:
    """The (input row, output row) pairs of one convolution, grouped by kernel offset: the pairs
    of offset ``k`` are ``in_idx[s:e], out_idx[s:e]`` for each ``(k, s, e)`` in ``segments``;
    ``identity`` is the offset (if any) whose pairs are every site with itself (the centre of a
    submanifold convolution), done as one dense product."""

    def __init__(self, pairs: list, n_out: int):
        self.n_out = n_out
        self.identity = next((k for k, p in enumerate(pairs) if p is None), None)
        self.segments, ins, outs, start = [], [], [], 0
        for k, p in enumerate(pairs):
            if p is not None and len(p[0]):
                self.segments.append((k, start, start + len(p[0])))
                ins.append(p[0])
                outs.append(p[1])
                start += len(p[0])
        empty = torch.zeros(0, dtype=torch.long)
        self.in_idx = torch.cat(ins) if ins else empty
        self.out_idx = torch.cat(outs) if outs else empty

    def transposed(self, n_out: int) -> "KernelMap":
        if self.identity is not None:
            raise ValueError("only strided kernel maps are transposed")
        t = KernelMap([], n_out)
        t.segments, t.in_idx, t.out_idx = self.segments, self.out_idx, self.in_idx
        return t

    def num_pairs(self) -> int:
        return len(self.in_idx) + (self.n_out if self.identity is not None else 0)


class CoordinateManager:
    """Coordinate sets per tensor stride and the kernel maps between them (one per batch).

    ``chunk_elements`` bounds the ``(offsets, sites)`` block of one neighbour search."""

    def __init__(self, chunk_elements: int = 1 << 24):
        self.coords: dict[int, torch.Tensor] = {}
        self._keys: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self._maps: dict[tuple, KernelMap] = {}
        self.chunk_elements = chunk_elements

    def add(self, stride: int, coords: torch.Tensor) -> None:
        self.coords[stride] = coords

    def keys(self, stride: int):
        """``(keys, sorted keys, order)`` of the sites at ``stride``."""
        if stride not in self._keys:
            keys = pack(self.coords[stride])
            sorted_keys, order = torch.sort(keys)
            self._keys[stride] = (keys, sorted_keys, order)
        return self._keys[stride]

    def submanifold_map(self, stride: int, kernel_size: int) -> KernelMap:
        """Pairs of a submanifold convolution with an odd ``kernel_size`` at ``stride``: the
        neighbour at offset ``d`` of output site ``p`` is the input site with key
        ``key(p) + key(stride * d)``, looked up in the sorted keys."""
        key = ("sub", stride, kernel_size)
        if key in self._maps:
            return self._maps[key]
        keys, sorted_keys, order = self.keys(stride)
        n = len(keys)
        deltas = _offset_keys(kernel_offsets(kernel_size, keys.device) * stride)
        centre = len(deltas) // 2
        pairs: list = [None] * len(deltas)
        todo = [k for k in range(len(deltas)) if k != centre]
        per = max(1, self.chunk_elements // max(n, 1))
        for start in range(0, len(todo), per):
            ks = todo[start:start + per]
            q = keys[None, :] + deltas[ks][:, None]                       # (k, N) neighbour keys
            pos = torch.searchsorted(sorted_keys, q).clamp_max_(max(n - 1, 0))
            hit = sorted_keys[pos] == q if n else torch.zeros_like(q, dtype=torch.bool)
            for row, k in enumerate(ks):
                out_idx = hit[row].nonzero().squeeze(1)
                pairs[k] = (order[pos[row, out_idx]], out_idx)
        self._maps[key] = m = KernelMap(pairs, n)
        return m

    def downsample_map(self, stride: int) -> KernelMap:
        """Pairs of the kernel-2 stride-2 convolution from ``stride`` to ``2 * stride``: fine site
        ``p`` feeds its parent ``floor(p / 2s) * 2s`` through offset ``(p / s) mod 2``. Stores the
        coarser coordinate set (sorted by key)."""
        key = ("down", stride)
        if key in self._maps:
            return self._maps[key]
        c = self.coords[stride]
        xyz = c[:, 1:]
        parent_xyz = torch.div(xyz, 2 * stride, rounding_mode="floor") * (2 * stride)
        parity = torch.div(xyz, stride, rounding_mode="floor") % 2               # (N, 3) in {0,1}
        slot = parity[:, 0] * 4 + parity[:, 1] * 2 + parity[:, 2]                # x slowest
        uniq, parent = torch.unique(pack(torch.cat([c[:, :1], parent_xyz], 1)),
                                    return_inverse=True)
        if 2 * stride not in self.coords:
            self.coords[2 * stride] = unpack(uniq)
        order = torch.argsort(slot, stable=True)
        pairs, start = [], 0
        for count in torch.bincount(slot, minlength=8).tolist():
            idx = order[start:start + count]
            pairs.append((idx, parent[idx]))
            start += count
        self._maps[key] = m = KernelMap(pairs, len(uniq))
        return m


class _KernelMapConv(torch.autograd.Function):
    """``out[o] = sum_k sum_{(i, o) in pairs of k} feats[i] @ weight[k]``: one gather of the
    input rows of all pairs, one matrix product per offset on contiguous slices, one scatter-add
    (and the transposed three in the backward). Saves the gathered rows (memory ~ pairs x C_in,
    as MinkowskiEngine's kernel maps)."""

    @staticmethod
    def forward(ctx, feats, weight, kmap):
        gathered = feats[kmap.in_idx.to(feats.device)]                       # (P, C_in)
        y = feats.new_empty(len(gathered), weight.shape[-1])
        for k, s, e in kmap.segments:
            torch.mm(gathered[s:e], weight[k], out=y[s:e])
        if kmap.identity is not None:
            out = feats @ weight[kmap.identity]
        else:
            out = feats.new_zeros(kmap.n_out, weight.shape[-1])
        out.index_add_(0, kmap.out_idx.to(feats.device), y)
        ctx.save_for_backward(feats, weight, gathered)
        ctx.kmap = kmap
        return out

    @staticmethod
    def backward(ctx, grad_out):
        feats, weight, gathered = ctx.saved_tensors
        kmap = ctx.kmap
        grad_out = grad_out.contiguous()
        gy = grad_out[kmap.out_idx.to(grad_out.device)]                      # (P, C_out)
        grad_w = torch.zeros_like(weight)
        grad_g = gathered.new_empty(gathered.shape)
        for k, s, e in kmap.segments:
            torch.mm(gathered[s:e].T, gy[s:e], out=grad_w[k])
            torch.mm(gy[s:e], weight[k].T, out=grad_g[s:e])
        if kmap.identity is not None:
            grad_w[kmap.identity] += feats.T @ grad_out
            grad_x = grad_out @ weight[kmap.identity].T
        else:
            grad_x = torch.zeros_like(feats)
        grad_x.index_add_(0, kmap.in_idx.to(grad_x.device), grad_g)
        return grad_x, grad_w, None


def apply_kernel_map(feats: torch.Tensor, weight: torch.Tensor, kmap: KernelMap) -> torch.Tensor:
    """The sparse convolution of ``feats`` through ``kmap`` -> ``(n_out, C_out)``. Under autocast
    the inputs are cast to the autocast dtype first (bf16 products, as ``F.linear`` would)."""
    dev = feats.device.type
    if torch.is_autocast_enabled(dev):
        dt = torch.get_autocast_dtype(dev)
        feats, weight = feats.to(dt), weight.to(dt)
    elif weight.dtype != feats.dtype:
        weight = weight.to(feats.dtype)
    with torch.autocast(dev, enabled=False):
        return _KernelMapConv.apply(feats, weight, kmap)


class SparseTensor:
    """Features ``feats (N, C)`` on ``coords (N, 4)`` at tensor stride ``stride``."""

    def __init__(self, feats: torch.Tensor, coords: torch.Tensor, stride: int = 1,
                 manager: CoordinateManager | None = None):
        if feats.dim() != 2 or coords.dim() != 2 or coords.shape[1] != 4 or len(feats) != len(coords):
            raise ValueError(f"need feats (N, C) and coords (N, 4); got {tuple(feats.shape)} and "
                             f"{tuple(coords.shape)}")
        if manager is None:
            coords = coords.long()
            check_coords(coords)
            manager = CoordinateManager()
            manager.add(stride, coords)
        self.feats, self.coords, self.stride, self.manager = feats, coords, stride, manager

    def replace(self, feats: torch.Tensor) -> "SparseTensor":
        """Same sites, new features."""
        return SparseTensor(feats, self.coords, self.stride, self.manager)

    def __len__(self) -> int:
        return len(self.feats)

    def dense(self, shape: tuple[int, int, int], batch_size: int) -> torch.Tensor:
        """``(B, C, X, Y, Z)`` zero-filled grid of the coordinates divided by the stride (tests)."""
        out = self.feats.new_zeros(batch_size, self.feats.shape[1], *shape)
        c = self.coords.clone()
        c[:, 1:] = torch.div(c[:, 1:], self.stride, rounding_mode="floor")
        out[c[:, 0], :, c[:, 1], c[:, 2], c[:, 3]] = self.feats
        return out


def cat(*tensors: SparseTensor) -> SparseTensor:
    """Concatenate the features of tensors on the same sites (U-Net skip connections)."""
    first = tensors[0]
    for t in tensors[1:]:
        if t.stride != first.stride or len(t) != len(first):
            raise ValueError("sparse cat needs tensors on the same sites")
    return first.replace(torch.cat([t.feats for t in tensors], 1))


# ----------------------------------------------------------------------------- layers

class SparseConv3d(nn.Module):
    """Sparse 3D convolution: submanifold (odd ``kernel_size``, ``stride=1``), strided
    (``kernel_size=2, stride=2``) or ``transposed`` (``kernel_size=2, stride=2``, back to the
    stored finer sites). ``weight (K, C_in, C_out)``, offsets as :func:`kernel_offsets`."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 bias: bool = False, transposed: bool = False):
        super().__init__()
        if stride == 1 and kernel_size % 2 == 0:
            raise ValueError("a stride-1 sparse convolution needs an odd kernel size")
        if stride != 1 and (stride, kernel_size) != (2, 2):
            raise ValueError("strided and transposed sparse convolutions use kernel 2, stride 2")
        if transposed and stride != 2:
            raise ValueError("a transposed sparse convolution has kernel 2, stride 2")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.transposed = kernel_size, stride, transposed
        self.weight = nn.Parameter(torch.empty(kernel_size ** 3, in_channels, out_channels))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # kaiming normal, fan_out, ReLU gain (MinkowskiEngine's MinkUNet initialisation)
        std = math.sqrt(2.0 / (self.out_channels * self.weight.shape[0]))
        nn.init.normal_(self.weight, 0.0, std)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: SparseTensor) -> SparseTensor:
        m = x.manager
        if self.transposed:
            fine = x.stride // 2
            if x.stride % 2 or fine not in m.coords:
                raise ValueError(f"no stored sites at stride {fine} to transpose onto")
            kmap = m.downsample_map(fine).transposed(len(m.coords[fine]))
            stride, coords = fine, m.coords[fine]
        elif self.stride == 2:
            kmap = m.downsample_map(x.stride)
            stride = 2 * x.stride
            coords = m.coords[stride]
        else:
            kmap = (KernelMap([None], len(x)) if self.kernel_size == 1
                    else m.submanifold_map(x.stride, self.kernel_size))
            stride, coords = x.stride, x.coords
        out = apply_kernel_map(x.feats, self.weight, kmap)
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return SparseTensor(out, coords, stride, m)

    def extra_repr(self) -> str:
        kind = "transposed" if self.transposed else ("strided" if self.stride == 2 else "submanifold")
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"{kind}, bias={self.bias is not None}")


class SparseBatchNorm(nn.BatchNorm1d):
    """BatchNorm over the feature matrix (statistics over all sites of the batch)."""

    def forward(self, x: SparseTensor) -> SparseTensor:            # type: ignore[override]
        return x.replace(super().forward(x.feats))


class SparseReLU(nn.Module):
    def forward(self, x: SparseTensor) -> SparseTensor:
        return x.replace(F.relu(x.feats))
