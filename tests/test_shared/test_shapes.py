"""Procedural shape categories: determinism, documented parts and keypoints, canonical pose.

Keypoints must lie on the mesh surface: their unsigned distance to the triangles (open3d
RaycastingScene) must be below 1e-3 in unit-sphere units. Keypoints on curved parts sit on the
true curve while the mesh is a polygon with 24-96 segments, whose sagitta is at most ~4e-4 of
the radius; everything else is placed on a face exactly (float64 rounding only).
"""
import numpy as np
import pytest

from shared.pointcloud import shapes as S

SEEDS = (0, 1, 2)


def test_vocabulary():
    assert len(S.CATEGORIES) >= 8
    for c in ("chair", "table", "airplane", "car", "lamp", "mug", "guitar", "bottle"):
        assert c in S.CATEGORIES
    assert S.NUM_PARTS == sum(len(S.PART_NAMES[c]) for c in S.CATEGORIES)
    assert all(len(set(S.KEYPOINT_NAMES[c])) == len(S.KEYPOINT_NAMES[c]) for c in S.CATEGORIES)


@pytest.mark.parametrize("category", S.CATEGORIES)
def test_deterministic_per_seed(category):
    a, b = S.make_shape(category, 5, 512), S.make_shape(category, 5, 512)
    c = S.make_shape(category, 6, 512)
    np.testing.assert_array_equal(a.points, b.points)
    np.testing.assert_array_equal(a.parts, b.parts)
    np.testing.assert_array_equal(a.keypoints, b.keypoints)
    assert not np.array_equal(a.points, c.points)
    assert not np.allclose(a.keypoints, c.keypoints)           # proportions are randomised


@pytest.mark.parametrize("category", S.CATEGORIES)
def test_parts_and_keypoints(category):
    import open3d as o3d
    for seed in SEEDS:
        s = S.make_shape(category, seed, 2048)
        assert s.points.shape == (2048, 3) and s.points.dtype == np.float32
        assert s.parts.shape == (2048,) and s.label == S.CATEGORIES.index(category)
        names = S.PART_NAMES[category]
        present = {names[p] for p in np.unique(s.parts)}
        required = set(names) - set(S.OPTIONAL_PARTS.get(category, ()))
        assert required <= present <= set(names), (seed, present)
        assert (s.global_parts >= S.PART_OFFSETS[category]).all()
        assert s.keypoints.shape == (len(S.KEYPOINT_NAMES[category]), 3)
        # unit sphere, bounding box centred
        r = np.linalg.norm(s.mesh.vertices, axis=1)
        assert abs(r.max() - 1) < 1e-9 and np.linalg.norm(s.points, axis=1).max() <= 1 + 1e-5
        np.testing.assert_allclose(s.mesh.vertices.min(0) + s.mesh.vertices.max(0), 0, atol=1e-9)
        # keypoints on the surface, and near the sampled cloud
        scene = o3d.t.geometry.RaycastingScene()
        legacy = s.mesh.to_open3d()
        assert len(legacy.vertex_colors) == len(s.mesh.vertices)
        scene.add_triangles(o3d.t.geometry.TriangleMesh.from_legacy(legacy))
        d = scene.compute_distance(o3d.core.Tensor(s.keypoints)).numpy()
        assert d.max() < 1e-3, dict(zip(S.KEYPOINT_NAMES[category], d.round(5)))
        dist = np.linalg.norm(s.keypoints[:, None] - s.points[None], axis=-1)
        assert dist.min(1).max() < 0.15
        np.testing.assert_array_equal(s.keypoint_indices, dist.argmin(1))


def test_parts_are_sampled_by_area():
    # the table top is a slab covering the legs: most points must be on it
    s = S.make_shape("table", 0, 4000)
    assert (s.parts == S.PART_NAMES["table"].index("top")).mean() > 0.5


@pytest.mark.parametrize("seed", SEEDS)
def test_canonical_orientation_y_up_front_z(seed):
    kp = lambda s, n: s.keypoints[s.keypoint_names.index(n)]      # noqa: E731
    chair = S.make_shape("chair", seed, 256)
    assert kp(chair, "back_top_left")[1] > kp(chair, "seat_front_left")[1] > kp(chair, "leg_front_left_end")[1]
    assert kp(chair, "seat_front_left")[2] > kp(chair, "seat_back_left")[2]       # front is +z
    assert kp(chair, "seat_front_left")[0] > kp(chair, "seat_front_right")[0]     # left is +x
    plane = S.make_shape("airplane", seed, 256)
    assert kp(plane, "nose")[2] > kp(plane, "tail")[2] and kp(plane, "fin_top")[1] > kp(plane, "nose")[1]
    lamp = S.make_shape("lamp", seed, 256)
    assert kp(lamp, "shade_top_front")[1] > kp(lamp, "base_bottom_center")[1]
    metres = S.make_shape("chair", seed, 256, normalize=False)
    assert abs(metres.mesh.vertices[:, 1].min()) < 1e-12 and 0.7 < metres.points[:, 1].max() < 1.1


def test_make_dataset_layout():
    d = S.make_dataset(("chair", "table"), per_category=3, n_points=128)
    assert d["data"].shape == (6, 128, 3) and d["pid"].shape == (6, 128)
    assert d["label"].tolist() == [0, 0, 0, 1, 1, 1]
    assert "keypoints" not in d                                 # 10 vs 8 keypoints
    d = S.make_dataset(("cabinet", "bookshelf"), per_category=2, n_points=64)
    assert d["keypoints"].shape == (4, 6, 3)


def test_errors():
    with pytest.raises(ValueError, match="unknown shape category 'sofa_bed'"):
        S.make_shape("sofa_bed", 0)
    with pytest.raises(ValueError, match="n_points"):
        S.make_shape("chair", 0, 0)


def test_cli_writes_picture(tmp_path):
    from matplotlib.image import imread
    out = tmp_path / "chair.png"
    S.main(["--category", "chair", "--out", str(out), "--points", "1500"])
    img = imread(out)
    assert img.shape[:2] == (600, 800) and img[..., :3].std() > 0.01


def test_rotated_shape_keeps_keypoints_on_the_surface():
    import torch
    from shared.pointcloud.points import random_rotation
    s = S.make_shape("mug", 4, 512)
    R = random_rotation(generator=torch.Generator().manual_seed(0))
    r = s.rotated(R)
    np.testing.assert_allclose(r.points, s.points @ R.numpy().T, atol=1e-6)
    np.testing.assert_allclose(r.keypoints, s.keypoints @ R.numpy().T, atol=1e-6)
    np.testing.assert_array_equal(r.keypoint_indices, s.keypoint_indices)
    np.testing.assert_allclose(r.mesh.vertices, s.mesh.vertices @ R.numpy().T.astype(np.float64),
                               atol=1e-6)
    with pytest.raises(ValueError, match="rotation matrix"):
        s.rotated(np.eye(3) * 2)
