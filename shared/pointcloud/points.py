"""Point-cloud operations shared by the 3D papers, in plain PyTorch (CPU and GPU).

Layout: points and features are channels-last, ``xyz (B, N, 3)``, ``features (B, N, C)``;
index tensors are ``int64`` and index the ``N`` axis of their batch element.

* :func:`farthest_point_sample` — iterative FPS (PointNet++), seeded or given start point.
* :func:`ball_query` — PointNet++ semantics: the *first* ``nsample`` point indices (in index order)
  whose squared distance to the centre is ``<= radius**2``, padded with the first one found.
* :func:`knn` — k nearest neighbours sorted by (distance, index).
  Ball query and kNN have two exact back ends with identical output: ``dense`` (chunks of
  queries against all points, bounded memory) and ``grid`` (points bucketed in cubic cells, only
  the 27 cells around a query are scanned), picked automatically by problem size, so 100K-point
  scenes run in bounded memory and time.
* :func:`gather_points`, :func:`group_points` — indexing and PointNet++ grouping.
* :func:`three_interpolate` — inverse-distance interpolation over the 3 nearest known points
  (PointNet++ feature propagation).
* rotations: :func:`random_rotation` (uniform on SO(3)), :func:`yaw_rotation` and
  :func:`random_yaw_rotation` (about the up axis y), :func:`rotate`; :func:`normalize_unit_sphere`.

Every operation loops over points only through tensor operations (FPS loops over its *samples*,
which is inherent to the algorithm). Squared distances are always computed as
``(dx*dx + dy*dy) + dz*dz`` in the input dtype, so results are bit-for-bit reproducible by the
slow references at the end of this file (``reference_*``), which the tests and
``python -m shared.pointcloud.bench_points`` compare against. Ties (duplicate points) are broken towards the
lower index everywhere, as those references do.
"""
from __future__ import annotations

import math

import numpy as np
import torch

# Elements of one (chunk, N) distance block; 2**24 floats = 64 MiB in float32.
DEFAULT_CHUNK_ELEMENTS = 2 ** 24


# ----------------------------------------------------------------------------- helpers

def _check_xyz(name: str, xyz: torch.Tensor) -> None:
    if xyz.dim() != 3 or xyz.shape[-1] != 3:
        raise ValueError(f"{name} must have shape (B, N, 3); got {tuple(xyz.shape)}")
    if not xyz.is_floating_point():
        raise ValueError(f"{name} must be a floating tensor; got {xyz.dtype}")
    if not torch.isfinite(xyz).all():
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


# ----------------------------------------------------------------------------- sampling

def farthest_point_sample(xyz: torch.Tensor, npoint: int, start=None,
                          generator: torch.Generator | None = None) -> torch.Tensor:
    """Farthest point sampling: ``xyz (B, N, 3)`` -> indices ``(B, npoint)``.

    Args:
        npoint: samples per cloud, ``1 <= npoint <= N``.
        start: first index per cloud: ``None`` (random, drawn from ``generator`` on the CPU, so a
            seeded generator gives the same samples on any device), an ``int``, or a ``(B,)``
            tensor.
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
    start = torch.as_tensor(start, dtype=torch.long, device=xyz.device).reshape(B)
    if ((start < 0) | (start >= N)).any():
        raise ValueError(f"start indices must lie in [0, {N}); got {start.tolist()}")
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


# ----------------------------------------------------------------------------- neighbourhoods
# Two exact back ends with identical results: "dense" scans every reference point for a chunk of
# queries; "grid" buckets the reference points into cubic cells (sorted cell keys) and scans only
# the 27 cells around each query, which is what makes 100K-point scenes cheap. "auto" picks the
# grid when S*N is large.

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


def ball_query(xyz: torch.Tensor, new_xyz: torch.Tensor, radius: float, nsample: int,
               chunk_elements: int | None = None, return_counts: bool = False,
               method: str = "auto"):
    """PointNet++ ball query: ``xyz (B, N, 3)``, ``new_xyz (B, S, 3)`` -> ``(B, S, nsample)``.

    Row ``s`` holds the first ``nsample`` indices ``n`` (ascending) with
    ``|xyz[n] - new_xyz[s]|**2 <= radius**2``; when fewer are found the row is padded with the
    first one. A centre with no point in its ball (possible only when centres are not taken from
    ``xyz``) gets its nearest point everywhere. With ``return_counts`` also returns ``(B, S)`` the
    number of in-ball indices before padding (0 for an empty ball), to mask padding if needed.
    ``method``: "dense" (one ``(B, chunk, N)`` block of at most ``chunk_elements`` elements at a
    time), "grid" (cells of side ``radius``; memory follows the number of candidates), or
    "auto"; both give identical results.
    """
    _check_pair(new_xyz, xyz)
    if nsample < 1:
        raise ValueError(f"nsample must be >= 1; got {nsample}")
    if not radius > 0:
        raise ValueError(f"radius must be > 0; got {radius}")
    B, N, _ = xyz.shape
    S = new_xyz.shape[1]
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
            near = knn(new_xyz[bb:bb + 1, rows], xyz[bb:bb + 1], 1, method="dense")
            idx[bb, rows] = near[0, :, :1]
    idx = torch.where(idx < 0, idx[..., :1], idx)             # pad with the first
    return (idx, cnt) if return_counts else idx


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


def knn(query: torch.Tensor, ref: torch.Tensor, k: int, chunk_elements: int | None = None,
        return_dist: bool = False, method: str = "auto"):
    """k nearest neighbours of ``query (B, S, 3)`` among ``ref (B, N, 3)`` -> indices ``(B, S, k)``.

    Sorted by squared distance, ties by index (a query that is also in ``ref`` finds itself
    first unless a duplicate with a lower index exists). If ``k > N`` the columns beyond ``N``
    repeat the nearest neighbour. ``return_dist`` also returns the squared distances
    ``(B, S, k)``, differentiable in both point sets. ``method``: "dense" (one ``(B, chunk, N)``
    block of ``chunk_elements`` elements, 64 Mi by default, at a time), "grid" (cells sized from
    the k-th neighbour distance of a sample of queries; queries whose k-th neighbour lies beyond
    their 27 cells are redone densely), or "auto"; all give identical results.
    """
    _check_pair(query, ref)
    if k < 1:
        raise ValueError(f"k must be >= 1; got {k}")
    B, S, _ = query.shape
    N = ref.shape[1]
    kk = min(k, N)
    with torch.no_grad():
        if _method(method, S, N) == "grid" and kk < N:
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
                      k: int = 3, squared: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Inverse-distance interpolation (PointNet++ feature propagation).

    ``query (B, n, 3)``, ``known (B, m, 3)``, ``known_features (B, m, C)`` -> ``(B, n, C)``:
    ``f(x) = sum_i w_i f_i / sum_i w_i`` over the ``min(k, m)`` nearest known points with
    ``w_i = 1 / (d_i + eps)``, where ``d_i`` is the *squared* distance when ``squared`` (as in the
    pure-PyTorch PointNet++ port used by Skeleton Merger) or the distance otherwise (as in the
    original CUDA PointNet++). Differentiable in the features and in both point sets.
    """
    if known_features.shape[:2] != known.shape[:2]:
        raise ValueError(f"known_features {tuple(known_features.shape)} must be (B, m, C) "
                         f"matching known {tuple(known.shape)}")
    kk = min(k, known.shape[1])
    idx, d2 = knn(query, known, kk, return_dist=True)                        # (B, n, kk)
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
