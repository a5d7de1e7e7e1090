"""Procedural scenes: boxes contain their objects, objects do not overlap, labels agree."""
import math

import numpy as np
import pytest

from shared.pointcloud import scenes as SC


@pytest.fixture(scope="module")
def scenes():
    return [SC.make_scene(seed, n_points=6000) for seed in range(4)]


def test_deterministic():
    a, b, c = SC.make_scene(3, 2000), SC.make_scene(3, 2000), SC.make_scene(4, 2000)
    np.testing.assert_array_equal(a.points, b.points)
    np.testing.assert_array_equal(a.boxes, b.boxes)
    assert not np.array_equal(a.points, c.points)


def test_layout_and_labels(scenes):
    for s in scenes:
        N, M = len(s.points), len(s.boxes)
        assert N == 6000 and s.colors.shape == (N, 3) and s.boxes.shape == (M, 7)
        assert 4 <= M <= 8
        assert ((s.colors >= 0) & (s.colors <= 1)).all()
        bg = s.instances < 0
        assert (s.labels[bg] == -1).all() and (s.structure[bg] > 0).all()
        assert (s.structure[~bg] == 0).all()
        for m in range(M):
            assert (s.labels[s.instances == m] == s.box_labels[m]).all()
            assert (s.instances == m).sum() > 0
        X, Z = s.room_size
        assert np.abs(s.points[:, 0]).max() <= X / 2 + 1e-5 and np.abs(s.points[:, 2]).max() <= Z / 2 + 1e-5
        assert s.points[:, 1].min() >= -1e-6 and (s.structure == 1).any() and (s.structure == 2).any()
        assert abs((~bg).mean() - 0.5) < 1e-3                    # object_share


def test_boxes_contain_their_objects_and_nothing_overlaps(scenes):
    for s in scenes:
        inside = SC.points_in_boxes(s.points, s.boxes, margin=1e-4)
        tight = SC.points_in_boxes(s.points, s.boxes, margin=-0.02)
        for m in range(len(s.boxes)):
            own = s.instances == m
            assert inside[own, m].all()
            # no point of another object inside this box, and the box is tight (its own points
            # reach within 2 cm of every face: some fall outside the shrunken box)
            assert not inside[(s.instances >= 0) & ~own, m].any()
            assert not tight[own, m].all()
            assert abs(s.boxes[m, 1] - s.boxes[m, 4]) < 1e-5    # standing on the floor
        # footprints stay inside the room
        for b in s.boxes:
            corners = SC.box_corners(b)
            assert (np.abs(corners[:, 0]) <= s.room_size[0] / 2).all()
            assert (np.abs(corners[:, 2]) <= s.room_size[1] / 2).all()


def test_box_corners_and_yaw_convention():
    box = np.array([1.0, 2.0, 3.0, 0.5, 0.25, 0.1, math.pi / 2])
    c = SC.box_corners(box)
    assert np.allclose(c[:4, 1], 2.25) and np.allclose(c[4:, 1], 1.75)
    # +x of the box frame turns towards -z of the world for yaw = +90 degrees (right-handed)
    np.testing.assert_allclose(c[0] - c[1], [0, 0, -1.0], atol=1e-12)
    assert SC.points_in_boxes(c, box, margin=1e-9).all()
    assert not SC.points_in_boxes(c * 1.01, box).all()


def test_errors():
    with pytest.raises(ValueError, match="object_share"):
        SC.make_scene(0, 100, object_share=1.0)
    with pytest.raises(ValueError, match="n_objects"):
        SC.make_scene(0, 100, n_objects=(3, 2))


def test_cli_writes_picture(tmp_path):
    from matplotlib.image import imread
    out = tmp_path / "scene.png"
    SC.main(["--seed", "1", "--points", "3000", "--out", str(out)])
    img = imread(out)
    assert img.shape[:2] == (800, 1000) and img[..., :3].std() > 0.01
