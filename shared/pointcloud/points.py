"""Point-cloud operations shared by the 3D papers: exact, batched, at library speed on CPU and GPU.

Layout: points and features are channels-last, ``xyz (B, N, 3)``, ``features (B, N, C)``;
index tensors are ``int64`` and index the ``N`` axis of their batch element.

* :func:`farthest_point_sample` — iterative FPS (PointNet++) from a given or seeded start index.
* :func:`ball_query` — PointNet++ semantics: the *first* ``nsample`` point indices (in index order)
  whose squared distance to the centre is ``<= radius**2``, padded with the first one found.
* :func:`knn` — k nearest neighbours sorted by (distance, index).
* :func:`gather_points`, :func:`group_points` — indexing and PointNet++ grouping (differentiable).
* :func:`three_interpolate` — inverse-distance interpolation over the 3 nearest known points
  (PointNet++ feature propagation; differentiable in the features and both point sets).
* rotations: :func:`random_rotation` (uniform on SO(3)), :func:`yaw_rotation` and
  :func:`random_yaw_rotation` (about the up axis y), :func:`rotate`; :func:`normalize_unit_sphere`.

**One rule, every backend.** Squared distances are ``(dx*dx + dy*dy) + dz*dz`` computed in the
input dtype (float32 stays float32), exactly as the slow loop references at the end of this file
(``reference_*``) compute them. Neighbours are ordered by that distance, then by index; the ball
test is ``d <= radius**2`` with ``radius**2`` rounded to the input dtype; a short ball is padded
with its first (lowest) index, an empty one gets its nearest point; FPS starts at the given
index, each next sample maximises the distance to the chosen set and equal maxima go to the lowest
index (once every distinct point is chosen all distances are 0 and index 0 repeats). Every backend
returns bit-for-bit what the references return; the tests check it on random, duplicated and grid
points, batches of different clouds and both float dtypes.

**Backends** (``backend=`` on :func:`knn`, :func:`ball_query`, :func:`three_interpolate`,
:func:`farthest_point_sample`; ``"auto"`` picks one per call):

* ``"open3d"`` (kNN, ball query) — ``open3d.core.nns.NearestNeighborSearch`` (nanoflann KD-tree
  for kNN, hash grid for fixed radius). ``"scipy"`` — ``scipy.spatial.cKDTree``. Both only
  *propose candidates*: a library computes distances in its own arithmetic (float32 or float64)
  and orders ties its own way, so we recompute each candidate's distance with the rule's formula
  and sort by (distance, index). For kNN the library returns k+1 neighbours; the answer is
  provably complete when the (k+1)-th library distance, shrunk by a bound on both arithmetics'
  rounding, still exceeds our k-th distance; rows that fail (ties or near-ties at the k-th place,
  e.g. duplicated points) are retried with 4k+16 candidates and then answered by the dense torch
  code. For the ball query the library runs a radius search with the radius enlarged by that
  bound, reversed: the centres are indexed and the points are the queries, in slices of the
  index range, so pairs come out in point-index order and only need a stable radix sort by
  centre, and a centre leaves the index once it holds ``nsample`` points (the remaining slices
  are not searched for it). Pairs whose library distance lies within the bound of the border are
  re-tested with our formula. A batch is a loop over its clouds, one library index each:
  open3d.core.nns has no batched search, and shifting the clouds apart into one float64 index
  (tried) measured up to 2x slower than the loop. The library searches use every core (open3d's
  own threads, cKDTree ``workers=-1``); our post-processing is numpy on one.
* ``"numpy"`` (FPS) — exact bucket FPS: points are cut into 64-point spatial blocks (Morton
  order) under a 16-ary hierarchy of bounding boxes; a new sample only updates the blocks its
  distance can still lower, and samples are taken in runs from the 256 points of largest
  distance (found in the 257 blocks of largest max; a run lasts while its best beats the 257-th),
  so most steps touch 256 numbers instead of N. Loops over the clouds of a batch. open3d's own
  FPS (legacy ``farthest_point_down_sample``) is no backend: it returns the chosen *points* in
  input order, with repeats collapsed, not indices in selection order, and compares float64
  distances; making it exact would cost as much as this code. The bench times it as a library.
* ``"torch"`` — pure PyTorch, device-agnostic, batched; kNN/ball query use ``method``: "dense"
  (chunks of queries against all points, bounded memory) or "grid" (cubic cells, only the 27
  cells around a query are scanned), "auto" picks the grid when ``S*N > 2**22``. FPS is the
  dense batched loop over samples (one fused update of all clouds per sample).
* ``"auto"``: CUDA tensors (and dtypes other than float32/float64) -> ``"torch"``, with no copy
  to the host. On the CPU: kNN and ball query -> ``"torch"`` when ``B*S*N <= 2**14`` (library
  call overhead dominates there), else ``"open3d"`` (``"scipy"`` if open3d is not installed);
  FPS -> ``"numpy"`` when its cost model, ``B * 14 us`` per sample (clouds one at a time), is
  below the batched torch loop's ``26 us + 1.9 ns * B * N`` per sample, else ``"torch"``: a single
  cloud always goes to numpy, small clouds in a batch (8 x 2048) to torch. The constants were
  measured on the 2-core development machine; ``make bench-points`` times every backend alone
  at 2K-1M points, batch 1 and 8 (shared/pointcloud/results/bench_points.md).

Passing ``method="dense"``/``"grid"`` with ``backend="auto"`` selects the torch backend. Library
backends run on the CPU; given CUDA tensors explicitly they copy them to the host and back.
Ops returning indices are not differentiable (by design); the distances of :func:`knn`,
:func:`gather_points`, :func:`group_points` and :func:`three_interpolate` carry gradients.
"""
from __future__ import annotations

import math

import numpy as np
import torch

# Elements of one (chunk, N) distance block; 2**24 floats = 64 MiB in float32.
DEFAULT_CHUNK_ELEMENTS = 2 ** 24

BACKENDS = ("auto", "open3d", "scipy", "torch")
FPS_BACKENDS = ("auto", "numpy", "torch")
# auto on the CPU (crossovers measured on a 2-core EPYC, torch on one thread):
_AUTO_TORCH_NEIGHBOUR_PAIRS = 2 ** 14   # kNN / ball query: torch up to B*S*N pairs, then a library
# FPS cost per sample: numpy ~ B * 14 us (one cloud at a time), torch ~ 26 us + 1.9 ns * B * N
_FPS_NUMPY_US, _FPS_TORCH_US, _FPS_TORCH_NS_PER_POINT = 14.0, 26.0, 1.9

# ----------------------------------------------------------------------------- helpers

def _check_xyz(name: str, xyz: torch.Tensor) -> None:
    if xyz.dim() != 3 or xyz.shape[-1] != 3:
        raise ValueError(f"{name} must have shape (B, N, 3); got {tuple(xyz.shape)}")
    if not xyz.is_floating_point():
        raise ValueError(f"{name} must be a floating tensor; got {xyz.dtype}")
    finite = np.isfinite(xyz.detach().numpy()).all() if xyz.device.type == "cpu" and \
        xyz.dtype in (torch.float32, torch.float64) else torch.isfinite(xyz).all()
    if not finite:
        raise ValueError(f"{name} contains NaN or inf coordinates; clean the input "
                         "(e.g. drop invalid points) before calling point operations")


def _check_pair(query: torch.Tensor, ref: torch.Tensor) -> None:
    _check_xyz("query points", query)
    _check_xyz("reference points", ref)
    if query.shape[0] != ref.shape[0]:
        raise ValueError(f"batch sizes differ: query {query.shape[0]} vs reference {ref.shape[0]}")
    if ref.shape[1] == 0:
        raise ValueError("the reference cloud has no points (N = 0)")


def square_distance(query: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances ``(B, S, N)`` between ``query (B, S, 3)`` and ``ref (B, N, 3)``.

    Computed as ``(dx*dx + dy*dy) + dz*dz`` (exact order documented so the references match);
    use it for small blocks, :func:`knn`/:func:`ball_query` chunk it for you."""
    d = query[..., :, None, 0] - ref[..., None, :, 0]
    out = d * d
    d = query[..., :, None, 1] - ref[..., None, :, 1]
    out += d * d
    d = query[..., :, None, 2] - ref[..., None, :, 2]
    out += d * d
    return out


def _chunk_rows(batch: int, n_ref: int, chunk_elements: int | None) -> int:
    budget = chunk_elements or DEFAULT_CHUNK_ELEMENTS
    return max(1, budget // max(1, batch * n_ref))


def gather_points(points: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``points (B, N, C)`` indexed by ``idx (B, *S)`` -> ``(B, *S, C)`` (differentiable)."""
    if points.dim() != 3:
        raise ValueError(f"points must have shape (B, N, C); got {tuple(points.shape)}")
    if idx.shape[0] != points.shape[0]:
        raise ValueError(f"batch sizes differ: points {points.shape[0]} vs idx {idx.shape[0]}")
    B, _, C = points.shape
    flat = idx.reshape(B, -1).long()                                     # (B, S*)
    out = torch.gather(points, 1, flat[..., None].expand(-1, -1, C))    # (B, S*, C)
    return out.reshape(*idx.shape, C)


# ----------------------------------------------------------------------------- backend choice

_OPEN3D = None


def _open3d():
    """The ``open3d.core`` module, or None when open3d is not installed (imported once, lazily)."""
    global _OPEN3D
    if _OPEN3D is None:
        try:
            import open3d.core as o3c                                  # noqa: PLC0415
            _OPEN3D = o3c
        except ImportError:                                            # pragma: no cover
            _OPEN3D = False
    return _OPEN3D or None


def _neighbour_backend(backend: str, method: str, x: torch.Tensor, pairs: int) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}; got {backend!r}")
    if method not in ("auto", "dense", "grid"):
        raise ValueError(f"method must be 'auto', 'dense' or 'grid'; got {method!r}")
    if backend == "open3d" and _open3d() is None:
        raise ImportError("backend='open3d' needs open3d (pip install open3d-cpu)")
    if backend != "auto":
        return backend
    if (method != "auto" or x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64)
            or pairs <= _AUTO_TORCH_NEIGHBOUR_PAIRS):
        return "torch"
    return "open3d" if _open3d() is not None else "scipy"


def _fps_backend(backend: str, x: torch.Tensor) -> str:
    if backend not in FPS_BACKENDS:
        raise ValueError(f"FPS backend must be one of {FPS_BACKENDS}; got {backend!r}")
    if backend == "numpy" and x.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"backend='numpy' needs float32 or float64 points; got {x.dtype}")
    if backend != "auto":
        return backend
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64):
        return "torch"
    B, N = x.shape[:2]
    numpy_us = B * _FPS_NUMPY_US
    torch_us = _FPS_TORCH_US + _FPS_TORCH_NS_PER_POINT * 1e-3 * B * N
    return "numpy" if numpy_us < torch_us else "torch"


def _host(x: torch.Tensor) -> np.ndarray:
    """A CPU numpy view (copy only when needed) of a tensor, without its autograd history."""
    return x.detach().cpu().contiguous().numpy()


# ----------------------------------------------------------------------------- sampling

def farthest_point_sample(xyz: torch.Tensor, npoint: int, start=None,
                          generator: torch.Generator | None = None,
                          backend: str = "auto") -> torch.Tensor:
    """Farthest point sampling: ``xyz (B, N, 3)`` -> indices ``(B, npoint)``.

    Args:
        npoint: samples per cloud, ``1 <= npoint <= N``.
        start: first index per cloud: ``None`` (random, drawn from ``generator`` on the CPU, so a
            seeded generator gives the same samples on any device), an ``int``, or a ``(B,)``
            tensor.
        backend: "auto", "numpy" (exact bucket FPS on the CPU) or "torch" (dense batched loop,
            any device); all give identical results.
    Each next sample maximises the distance to the chosen set (ties: lowest index). Once every
    distinct point is chosen (duplicates), the remaining distances are 0 and index 0 repeats.
    """
    _check_xyz("xyz", xyz)
    B, N, _ = xyz.shape
    if not 1 <= npoint <= N:
        raise ValueError(f"farthest_point_sample needs 1 <= npoint <= N; got npoint={npoint} "
                         f"for clouds of N={N} points (pad or resample the clouds first)")
    if start is None:
        start = torch.randint(N, (B,), generator=generator)
    elif isinstance(start, int):
        start = torch.full((B,), start, dtype=torch.long)
    start = torch.as_tensor(start, dtype=torch.long).reshape(B).cpu()
    if ((start < 0) | (start >= N)).any():
        raise ValueError(f"start indices must lie in [0, {N}); got {start.tolist()}")
    if _fps_backend(backend, xyz) == "torch":
        return _fps_torch(xyz, npoint, start.to(xyz.device))
    pts = _host(xyz)
    out = np.stack([_fps_bucket(pts[b], npoint, int(start[b])) for b in range(B)])
    return torch.from_numpy(out).to(xyz.device)


def _fps_torch(xyz, npoint, start):
    B, N, _ = xyz.shape
    batch = torch.arange(B, device=xyz.device)
    x, y, z = xyz.transpose(1, 2).contiguous().unbind(1)                     # 3 x (B, N)
    idx = torch.empty(B, npoint, dtype=torch.long, device=xyz.device)
    min_d = torch.full((B, N), math.inf, dtype=xyz.dtype, device=xyz.device)
    d, t = torch.empty_like(min_d), torch.empty_like(min_d)
    far = start
    for i in range(npoint):
        idx[:, i] = far
        c = xyz[batch, far][:, :, None]                                      # (B, 3, 1)
        # d = (dx*dx + dy*dy) + dz*dz as in square_distance (no fused multiply-add)
        torch.sub(x, c[:, 0], out=t)
        torch.mul(t, t, out=d)
        torch.sub(y, c[:, 1], out=t)
        d.add_(t * t)
        torch.sub(z, c[:, 2], out=t)
        d.add_(t * t)
        torch.minimum(min_d, d, out=min_d)
        far = min_d.argmax(-1)                                               # first max on ties
    return idx


# Exact bucket FPS (numpy, one cloud). Points live in blocks of _FPS_BLOCK (Morton order; inside a
# block by index), each block with its bounding box and the max of its points' current distance
# ``m`` to the chosen set; blocks form a _FPS_FANOUT-ary hierarchy of boxes. A sample is
# "applied" to a block only if the block's box can come closer to it than the block's max m.
# Samples are taken in runs: after applying the pending samples, the _FPS_CANDIDATES points with
# the largest m are the candidates and tau is the next largest m (both found among the points of
# the _FPS_CANDIDATES + 1 blocks of largest max, so a run costs no O(N) pass). While the best
# candidate (first maximum in index order) beats tau strictly, it is the global FPS choice (every
# other point has m <= tau, and m only decreases): take it and update only the candidates' m.
# Then apply the run to the blocks and start a new run. m is always computed with the rule's
# formula in the input dtype, so the choices equal the reference's bit for bit; the pruning tests
# are conservative (float64 boxes, lower bounds shrunk by 1e-6 relative, far above both dtypes'
# rounding).
_FPS_BLOCK = 64
_FPS_FANOUT = 16
_FPS_CANDIDATES = 256


def _morton_order(p: np.ndarray) -> np.ndarray:
    lo = p.min(0)
    ext = float((p.max(0) - lo).max())
    ext = ext if ext > 0 and math.isfinite(ext) else 1.0
    q = np.clip(np.nan_to_num((p - lo) / ext * 1024), 0, 1023).astype(np.uint64)

    def spread(v):                                       # 10 bits -> every third of 30 bits
        v = (v | (v << np.uint64(16))) & np.uint64(0x030000FF)
        v = (v | (v << np.uint64(8))) & np.uint64(0x0300F00F)
        v = (v | (v << np.uint64(4))) & np.uint64(0x030C30C3)
        return (v | (v << np.uint64(2))) & np.uint64(0x09249249)
    code = spread(q[:, 0]) | (spread(q[:, 1]) << np.uint64(1)) | (spread(q[:, 2]) << np.uint64(2))
    return np.argsort(code, kind="stable")


def _pad_rows(a: np.ndarray, n: int, value) -> np.ndarray:
    if len(a) == n:
        return a
    return np.concatenate([a, np.full((n - len(a),) + a.shape[1:], value, a.dtype)])


def _fps_bucket(xyz: np.ndarray, npoint: int, start: int, block: int = _FPS_BLOCK,
                fanout: int = _FPS_FANOUT, n_cand: int = _FPS_CANDIDATES) -> np.ndarray:
    """Exact FPS of one cloud ``xyz (N, 3)`` (float32/float64) -> ``(npoint,)`` int64."""
    N, dt = xyz.shape[0], xyz.dtype
    order = _morton_order(xyz.astype(np.float64))
    nb = -(-N // block)
    idx = _pad_rows(order, nb * block, N).reshape(nb, block)
    idx.sort(axis=1)                                    # lowest index first inside a block
    real = idx < N
    pts = xyz[np.where(real, idx, order[0])]                                 # (nb, block, 3)
    X = np.ascontiguousarray(pts.transpose(2, 0, 1))                         # (3, nb, block)
    p64 = pts.astype(np.float64)
    los = [np.where(real[..., None], p64, np.inf).min(1)]                    # per level (n, 3)
    his = [np.where(real[..., None], p64, -np.inf).max(1)]
    while len(los[-1]) > 4 * fanout:
        n = -(-len(los[-1]) // fanout) * fanout
        los.append(_pad_rows(los[-1], n, np.inf).reshape(-1, fanout, 3).min(1))
        his.append(_pad_rows(his[-1], n, -np.inf).reshape(-1, fanout, 3).max(1))
    M = np.where(real, np.inf, -np.inf).astype(dt)                          # m; -inf = padding
    flat_m, flat_i, flat_x = M.reshape(-1), idx.reshape(-1), X.reshape(3, -1)
    bmax = np.full(nb, np.inf)
    tiny = 1e-40 if dt == np.float32 else 1e-300        # underflow slack of the rule's formula
    shrink = 1.0 - 1e-6
    out = np.empty(npoint, dtype=np.int64)
    out[0], ns, pending = start, 1, [start]
    while ns < npoint:
        # apply the pending samples to every block they may change
        C = xyz[np.asarray(pending)]
        C64 = C.astype(np.float64)
        maxima = [bmax]
        for lvl in range(1, len(los)):
            maxima.append(_pad_rows(maxima[-1], len(los[lvl]) * fanout, -np.inf)
                          .reshape(-1, fanout).max(1))
        top = len(los) - 1
        cc = np.repeat(np.arange(len(C)), len(los[top]))
        nn = np.tile(np.arange(len(los[top])), len(C))
        for lvl in range(top, -1, -1):
            if lvl < top:
                cc = np.repeat(cc, fanout)
                nn = (nn[:, None] * fanout + np.arange(fanout)).reshape(-1)
                keep = nn < len(los[lvl])
                cc, nn = cc[keep], nn[keep]
            c = C64[cc]
            g = np.maximum(los[lvl][nn] - c, 0.0)
            g += np.maximum(c - his[lvl][nn], 0.0)
            g *= g
            keep = g.sum(1) * shrink - tiny < maxima[lvl][nn]
            cc, nn = cc[keep], nn[keep]
        if len(nn):
            o = np.argsort(nn, kind="stable")
            nn, cc = nn[o], cc[o]
            step = max(1, (1 << 20) // block)
            for s0 in range(0, len(nn), step):
                bb, ci = nn[s0:s0 + step], cc[s0:s0 + step]
                t = X[:, bb, :] - C.T[:, ci, None]                           # (3, pairs, block)
                t *= t
                d = t[0] + t[1]
                d += t[2]
                ub, first = np.unique(bb, return_index=True)
                dm = np.minimum.reduceat(d, first, axis=0)
                np.minimum(M[ub], dm, out=dm)
                M[ub] = dm
                bmax[ub] = dm.max(1)
        pending = []
        # a run of samples among the n_cand points of largest m; they lie in the n_cand + 1
        # blocks of largest max, and every other point is <= the (n_cand+1)-th value there
        if n_cand + 1 >= nb:
            cpos = np.arange(flat_m.size)
        else:
            top_blocks = np.argpartition(bmax, nb - n_cand - 1)[nb - n_cand - 1:]
            cpos = (top_blocks[:, None] * block + np.arange(block)).reshape(-1)
        vals = flat_m[cpos]
        if vals.size == flat_m.size and n_cand + 1 >= vals.size:   # all points are candidates
            tau = -np.inf
        else:
            tau = np.partition(vals, vals.size - n_cand - 1)[vals.size - n_cand - 1]
        cpos = cpos[vals > tau]
        if len(cpos) == 0:                               # more than n_cand points tie at the top
            top_m = bmax.max()
            if top_m == 0:                               # every distinct point chosen: index 0
                out[ns:] = 0
                break
            j = int(flat_i[flat_m == top_m].min())
            out[ns], ns, pending = j, ns + 1, [j]
            continue
        cidx = flat_i[cpos]
        o = np.argsort(cidx, kind="stable")
        cpos, cidx = cpos[o], cidx[o]
        cx, cm = flat_x[:, cpos], flat_m[cpos]
        t, d = np.empty_like(cx), np.empty_like(cm)
        while ns < npoint:
            a = int(cm.argmax())
            if not cm[a] > tau:
                break
            j = int(cidx[a])
            out[ns], ns = j, ns + 1
            pending.append(j)
            np.subtract(cx, cx[:, a:a + 1], out=t)
            np.multiply(t, t, out=t)
            np.add(t[0], t[1], out=d)
            d += t[2]
            np.minimum(cm, d, out=cm)
        flat_m[cpos] = cm
        ub = np.unique(cpos // block)
        bmax[ub] = M[ub].max(1)
    return out


# ----------------------------------------------------------------------------- torch neighbourhoods
# Two exact torch back ends with identical results: "dense" scans every reference point for a
# chunk of queries; "grid" buckets the reference points into cubic cells (sorted cell keys) and
# scans only the 27 cells around each query, which is what makes 100K-point scenes cheap. "auto"
# picks the grid when S*N is large.

_AUTO_GRID_PAIRS = 2 ** 22
_NEIGHBOUR_CELLS = torch.tensor([[i, j, k] for i in (-1, 0, 1) for j in (-1, 0, 1)
                                 for k in (-1, 0, 1)])                    # (27, 3)


def _method(method: str, S: int, N: int) -> str:
    if method not in ("auto", "dense", "grid"):
        raise ValueError(f"method must be 'auto', 'dense' or 'grid'; got {method!r}")
    if method == "auto":
        return "grid" if S * N > _AUTO_GRID_PAIRS else "dense"
    return method


class _Grid:
    """Reference points bucketed into cubes of side ``cell`` (per-batch origin at the minimum).

    ``candidates(query)`` lists, in bounded chunks of queries, every reference point in the 27
    cells around each query: all points within distance ``cell`` of it (and more)."""

    def __init__(self, ref: torch.Tensor, cell: float):
        B, N, _ = ref.shape
        self.ref, self.N, self.cell = ref, N, cell
        self.lo = ref.amin(1, keepdim=True)                                  # (B, 1, 3)
        ijk = self._cell_of(ref)                                             # (B, N, 3)
        self.dims = ijk.amax((0, 1)) + 3                  # cells -1 .. max+1 fit after the +1 shift
        self.per_batch = math.prod(int(v) for v in self.dims)             # Python int: no overflow
        if self.per_batch * B >= 2 ** 62:
            raise OverflowError("grid too fine for int64 cell keys")
        keys = self._key(ijk) + torch.arange(B, device=ref.device)[:, None] * self.per_batch
        self.keys, self.order = keys.reshape(-1).sort(stable=True)           # order: b*N + n

    def _cell_of(self, p):
        # clamped before the int64 cast: far-away queries land outside the grid, never wrap
        return torch.floor((p - self.lo) / self.cell).clamp(-2.0 ** 40, 2.0 ** 40).long()

    def _key(self, ijk):
        d = self.dims.to(ijk.device)
        return ((ijk[..., 0] + 1) * d[1] + ijk[..., 1] + 1) * d[2] + ijk[..., 2] + 1

    def candidates(self, query: torch.Tensor, budget: int):
        """Yield ``(s0, s1, qid, cand)`` per chunk of query rows ``[s0, s1)`` of the flattened
        ``(B*S)`` queries: ``qid (T,)`` local query row, ``cand (T,)`` reference index in [0, N)."""
        B, S, _ = query.shape
        dev = query.device
        nb = self._cell_of(query)[:, :, None, :] + _NEIGHBOUR_CELLS.to(dev)  # (B, S, 27, 3)
        d = self.dims.to(dev)
        valid = ((nb >= -1) & (nb <= d - 2)).all(-1)                         # (B, S, 27)
        key = self._key(torch.maximum(torch.minimum(nb, d - 2), torch.full_like(nb, -1)))
        key = key + torch.arange(B, device=dev)[:, None, None] * self.per_batch
        start = torch.searchsorted(self.keys, key.reshape(-1), side="left")
        end = torch.searchsorted(self.keys, key.reshape(-1), side="right")
        cnt = torch.where(valid.reshape(-1), end - start, 0).reshape(B * S, 27)
        start = start.reshape(B * S, 27)
        per_query = cnt.sum(-1)
        cum = per_query.cumsum(0)
        s0 = 0
        while s0 < B * S:
            base = cum[s0 - 1] if s0 else 0
            s1 = int(torch.searchsorted(cum, base + budget, side="right"))
            s1 = min(B * S, max(s1, s0 + 1))
            c = cnt[s0:s1].reshape(-1)                                       # (P,) pairs (query, cell)
            pair = torch.repeat_interleave(torch.arange(len(c), device=dev), c)
            first = torch.repeat_interleave(start[s0:s1].reshape(-1) - (c.cumsum(0) - c), c)
            flat = self.order[first + torch.arange(len(pair), device=dev)]
            yield s0, s1, pair // 27, flat % self.N
            s0 = s1


def _pair_sqdist(query_rows: torch.Tensor, ref_rows: torch.Tensor) -> torch.Tensor:
    """Squared distances of matched rows ``(T, 3)``, same formula as :func:`square_distance`."""
    d = query_rows[:, 0] - ref_rows[:, 0]
    out = d * d
    d = query_rows[:, 1] - ref_rows[:, 1]
    out += d * d
    d = query_rows[:, 2] - ref_rows[:, 2]
    out += d * d
    return out


def _rank_within(group: torch.Tensor, n_groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For ``group`` ids sorted ascending: position of each element inside its group, and sizes."""
    sizes = torch.bincount(group, minlength=n_groups)
    starts = sizes.cumsum(0) - sizes
    return torch.arange(len(group), device=group.device) - starts[group], sizes


def _ball_query_dense(xyz, new_xyz, r2, nsample, chunk_elements):
    B, N, _ = xyz.shape
    S = new_xyz.shape[1]
    k = min(nsample, N)
    out = torch.full((B, S, nsample), -1, dtype=torch.long, device=xyz.device)
    counts = torch.empty(B, S, dtype=torch.long, device=xyz.device)
    ar = torch.arange(N, device=xyz.device)
    rows = _chunk_rows(B, N, chunk_elements)
    for s0 in range(0, S, rows):
        d = square_distance(new_xyz[:, s0:s0 + rows], xyz)                   # (B, s, N)
        inside = d <= r2
        key = torch.where(inside, ar, N)                                     # N marks "outside"
        first = key.topk(k, dim=-1, largest=False, sorted=True).values       # (B, s, k)
        out[:, s0:s0 + rows, :k] = torch.where(first < N, first, -1)
        counts[:, s0:s0 + rows] = inside.sum(-1).clamp(max=nsample)
    return out, counts


def _ball_query_grid(xyz, new_xyz, radius, r2, nsample, chunk_elements):
    B, N, _ = xyz.shape
    S = new_xyz.shape[1]
    out = torch.full((B * S, nsample), -1, dtype=torch.long, device=xyz.device)
    counts = torch.zeros(B * S, dtype=torch.long, device=xyz.device)
    grid = _Grid(xyz, radius * (1 + 1e-5))           # a hair larger: floor() rounding at borders
    q = new_xyz.reshape(B * S, 3)
    ref = xyz.reshape(B * N, 3)
    for s0, s1, qid, cand in grid.candidates(new_xyz, chunk_elements or DEFAULT_CHUNK_ELEMENTS):
        b = (s0 + qid) // S
        inside = _pair_sqdist(q[s0 + qid], ref[b * N + cand]) <= r2
        qid, cand = qid[inside], cand[inside]
        order = (qid * N + cand).sort().indices                              # by query, then index
        qid, cand = qid[order], cand[order]
        rank, sizes = _rank_within(qid, s1 - s0)
        keep = rank < nsample
        out[s0 + qid[keep], rank[keep]] = cand[keep]
        counts[s0:s1] = sizes.clamp(max=nsample)
    return out.reshape(B, S, nsample), counts.reshape(B, S)


def _knn_block(d: torch.Tensor, k: int, index: torch.Tensor | None = None, n_ref: int = 0):
    """k smallest of each row of ``d (R, W)`` ordered by (distance, reference index).

    Column ``w`` holds reference point ``w`` (``index=None``) or ``index[r, w]`` (padding columns:
    ``d = inf`` and an index ``>= n_ref``). Returns ``(distances (R, k), indices (R, k))``."""
    W = d.shape[-1]
    vals, col = d.topk(k, dim=-1, largest=False, sorted=True)               # (R, k)
    kth = vals[:, -1:]
    tied = (d <= kth).sum(-1) > k           # rows whose k-th distance is shared beyond the k
    if tied.any():
        dt, kt = d[tied], kth[tied]
        ref = torch.arange(W, device=d.device).expand_as(dt) if index is None else index[tied]
        big = W if index is None else n_ref + 1
        # order: closer than the k-th < tied with it < farther, each group by index
        key = ref + big * ((dt == kt).long() + 2 * (dt > kt).long())
        col_t = key.topk(k, dim=-1, largest=False, sorted=True).indices
        col[tied] = col_t
        vals[tied] = dt.gather(-1, col_t)
    idx = col if index is None else index.gather(-1, col)
    idx, perm = idx.sort(dim=-1)                                             # by index ...
    vals = vals.gather(-1, perm)
    vals, perm = vals.sort(dim=-1, stable=True)                              # ... then distance
    return vals, idx.gather(-1, perm)


def _knn_dense(query, ref, k, chunk_elements):
    B, S, _ = query.shape
    N = ref.shape[1]
    idx = torch.empty(B, S, k, dtype=torch.long, device=query.device)
    dist = torch.empty(B, S, k, dtype=query.dtype, device=query.device)
    rows = _chunk_rows(B, N, chunk_elements)
    for s0 in range(0, S, rows):
        d = square_distance(query[:, s0:s0 + rows], ref)                     # (B, s, N)
        s = d.shape[1]
        v, i = _knn_block(d.reshape(B * s, N), k)
        idx[:, s0:s0 + rows] = i.reshape(B, s, k)
        dist[:, s0:s0 + rows] = v.reshape(B, s, k)
    return idx, dist


def _knn_grid(query, ref, k, chunk_elements, n_probe: int = 64, cell: float | None = None):
    B, S, _ = query.shape
    N = ref.shape[1]
    if cell is None:  # 95th percentile of the exact k-th neighbour distance of a few queries, x1.25
        probe = torch.linspace(0, S - 1, min(S, n_probe), device=query.device).long()
        _, pd = _knn_dense(query[:, probe], ref, k, chunk_elements)
        kth = pd[..., -1].sqrt().reshape(-1)
        cell = float(torch.quantile(kth.double(), 0.95)) * 1.25
    extent = float((ref.amax(1) - ref.amin(1)).max())
    try:
        if not cell > 0 or extent / cell > 2 ** 20:
            raise OverflowError
        grid = _Grid(ref, cell)
    except OverflowError:                        # all duplicates, or too fine a grid: dense
        return _knn_dense(query, ref, k, chunk_elements)
    safe = (cell * (1 - 1e-4)) ** 2        # k-th distance below this: the 27 cells hold all nearer
    idx = torch.empty(B * S, k, dtype=torch.long, device=query.device)
    dist = torch.empty(B * S, k, dtype=query.dtype, device=query.device)
    ok = torch.zeros(B * S, dtype=torch.bool, device=query.device)
    q, r = query.reshape(B * S, 3), ref.reshape(B * N, 3)
    for s0, s1, qid, cand in grid.candidates(query, chunk_elements or DEFAULT_CHUNK_ELEMENTS):
        b = (s0 + qid) // S
        d = _pair_sqdist(q[s0 + qid], r[b * N + cand])
        # candidates arrive grouped by query: scatter them into padded rows
        slot, sizes = _rank_within(qid, s1 - s0)
        width = max(int(sizes.max()), k) if len(qid) else k
        mat_i = torch.full((s1 - s0, width), N, dtype=torch.long, device=query.device)
        mat_i[qid, slot] = cand
        mat_d = torch.full((s1 - s0, width), math.inf, dtype=query.dtype, device=query.device)
        mat_d[qid, slot] = d
        v, i = _knn_block(mat_d, k, index=mat_i, n_ref=N)
        idx[s0:s1], dist[s0:s1] = i, v
        ok[s0:s1] = (sizes >= k) & (v[:, -1] < safe)
    idx, dist = idx.reshape(B, S, k), dist.reshape(B, S, k)
    redo = ~ok.reshape(B, S)
    for bb in redo.any(1).nonzero().flatten().tolist():        # sparse regions: exact dense pass
        rows = redo[bb].nonzero().flatten()
        i, v = _knn_dense(query[bb:bb + 1, rows], ref[bb:bb + 1], k, chunk_elements)
        idx[bb, rows], dist[bb, rows] = i[0], v[0]
    return idx, dist


# ----------------------------------------------------------------------------- library backends
# open3d / cKDTree propose candidates; the rule's formula decides. Bounds used below: our squared
# distance = true * (1 +- rel) +- tiny (sums of squares, no cancellation; rel = 1e-6 covers
# float32's 4u, 1e-12 float64's), the library's Euclidean distance = true * (1 +- lib_rel) with
# lib_rel = 1e-6 when it computes in float32 (float32 input), 1e-12 in float64. One cloud per
# library call: open3d.core.nns has no batched search, and shifting a batch's clouds apart into
# one float64 index measured slower than this loop (up to 2x: a larger index, float64 search).

def _lib_rel(dtype) -> float:
    """Relative error bound of a library's Euclidean distance for ``dtype`` input."""
    return 1e-6 if dtype == np.float32 else 1e-12


def _rule_slack(dtype) -> tuple[float, float]:
    """(relative, absolute) slack of the rule's squared distance in ``dtype``."""
    return (1e-6, 1e-40) if dtype == np.float32 else (1e-12, 1e-300)


def _rule_d2(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The rule's squared distance of matched rows ``(..., 3)``, numpy, in their dtype."""
    t = a - b
    return t[..., 0] * t[..., 0] + t[..., 1] * t[..., 1] + t[..., 2] * t[..., 2]


def _rule_d2_gather(rt: np.ndarray, g: np.ndarray, qt: np.ndarray) -> np.ndarray:
    """The rule's squared distances ``(T, K)`` between the points ``rt[:, g]`` (``rt (3, M)``,
    ``g (T, K)``) and their queries ``qt (3, T)``: one gather per coordinate, contiguous math."""
    d = rt[0][g]
    d -= qt[0][:, None]
    d *= d
    for c in (1, 2):
        t = rt[c][g]
        t -= qt[c][:, None]
        t *= t
        d += t
    return d


class _KnnIndex:
    """A library kNN index over rows ``R``: ``search(Q, k)`` -> (indices, squared distances);
    a missing neighbour (scipy, k > len(R)) has index ``len(R)`` and distance inf."""

    def __init__(self, lib: str, R: np.ndarray):
        self.lib, self.n = lib, len(R)
        if lib == "open3d":
            o3c = _open3d()
            self.o3c = o3c
            self.nns = o3c.nns.NearestNeighborSearch(o3c.Tensor.from_numpy(np.ascontiguousarray(R)))
            self.nns.knn_index()
        else:
            from scipy.spatial import cKDTree                                # noqa: PLC0415
            self.tree = cKDTree(R)

    def search(self, Q: np.ndarray, k: int):
        if self.lib == "open3d":
            i, d = self.nns.knn_search(self.o3c.Tensor.from_numpy(np.ascontiguousarray(Q)), k)
            i, d = i.numpy(), d.numpy().astype(np.float64, copy=False)
        else:
            d, i = self.tree.query(Q, k=k, workers=-1)
            d = d * d
        return i.astype(np.int64, copy=False).reshape(len(Q), k), d.reshape(len(Q), k)


def _knn_library(query: torch.Tensor, ref: torch.Tensor, k: int, lib: str, chunk_elements):
    """kNN through a library (``k <= N``): exact (indices, rule distances), CPU tensors."""
    if query.shape[0] > 1:                                  # one library index per cloud
        parts = [_knn_library(query[b:b + 1], ref[b:b + 1], k, lib, chunk_elements)
                 for b in range(query.shape[0])]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    S, N = query.shape[1], ref.shape[1]
    q, r = _host(query)[0], _host(ref)[0]
    rel, tiny = _rule_slack(q.dtype)
    lib_rel = _lib_rel(q.dtype)
    index = _KnnIndex(lib, r)
    out_i = np.empty((S, k), dtype=np.int64)
    out_d = np.empty((S, k), dtype=q.dtype)
    todo = np.arange(S)
    rt, qt = np.ascontiguousarray(r.T), np.ascontiguousarray(q.T)           # (3, N), (3, S)
    for kq in (k + 1, 4 * k + 16):
        if not len(todo):
            break
        kq = min(kq, N)
        ci, cd = index.search(q[todo], kq)
        valid = ci < N                                      # scipy: missing neighbour = N
        loc = np.minimum(ci, N - 1)
        d = _rule_d2_gather(rt, loc, qt[:, todo])
        if not valid.all():
            d[~valid] = np.inf
            loc[~valid] = N
        li, ld = loc[:, :k], d[:, :k]
        # rows whose rule distances strictly increase are already in (distance, index) order
        w = np.flatnonzero(~(d[:, 1:] > d[:, :-1]).all(1))
        if len(w):
            o = np.lexsort((loc[w], d[w]), axis=-1)[:, :k]                   # by d, then index
            li, ld = li.copy(), ld.copy()
            li[w], ld[w] = np.take_along_axis(loc[w], o, -1), np.take_along_axis(d[w], o, -1)
        kth = ld[:, -1].astype(np.float64)
        # every point the library did not return is at least this far, by our formula
        far = (np.sqrt(cd[:, -1]) * (1 - lib_rel)) ** 2 * (1 - rel) - tiny
        ok = (li[:, -1] < N) & ((kq >= N) | (far > kth))
        out_i[todo[ok]], out_d[todo[ok]] = li[ok], ld[ok]
        todo = todo[~ok]
    idx, dist = torch.from_numpy(out_i)[None], torch.from_numpy(out_d)[None]
    if len(todo):                                 # ties beyond the candidates: dense, exact
        rows = torch.from_numpy(todo)
        i, v = _knn_dense(query[:, rows].detach().cpu(), ref.detach().cpu(), k, chunk_elements)
        idx[0, rows], dist[0, rows] = i[0], v[0]
    return idx, dist


def _lib_pairs(lib: str, C: np.ndarray, P: np.ndarray, radius: float):
    """All (point, centre) pairs within ``radius`` of rows ``P``, ``C``: (point, centre, squared
    library distance), point ids non-decreasing."""
    if lib == "open3d":
        o3c = _open3d()
        nns = o3c.nns.NearestNeighborSearch(o3c.Tensor.from_numpy(np.ascontiguousarray(C)))
        nns.fixed_radius_index(radius)
        i, d, splits = nns.fixed_radius_search(o3c.Tensor.from_numpy(np.ascontiguousarray(P)),
                                               radius, False)
        counts = np.diff(splits.numpy())
        return np.repeat(np.arange(len(P), dtype=np.int64), counts), \
            i.numpy().astype(np.int64, copy=False), d.numpy()
    from scipy.spatial import cKDTree                                        # noqa: PLC0415
    m = cKDTree(P).sparse_distance_matrix(cKDTree(C), radius, output_type="ndarray")
    o = np.lexsort((m["j"], m["i"]))
    return m["i"][o].astype(np.int64), m["j"][o].astype(np.int64), m["v"][o] ** 2


def _stable_order(keys: np.ndarray) -> np.ndarray:
    """Stable argsort of non-negative int keys ``< 2**32`` (one or two 16-bit radix passes)."""
    if len(keys) == 0 or keys.max() < 2 ** 16:
        return np.argsort(keys.astype(np.uint16), kind="stable")
    o = np.argsort((keys & 0xFFFF).astype(np.uint16), kind="stable")
    return o[np.argsort((keys[o] >> 16).astype(np.uint16), kind="stable")]


def _at_most(x: float, dtype) -> float:
    """The largest value of ``dtype`` that is ``<= x`` (so a comparison in ``dtype`` is safe)."""
    y = np.asarray(x, dtype=dtype)
    if float(y) > x:
        y = np.nextafter(y, np.asarray(-np.inf, dtype=dtype))
    return float(y)


_BALL_CHUNKS = 16            # points are searched in this many slices of the index range
_BALL_MIN_CHUNK = 4096


def _ball_query_library(xyz: torch.Tensor, new_xyz: torch.Tensor, radius: float, nsample: int,
                        lib: str, chunks: int = _BALL_CHUNKS):
    """Ball query through a library radius search: exact ``(idx (-1 = none), counts)``, CPU.

    The centres are indexed and the points are the queries, in slices of the index range, so
    pairs arrive in point order; a centre leaves the index as soon as it holds ``nsample``."""
    if xyz.shape[0] > 1:                                    # one library index per cloud
        parts = [_ball_query_library(xyz[b:b + 1], new_xyz[b:b + 1], radius, nsample, lib, chunks)
                 for b in range(xyz.shape[0])]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    N, S = xyz.shape[1], new_xyz.shape[1]
    r, c = _host(xyz)[0], _host(new_xyz)[0]
    rel, tiny = _rule_slack(r.dtype)
    lib_rel = _lib_rel(r.dtype)
    r2 = float(np.asarray(radius, dtype=r.dtype) ** 2)             # as the reference rounds it
    # ours <= r2  =>  true <= sqrt((r2 + tiny) / (1 - rel))  =>  library <= search
    search = math.sqrt((r2 + tiny) / (1 - rel)) * (1 + lib_rel) * (1 + 1e-6)
    # library <= sure  =>  true <= sure / (1 - lib_rel)  =>  ours <= r2
    sure = math.sqrt(max(r2 - tiny, 0.0) / (1 + rel)) * (1 - lib_rel) * (1 - 1e-9)
    out = np.full((S, nsample), -1, dtype=np.int64)
    filled = np.zeros(S, dtype=np.int64)
    live = np.arange(S)                              # centres still short of nsample
    step = max(_BALL_MIN_CHUNK, -(-N // chunks))
    for p0 in range(0, N, step):
        if not len(live):
            break
        gp, lc, dl = _lib_pairs(lib, c[live], r[p0:p0 + step], search)
        gp += p0
        gc = live[lc]
        w = np.flatnonzero(dl > _at_most(sure * sure, dl.dtype))   # near the border: our formula
        if len(w):
            out_w = _rule_d2(r[gp[w]], c[gc[w]]) > r2
            if out_w.any():
                keep = np.ones(len(gp), dtype=bool)
                keep[w[out_w]] = False
                gp, gc = gp[keep], gc[keep]
        o = _stable_order(gc)                        # by centre, points stay in index order
        gp, gc = gp[o], gc[o]
        cnt = np.bincount(gc, minlength=S)
        rank = np.arange(len(gc)) - (np.cumsum(cnt) - cnt - filled)[gc]
        w = rank < nsample
        out[gc[w], rank[w]] = gp[w]
        filled += cnt
        live = live[filled[live] < nsample]
    counts = np.minimum(filled, nsample)
    return torch.from_numpy(out)[None], torch.from_numpy(counts)[None]


# ----------------------------------------------------------------------------- neighbourhoods

def ball_query(xyz: torch.Tensor, new_xyz: torch.Tensor, radius: float, nsample: int,
               chunk_elements: int | None = None, return_counts: bool = False,
               method: str = "auto", backend: str = "auto"):
    """PointNet++ ball query: ``xyz (B, N, 3)``, ``new_xyz (B, S, 3)`` -> ``(B, S, nsample)``.

    Row ``s`` holds the first ``nsample`` indices ``n`` (ascending) with
    ``|xyz[n] - new_xyz[s]|**2 <= radius**2``; when fewer are found the row is padded with the
    first one. A centre with no point in its ball (possible only when centres are not taken from
    ``xyz``) gets its nearest point everywhere. With ``return_counts`` also returns ``(B, S)`` the
    number of in-ball indices before padding (0 for an empty ball), to mask padding if needed.
    ``backend``: "auto", "open3d", "scipy" or "torch" (module docstring); for the torch backend
    ``method`` is "dense" (one ``(B, chunk, N)`` block of at most ``chunk_elements`` elements at a
    time), "grid" (cells of side ``radius``; memory follows the number of candidates), or
    "auto". All give identical results.
    """
    _check_pair(new_xyz, xyz)
    if nsample < 1:
        raise ValueError(f"nsample must be >= 1; got {nsample}")
    if not radius > 0:
        raise ValueError(f"radius must be > 0; got {radius}")
    B, N, _ = xyz.shape
    S = new_xyz.shape[1]
    lib = _neighbour_backend(backend, method, xyz, B * S * N)
    if lib != "torch":
        idx, cnt = _ball_query_library(xyz, new_xyz, radius, nsample, lib)
        idx, cnt = idx.to(xyz.device), cnt.to(xyz.device)
    else:
        r2 = (torch.tensor(radius, dtype=xyz.dtype) ** 2).to(xyz.device)
        use_grid = _method(method, S, N) == "grid"
        if use_grid:
            try:
                idx, cnt = _ball_query_grid(xyz, new_xyz, radius, r2, nsample, chunk_elements)
            except OverflowError:                    # radius tiny against the extent: dense
                use_grid = False
        if not use_grid:
            idx, cnt = _ball_query_dense(xyz, new_xyz, r2, nsample, chunk_elements)
    empty = cnt == 0
    if empty.any():                                           # nearest point for empty balls
        b, s = empty.nonzero(as_tuple=True)
        for bb in b.unique().tolist():
            rows = s[b == bb]
            near = knn(new_xyz[bb:bb + 1, rows], xyz[bb:bb + 1], 1,
                       backend="torch" if lib == "torch" else lib,
                       method="dense" if lib == "torch" else "auto")
            idx[bb, rows] = near[0, :, :1]
    idx = torch.where(idx < 0, idx[..., :1], idx)             # pad with the first
    return (idx, cnt) if return_counts else idx


def knn(query: torch.Tensor, ref: torch.Tensor, k: int, chunk_elements: int | None = None,
        return_dist: bool = False, method: str = "auto", backend: str = "auto"):
    """k nearest neighbours of ``query (B, S, 3)`` among ``ref (B, N, 3)`` -> indices ``(B, S, k)``.

    Sorted by squared distance, ties by index (a query that is also in ``ref`` finds itself
    first unless a duplicate with a lower index exists). If ``k > N`` the columns beyond ``N``
    repeat the nearest neighbour. ``return_dist`` also returns the squared distances
    ``(B, S, k)``, differentiable in both point sets. ``backend``: "auto", "open3d", "scipy" or
    "torch" (module docstring); for the torch backend ``method`` is "dense" (one
    ``(B, chunk, N)`` block of ``chunk_elements`` elements, 64 Mi by default, at a time), "grid"
    (cells sized from the k-th neighbour distance of a sample of queries; queries whose k-th
    neighbour lies beyond their 27 cells are redone densely), or "auto". All give identical
    results.
    """
    _check_pair(query, ref)
    if k < 1:
        raise ValueError(f"k must be >= 1; got {k}")
    B, S, _ = query.shape
    N = ref.shape[1]
    kk = min(k, N)
    lib = _neighbour_backend(backend, method, query, B * S * N)
    with torch.no_grad():
        if lib != "torch":
            idx, dist = _knn_library(query, ref, kk, lib, chunk_elements)
            idx, dist = idx.to(query.device), dist.to(query.device)
        elif _method(method, S, N) == "grid" and kk < N:
            idx, dist = _knn_grid(query, ref, kk, chunk_elements)
        else:
            idx, dist = _knn_dense(query, ref, kk, chunk_elements)
        if kk < k:
            idx = torch.cat([idx, idx[..., :1].expand(-1, -1, k - kk)], dim=-1)
            dist = torch.cat([dist, dist[..., :1].expand(-1, -1, k - kk)], dim=-1)
    if return_dist:
        if query.requires_grad or ref.requires_grad:   # differentiable distances of the winners
            nb = gather_points(ref, idx)                                      # (B, S, k, 3)
            diff = query[:, :, None, :] - nb
            dist = diff[..., 0] ** 2 + diff[..., 1] ** 2 + diff[..., 2] ** 2
        return idx, dist
    return idx


def group_points(xyz: torch.Tensor, idx: torch.Tensor, new_xyz: torch.Tensor | None = None,
                 features: torch.Tensor | None = None) -> torch.Tensor:
    """PointNet++ grouping: ``idx (B, S, K)`` into ``xyz (B, N, 3)`` -> ``(B, S, K, 3 [+ C])``.

    With ``new_xyz (B, S, 3)`` the coordinates are relative to their centre; with
    ``features (B, N, C)`` those are gathered and concatenated after the coordinates."""
    grouped = gather_points(xyz, idx)                                        # (B, S, K, 3)
    if new_xyz is not None:
        grouped = grouped - new_xyz[:, :, None, :]
    if features is not None:
        grouped = torch.cat([grouped, gather_points(features, idx)], dim=-1)
    return grouped


def three_interpolate(query: torch.Tensor, known: torch.Tensor, known_features: torch.Tensor,
                      k: int = 3, squared: bool = True, eps: float = 1e-8,
                      backend: str = "auto") -> torch.Tensor:
    """Inverse-distance interpolation (PointNet++ feature propagation).

    ``query (B, n, 3)``, ``known (B, m, 3)``, ``known_features (B, m, C)`` -> ``(B, n, C)``:
    ``f(x) = sum_i w_i f_i / sum_i w_i`` over the ``min(k, m)`` nearest known points with
    ``w_i = 1 / (d_i + eps)``, where ``d_i`` is the *squared* distance when ``squared`` (as in the
    pure-PyTorch PointNet++ port used by Skeleton Merger) or the distance otherwise (as in the
    original CUDA PointNet++). Differentiable in the features and in both point sets.
    ``backend`` chooses the kNN backend (:func:`knn`); the weights are computed in torch.
    """
    if known_features.shape[:2] != known.shape[:2]:
        raise ValueError(f"known_features {tuple(known_features.shape)} must be (B, m, C) "
                         f"matching known {tuple(known.shape)}")
    kk = min(k, known.shape[1])
    idx, d2 = knn(query, known, kk, return_dist=True, backend=backend)       # (B, n, kk)
    d = d2 if squared else torch.sqrt(d2.clamp_min(0))
    w = 1.0 / (d + eps)
    w = w / w.sum(-1, keepdim=True)
    return (gather_points(known_features, idx) * w[..., None]).sum(-2)      # (B, n, C)


# ----------------------------------------------------------------------------- rotations

def random_rotation(n: int | None = None, generator: torch.Generator | None = None,
                    dtype=torch.float32) -> torch.Tensor:
    """Rotations uniform on SO(3) (normalised Gaussian quaternions): ``(3, 3)`` or ``(n, 3, 3)``."""
    q = torch.randn(1 if n is None else n, 4, generator=generator, dtype=torch.float64)
    q = q / q.norm(dim=-1, keepdim=True)
    w, x, y, z = q.unbind(-1)
    R = torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
        2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
        2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1).reshape(-1, 3, 3)
    R = R.to(dtype)
    return R[0] if n is None else R


def yaw_rotation(theta) -> torch.Tensor:
    """Right-handed rotation by ``theta`` (radians) about the up axis y: ``(..., 3, 3)``.

    ``R = [[cos, 0, sin], [0, 1, 0], [-sin, 0, cos]]``, so +x turns towards -z. (Canonical
    Voting's code writes R_y(theta) with the opposite sign of sin; that is this ``R(-theta)``.)"""
    theta = torch.as_tensor(theta, dtype=torch.get_default_dtype()
                            if not torch.is_tensor(theta) else theta.dtype)
    c, s = torch.cos(theta), torch.sin(theta)
    o, z = torch.ones_like(c), torch.zeros_like(c)
    return torch.stack([c, z, s, z, o, z, -s, z, c], -1).reshape(*theta.shape, 3, 3)


def random_yaw_rotation(n: int | None = None, generator: torch.Generator | None = None,
                        dtype=torch.float32) -> torch.Tensor:
    """Rotations about y by angles uniform in [0, 2*pi): ``(3, 3)`` or ``(n, 3, 3)``."""
    theta = torch.rand(1 if n is None else n, generator=generator, dtype=torch.float64)
    theta = theta * 2 * math.pi
    R = yaw_rotation(theta).to(dtype)
    return R[0] if n is None else R


def rotate(points: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
    """``points (..., N, 3)`` rotated by ``R (..., 3, 3)`` (row vectors: ``p @ R.T``)."""
    return points @ R.transpose(-1, -2)


def normalize_unit_sphere(points: torch.Tensor):
    """Centre ``points (..., N, 3)`` on their mean and scale the farthest point to radius 1.

    Returns ``(normalized, centre (..., 1, 3), scale (..., 1, 1))`` with
    ``normalized = (points - centre) / scale``."""
    centre = points.mean(-2, keepdim=True)
    scale = (points - centre).norm(dim=-1, keepdim=True).amax(-2, keepdim=True).clamp_min(1e-12)
    return (points - centre) / scale, centre, scale


# ----------------------------------------------------------------------------- slow references
# Straightforward loops over clouds and query points, numpy on the CPU, the same distance
# formula; used by the tests (equality) and by shared.pointcloud.bench_points (speed baseline).

def _ref_d2(points: np.ndarray, q: np.ndarray) -> np.ndarray:
    return (points[:, 0] - q[0]) * (points[:, 0] - q[0]) + (points[:, 1] - q[1]) * \
        (points[:, 1] - q[1]) + (points[:, 2] - q[2]) * (points[:, 2] - q[2])


def reference_farthest_point_sample(xyz: np.ndarray, npoint: int, start) -> np.ndarray:
    """FPS over a Python loop, one cloud and one sample at a time. ``start``: (B,) indices."""
    B, N, _ = xyz.shape
    out = np.zeros((B, npoint), dtype=np.int64)
    for b in range(B):
        min_d = np.full(N, np.inf, dtype=xyz.dtype)
        cur = int(start[b])
        for i in range(npoint):
            out[b, i] = cur
            min_d = np.minimum(min_d, _ref_d2(xyz[b], xyz[b, cur]))
            best = 0
            for n in range(1, N):                      # first maximum, explicitly
                if min_d[n] > min_d[best]:
                    best = n
            cur = best
    return out


def reference_ball_query(xyz: np.ndarray, new_xyz: np.ndarray, radius: float,
                         nsample: int) -> np.ndarray:
    """Ball query, one centre at a time: scan points in index order, keep the first ``nsample``."""
    B, S = new_xyz.shape[:2]
    r2 = np.asarray(radius, dtype=xyz.dtype) ** 2
    out = np.zeros((B, S, nsample), dtype=np.int64)
    for b in range(B):
        for s in range(S):
            d = _ref_d2(xyz[b], new_xyz[b, s])
            found = []
            for n in range(len(d)):
                if d[n] <= r2:
                    found.append(n)
                    if len(found) == nsample:
                        break
            if not found:
                found = [int(np.argmin(d))]
            out[b, s] = found + [found[0]] * (nsample - len(found))
    return out


def reference_knn(query: np.ndarray, ref: np.ndarray, k: int):
    """kNN, one query at a time: stable sort by squared distance (ties by index)."""
    B, S = query.shape[:2]
    idx = np.zeros((B, S, k), dtype=np.int64)
    dist = np.zeros((B, S, k), dtype=query.dtype)
    for b in range(B):
        for s in range(S):
            d = _ref_d2(ref[b], query[b, s])
            order = list(np.argsort(d, kind="stable")[:k])
            order += [order[0]] * (k - len(order))
            idx[b, s], dist[b, s] = order, d[order]
    return idx, dist


def reference_three_interpolate(query: np.ndarray, known: np.ndarray, feats: np.ndarray,
                                k: int = 3, squared: bool = True, eps: float = 1e-8) -> np.ndarray:
    """Inverse-distance interpolation, one query at a time, on top of :func:`reference_knn`."""
    kk = min(k, known.shape[1])
    idx, d2 = reference_knn(query, known, kk)
    out = np.zeros(query.shape[:2] + feats.shape[-1:], dtype=np.float64)
    for b in range(query.shape[0]):
        for s in range(query.shape[1]):
            d = d2[b, s].astype(np.float64)
            w = 1.0 / ((d if squared else np.sqrt(d)) + eps)
            out[b, s] = (w[:, None] * feats[b, idx[b, s]]).sum(0) / w.sum()
    return out
