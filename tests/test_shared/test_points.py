"""shared.pointcloud.points against the slow loop references (exact equality of indices and
distances).

Every backend (open3d, scipy, torch dense/grid for the neighbourhoods; numpy bucket FPS and the
torch loop for FPS) must return bit for bit what the references return: the rule computes squared
distances as ``(dx*dx + dy*dy) + dz*dz`` in the input dtype, orders neighbours by (distance,
index), tests balls with ``<=``, pads with the first index and breaks FPS ties towards the lower
index. Ties are constructed on purpose: duplicated points, integer grids (many equal distances),
radii equal to actual pair distances (ball border). Only the interpolation weights are compared
with a tolerance (float32 features, weights normalised in float32 vs float64 in the reference).
Sizes are odd and not powers of two.
"""
import math

import numpy as np
import pytest
import torch

from shared.pointcloud import points as P

LIBS = ["open3d", "scipy"]
NEIGHBOUR_BACKENDS = ["open3d", "scipy", "torch"]


def _cloud(b, n, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, n, 3, generator=g, dtype=dtype)


def _duplicated(b, n, seed, dtype=torch.float32):
    """Points on a coarse integer grid: many exact duplicates and equal distances."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 3, (b, n, 3), generator=g).to(dtype)


def _mixed_batch(n, seed, dtype):
    """Three different clouds in one batch: random in a unit cube, the same scaled and moved far
    away, and integer-grid points with exact duplicates."""
    a = _cloud(1, n, seed, dtype)
    b = _cloud(1, n, seed + 1, dtype) * 50 - 1000
    c = _duplicated(1, n, seed + 2, dtype)
    return torch.cat([a, b, c])


def _knn_eq(query, ref, k, **kw):
    idx, dist = P.knn(query, ref, k, return_dist=True, **kw)
    r_idx, r_dist = P.reference_knn(query.numpy(), ref.numpy(), k)
    np.testing.assert_array_equal(idx.numpy(), r_idx)
    np.testing.assert_array_equal(dist.numpy(), r_dist)
    assert idx.dtype == torch.long and dist.dtype == query.dtype
    return idx


def _ball_eq(xyz, centres, radius, nsample, **kw):
    idx, cnt = P.ball_query(xyz, centres, radius, nsample, return_counts=True, **kw)
    ref = P.reference_ball_query(xyz.numpy(), centres.numpy(), radius, nsample)
    np.testing.assert_array_equal(idx.numpy(), ref)
    r2 = torch.tensor(radius, dtype=xyz.dtype) ** 2
    want = (P.square_distance(centres, xyz) <= r2).sum(-1).clamp(max=nsample)
    assert torch.equal(cnt, want)
    return idx


# ----------------------------------------------------------------------------- FPS

@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fps_matches_reference_random(dtype, backend):
    xyz = _cloud(2, 301, 0, dtype)
    start = torch.tensor([5, 300])
    idx = P.farthest_point_sample(xyz, 37, start=start, backend=backend)
    ref = P.reference_farthest_point_sample(xyz.numpy(), 37, start.numpy())
    assert idx.shape == (2, 37) and idx.dtype == torch.long
    np.testing.assert_array_equal(idx.numpy(), ref)
    assert all(len(set(r.tolist())) == 37 for r in idx)         # distinct points, no repeats


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_fps_duplicates_and_more_samples_than_distinct_points(backend):
    xyz = _duplicated(3, 53, 1)                                  # at most 27 distinct points
    idx = P.farthest_point_sample(xyz, 45, start=2, backend=backend)
    ref = P.reference_farthest_point_sample(xyz.numpy(), 45, [2, 2, 2])
    np.testing.assert_array_equal(idx.numpy(), ref)
    for b in range(3):                                          # every distinct point is reached
        distinct = {tuple(p) for p in xyz[b].tolist()}
        assert {tuple(p) for p in xyz[b, idx[b]].tolist()} == distinct
    assert (idx[:, 27:] == 0).all()                             # then index 0 repeats


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fps_batch_of_different_clouds(dtype):
    xyz = _mixed_batch(211, 3, dtype)
    start = torch.tensor([0, 17, 210])
    ref = P.reference_farthest_point_sample(xyz.numpy(), 90, start.numpy())
    for backend in ("numpy", "torch", "auto"):
        idx = P.farthest_point_sample(xyz, 90, start=start, backend=backend)
        np.testing.assert_array_equal(idx.numpy(), ref)


@pytest.mark.parametrize("seed", range(8))
def test_fps_bucket_internals_on_ties(seed):
    """Tiny blocks, fanout and candidate runs so that every path of the bucket FPS runs (several
    hierarchy levels, runs cut by tau, more points tied at the top than candidates, all
    distances 0) on grid points (equal distances everywhere), points on a line (distances equal
    to block-box bounds) and random points."""
    g = np.random.default_rng(seed)
    n = int(g.integers(20, 160))
    pts = [g.integers(0, 4, (n, 3)).astype(np.float32), g.random((n, 3)).astype(np.float64),
           np.stack([g.permutation(n), np.zeros(n), np.zeros(n)], 1).astype(np.float32),
           np.stack([g.integers(0, 40, n), g.integers(0, 3, n), np.zeros(n)], 1).astype(
               np.float64)][seed % 4]
    npoint, start = int(g.integers(1, n + 1)), int(g.integers(n))
    ref = P.reference_farthest_point_sample(pts[None], npoint, [start])[0]
    for block, fanout, n_cand in ((1, 2, 1), (4, 2, 3), (8, 4, 1), (64, 16, 256)):
        out = P._fps_bucket(pts, npoint, start, block=block, fanout=fanout, n_cand=n_cand)
        np.testing.assert_array_equal(out, ref)


def test_fps_bucket_pruning_is_conservative():
    """A block is skipped for a new sample only when no point of it can get closer: here the
    sample (x = 200.51) comes within 1% of the box bound of the block holding x = 100.5 and
    lowers its distance from 100.5**2 to 100.01**2, which decides the next sample (x = 100.5
    must lose to the point at y = 100.25). Pruning with a bound even 1% too optimistic fails."""
    pts = np.array([[0, 0, 0], [100, 0, 0], [100.5, 0, 0], [200.51, 0, 0], [0, 100.25, 0]])
    ref = P.reference_farthest_point_sample(pts[None], 5, [0])[0]
    np.testing.assert_array_equal(ref, [0, 3, 4, 2, 1])
    for block in (1, 2, 4, 8):
        np.testing.assert_array_equal(P._fps_bucket(pts, 5, 0, block=block, fanout=2, n_cand=1),
                                      ref)


def test_fps_numpy_equals_torch_on_a_larger_cloud():
    """A cloud with structure (two dense planes + noise) at a size where the bucket pruning
    matters; the torch loop equals the reference above, so equality here is exactness."""
    g = torch.Generator().manual_seed(4)
    plane = torch.rand(1, 2500, 3, generator=g)
    plane[..., 2] = 0.0
    xyz = torch.cat([plane, plane[:, :700] + torch.tensor([0.0, 0.0, 0.5]),
                     torch.rand(1, 301, 3, generator=g)], 1)
    a = P.farthest_point_sample(xyz, 900, start=11, backend="numpy")
    b = P.farthest_point_sample(xyz, 900, start=11, backend="torch")
    assert torch.equal(a, b)


def test_fps_seeded_start_is_deterministic():
    xyz = _cloud(4, 97, 2)
    a = P.farthest_point_sample(xyz, 11, generator=torch.Generator().manual_seed(7))
    b = P.farthest_point_sample(xyz, 11, generator=torch.Generator().manual_seed(7))
    c = P.farthest_point_sample(xyz, 11, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_fps_errors():
    with pytest.raises(ValueError, match="npoint"):
        P.farthest_point_sample(_cloud(1, 10, 0), 11)
    bad = _cloud(1, 10, 0)
    bad[0, 3, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        P.farthest_point_sample(bad, 4)
    with pytest.raises(ValueError, match=r"\(B, N, 3\)"):
        P.farthest_point_sample(torch.rand(10, 3), 4)
    with pytest.raises(ValueError, match="backend"):
        P.farthest_point_sample(_cloud(1, 10, 0), 4, backend="open3d")
    with pytest.raises(ValueError, match="float32 or float64"):
        P.farthest_point_sample(_cloud(1, 10, 0).half(), 4, backend="numpy")


# ----------------------------------------------------------------------------- ball query

@pytest.mark.parametrize("backend", NEIGHBOUR_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ball_query_matches_reference_random(dtype, backend):
    xyz = _cloud(2, 263, 3, dtype)
    centres = torch.cat([xyz[:, :41], _cloud(2, 5, 4, dtype) * 1.5], 1)   # some outside
    for radius, nsample in [(0.15, 9), (0.3, 23), (2.0, 17)]:   # sparse, partial, all in ball
        _ball_eq(xyz, centres, radius, nsample, backend=backend)


@pytest.mark.parametrize("method", ["dense", "grid"])
@pytest.mark.parametrize("chunk", [None, 50])
def test_ball_query_torch_methods(chunk, method):
    xyz = _cloud(2, 263, 3)
    for radius, nsample in [(0.15, 9), (0.3, 23)]:
        _ball_eq(xyz, xyz[:, :41], radius, nsample, chunk_elements=chunk, method=method)


@pytest.mark.parametrize("backend", NEIGHBOUR_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ball_query_border_and_batches(dtype, backend):
    """Radii equal to actual pair distances put points exactly on the ball's border (where the
    library's float64 distance and ours may disagree by an ulp), in a batch of different
    clouds (shifted apart into one library call) with exact duplicates."""
    xyz = _mixed_batch(157, 5, dtype)
    centres = xyz[:, 3:40]
    d2 = P.square_distance(centres, xyz)
    scale = torch.tensor([1.0, 50.0, 1.0], dtype=dtype)[:, None, None]
    for q in (0.01, 0.05, 0.3):
        # the q-quantile pair distance of cloud 0 (a border for cloud 0 and 2; cloud 1 is x50)
        radius = float(torch.quantile(d2[0].double().flatten(), q).sqrt())
        _ball_eq(xyz, centres, radius, 13, backend=backend)
        _ball_eq(xyz / scale, centres / scale, radius, 13, backend=backend)


@pytest.mark.parametrize("backend", NEIGHBOUR_BACKENDS)
def test_ball_query_degenerate(backend):
    xyz = _duplicated(2, 19, 4)
    # fewer points than nsample, duplicates, and centres far away (empty balls)
    centres = torch.cat([xyz[:, :5], xyz[:, :3] + 10.0], dim=1)
    idx, cnt = P.ball_query(xyz, centres, 1.01, 32, return_counts=True, backend=backend)
    ref = P.reference_ball_query(xyz.numpy(), centres.numpy(), 1.01, 32)
    np.testing.assert_array_equal(idx.numpy(), ref)
    assert (cnt[:, 5:] == 0).all()
    # an empty ball is filled with the nearest point
    nearest = P.square_distance(centres, xyz).argmin(-1)
    assert torch.equal(idx[:, 5:, 0], nearest[:, 5:])
    assert (idx[:, 5:] == idx[:, 5:, :1]).all()
    _ball_eq(xyz, xyz, 1.0, 7, backend=backend)                 # radius = grid step: d == r2


@pytest.mark.parametrize("backend", NEIGHBOUR_BACKENDS)
def test_far_queries_and_tiny_radii(backend):
    xyz = _cloud(2, 301, 19)
    far = torch.tensor([[[1e15, -1.5e19, 7.0], [0.5, 0.5, 0.5]]]).expand(2, -1, -1)
    np.testing.assert_array_equal(P.knn(far, xyz, 5, backend=backend).numpy(),
                                  P.reference_knn(far.numpy(), xyz.numpy(), 5)[0])
    np.testing.assert_array_equal(P.ball_query(xyz, far, 0.1, 7, backend=backend).numpy(),
                                  P.reference_ball_query(xyz.numpy(), far.numpy(), 0.1, 7))
    # a radius far below the spacing (the torch grid would need ~1e40 cells: dense takes over)
    np.testing.assert_array_equal(
        P.ball_query(xyz, xyz[:, :9], 1e-14, 3, backend=backend, method="auto").numpy(),
        P.reference_ball_query(xyz.numpy(), xyz[:, :9].numpy(), 1e-14, 3))


def test_torch_grid_handles_far_queries_and_tiny_radii():
    xyz = _cloud(1, 301, 19)
    far = torch.tensor([[[1e15, -1.5e19, 7.0], [0.5, 0.5, 0.5]]])    # cell index beyond int64
    np.testing.assert_array_equal(P.knn(far, xyz, 5, method="grid").numpy(),
                                  P.reference_knn(far.numpy(), xyz.numpy(), 5)[0])
    np.testing.assert_array_equal(P.ball_query(xyz, far, 0.1, 7, method="grid").numpy(),
                                  P.reference_ball_query(xyz.numpy(), far.numpy(), 0.1, 7))
    np.testing.assert_array_equal(P.ball_query(xyz, xyz[:, :9], 1e-14, 3, method="grid").numpy(),
                                  P.reference_ball_query(xyz.numpy(), xyz[:, :9].numpy(), 1e-14, 3))


def test_ball_query_errors():
    with pytest.raises(ValueError, match="radius"):
        P.ball_query(_cloud(1, 5, 0), _cloud(1, 2, 0), 0.0, 4)
    with pytest.raises(ValueError, match="batch"):
        P.ball_query(_cloud(2, 5, 0), _cloud(1, 2, 0), 0.1, 4)
    with pytest.raises(ValueError, match="backend"):
        P.ball_query(_cloud(1, 5, 0), _cloud(1, 2, 0), 0.1, 4, backend="faiss")


# ----------------------------------------------------------------------------- kNN

@pytest.mark.parametrize("backend", NEIGHBOUR_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_knn_matches_reference_random(dtype, backend):
    ref_pts = _cloud(2, 233, 5, dtype)
    query = torch.cat([_cloud(2, 57, 6, dtype), _cloud(2, 3, 7, dtype) * 5], 1)  # 3 far queries
    for k in (1, 13):
        _knn_eq(query, ref_pts, k, backend=backend)


@pytest.mark.parametrize("method", ["dense", "grid"])
@pytest.mark.parametrize("chunk", [None, 70])
def test_knn_torch_methods(chunk, method):
    ref_pts = _cloud(2, 233, 5)
    query = torch.cat([_cloud(2, 57, 6), _cloud(2, 3, 7) * 5], 1)
    _knn_eq(query, ref_pts, 13, chunk_elements=chunk, method=method)


@pytest.mark.parametrize("backend", NEIGHBOUR_BACKENDS + ["dense", "grid"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_knn_ties_duplicates_batches_and_k_larger_than_n(dtype, backend):
    kw = dict(method=backend) if backend in ("dense", "grid") else dict(backend=backend)
    pts = _duplicated(2, 41, 7, dtype)                          # heavy ties at every distance
    for k in (3, 11):                                           # k-th distance 0 and > 0
        _knn_eq(pts, pts, k, chunk_elements=100, **kw)
    mixed = _mixed_batch(97, 8, dtype)
    _knn_eq(mixed[:, ::3], mixed, 9, **kw)
    small = pts[:, :6]
    idx = _knn_eq(pts, small, 9, **kw)                          # k > N: pad with the nearest
    assert (idx[..., 6:] == idx[..., :1]).all()


@pytest.mark.parametrize("lib", LIBS)
def test_library_ties_are_post_processed_to_our_rule(lib):
    """open3d/cKDTree order exact ties their own way and compute distances in float64. On
    duplicated points the raw library answer differs from our rule; ours through the same
    library equals the reference, by sorting candidates by (rule distance, index) and, where
    the (k+1)-th candidate ties with the k-th, by widening the search and then falling back to
    the dense torch code for the rows still undecided."""
    pts = _duplicated(1, 120, 9)                        # ~4.4 copies of each of 27 grid points
    idx = _knn_eq(pts, pts, 6, backend=lib)
    raw, _ = P._KnnIndex(lib, pts[0].numpy()).search(pts[0].numpy(), 6)
    assert not np.array_equal(raw, idx[0].numpy())      # the library alone breaks the rule
    # a query whose 6 nearest neighbours sit at distance 0 among `copies` copies: no candidate
    # set short of all copies can prove which 6 copies have the lowest indices
    g = torch.Generator().manual_seed(3)
    for copies, dense_rows in ((9, []), (45, [1])):
        many = torch.cat([torch.zeros(1, copies, 3), torch.rand(1, 40, 3, generator=g) + 2], 1)
        many = many[:, torch.randperm(copies + 40, generator=g)]
        calls = []
        real = P._knn_dense
        try:
            P._knn_dense = lambda q, *a: calls.append(q.shape[1]) or real(q, *a)
            _knn_eq(torch.zeros(1, 1, 3), many, 6, backend=lib)
        finally:
            P._knn_dense = real
        # 9 copies: the widened search (4k+16 = 40 candidates) settles it; 45: the dense code
        assert calls == dense_rows


def test_library_hybrid_search_is_not_pointnet_ball_query():
    """open3d's hybrid search returns the nearest ``max_nn`` points of the ball; PointNet++'s ball
    query wants the first ``nsample`` by index. Ours through open3d equals the reference."""
    import open3d.core as o3c
    xyz = _cloud(1, 300, 10)
    centres = xyz[:, :20]
    nns = o3c.nns.NearestNeighborSearch(o3c.Tensor.from_numpy(xyz[0].numpy()))
    nns.hybrid_index(0.3)
    hybrid = nns.hybrid_search(o3c.Tensor.from_numpy(centres[0].numpy()), 0.3, 8)[0].numpy()
    ours = _ball_eq(xyz, centres, 0.3, 8, backend="open3d")
    assert not np.array_equal(np.sort(hybrid, -1), ours[0].numpy())


def test_stable_radix_order_of_centre_ids():
    """Ball-query pairs are grouped by centre with a stable 16-bit radix sort (two passes beyond
    65536 centres), which must keep the point order inside each group."""
    g = np.random.default_rng(0)
    for high in (300, 70000, 2 ** 31):
        keys = g.integers(0, high, 5000)
        np.testing.assert_array_equal(P._stable_order(keys), np.argsort(keys, kind="stable"))


def test_torch_grid_scans_cells_not_everything(monkeypatch):
    """On a large uniform cloud the grid answers (nearly) every query itself: the dense pass
    only sees the 64 probe queries plus the few whose k-th neighbour is beyond their cells."""
    ref_pts, query = _cloud(1, 8009, 17), _cloud(1, 1501, 18)
    dense_rows = []
    real = P._knn_dense
    monkeypatch.setattr(P, "_knn_dense", lambda q, *a: dense_rows.append(q.shape[1]) or real(q, *a))
    idx = P.knn(query, ref_pts, 7, method="grid")
    assert sum(dense_rows) < 64 + 0.1 * 1501
    monkeypatch.undo()
    assert torch.equal(idx, P.knn(query, ref_pts, 7, method="dense"))
    a = P.ball_query(ref_pts, query, 0.05, 23, method="grid")
    assert torch.equal(a, P.ball_query(ref_pts, query, 0.05, 23, method="dense"))
    for lib in LIBS:                                    # and the libraries agree at this size
        assert torch.equal(idx, P.knn(query, ref_pts, 7, backend=lib))
        assert torch.equal(a, P.ball_query(ref_pts, query, 0.05, 23, backend=lib))


def test_grid_knn_redoes_queries_whose_neighbours_lie_beyond_their_cells():
    """Query in cell (2, 0, 0) of a unit grid: k far points sit in a neighbour cell (distance
    2.7), the true nearest point two cells away (distance 1.15) is not a grid candidate. The
    grid must notice that its k-th distance exceeds the cell and redo the query densely."""
    k = 3
    ref_pts = torch.tensor([[[0.0, 0, 0], [4.1, 0.5, 0.5]] + [[1.05, 1.9, 1.9 - 0.01 * i]
                                                            for i in range(k)]])
    query = torch.tensor([[[2.95, 0.5, 0.5]]])
    idx, dist = P._knn_grid(query, ref_pts, k, None, cell=1.0)
    r_idx, r_dist = P.reference_knn(query.numpy(), ref_pts.numpy(), k)
    np.testing.assert_array_equal(idx.numpy(), r_idx)
    assert idx[0, 0, 0] == 1


@pytest.mark.parametrize("backend", NEIGHBOUR_BACKENDS)
def test_knn_distance_gradient(backend):
    q = _cloud(1, 7, 8, torch.float64).requires_grad_()
    r = _cloud(1, 23, 9, torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a, b: P.knn(a, b, 4, return_dist=True, backend=backend)[1], (q, r))
    assert not P.knn(q, r, 4, backend=backend).requires_grad      # indices: no gradient


def test_auto_backend_choice():
    small, big = _cloud(1, 100, 0), _cloud(1, 5000, 0)
    assert P._neighbour_backend("auto", "auto", small, 100 * 100) == "torch"
    assert P._neighbour_backend("auto", "auto", big, 1000 * 5000) == "open3d"
    assert P._neighbour_backend("auto", "grid", big, 1000 * 5000) == "torch"
    assert P._neighbour_backend("auto", "auto", big.half(), 1000 * 5000) == "torch"
    assert P._fps_backend("auto", big) == "numpy"                  # one cloud
    assert P._fps_backend("auto", _cloud(8, 2048, 0)) == "torch"    # small clouds in a batch
    assert P._fps_backend("auto", _cloud(8, 8000, 0)) == "numpy"
    with pytest.raises(ValueError, match="method"):
        P.knn(small, small, 3, method="kdtree")


# ----------------------------------------------------------------------------- grouping

def test_gather_and_group_points():
    xyz = _cloud(2, 31, 10)
    feats = torch.randn(2, 31, 5, generator=torch.Generator().manual_seed(1))
    idx = torch.randint(0, 31, (2, 7, 4), generator=torch.Generator().manual_seed(2))
    centres = xyz[:, :7]
    g = P.group_points(xyz, idx, centres, feats)
    assert g.shape == (2, 7, 4, 8)
    for b in range(2):
        for s in range(7):
            for k in range(4):
                n = idx[b, s, k]
                assert torch.equal(g[b, s, k, :3], xyz[b, n] - centres[b, s])
                assert torch.equal(g[b, s, k, 3:], feats[b, n])
    assert torch.equal(P.gather_points(xyz, idx[:, 0, 0]), xyz[torch.arange(2), idx[:, 0, 0]])


def test_group_points_gradcheck():
    xyz = _cloud(2, 13, 20, torch.float64).requires_grad_()
    feats = torch.randn(2, 13, 3, dtype=torch.float64, requires_grad=True)
    centres = _cloud(2, 4, 21, torch.float64).requires_grad_()
    idx = P.ball_query(xyz, centres, 0.6, 5)                    # duplicates in idx: summed grads
    assert torch.autograd.gradcheck(lambda x, c, f: P.group_points(x, idx, c, f),
                                    (xyz, centres, feats))


@pytest.mark.parametrize("squared", [True, False])
@pytest.mark.parametrize("m", [2, 3, 29])
def test_three_interpolate_matches_reference(squared, m):
    query, known = _cloud(2, 43, 11), _cloud(2, m, 12)
    feats = torch.randn(2, m, 6, generator=torch.Generator().manual_seed(3))
    ref = P.reference_three_interpolate(query.numpy(), known.numpy(), feats.numpy(),
                                        squared=squared)
    for backend in NEIGHBOUR_BACKENDS:
        out = P.three_interpolate(query, known, feats, squared=squared, backend=backend)
        np.testing.assert_allclose(out.numpy(), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", NEIGHBOUR_BACKENDS)
def test_three_interpolate_exact_at_known_points_and_gradients(backend):
    known = _cloud(1, 17, 13, torch.float64)
    feats = torch.randn(1, 17, 3, dtype=torch.float64, requires_grad=True)
    out = P.three_interpolate(known, known, feats, eps=1e-30, backend=backend)
    torch.testing.assert_close(out, feats, rtol=1e-9, atol=1e-9)  # weight of distance 0 dominates
    q = _cloud(1, 5, 14, torch.float64).requires_grad_()
    kn = known.clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a, b, f: P.three_interpolate(a, b, f, backend=backend), (q, kn, feats))


# ----------------------------------------------------------------------------- CUDA

@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_torch_path_is_automatic_and_exact():
    xyz = _mixed_batch(1503, 30, torch.float32)
    centres = xyz[:, ::7]
    cx, cc = xyz.cuda(), centres.cuda()
    idx = P.knn(cc, cx, 9)
    assert idx.is_cuda
    np.testing.assert_array_equal(idx.cpu().numpy(),
                                  P.reference_knn(centres.numpy(), xyz.numpy(), 9)[0])
    b = P.ball_query(cx, cc, 0.1, 17)
    assert b.is_cuda
    np.testing.assert_array_equal(b.cpu().numpy(),
                                  P.reference_ball_query(xyz.numpy(), centres.numpy(), 0.1, 17))
    f = P.farthest_point_sample(cx, 64, start=3)
    assert f.is_cuda
    np.testing.assert_array_equal(f.cpu().numpy(),
                                  P.reference_farthest_point_sample(xyz.numpy(), 64, [3, 3, 3]))
    for method in ("dense", "grid"):
        assert torch.equal(P.knn(cc, cx, 9, method=method), idx)
        assert torch.equal(P.ball_query(cx, cc, 0.1, 17, method=method), b)
    feats = torch.randn(3, 1503, 4, device="cuda", dtype=torch.float64, requires_grad=True)
    q = cc[:, :5].double().requires_grad_()
    assert torch.autograd.gradcheck(lambda a, f: P.three_interpolate(a, cx.double(), f), (q, feats))


# ----------------------------------------------------------------------------- rotations

def test_random_rotation_is_uniform_on_so3():
    R = P.random_rotation(20000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    eye = torch.eye(3, dtype=torch.float64)
    torch.testing.assert_close(R @ R.transpose(1, 2), eye.expand_as(R), rtol=0, atol=1e-12)
    torch.testing.assert_close(torch.linalg.det(R), torch.ones(20000, dtype=torch.float64))
    # Haar moments: E[R] = 0 and E[tr(R)^2] = 1 (R^3 is an irreducible representation);
    # Monte-Carlo standard errors at n = 20000 are about 0.004 and 0.01.
    assert R.mean(0).abs().max() < 0.03
    assert abs((R.diagonal(dim1=1, dim2=2).sum(-1) ** 2).mean().item() - 1.0) < 0.05


def test_yaw_rotations_keep_the_up_axis():
    R = P.yaw_rotation(torch.tensor(math.pi / 2, dtype=torch.float64))
    torch.testing.assert_close(R @ torch.tensor([1.0, 0, 0], dtype=torch.float64),
                               torch.tensor([0.0, 0, -1], dtype=torch.float64), atol=1e-12, rtol=0)
    Ry = P.random_yaw_rotation(50, generator=torch.Generator().manual_seed(1))
    pts = _cloud(1, 13, 15)[0]
    rotated = P.rotate(pts, Ry)                                  # (50, 13, 3)
    torch.testing.assert_close(rotated[..., 1], pts[:, 1].expand(50, 13))
    torch.testing.assert_close(rotated.norm(dim=-1), pts.norm(dim=-1).expand(50, 13))
    assert torch.allclose(torch.linalg.det(Ry), torch.ones(50))


def test_normalize_unit_sphere():
    pts = _cloud(3, 50, 16) * 7 + 3
    out, centre, scale = P.normalize_unit_sphere(pts)
    torch.testing.assert_close(out.norm(dim=-1).amax(-1), torch.ones(3))
    torch.testing.assert_close(out * scale + centre, pts)


# ----------------------------------------------------------------------------- bench smoke

def test_bench_points_smoke(tmp_path):
    from shared.pointcloud import bench_points
    rows = bench_points.main(["--smoke", "--out", str(tmp_path)])
    assert {r["op"].split(" r=")[0].split(" k=")[0] for r in rows} == \
        {"farthest point sampling", "ball query", "kNN"}
    assert {(r["points"], r["batch"]) for r in rows} == {(256, 1), (1024, 1), (256, 2), (1024, 2)}
    assert all(r["equals_reference"] and r["backends_agree"] for r in rows)
    md = (tmp_path / "bench_points.md").read_text()
    assert (tmp_path / "bench_points.csv").is_file()
    for col in ("ours_open3d_s", "ours_numpy_s", "open3d_s", "ckdtree_s", "dense_torch_s",
                "ours_vs_fastest_library", "within_1_5x"):
        assert col in md
