"""Losses: the symmetry-aware LCC loss is zero for a prediction in any symmetric frame of each
object (and only then), equals the plain MSE for asymmetric objects; the regression baseline's
heading loss is minimal at the ground-truth yaw; a batch without objects gives the CE alone."""
import math

import torch

from canonical_voting.boxes import SYM_NONE, SYM_UP2, SYM_UPINF, rotate_lcc, sym_rotations
from canonical_voting.data import Targets
from canonical_voting.losses import detection_loss


def _targets(n_per, syms, yaws=None):
    """Two objects of ``n_per`` voxels each, plus 3 background voxels (class 2 = background)."""
    g = torch.Generator().manual_seed(0)
    n = 2 * n_per + 3
    inst = torch.tensor([0] * n_per + [1] * n_per + [0] * 3)
    obj = torch.arange(n) < 2 * n_per
    label = torch.where(obj, torch.tensor([0] * n_per + [1] * n_per + [0] * 3), torch.tensor(2))
    lcc = torch.rand(n, 3, generator=g) * 2 - 1
    yaw = torch.tensor(yaws or [0.3, 2.0])[inst]
    return Targets(label, obj, inst, lcc, torch.zeros(n, 3), torch.zeros(n, 3), yaw,
                   torch.tensor(syms)[inst])


def _outputs(t, lcc_pred, logits=None):
    n = len(t.label)
    lcc = torch.zeros(n, 2, 3)
    lcc[torch.arange(n), t.label.clamp_max(1)] = lcc_pred
    big = torch.full((n, 3), -20.0)
    big[torch.arange(n), t.label] = 20.0                     # confident, correct classes
    return {"lcc": lcc, "log_half": torch.zeros(n, 2, 3), "logits": big if logits is None else logits}


def test_symmetric_lcc_loss_is_zero_in_any_symmetric_frame_only():
    t = _targets(5, [SYM_UP2, SYM_UPINF])
    angles, _ = sym_rotations(t.sym)
    # object 0 predicted in its frame turned by 180 degrees, object 1 by 7 * 10 degrees
    pred = t.lcc.clone()
    pred[:5] = rotate_lcc(t.lcc[:5], angles[:5])[:, 1]
    pred[5:10] = rotate_lcc(t.lcc[5:10], angles[5:10])[:, 7]
    loss, m = detection_loss(_outputs(t, pred), t, "joint", sym_loss=True)
    assert m["lcc"] < 1e-10 and m["size"] == 0
    # a frame turned by 90 degrees is not a symmetry of a 2-fold object
    wrong = pred.clone()
    wrong[:5] = rotate_lcc(t.lcc[:5], torch.full((5, 1), math.pi / 2))[:, 0]
    _, m = detection_loss(_outputs(t, wrong), t, "joint", sym_loss=True)
    assert m["lcc"] > 0.05
    # without the symmetry-aware loss the turned frame is penalised
    _, m = detection_loss(_outputs(t, pred), t, "joint", sym_loss=False)
    assert m["lcc"] > 0.05


def test_asymmetric_objects_get_the_per_object_mse():
    t = _targets(4, [SYM_NONE, SYM_NONE])
    pred = t.lcc + 0.1 * torch.arange(len(t.lcc))[:, None] / len(t.lcc)
    _, m = detection_loss(_outputs(t, pred), t, "joint", sym_loss=True)
    err = (pred - t.lcc)[t.obj].square().mean(1)
    assert torch.isclose(m["lcc"], (err[:4].mean() + err[4:8].mean()) / 2)


def test_regression_heading_loss_is_lowest_at_the_true_yaw():
    t = _targets(3, [SYM_NONE, SYM_UP2], yaws=[0.3, 2.0])
    n, H = len(t.label), 12

    def loss_for(yaw_pred):
        width = 2 * math.pi / H
        logits = torch.full((n, H), -10.0)
        res = torch.zeros(n, H)
        b = torch.round(yaw_pred / width).long() % H
        logits[torch.arange(n), b] = 10.0
        res[torch.arange(n), b] = (yaw_pred - b * width) / width
        out = {"offset": t.offset.clone(), "heading_logits": logits, "heading_res": res,
               "log_half": torch.zeros(n, 2, 3), "logits": _outputs(t, t.lcc)["logits"]}
        return detection_loss(out, t, "regression", sym_loss=True)[1]["heading"]

    exact = loss_for(t.yaw.clone())
    flipped = loss_for(t.yaw + torch.where(t.sym == SYM_UP2, math.pi, 0.0))   # symmetric: free
    off = loss_for(t.yaw + 0.8)
    assert exact < 1e-3 and flipped < 1e-3 and off > 1.0


def test_a_batch_without_objects_is_cross_entropy_alone():
    t = _targets(2, [SYM_NONE, SYM_NONE])
    t.obj[:] = False
    t.label[:] = 2
    loss, m = detection_loss(_outputs(t, t.lcc), t, "joint")
    assert set(m) == {"ce", "loss"} and torch.isclose(loss, m["ce"])
