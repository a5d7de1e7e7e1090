"""Detection evaluation: per-class VOC average precision at rotated-3D-IoU thresholds, keyed by
class name.

Rules (brief Sec. 4, the VoteNet/reference ``eval_det`` protocol): per class, detections of all
scenes sorted by score (descending, stable); a detection is a true positive when its largest IoU
with the scene's ground-truth boxes of that class is **above** the threshold (strictly) and that
box is not matched yet, otherwise a false positive; AP is the area under the all-point
interpolated precision-recall curve (VOC 2010+). mAP is the mean over the classes that have
ground truth; a class with ground truth and no detection has AP 0.

The reference indexes its per-class results by position over all ground-truth classes while only
classes with detections were evaluated, so classes shift when one has no detection (brief Sec. 6,
pitfall 6); here every result is a dict keyed by class name.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .boxes import iou_matrix


@dataclass
class Detection:
    box: np.ndarray          # (7,) cx, cy, cz, hx, hy, hz, yaw
    label: str
    score: float


@dataclass
class SceneBoxes:
    """Ground truth of one scene: ``boxes (M, 7)`` and one class name per box."""
    boxes: np.ndarray
    labels: list = field(default_factory=list)


def voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """Area under the all-point interpolated PR curve (precision made monotone from the right)."""
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    idx = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1]))


def class_ap(dets: list[tuple[int, Detection]], gts: dict[int, np.ndarray],
             iou_threshold: float) -> tuple[float, np.ndarray, np.ndarray]:
    """AP of one class: ``dets`` = (scene index, detection) pairs, ``gts`` = scene -> (M, 7)."""
    npos = sum(len(g) for g in gts.values())
    if npos == 0:
        return float("nan"), np.zeros(0), np.zeros(0)
    if not dets:
        return 0.0, np.zeros(0), np.zeros(0)
    order = np.argsort(-np.array([d.score for _, d in dets]), kind="stable")
    matched = {s: np.zeros(len(g), bool) for s, g in gts.items()}
    tp = np.zeros(len(dets))
    for rank, i in enumerate(order):
        scene, det = dets[i]
        g = gts.get(scene)
        if g is None or len(g) == 0:
            continue
        ov = iou_matrix(det.box[None], g)[0]
        j = int(np.argmax(ov))
        if ov[j] > iou_threshold and not matched[scene][j]:
            tp[rank] = 1
            matched[scene][j] = True
    fp = 1 - tp
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    recall = tp / npos
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return voc_ap(recall, precision), recall, precision


def evaluate_detections(detections: list[list[Detection]], ground_truth: list[SceneBoxes],
                        classes, iou_thresholds=(0.25, 0.5)) -> dict:
    """``{"ap": {thr: {class: AP}}, "map": {thr: mAP}, "gt_count": {class: n}}`` over scenes.

    ``detections[s]`` and ``ground_truth[s]`` belong to scene ``s``. Classes with no ground
    truth get AP NaN and do not enter the mAP; classes with ground truth and no detection get 0.
    """
    if len(detections) != len(ground_truth):
        raise ValueError(f"{len(detections)} scenes of detections for {len(ground_truth)} scenes "
                         f"of ground truth")
    classes = list(classes)
    gt_by_class = {c: {} for c in classes}
    for s, gt in enumerate(ground_truth):
        labels = np.asarray(gt.labels)
        for c in classes:
            gt_by_class[c][s] = np.asarray(gt.boxes, np.float64).reshape(-1, 7)[labels == c]
    det_by_class = {c: [] for c in classes}
    for s, dets in enumerate(detections):
        for d in dets:
            if d.label in det_by_class:
                det_by_class[d.label].append((s, d))
    out = {"ap": {}, "map": {}, "gt_count": {c: int(sum(len(g) for g in gt_by_class[c].values()))
                                             for c in classes}}
    for thr in iou_thresholds:
        aps = {c: class_ap(det_by_class[c], gt_by_class[c], thr)[0] for c in classes}
        valid = [v for c, v in aps.items() if out["gt_count"][c] > 0]
        out["ap"][thr] = aps
        out["map"][thr] = float(np.mean(valid)) if valid else float("nan")
    return out
