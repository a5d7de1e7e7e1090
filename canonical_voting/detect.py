"""From per-point predictions to boxes: vote maps, LCC-aware back-projection checking, NMS.

Back-projection checking (brief Sec. 1, the reference's evaluation loop), repeated until the
vote maps hold no peak above ``vote_threshold``:

1. ``c = argmax G_obj``; stop when ``G_obj[c] < vote_threshold`` (a sum of vote weights).
2. Zero the ``(2 r + 1)^3`` cube of cells around ``c`` (``r = suppress_radius``).
3. Candidate box: yaw ``atan2(G_rot[c])``, half extents ``G_scale[c]``, centre = cell ``c``.
4. Zero every vote cell whose centre lies inside the candidate box.
5. Scene points inside the box: reject with fewer than ``min_points``, or when fewer than
   ``active_fraction`` of them have weight above ``active_weight``.
6. (LCC check) For the inside points with weight above ``active_weight``, compare the predicted
   LCC with the LCC the candidate box implies; reject when the mean of ``|lcc_pred - lcc_box|_2 *
   w`` exceeds ``lcc_error`` (the paper's false-positive filter).
7. Accept: class = the majority predicted class of those points, score = the largest weight
   inside the box.

Then per-class rotated NMS at ``nms_iou``. The defaults are the paper's (3 cm voxels: 60 votes,
10 points, 20 %, weight 0.3, LCC error 0.3, NMS 0.3, 120 yaws); they scale with the voxel size
(see ``canonical_voting.config``). The regression baseline goes through the same steps with its
one vote per point and without step 6 (it predicts no LCC).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .boxes import lcc as box_lcc
from .boxes import nms
from .metrics import Detection
from .voting import VoteMaps, canonical_vote, direct_vote, make_grid


@dataclass
class DetectConfig:
    n_rot: int = 120
    vote_voxel: float = 0.03
    max_vote_cells: int = 1 << 25
    vote_threshold: float = 60.0
    suppress_radius: int = 2
    min_points: int = 10
    active_weight: float = 0.3
    active_fraction: float = 0.2
    lcc_error: float = 0.3
    lcc_check: bool = True
    nms_iou: float = 0.3
    max_candidates: int = 200
    chunk_pairs: int = 1 << 18


@dataclass
class ScenePrediction:
    """Per-point predictions of one scene (all ``(N, ...)`` on one device).

    ``weight``: vote weight (joint: max non-background class probability; separate: P(object));
    ``label``: predicted class index; ``scale``: half extents of the predicted class;
    canonical voting: ``lcc``; regression baseline: ``offset`` (to the centre) and ``yaw``."""
    positions: torch.Tensor
    weight: torch.Tensor
    label: torch.Tensor
    scale: torch.Tensor
    lcc: torch.Tensor | None = None
    offset: torch.Tensor | None = None
    yaw: torch.Tensor | None = None


def vote_maps(pred: ScenePrediction, cfg: DetectConfig) -> VoteMaps:
    grid = make_grid(pred.positions, cfg.vote_voxel, cfg.max_vote_cells)
    if pred.lcc is not None:
        return canonical_vote(pred.positions, pred.lcc, pred.scale, pred.weight, grid,
                              cfg.n_rot, cfg.chunk_pairs)
    return direct_vote(pred.positions, pred.offset, pred.yaw, pred.scale, pred.weight, grid,
                       cfg.chunk_pairs)


def _zero_inside(obj: torch.Tensor, maps: VoteMaps, centre, half, yaw) -> None:
    """Zero the vote cells whose centre lies inside the box (step 4)."""
    grid = maps.grid
    reach = float(torch.linalg.vector_norm(half[[0, 2]]))          # footprint radius
    ext = torch.stack([half.new_tensor(reach), half[1], half.new_tensor(reach)])
    lo = torch.floor((centre - ext - grid.origin) / grid.voxel).long().clamp_min(0)
    hi = torch.ceil((centre + ext - grid.origin) / grid.voxel).long()
    hi = torch.minimum(hi, torch.tensor(grid.dims, device=hi.device) - 1)
    if (hi < lo).any():
        return
    axes = [torch.arange(int(lo[i]), int(hi[i]) + 1, device=obj.device) for i in range(3)]
    idx = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    pos = grid.origin + grid.voxel * idx.to(grid.origin.dtype)
    inside = (box_lcc(pos, centre, half, yaw).abs() < 1).all(1)
    sel = idx[inside]
    obj[sel[:, 0], sel[:, 1], sel[:, 2]] = 0


@dataclass
class Candidate:
    """A peak of the vote maps with its box and the statistics the checks test."""
    box: np.ndarray             # (7,)
    peak: float                 # G_obj at the peak (sum of vote weights)
    n_inside: int               # scene points inside the box
    n_active: int               # ... of which with weight above active_weight
    lcc_error: float            # mean |lcc_pred - lcc_box|_2 * w over the active points (nan: none)
    label: int                  # majority predicted class of the active points (-1: none)
    score: float                # largest weight inside the box


def candidates(maps: VoteMaps, pred: ScenePrediction, cfg: DetectConfig) -> list[Candidate]:
    """Steps 1-4 and the statistics of steps 5-7 for every peak down to ``cfg.vote_threshold``.

    The peaks, their order and their boxes do not depend on the checks (cells are zeroed whether
    a candidate is accepted or not), so one pass at a low threshold serves every threshold."""
    obj = maps.obj.clone()
    grid = maps.grid
    dims = torch.tensor(grid.dims, device=obj.device)
    r = cfg.suppress_radius
    out = []
    for _ in range(cfg.max_candidates):
        value, flat = obj.reshape(-1).max(0)
        if float(value) < cfg.vote_threshold:
            break
        c = torch.stack([flat // (dims[1] * dims[2]), (flat // dims[2]) % dims[1], flat % dims[2]])
        lo, hi = (c - r).clamp_min(0), torch.minimum(c + r + 1, dims)
        obj[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = 0
        cos_sin = maps.rot[c[0], c[1], c[2]]
        yaw = torch.atan2(cos_sin[1], cos_sin[0])
        half = maps.scale[c[0], c[1], c[2]]
        centre = grid.position(c)
        if not bool((half > 1e-4).all()):
            continue
        _zero_inside(obj, maps, centre, half, yaw)
        local = box_lcc(pred.positions, centre, half, yaw)
        inside = (local.abs() < 1).all(1)
        active = inside & (pred.weight > cfg.active_weight)
        n_in, n_active = int(inside.sum()), int(active.sum())
        err, label = float("nan"), -1
        if n_active:
            label = int(torch.mode(pred.label[active]).values)
            if pred.lcc is not None:
                err = float((torch.linalg.vector_norm(pred.lcc[active] - local[active], dim=1)
                             * pred.weight[active]).mean())
        score = float(pred.weight[inside].max()) if n_in else 0.0
        box = torch.cat([centre, half, yaw[None]]).double().cpu().numpy()
        out.append(Candidate(box, float(value), n_in, n_active, err, label, score))
    return out


def accepted(c: Candidate, cfg: DetectConfig) -> bool:
    """Steps 1, 5 and 6: enough votes, points, active points and (with an LCC) agreement."""
    if c.peak < cfg.vote_threshold or c.n_inside < cfg.min_points:
        return False
    if c.n_active == 0 or c.n_active < cfg.active_fraction * c.n_inside:
        return False
    return not (cfg.lcc_check and c.lcc_error == c.lcc_error and c.lcc_error > cfg.lcc_error)


def back_projection_check(maps: VoteMaps, pred: ScenePrediction, cfg: DetectConfig):
    """Candidate boxes that pass the checks: list of ``(box (7,), label index, score)``."""
    return [(c.box, c.label, c.score) for c in candidates(maps, pred, cfg) if accepted(c, cfg)]


def finish(cands, classes, cfg: DetectConfig) -> list[Detection]:
    """Per-class NMS of accepted ``(box, label, score)`` triples -> detections."""
    if not cands:
        return []
    boxes = np.stack([b for b, _, _ in cands])
    labels = np.array([l for _, l, _ in cands])
    scores = np.array([s for _, _, s in cands])
    keep = nms(boxes, scores, labels, cfg.nms_iou)
    return [Detection(_wrap_yaw(boxes[i]), classes[labels[i]], float(scores[i])) for i in keep]


def detect(pred: ScenePrediction, classes, cfg: DetectConfig) -> list[Detection]:
    """Detections of one scene: vote maps, back-projection checking, per-class NMS."""
    if len(pred.positions) == 0:
        return []
    return finish(back_projection_check(vote_maps(pred, cfg), pred, cfg), classes, cfg)


def _wrap_yaw(box: np.ndarray) -> np.ndarray:
    box = box.copy()
    box[6] = math.remainder(box[6], 2 * math.pi)
    return box
