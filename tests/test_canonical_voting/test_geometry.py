"""Box geometry, voting, detection and AP against hand-computed values:
LCC targets map box corners to (+-1, +-1, +-1); rotated IoU of identical, disjoint, 90-degree
rotated and partially overlapping boxes; voting a synthetic object with perfect predictions
peaks at its true centre, yaw and size; the chunked vectorised vote equals a per-point loop;
AP of a hand-computed precision-recall example, with a class that has no prediction."""
import math

import numpy as np
import pytest
import torch

from canonical_voting.boxes import (SYM_NONE, SYM_UP2, SYM_UPINF, iou_3d, lcc, nms,
                                    rotate_lcc, sym_rotations)
from canonical_voting.detect import DetectConfig, ScenePrediction, detect
from canonical_voting.metrics import Detection, SceneBoxes, evaluate_detections, voc_ap
from canonical_voting.voting import (VoteGridError, canonical_vote, canonical_vote_loop,
                                     make_grid)
from shared.pointcloud.scenes import box_corners


def test_lcc_maps_box_corners_to_unit_cube_corners():
    box = np.array([0.4, 0.7, -1.2, 0.5, 0.35, 0.2, 1.1])
    corners = torch.from_numpy(box_corners(box))                          # shared's convention
    out = lcc(corners, torch.from_numpy(box[:3]), torch.from_numpy(box[3:6]),
              torch.tensor(box[6], dtype=torch.float64))
    signs = torch.tensor([[1, 1, 1], [-1, 1, 1], [-1, 1, -1], [1, 1, -1],
                          [1, -1, 1], [-1, -1, 1], [-1, -1, -1], [1, -1, -1]], dtype=torch.float64)
    torch.testing.assert_close(out, signs, atol=1e-12, rtol=0)
    # the symmetric frames: a 180-degree turn negates x and z
    angles, valid = sym_rotations(torch.tensor([SYM_NONE, SYM_UP2, SYM_UPINF]))
    assert valid.sum(1).tolist() == [1, 2, 36]
    turned = rotate_lcc(signs[:1].expand(3, 3), angles)[1, 1]
    torch.testing.assert_close(turned, torch.tensor([-1.0, 1, -1], dtype=torch.float64))


def test_rotated_iou_hand_computed():
    a = np.array([0, 0, 0, 1, 1, 1, 0.0])
    assert iou_3d(a, a) == pytest.approx(1.0)
    assert iou_3d(a, [5, 0, 0, 1, 1, 1, 0.3]) == 0.0                         # disjoint
    assert iou_3d(a, [0, 2.5, 0, 1, 1, 1, 0.0]) == 0.0                       # stacked apart
    assert iou_3d(a, a + [0, 0, 0, 0, 0, 0, math.pi / 2]) == pytest.approx(1.0)   # cube turned 90
    # a 2 x 1 footprint turned by 90 degrees: overlap 1 x 1, union 2 + 2 - 1
    r = np.array([0, 0, 0, 1, 0.5, 0.5, 0.0])
    assert iou_3d(r, r + [0, 0, 0, 0, 0, 0, math.pi / 2]) == pytest.approx(1 / 3)
    # shifted by half a side: overlap 1/2 of each, IoU = 1 / 3; vertical shift likewise
    assert iou_3d(a, [1.0, 0, 0, 1, 1, 1, 0]) == pytest.approx(1 / 3)
    assert iou_3d(a, [0, 1.0, 0, 1, 1, 1, 0]) == pytest.approx(1 / 3)
    # a square turned by 45 degrees: the octagon 2 (sqrt 2 - 1) of side-1 squares (side 2 here)
    inter = 4 * 2 * (math.sqrt(2) - 1) * 2
    assert iou_3d(a, a + [0, 0, 0, 0, 0, 0, math.pi / 4]) == pytest.approx(inter / (16 - inter))
    # NMS keeps the best of an overlapping pair, and boxes of another class
    keep = nms([a, a + [0.1, 0, 0, 0, 0, 0, 0], a], [0.5, 0.9, 0.7], [0, 0, 1], 0.3)
    assert keep.tolist() == [1, 2]


def test_ap_hand_computed_with_a_class_without_predictions():
    box = lambda x: np.array([x, 0, 0, 0.5, 0.5, 0.5, 0.0])
    gt = [SceneBoxes(np.stack([box(0), box(3), box(6)]), ["chair", "chair", "table"]),
          SceneBoxes(np.stack([box(0)]), ["sofa"])]
    dets = [[Detection(box(0.05), "chair", 0.9),       # TP
             Detection(box(10), "chair", 0.8),         # FP (no box there)
             Detection(box(0.0), "chair", 0.75),       # FP (duplicate of a matched box)
             Detection(box(3.1), "chair", 0.7)],       # TP
            [Detection(box(0), "chair", 0.95)]]        # FP: scene 1 has no chair
    out = evaluate_detections(dets, gt, ["chair", "table", "sofa", "lamp"], (0.25,))
    # chair: scores .95 F, .9 T, .8 F, .75 F, .7 T over 2 GT -> recall .5 at precision 1/2, then
    # 1.0 at precision 2/5: AP = 0.5 * 0.5 + 0.5 * 0.4
    ap = out["ap"][0.25]
    assert ap["chair"] == pytest.approx(0.45)
    assert ap["table"] == 0.0 and ap["sofa"] == 0.0 and math.isnan(ap["lamp"])
    assert out["map"][0.25] == pytest.approx(0.45 / 3)
    assert voc_ap(np.array([0.5, 1.0]), np.array([1.0, 0.5])) == pytest.approx(0.75)


def _object_points(box, n, gen):
    """Points on the surface of a box, and their exact LCC."""
    u = torch.rand(n, 3, generator=gen, dtype=torch.float64) * 2 - 1
    axis = torch.randint(0, 3, (n,), generator=gen)
    u[torch.arange(n), axis] = torch.sign(u[torch.arange(n), axis])
    b = torch.as_tensor(box, dtype=torch.float64)
    from canonical_voting.boxes import from_lcc
    pts = from_lcc(torch.zeros(n, 3, dtype=torch.float64), -u, b[3:6], b[6]) + b[:3]
    return pts, u


def test_perfect_predictions_peak_at_the_true_centre_yaw_and_size():
    gen = torch.Generator().manual_seed(0)
    box = [0.31, 0.42, -0.27, 0.4, 0.3, 0.25, 2.2]
    pts, u = _object_points(box, 600, gen)
    torch.testing.assert_close(lcc(pts, torch.tensor(box[:3], dtype=torch.float64),
                                   torch.tensor(box[3:6], dtype=torch.float64),
                                   torch.tensor(box[6], dtype=torch.float64)), u)
    clutter = torch.rand(300, 3, generator=gen, dtype=torch.float64) * 3 - 1.5
    positions = torch.cat([pts, clutter])
    half = torch.tensor(box[3:6], dtype=torch.float64).expand(len(positions), 3)
    weight = torch.cat([torch.ones(600), torch.zeros(300)]).double()
    lccs = torch.cat([u, torch.zeros(300, 3, dtype=torch.float64)])
    grid = make_grid(positions, 0.03, 1 << 22)
    maps = canonical_vote(positions, lccs, half, weight, grid, n_rot=120, chunk_pairs=5000)
    c = torch.stack(torch.unravel_index(maps.obj.argmax(), maps.obj.shape))
    assert torch.allclose(grid.position(c), torch.tensor(box[:3], dtype=torch.float64),
                          atol=0.03)
    yaw = math.atan2(*maps.rot[c[0], c[1], c[2]].flip(0).tolist())
    assert abs(math.remainder(yaw - box[6], 2 * math.pi)) < math.radians(4)
    torch.testing.assert_close(maps.scale[c[0], c[1], c[2]], half[0], atol=1e-6, rtol=0)
    # the whole pipeline finds exactly this box
    pred = ScenePrediction(positions.float(), weight.float(), torch.zeros(900, dtype=torch.long),
                           half.float(), lcc=lccs.float())
    dets = detect(pred, ["thing"], DetectConfig(vote_voxel=0.03, vote_threshold=20))
    assert len(dets) == 1 and dets[0].label == "thing"
    assert iou_3d(dets[0].box, box) > 0.8


def test_vectorised_chunked_vote_equals_the_per_point_loop():
    gen = torch.Generator().manual_seed(1)
    n = 40
    positions = torch.rand(n, 3, generator=gen, dtype=torch.float64)
    lccs = torch.rand(n, 3, generator=gen, dtype=torch.float64) * 2 - 1
    half = torch.rand(n, 3, generator=gen, dtype=torch.float64) * 0.3 + 0.05
    weight = torch.rand(n, generator=gen, dtype=torch.float64)
    grid = make_grid(positions, 0.05, 1 << 20)
    fast = canonical_vote(positions, lccs, half, weight, grid, n_rot=24, chunk_pairs=100)
    slow = canonical_vote_loop(positions, lccs, half, weight, grid, n_rot=24)
    assert fast.obj.sum() > 0
    for a, b in [(fast.obj, slow.obj), (fast.rot, slow.rot), (fast.scale, slow.scale)]:
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-9)


def test_vote_grid_budget_names_the_voxel_size_to_raise():
    positions = torch.tensor([[0.0, 0, 0], [10.0, 3, 10]])
    with pytest.raises(VoteGridError, match=r"raise --vote_voxel to 0\.0[5-9]"):
        make_grid(positions, 0.03, 1 << 20)
    with pytest.raises(VoteGridError, match="empty scene"):
        make_grid(torch.zeros(0, 3), 0.03, 1 << 20)
