"""The point-cloud renderer writes non-empty PNGs of the requested size."""
import numpy as np
import pytest
import torch
from matplotlib.image import imread

from shared.pointcloud import render as R


def _cloud(n=500):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 3)).astype(np.float32)


def _check_png(path, size):
    img = imread(path)
    assert img.shape[:2] == (size[1], size[0])
    assert img[..., :3].std() > 0.01                              # not a blank canvas
    return img


def test_labels_keypoints_segments(tmp_path):
    pts = _cloud()
    labels = (pts[:, 0] > 0).astype(int)
    segs = np.stack([pts[:5], pts[5:10]], 1)
    p = R.render_points(pts, tmp_path / "a" / "lab.png", labels=labels, label_names=["l", "r"],
                        keypoints=pts[:4], keypoint_names=list("abcd"), segments=segs,
                        size=(321, 243), title="t")
    _check_png(p, (321, 243))


def test_scores_torch_input_and_boxes(tmp_path):
    pts = torch.from_numpy(_cloud())
    edges = R.box_edges([0, 0, 0], [1, 2, 0.5], yaw=0.3)
    assert edges.shape == (12, 2, 3)
    lengths = sorted(np.linalg.norm(edges[:, 0] - edges[:, 1], axis=1).round(6))
    assert lengths == [1.0] * 4 + [2.0] * 4 + [4.0] * 4
    p = R.render_points(pts, tmp_path / "s.png", scores=pts[:, 1], segments=edges,
                        segment_colors="r", size=(400, 300))
    _check_png(p, (400, 300))


def test_colours_differ_by_label(tmp_path):
    """Two halves with different labels must produce more distinct colours than one label."""
    pts = _cloud(2000)
    one = _check_png(R.render_points(pts, tmp_path / "1.png", labels=np.zeros(2000, int),
                                     size=(200, 200), point_size=20), (200, 200))
    two = _check_png(R.render_points(pts, tmp_path / "2.png", labels=(pts[:, 0] > 0).astype(int),
                                     size=(200, 200), point_size=20), (200, 200))
    n_colours = lambda img: len(np.unique((img[..., :3] * 8).astype(int).reshape(-1, 3), axis=0))  # noqa: E731
    assert n_colours(two) > n_colours(one)


def test_grid_and_errors(tmp_path):
    pts = _cloud(200)
    p = R.render_grid([dict(points=pts, title="a"), dict(points=pts, labels=np.arange(200) % 3)],
                      tmp_path / "g.png", cols=2, cell=(150, 120))
    _check_png(p, (300, 120))
    with pytest.raises(ValueError, match="labels has 3 entries for 200 points"):
        R.render_points(pts, tmp_path / "x.png", labels=[0, 1, 2])
