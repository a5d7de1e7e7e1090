"""Oriented boxes (yaw about the up axis y): local canonical coordinates, symmetries, rotated 3D
IoU and NMS.

A box is ``(cx, cy, cz, hx, hy, hz, yaw)``: centre, **half** extents in the object's frame, and
the yaw of that frame, ``R_y(yaw) = [[cos, 0, sin], [0, 1, 0], [-sin, 0, cos]]``
(:func:`shared.pointcloud.points.yaw_rotation`; the reference code writes ``R_y`` with the
opposite sign of ``sin``, i.e. our ``R_y(-yaw)``: we use the shared convention throughout, so
votes, boxes and data agree). A point ``p`` of the object has

    LCC(p) = R_y(yaw)^T (p - c) / h   in ~[-1, 1]^3  (the box frame scaled to the unit cube),

and conversely ``p = c + R_y(yaw) (LCC * h)``: the vote of a point for yaw ``theta`` is
``p - R_y(theta) (LCC * h)``. Box corners map to ``(+-1, +-1, +-1)``.

Rotated IoU: the intersection of the two footprints in the x-z plane (convex polygons, clipped by
Sutherland-Hodgman, written here because shapely is not a dependency) times the overlap of the
vertical extents, over the union volume.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from shared.pointcloud.points import yaw_rotation

# symmetry codes of Scan2CAD's ``sym`` field (index = code)
SYMMETRIES = ("__SYM_NONE", "__SYM_ROTATE_UP_2", "__SYM_ROTATE_UP_4", "__SYM_ROTATE_UP_INF")
SYM_NONE, SYM_UP2, SYM_UP4, SYM_UPINF = range(4)
SYM_ROTATIONS = {SYM_NONE: 1, SYM_UP2: 2, SYM_UP4: 4, SYM_UPINF: 36}
"""frames an object of each symmetry is indistinguishable in: rotations by 2 pi j / n about y
(the reference's 36 steps of 10 degrees for rotationally symmetric objects)"""
MAX_SYM = max(SYM_ROTATIONS.values())


def lcc(points: torch.Tensor, centre: torch.Tensor, half: torch.Tensor,
        yaw: torch.Tensor) -> torch.Tensor:
    """Local canonical coordinates of ``points (N, 3)`` in boxes given per point (``centre
    (N, 3)``, ``half (N, 3)``, ``yaw (N,)``) or one box (``(3,)``, ``(3,)``, ``()``)."""
    R = yaw_rotation(yaw.to(points.dtype))                                    # (N, 3, 3) or (3, 3)
    d = points - centre
    local = (d.unsqueeze(-2) @ R).squeeze(-2) if R.dim() == 3 else d @ R       # R^T d, row form
    return local / half


def from_lcc(points: torch.Tensor, lcc_: torch.Tensor, half: torch.Tensor,
             yaw) -> torch.Tensor:
    """The centre each point implies: ``p - R_y(yaw) (lcc * h)`` (one yaw or one per point)."""
    R = yaw_rotation(torch.as_tensor(yaw, dtype=points.dtype))
    local = lcc_ * half
    off = (local.unsqueeze(-2) @ R.transpose(-1, -2)).squeeze(-2) if R.dim() == 3 else local @ R.T
    return points - off


def sym_rotations(code: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(angles (N, MAX_SYM), valid (N, MAX_SYM))``: the frame rotations of each object's
    symmetry (``2 pi j / n``, ``j < n``); invalid slots hold 0."""
    n = torch.tensor([SYM_ROTATIONS[i] for i in range(len(SYMMETRIES))],
                     device=code.device)[code.long()]
    j = torch.arange(MAX_SYM, device=code.device)
    valid = j[None, :] < n[:, None]
    angles = torch.where(valid, 2 * math.pi * j[None, :] / n[:, None].clamp_min(1),
                         torch.zeros((), device=code.device))
    return angles, valid


def rotate_lcc(lcc_: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """LCC of the same points in frames rotated by ``angles (N, J)`` about y:
    ``R_y(phi)^T lcc`` -> ``(N, J, 3)`` (exact for a 180-degree turn; for 4-fold and full
    rotational symmetry it assumes equal x and z extents, as the reference does)."""
    R = yaw_rotation(angles.to(lcc_.dtype))                                    # (N, J, 3, 3)
    return (lcc_[:, None, None, :] @ R).squeeze(-2)


# ----------------------------------------------------------------------------- rotated IoU

def footprint(box) -> np.ndarray:
    """``(4, 2)`` x-z corners of a box's footprint, counter-clockwise in the (x, z) plane."""
    b = np.asarray(box, dtype=np.float64)
    c, s = math.cos(b[6]), math.sin(b[6])
    local = np.array([[1, 1], [-1, 1], [-1, -1], [1, -1]], float) * b[[3, 5]]
    # R_y acting on (lx, lz): x = c lx + s lz, z = -s lx + c lz
    x = b[0] + c * local[:, 0] + s * local[:, 1]
    z = b[2] - s * local[:, 0] + c * local[:, 1]
    poly = np.stack([x, z], 1)
    return poly if _area(poly) >= 0 else poly[::-1]


def _area(poly: np.ndarray) -> float:
    x, y = poly[:, 0], poly[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def _clip(subject: np.ndarray, clipper: np.ndarray) -> np.ndarray:
    """Sutherland-Hodgman: ``subject`` clipped by the convex, counter-clockwise ``clipper``."""
    out = subject
    for i in range(len(clipper)):
        if len(out) == 0:
            break
        a, b = clipper[i], clipper[(i + 1) % len(clipper)]
        edge = b - a
        side = edge[0] * (out[:, 1] - a[1]) - edge[1] * (out[:, 0] - a[0])     # >= 0: inside
        new = []
        for j in range(len(out)):
            p, q = out[j], out[(j + 1) % len(out)]
            sp, sq = side[j], side[(j + 1) % len(out)]
            if sp >= 0:
                new.append(p)
            if (sp >= 0) != (sq >= 0):
                t = sp / (sp - sq)
                new.append(p + t * (q - p))
        out = np.array(new).reshape(-1, 2)
    return out


def iou_3d(a, b) -> float:
    """Rotated 3D IoU of two boxes ``(cx, cy, cz, hx, hy, hz, yaw)`` (yaw about y)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    lo, hi = max(a[1] - a[4], b[1] - b[4]), min(a[1] + a[4], b[1] + b[4])
    if hi <= lo:
        return 0.0
    # cheap reject: footprints' circumscribed circles apart
    if math.hypot(a[0] - b[0], a[2] - b[2]) > math.hypot(a[3], a[5]) + math.hypot(b[3], b[5]):
        return 0.0
    inter_poly = _clip(footprint(a), footprint(b))
    inter = (_area(inter_poly) if len(inter_poly) >= 3 else 0.0) * (hi - lo)
    va, vb = 8 * a[3] * a[4] * a[5], 8 * b[3] * b[4] * b[5]
    union = va + vb - inter
    return float(inter / union) if union > 0 else 0.0


def iou_matrix(a, b) -> np.ndarray:
    """``(len(a), len(b))`` rotated IoUs."""
    a, b = np.asarray(a, np.float64).reshape(-1, 7), np.asarray(b, np.float64).reshape(-1, 7)
    return np.array([[iou_3d(x, y) for y in b] for x in a]).reshape(len(a), len(b))


def nms(boxes, scores, labels, iou_threshold: float) -> np.ndarray:
    """Per-class greedy NMS: keep the highest score, drop same-class boxes with IoU above the
    threshold; returns kept indices in descending score order."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 7)
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels)
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    for i in order:
        if all(labels[j] != labels[i] or iou_3d(boxes[i], boxes[j]) <= iou_threshold
               for j in keep):
            keep.append(int(i))
    return np.array(keep, dtype=np.int64)
