"""Keypoint metrics of the KeypointNet protocol, as the authors evaluate them
(../shared/papers/skeleton_merger.md Sec. 5), vectorised over shapes, keypoints and thresholds.

* :func:`miou_curve` — **mIoU@tau**, pooled over all shapes (not averaged per shape): predicted
  keypoints are snapped to their nearest cloud point; with ``npos`` ground-truth keypoints,
  ``FN`` = ground truths with no prediction within ``tau`` and ``FP`` = predictions with no ground
  truth within ``tau`` (both ``distance > tau``), ``IoU = (npos - FN) / (npos + FP)``. Computed
  in the cloud's **original** units.
* :func:`dual_alignment_score` — **DAS** in normalised units, with the ground truth normalised
  by each shape's factors. Forward: each predicted keypoint takes the semantic id of its nearest
  ground truth; ``fwd`` is the mean over all ordered shape pairs (self-pairs included) and
  keypoint slots of ``[label_a[i] == label_b[i]]``, i.e. ``sum_i sum_l n_il^2 / (M^2 k)``.
  Backward: each ground-truth keypoint records the slot of its nearest prediction; per semantic
  id, the mean over all ordered pairs of its records of ``[slot_u == slot_v]``; ``bwd`` is the
  unweighted mean over the ids. ``DAS = (fwd + bwd) / 2``.

Ground truths may differ in number per shape (KeypointNet): pass lists, or padded arrays with a
``valid`` mask. :func:`normalize` is the authors' scalar min/max normalisation into [-1, 1].
"""
from __future__ import annotations

import numpy as np
import torch

THRESHOLDS = np.round(np.linspace(0.01, 0.1, 10), 4)
"""the distance thresholds of the reported curve, 0.01 ... 0.1"""


def normalize(points):
    """``x' = 2 (x - min) / (max - min) - 1`` with the scalar min and max over all coordinates of
    each shape. ``points (..., N, 3)`` numpy or torch -> ``(normalised, factors (..., 2))``, the
    factors ``[max, min]`` as the authors' ``nfact``."""
    if isinstance(points, torch.Tensor):
        lo = points.amin(dim=(-2, -1), keepdim=True)
        hi = points.amax(dim=(-2, -1), keepdim=True)
        factors = torch.cat([hi, lo], -1)[..., 0, :]
    else:
        points = np.asarray(points)
        lo = points.min(axis=(-2, -1), keepdims=True)
        hi = points.max(axis=(-2, -1), keepdims=True)
        factors = np.concatenate([hi, lo], -1)[..., 0, :]
    span = hi - lo
    if (span <= 0).any():
        raise ValueError("a shape has all its coordinates equal (max == min); it cannot be "
                         "normalised: drop degenerate clouds")
    return 2 * (points - lo) / span - 1, factors


def denormalize(points, factors):
    """Inverse of :func:`normalize`: ``points (..., K, 3)`` with ``factors (..., 2)``."""
    hi, lo = factors[..., 0, None, None], factors[..., 1, None, None]
    return (points + 1) / 2 * (hi - lo) + lo


def _pad(items):
    """A list of ``(G_m, 3)`` / ``(G_m,)`` arrays -> padded ``(M, G, ...)``, mask ``(M, G)``."""
    if isinstance(items, np.ndarray) and items.dtype != object:
        return items, np.ones(items.shape[:2], dtype=bool)
    items = [np.asarray(x) for x in items]
    G = max((len(x) for x in items), default=0)
    shape = (len(items), G) + items[0].shape[1:]
    out = np.zeros(shape, dtype=items[0].dtype)
    valid = np.zeros((len(items), G), dtype=bool)
    for m, x in enumerate(items):
        out[m, :len(x)] = x
        valid[m, :len(x)] = True
    return out, valid


def snap_to_cloud(keypoints, clouds) -> np.ndarray:
    """Index ``(M, k)`` of the cloud point nearest to each keypoint (``keypoints (M, k, 3)``,
    ``clouds (M, N, 3)`` in the same units)."""
    kp = np.asarray(keypoints, dtype=np.float64)
    pc = np.asarray(clouds, dtype=np.float64)
    d = ((kp[:, :, None, :] - pc[:, None, :, :]) ** 2).sum(-1)                  # (M, k, N)
    return d.argmin(-1)


def miou_curve(pred, gt, thresholds=THRESHOLDS, gt_valid=None) -> np.ndarray:
    """mIoU at each threshold (module docstring). ``pred (M, k, 3)`` snapped predictions and
    ``gt`` (``(M, G, 3)`` or a list of ``(G_m, 3)``) ground truths, in the same units."""
    pred = np.asarray(pred, dtype=np.float64)
    gt, valid = _pad(gt)
    if gt_valid is not None:
        valid = valid & np.asarray(gt_valid, dtype=bool)
    d = np.sqrt(((pred[:, :, None, :] - gt[:, None, :, :].astype(np.float64)) ** 2).sum(-1))
    d = np.where(valid[:, None, :], d, np.inf)                                 # (M, k, G)
    pred_to_gt = d.min(-1)                                                     # (M, k)
    gt_to_pred = d.min(1)[valid]                                               # (npos,)
    tau = np.asarray(thresholds, dtype=np.float64)[:, None]
    npos = gt_to_pred.size
    fn = (gt_to_pred[None, :] > tau).sum(-1)
    fp = (pred_to_gt.reshape(1, -1) > tau).sum(-1)
    return (npos - fn) / np.maximum(npos + fp, 1)


def dual_alignment_score(pred, gt, semantic_ids, gt_valid=None) -> dict:
    """DAS and its two halves (module docstring). ``pred (M, k, 3)``, ``gt`` (``(M, G, 3)`` or a
    list) and ``semantic_ids`` (``(M, G)`` ints or a list), in normalised units.
    Returns ``{"das", "fwd", "bwd"}``."""
    pred = np.asarray(pred, dtype=np.float64)
    gt, valid = _pad(gt)
    sem, _ = _pad(semantic_ids)
    if gt_valid is not None:
        valid = valid & np.asarray(gt_valid, dtype=bool)
    M, k, _ = pred.shape
    d = ((pred[:, :, None, :] - gt[:, None, :, :].astype(np.float64)) ** 2).sum(-1)
    d = np.where(valid[:, None, :], d, np.inf)                                  # (M, k, G)
    # forward: the semantic id of each prediction's nearest ground truth, counted per slot
    labels = np.take_along_axis(sem, d.argmin(-1), axis=1)                      # (M, k)
    _, lab = np.unique(labels, return_inverse=True)
    lab = lab.reshape(M, k)
    counts = np.zeros((k, lab.max() + 1))
    np.add.at(counts, (np.broadcast_to(np.arange(k), (M, k)), lab), 1)
    fwd = float((counts ** 2).sum() / (M * M * k))
    # backward: the slot of each ground truth's nearest prediction, counted per semantic id
    slots = d.argmin(1)[valid]                                                  # (npos,)
    ids, sid = np.unique(sem[valid], return_inverse=True)
    table = np.zeros((len(ids), k))
    np.add.at(table, (sid, slots), 1)
    n = table.sum(-1)
    bwd = float(((table ** 2).sum(-1) / n ** 2).mean())
    return {"das": (fwd + bwd) / 2, "fwd": fwd, "bwd": bwd}


def random_keypoints(clouds, k: int, seed: int = 0) -> np.ndarray:
    """The baseline: ``k`` distinct input points per shape drawn uniformly, ``(M, k, 3)``."""
    clouds = np.asarray(clouds)
    rng = np.random.default_rng(seed)
    idx = np.stack([rng.choice(clouds.shape[1], size=k, replace=False) for _ in clouds])
    return np.take_along_axis(clouds, idx[..., None], axis=1)


def keypoint_metrics(pred_norm, factors, clouds, gt, semantic_ids, thresholds=THRESHOLDS,
                     gt_valid=None) -> dict:
    """Both metrics from predictions in normalised units, as the authors' predictor stores them.

    Args:
        pred_norm: ``(M, k, 3)`` keypoints in the network's normalised space.
        factors: ``(M, 2)`` ``[max, min]`` of each shape (:func:`normalize`).
        clouds: ``(M, N, 3)`` the clouds in original units (KeypointNet's pcd points).
        gt: ground-truth keypoints in original units (``pcd[point_index]``).
        semantic_ids: their semantic ids.
    Returns ``{"miou": curve over thresholds, "miou@0.1", "das", "fwd", "bwd"}``; the snap to the
    nearest point is done in normalised space, the mIoU in original units, the DAS in normalised
    units."""
    pred_norm = np.asarray(pred_norm, dtype=np.float64)
    factors = np.asarray(factors, dtype=np.float64)
    clouds = np.asarray(clouds, dtype=np.float64)
    clouds_norm = 2 * (clouds - factors[:, 1, None, None]) / (
        factors[:, 0, None, None] - factors[:, 1, None, None]) - 1
    snapped = np.take_along_axis(clouds, snap_to_cloud(pred_norm, clouds_norm)[..., None], 1)
    gt_pad, valid = _pad(gt)
    if gt_valid is not None:
        valid = valid & np.asarray(gt_valid, dtype=bool)
    curve = miou_curve(snapped, gt_pad, thresholds, valid)
    gt_norm = 2 * (gt_pad - factors[:, 1, None, None]) / (
        factors[:, 0, None, None] - factors[:, 1, None, None]) - 1
    das = dual_alignment_score(pred_norm, gt_norm, semantic_ids, valid)
    tau = np.asarray(thresholds)
    at = np.flatnonzero(np.isclose(tau, 0.1))
    return dict(das, miou=curve, **({"miou@0.1": float(curve[at[0]])} if at.size else {}))
