"""Data: voxelization and augmentation keep the LCC targets; the ScanNet + Scan2CAD reader on a
small generated tree (quaternions w first, M_scan, CAD boxes, regenerated segments); malformed
annotations, missing files and empty scenes give one clear error."""
import json
import math

import numpy as np
import pytest
import torch

from canonical_voting.boxes import SYM_UP2, iou_3d
from canonical_voting.data import (DataError, RawScene, ScanNetScenes, collate, make_targets,
                                   procedural_scenes, rotate_scene, voxelize)
from shared.pointcloud.pcio import write_points
from shared.pointcloud.scenes import points_in_boxes


@pytest.fixture(scope="module")
def scene():
    return procedural_scenes([7], n_points=4000, cache=False)[0]


def test_voxelize_keeps_one_point_per_cell_at_cell_centres(scene):
    s = voxelize(scene, 0.1, np.random.default_rng(0))
    assert len(torch.unique(s.coords, dim=0)) == len(s.coords)
    assert s.coords.min() == 0 and s.feats.abs().max() <= 1
    cells = torch.floor(s.positions / 0.1)
    torch.testing.assert_close(s.positions, (cells + 0.5) * 0.1, atol=1e-5, rtol=0)
    # the kept point of each voxel lies in that voxel, and carries its instance
    inside = points_in_boxes(s.positions.numpy(), scene.boxes, margin=0.1)
    on = s.instance >= 0
    assert on.any() and inside[on.numpy(), s.instance[on].numpy()].all()


def test_augmentation_rotates_points_and_boxes_together(scene):
    turned = rotate_scene(scene, 1.234)
    a, b = voxelize(scene, 0.05), voxelize(turned, 0.05)
    ta = make_targets(collate([a]), 6)
    tb = make_targets(collate([b]), 6)
    for t in (ta, tb):                       # object voxels sit inside their (slightly grown) box
        assert t.lcc[t.obj].abs().max() < 1.3
    # the same boxes, turned: identical sizes and classes, yaw shifted by the angle
    torch.testing.assert_close(b.boxes[:, 3:6], a.boxes[:, 3:6])
    dyaw = torch.remainder(b.boxes[:, 6] - a.boxes[:, 6] - 1.234 + math.pi, 2 * math.pi) - math.pi
    assert dyaw.abs().max() < 1e-5


def _quat_y(angle):
    return [math.cos(angle / 2), 0.0, math.sin(angle / 2), 0.0]          # w, x, y, z


def _scannet_tree(root, annotation_override=None):
    """One scan with one table: raw mesh z-up, M_scan = T(1, 0, 2) R_x(-90 deg) S(1)."""
    rng = np.random.default_rng(0)
    centre_cad, half_cad, scale = np.array([0, 0.1, 0]), np.array([0.5, 0.4, 0.3]), np.array([1.2, 1, 0.8])
    t_o, yaw = np.array([0.5, 0.5, -0.3]), 0.6
    box = np.r_[t_o + [0, 0.1, 0], half_cad * scale, yaw]
    u = rng.uniform(-1, 1, (600, 3))
    u[np.arange(600), rng.integers(0, 3, 600)] = np.sign(u[np.arange(600), 0])
    c, s = math.cos(yaw), math.sin(yaw)
    R = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    obj = (u * box[3:6]) @ R.T + box[:3]
    floor = np.c_[rng.uniform(-2, 3, 900), np.zeros(900), rng.uniform(-3, 2, 900)]
    yup = np.concatenate([obj, floor])
    # raw = M_scan^-1 (y-up): undo the translation, then R_x(-90)^T: (x, y, z) -> (x, -z, y)
    v = yup - [1.0, 0.0, 2.0]
    raw = np.stack([v[:, 0], -v[:, 2], v[:, 1]], 1)
    name = "scene0001_00"
    write_points(root / "scans" / name / f"{name}_vh_clean_2.ply", raw,
                 colors=rng.uniform(0, 1, (len(raw), 3)))
    (root / "scannetv2_train.txt").write_text(name + "\n")
    (root / "scannetv2_val.txt").write_text(name + "\n")
    ann = [{"id_scan": name,
            "trs": {"translation": [1.0, 0.0, 2.0], "rotation": [math.sqrt(0.5), -math.sqrt(0.5), 0, 0],
                    "scale": [1, 1, 1]},
            "aligned_models": [{"catid_cad": "04379243", "id_cad": "x", "sym": "__SYM_ROTATE_UP_2",
                                "center": centre_cad.tolist(), "bbox": half_cad.tolist(),
                                "trs": {"translation": t_o.tolist(), "rotation": _quat_y(yaw),
                                        "scale": scale.tolist()}},
                               {"catid_cad": "03001627", "center": [0, 0, 0], "bbox": [1, 1, 1],
                                "trs": {"translation": [0, 0, 0], "rotation": [1, 0, 0, 0],
                                        "scale": [0, 0, 0]}}]}]      # scale 0: skipped
    if annotation_override:
        annotation_override(ann)
    (root / "full_annotations.json").write_text(json.dumps(ann))
    return box, len(obj)


def test_scannet_scan2cad_reader(tmp_path):
    box, n_obj = _scannet_tree(tmp_path)
    scenes = ScanNetScenes(tmp_path, "train")
    raw = scenes.raw(0)
    assert raw.boxes.shape == (1, 7) and raw.box_labels.tolist() == [2]        # "table"
    assert raw.box_sym.tolist() == [SYM_UP2]
    np.testing.assert_allclose(raw.boxes[0], box, atol=1e-5)
    assert iou_3d(raw.boxes[0], box) > 0.999
    # points are back in the y-up frame (floor at y = 0) and the table's points are found
    assert abs(raw.points[n_obj:, 1]).max() < 1e-5
    assert (raw.instance[:n_obj] == 0).all() and (raw.instance[n_obj:] == -1).mean() > 0.9


@pytest.mark.parametrize("edit,message", [
    (lambda a: a[0]["trs"].update(rotation=[0.0, 1.0, 0.0]), "4 numbers (w, x, y, z)"),
    (lambda a: a[0]["aligned_models"][0].pop("bbox"), "expected 'center' (3), 'bbox'"),
    (lambda a: a[0].pop("aligned_models"), "expected a list 'aligned_models'"),
])
def test_malformed_annotations_name_the_file_and_the_field(tmp_path, edit, message):
    _scannet_tree(tmp_path, edit)
    with pytest.raises(DataError, match="full_annotations.json") as exc:
        ScanNetScenes(tmp_path, "train").raw(0)
    assert message in str(exc.value)


def test_missing_data_and_empty_scenes(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        ScanNetScenes(tmp_path / "nowhere", "train")
    tmp_path.joinpath("scannetv2_train.txt").write_text("scene0002_00\n")
    with pytest.raises(DataError, match="full_annotations.json"):
        ScanNetScenes(tmp_path, "train")
    (tmp_path / "full_annotations.json").write_text("{not json")
    with pytest.raises(DataError, match="is not Scan2CAD"):
        ScanNetScenes(tmp_path, "train")
    empty = RawScene("empty", np.zeros((0, 3), np.float32), np.zeros((0, 3), np.float32),
                     np.zeros(0, np.int64), np.zeros((0, 7), np.float32), np.zeros(0, np.int64),
                     np.zeros(0, np.int64))
    with pytest.raises(DataError, match="has no points"):
        voxelize(empty, 0.05)
