"""shared.pointcloud.points against the slow loop references (exact equality of indices and distances).

Both sides compute squared distances with the same float operations in the same order
(``(dx*dx + dy*dy) + dz*dz``), so indices and distances must agree bit for bit, including the
tie-breaking towards the lower index on duplicate points. Only the interpolation weights are
compared with a tolerance (1e-6 relative: float32 features, weights normalised in float32 vs
float64 in the reference). Sizes are odd and not powers of two.
"""
import math

import numpy as np
import pytest
import torch

from shared.pointcloud import points as P


def _cloud(b, n, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, n, 3, generator=g, dtype=dtype)


def _duplicated(b, n, seed):
    """Points on a coarse integer grid: many exact duplicates and equal distances."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 3, (b, n, 3), generator=g).float()


# ----------------------------------------------------------------------------- FPS

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fps_matches_reference_random(dtype):
    xyz = _cloud(2, 301, 0, dtype)
    start = torch.tensor([5, 300])
    idx = P.farthest_point_sample(xyz, 37, start=start)
    ref = P.reference_farthest_point_sample(xyz.numpy(), 37, start.numpy())
    assert idx.shape == (2, 37) and idx.dtype == torch.long
    np.testing.assert_array_equal(idx.numpy(), ref)
    assert all(len(set(r.tolist())) == 37 for r in idx)         # distinct points, no repeats


def test_fps_duplicates_and_more_samples_than_distinct_points():
    xyz = _duplicated(3, 53, 1)                                  # at most 27 distinct points
    idx = P.farthest_point_sample(xyz, 45, start=2)
    ref = P.reference_farthest_point_sample(xyz.numpy(), 45, [2, 2, 2])
    np.testing.assert_array_equal(idx.numpy(), ref)
    for b in range(3):                                          # every distinct point is reached
        distinct = {tuple(p) for p in xyz[b].tolist()}
        assert {tuple(p) for p in xyz[b, idx[b]].tolist()} == distinct


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


# ----------------------------------------------------------------------------- ball query

@pytest.mark.parametrize("method", ["dense", "grid"])
@pytest.mark.parametrize("chunk", [None, 50])
def test_ball_query_matches_reference_random(chunk, method):
    xyz = _cloud(2, 263, 3)
    centres = xyz[:, :41]
    for radius, nsample in [(0.15, 9), (0.3, 23), (2.0, 17)]:   # sparse, partial, all in ball
        idx, cnt = P.ball_query(xyz, centres, radius, nsample, chunk_elements=chunk,
                                return_counts=True, method=method)
        ref = P.reference_ball_query(xyz.numpy(), centres.numpy(), radius, nsample)
        np.testing.assert_array_equal(idx.numpy(), ref)
        d2 = P.square_distance(centres, xyz)
        want = (d2 <= torch.tensor(radius) ** 2).sum(-1).clamp(max=nsample)
        assert torch.equal(cnt, want)


@pytest.mark.parametrize("method", ["dense", "grid"])
def test_ball_query_degenerate(method):
    xyz = _duplicated(2, 19, 4)
    # fewer points than nsample, duplicates, and centres far away (empty balls)
    centres = torch.cat([xyz[:, :5], xyz[:, :3] + 10.0], dim=1)
    idx, cnt = P.ball_query(xyz, centres, 1.01, 32, return_counts=True, method=method)
    ref = P.reference_ball_query(xyz.numpy(), centres.numpy(), 1.01, 32)
    np.testing.assert_array_equal(idx.numpy(), ref)
    assert (cnt[:, 5:] == 0).all()
    # an empty ball is filled with the nearest point
    nearest = P.square_distance(centres, xyz).argmin(-1)
    assert torch.equal(idx[:, 5:, 0], nearest[:, 5:])
    assert (idx[:, 5:] == idx[:, 5:, :1]).all()


def test_grid_handles_far_queries_and_tiny_radii():
    xyz = _cloud(1, 301, 19)
    far = torch.tensor([[[1e15, -1.5e19, 7.0], [0.5, 0.5, 0.5]]])    # cell index beyond int64
    for method in ("dense", "grid"):
        np.testing.assert_array_equal(P.knn(far, xyz, 5, method=method).numpy(),
                                      P.reference_knn(far.numpy(), xyz.numpy(), 5)[0])
        np.testing.assert_array_equal(P.ball_query(xyz, far, 0.1, 7, method=method).numpy(),
                                      P.reference_ball_query(xyz.numpy(), far.numpy(), 0.1, 7))
    # a radius far below the spacing: the grid would need ~1e40 cells, dense takes over
    np.testing.assert_array_equal(P.ball_query(xyz, xyz[:, :9], 1e-14, 3, method="grid").numpy(),
                                  P.reference_ball_query(xyz.numpy(), xyz[:, :9].numpy(), 1e-14, 3))


def test_ball_query_errors():
    with pytest.raises(ValueError, match="radius"):
        P.ball_query(_cloud(1, 5, 0), _cloud(1, 2, 0), 0.0, 4)
    with pytest.raises(ValueError, match="batch"):
        P.ball_query(_cloud(2, 5, 0), _cloud(1, 2, 0), 0.1, 4)


# ----------------------------------------------------------------------------- kNN

@pytest.mark.parametrize("method", ["dense", "grid"])
@pytest.mark.parametrize("chunk", [None, 70])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_knn_matches_reference_random(chunk, dtype, method):
    ref_pts = _cloud(2, 233, 5, dtype)
    query = torch.cat([_cloud(2, 57, 6, dtype), _cloud(2, 3, 7, dtype) * 5], 1)  # 3 far queries
    idx, dist = P.knn(query, ref_pts, 13, chunk_elements=chunk, return_dist=True, method=method)
    r_idx, r_dist = P.reference_knn(query.numpy(), ref_pts.numpy(), 13)
    np.testing.assert_array_equal(idx.numpy(), r_idx)
    np.testing.assert_array_equal(dist.numpy(), r_dist)


@pytest.mark.parametrize("method", ["dense", "grid"])
def test_knn_ties_duplicates_and_k_larger_than_n(method):
    pts = _duplicated(2, 41, 7)                                 # heavy ties at every distance
    for k in (3, 11):                                           # k-th distance 0 and > 0
        idx, dist = P.knn(pts, pts, k, return_dist=True, chunk_elements=100, method=method)
        r_idx, r_dist = P.reference_knn(pts.numpy(), pts.numpy(), k)
        np.testing.assert_array_equal(idx.numpy(), r_idx)
        np.testing.assert_array_equal(dist.numpy(), r_dist)
    small = pts[:, :6]
    idx = P.knn(pts, small, 9, method=method)                   # k > N: pad with the nearest
    r_idx, _ = P.reference_knn(pts.numpy(), small.numpy(), 9)
    np.testing.assert_array_equal(idx.numpy(), r_idx)
    assert (idx[..., 6:] == idx[..., :1]).all()


def test_grid_back_end_scans_cells_not_everything(monkeypatch):
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


def test_knn_distance_gradient():
    q = _cloud(1, 7, 8, torch.float64).requires_grad_()
    r = _cloud(1, 23, 9, torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: P.knn(a, b, 4, return_dist=True)[1], (q, r))


# ----------------------------------------------------------------------------- grouping, interpolation

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


@pytest.mark.parametrize("squared", [True, False])
@pytest.mark.parametrize("m", [2, 3, 29])
def test_three_interpolate_matches_reference(squared, m):
    query, known = _cloud(2, 43, 11), _cloud(2, m, 12)
    feats = torch.randn(2, m, 6, generator=torch.Generator().manual_seed(3))
    out = P.three_interpolate(query, known, feats, squared=squared)
    ref = P.reference_three_interpolate(query.numpy(), known.numpy(), feats.numpy(), squared=squared)
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-5, atol=1e-6)


def test_three_interpolate_exact_at_known_points_and_gradients():
    known = _cloud(1, 17, 13, torch.float64)
    feats = torch.randn(1, 17, 3, dtype=torch.float64, requires_grad=True)
    out = P.three_interpolate(known, known, feats, eps=1e-30)
    torch.testing.assert_close(out, feats, rtol=1e-9, atol=1e-9)  # weight of distance 0 dominates
    q = _cloud(1, 5, 14, torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, f: P.three_interpolate(a, known, f), (q, feats))


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
    rows = bench_points.main(["--smoke", "--out", str(tmp_path / "bp")])
    assert {r["op"].split(" r=")[0].split(" k=")[0] for r in rows} == \
        {"farthest point sampling", "ball query", "kNN"}
    assert all(r["equals_reference"] for r in rows)
    assert (tmp_path / "bp.csv").is_file() and "ckdtree_s" in (tmp_path / "bp.md").read_text()
