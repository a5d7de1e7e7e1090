"""Data: procedural shapes with their keypoints, ShapeNetCore v2 HDF5 selected by category
name, KeypointNet annotations + pcds, and one clear error for each kind of bad input."""
import json

import numpy as np
import pytest

from shared.pointcloud.pcio import write_h5, write_points
from shared.pointcloud.shapes import KEYPOINT_NAMES
from skeleton_merger.data import DataError, keypointnet, procedural, shapenet


def write_shapenet(root, names=("airplane", "chair", "chair", "car", "chair"), n=64, seed=0,
                   split="train", nan_at=None):
    """A tiny ShapeNetCore v2 HDF5 split in AnTao97's layout (two files, id2name beside)."""
    rng = np.random.default_rng(seed)
    data = (rng.random((len(names), n, 3)) * 2 - 1).astype(np.float32)
    if nan_at is not None:
        data[nan_at, 3, 1] = np.nan
    half = len(names) // 2
    for i, sl in enumerate([slice(0, half), slice(half, None)]):
        write_h5(root / f"{split}{i}.h5", data=data[sl], label=np.arange(len(names))[sl, None])
        (root / f"{split}{i}_id2name.json").write_text(json.dumps(list(names[sl])))
    return data


def write_keypointnet(root, category="chair", models=3, n=70, seed=0):
    """A tiny KeypointNet: annotations/<category>.json and ASCII pcds/<class>/<model>.pcd."""
    rng = np.random.default_rng(seed)
    entries, clouds = [], []
    for m in range(models):
        pts = rng.random((n, 3)).astype(np.float32)
        write_points(root / "pcds" / "03001627" / f"model{m}.pcd", pts, binary=False)
        index = rng.choice(n, 3 + m, replace=False)
        entries.append({"class_id": "03001627", "model_id": f"model{m}",
                        "keypoints": [{"xyz": pts[i].tolist(), "semantic_id": int(s),
                                       "pcd_info": {"point_index": int(i)}}
                                      for s, i in enumerate(index)]})
        clouds.append(pts)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / f"{category}.json").write_text(json.dumps(entries))
    return clouds, entries


def test_procedural_shapes_carry_their_keypoints():
    s = procedural("chair", 4, 300, seed=2)
    v = procedural("chair", 4, 300, seed=2, split="val")
    assert s.points.shape == (4, 300, 3) and s.points.dtype == np.float32
    assert s.points.min() == -1 and s.points.max() == 1            # scalar min/max per shape
    G = len(KEYPOINT_NAMES["chair"])
    assert s.keypoints.shape == (4, G, 3) and s.semantic_ids[0].tolist() == list(range(G))
    # ground truth = points of the raw cloud (KeypointNet's pcd[point_index])
    assert all((s.raw[m] == s.keypoints[m][:, None]).all(-1).any(-1).all() for m in range(4))
    assert not np.allclose(s.raw, v.raw)                            # disjoint seeds
    again = procedural("chair", 4, 300, seed=2)
    assert np.array_equal(s.points, again.points)                   # deterministic
    with pytest.raises(DataError, match="choose one of: airplane"):
        procedural("spaceship", 2, 100)


def test_shapenet_selects_the_category_by_name(tmp_path):
    data = write_shapenet(tmp_path)
    s = shapenet(tmp_path, "Chair", "train", 64)
    assert len(s) == 3
    np.testing.assert_array_equal(s.raw, data[[1, 2, 4]])
    sub = shapenet(tmp_path, "chair", "train", 40, seed=1)
    assert sub.points.shape == (3, 40, 3)
    with pytest.raises(DataError, match="valid categories: airplane, car, chair"):
        shapenet(tmp_path, "lamp", "train", 64)
    with pytest.raises(DataError, match="fewer than --num_points 100"):
        shapenet(tmp_path, "chair", "train", 100)


def test_bad_shapenet_files_give_one_clear_error(tmp_path):
    write_shapenet(tmp_path, nan_at=2)
    with pytest.raises(DataError, match="NaN or inf"):
        shapenet(tmp_path, "chair", "train", 64)
    with pytest.raises(DataError, match="no files matching"):
        shapenet(tmp_path, "chair", "val", 64)
    empty = tmp_path / "noname"
    empty.mkdir()
    write_h5(empty / "train0.h5", data=np.zeros((2, 8, 3), np.float32), label=np.zeros((2, 1)))
    with pytest.raises(DataError, match="id2name"):
        shapenet(empty, "chair", "train", 8)


def test_keypointnet_reads_annotations_and_pcds(tmp_path):
    clouds, entries = write_keypointnet(tmp_path)
    s = keypointnet(tmp_path, "chair")
    assert len(s) == 3 and s.keypoints.shape == (3, 5, 3)
    assert s.valid.sum(1).tolist() == [3, 4, 5]
    for m, e in enumerate(entries):
        idx = [kp["pcd_info"]["point_index"] for kp in e["keypoints"]]
        np.testing.assert_allclose(s.keypoints[m, :len(idx)], clouds[m][idx], atol=1e-6)
        assert s.semantic_ids[m, :len(idx)].tolist() == list(range(len(idx)))
    with pytest.raises(DataError, match="categories there: chair"):
        keypointnet(tmp_path, "airplane")
    (tmp_path / "annotations" / "chair.json").write_text("[{\"class_id\": \"x\"}]")
    with pytest.raises(DataError, match="lacks"):
        keypointnet(tmp_path, "chair")
