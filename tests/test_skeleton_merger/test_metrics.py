"""mIoU and DAS: hand-computed values on tiny constructed cases, the vectorised code against
straightforward loops over shapes and pairs (the authors' evaluation, written out), and the
min/max normalisation."""
import itertools

import numpy as np
import pytest
import torch

from skeleton_merger.metrics import (denormalize, dual_alignment_score, keypoint_metrics,
                                     miou_curve, normalize, random_keypoints, snap_to_cloud)


def test_miou_by_hand_is_pooled_over_shapes():
    # shape 0: two ground truths, three predictions at distances worked out by hand
    gt0 = np.array([[0, 0, 0], [1, 0, 0]], float)
    pred0 = np.array([[0, 0, 0.05], [0.5, 0, 0], [1, 0, 0.2]])
    # pred -> nearest gt: 0.05, 0.5, 0.2; gt -> nearest pred: 0.05, 0.2
    assert miou_curve(pred0[None], gt0[None], [0.04, 0.1, 0.3]) == pytest.approx(
        [0 / 5, (2 - 1) / (2 + 2), 2 / 3])
    # shape 1: one ground truth, every prediction on it. Pooled: npos 3, FN 1, FP 2 at tau 0.1
    # (the mean of per-shape IoUs would be (0.25 + 1) / 2 instead)
    gt1 = np.array([[0, 0, 0]], float)
    pred1 = np.zeros((3, 3))
    curve = miou_curve(np.stack([pred0, pred1]), [gt0, gt1], [0.1])
    assert curve == pytest.approx([(3 - 1) / (3 + 2)])


def test_das_by_hand():
    gt = np.array([[[0, 0, 0], [1, 0, 0]]] * 2, float)
    sem = np.array([[7, 3], [7, 3]])
    pred = np.array([[[0.1, 0, 0], [0.9, 0, 0]],      # labels 7, 3; gt 7 -> slot 0, 3 -> slot 1
                     [[0.2, 0, 0], [0.05, 0, 0]]])    # labels 7, 7; gt 7 -> slot 1, 3 -> slot 0
    d = dual_alignment_score(pred, gt, sem)
    # fwd: pairs (A,A) 1, (A,B) 1/2, (B,A) 1/2, (B,B) 1 -> 3/4
    # bwd: id 7 slots [0, 1] -> 2/4, id 3 slots [1, 0] -> 2/4 -> 1/2
    assert d["fwd"] == pytest.approx(0.75) and d["bwd"] == pytest.approx(0.5)
    assert d["das"] == pytest.approx(0.625)


def _loop_das(pred, gts, sems):
    labels = []
    for p, g, s in zip(pred, gts, sems):
        d = ((p[:, None] - g[None]) ** 2).sum(-1)
        labels.append([s[j] for j in d.argmin(1)])
    fwd = np.mean([np.mean(np.array(a) == np.array(b))
                   for a, b in itertools.product(labels, labels)])
    slots = {}
    for p, g, s in zip(pred, gts, sems):
        d = ((p[:, None] - g[None]) ** 2).sum(-1)
        for j, sid in enumerate(s):
            slots.setdefault(sid, []).append(d[:, j].argmin())
    bwd = np.mean([np.mean([u == v for u, v in itertools.product(lst, lst)])
                   for lst in slots.values()])
    return fwd, bwd


def _loop_miou(pred, gts, tau):
    npos = fp = fn = 0
    for p, g in zip(pred, gts):
        d = np.sqrt(((p[:, None] - g[None]) ** 2).sum(-1))
        npos += len(g)
        fp += (d.min(1) > tau).sum()
        fn += (d.min(0) > tau).sum()
    return (npos - fn) / (npos + fp)


def test_vectorised_metrics_equal_the_loops_with_varying_keypoint_counts():
    rng = np.random.default_rng(0)
    M, k = 9, 5
    gts = [rng.random((rng.integers(2, 8), 3)) for _ in range(M)]
    sems = [rng.choice(9, len(g), replace=False) for g in gts]
    pred = rng.random((M, k, 3))
    d = dual_alignment_score(pred, gts, sems)
    fwd, bwd = _loop_das(pred, gts, sems)
    assert d["fwd"] == pytest.approx(fwd) and d["bwd"] == pytest.approx(bwd)
    taus = [0.05, 0.1, 0.2, 0.35]
    assert miou_curve(pred, gts, taus) == pytest.approx([_loop_miou(pred, gts, t) for t in taus])


def test_normalize_is_scalar_min_max_and_invertible():
    x = np.array([[[0, 1, 2], [4, -2, 3]]], float)
    y, f = normalize(x)
    assert f.tolist() == [[4, -2]]
    assert y.min() == -1 and y.max() == 1
    np.testing.assert_allclose(y[0, 0], 2 * (np.array([0, 1, 2]) + 2) / 6 - 1)
    np.testing.assert_allclose(denormalize(y, f), x)
    yt, ft = normalize(torch.tensor(x))
    np.testing.assert_allclose(yt.numpy(), y) and np.testing.assert_allclose(ft.numpy(), f)
    with pytest.raises(ValueError, match="cannot be normalised"):
        normalize(np.zeros((1, 4, 3)))


def test_keypoint_metrics_snap_and_score_perfect_predictions():
    rng = np.random.default_rng(1)
    clouds = rng.random((4, 50, 3)) * 3 + 1
    index = np.stack([rng.choice(50, 6, replace=False) for _ in range(4)])
    gt = np.take_along_axis(clouds, index[..., None], 1)
    normed, factors = normalize(clouds)
    pred = np.take_along_axis(normed, index[..., None], 1) + 1e-4       # near the truth
    m = keypoint_metrics(pred, factors, clouds, gt, np.tile(np.arange(6), (4, 1)))
    assert m["miou@0.1"] == 1.0 and m["das"] == 1.0 and m["miou"][0] == 1.0
    assert np.array_equal(snap_to_cloud(pred, normed), index)
    rand = random_keypoints(normed, 6, seed=0)
    assert rand.shape == (4, 6, 3) and keypoint_metrics(
        rand, factors, clouds, gt, np.tile(np.arange(6), (4, 1)))["das"] < 1.0
