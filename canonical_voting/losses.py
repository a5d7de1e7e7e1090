"""Training losses (brief Sec. 1; all weights 1).

* ``joint`` / ``separate``: cross-entropy over all voxels (``C + 1`` classes, background last)
  + MSE of the LCC of the ground-truth class + MSE of its log half extents, both over object
  voxels. The LCC term is the **symmetry-aware** loss when ``sym_loss``: for each object, the
  mean squared error to each of its symmetric targets (2 frames turned by 180 degrees, 4 by 90,
  36 by 10 for rotationally symmetric objects), the minimum over them, averaged over objects
  (the reference uses it for the separate models; without ``sym_loss`` it is the plain MSE over
  object voxels, as the reference's joint model).
* ``regression`` (the baseline): the same cross-entropy and log-size terms, an L1 loss on the
  centre offset (VoteNet's vote loss), and VoteNet's heading loss (cross-entropy over
  ``heading_bins`` bins + smooth-L1 on the ground-truth bin's residual); with ``sym_loss`` the
  heading loss takes the same per-object minimum over the symmetric yaws.

A batch without object voxels gives the cross-entropy alone (the reference reused stale loss
tensors there, brief pitfall 7).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .boxes import rotate_lcc, sym_rotations
from .data import Targets


def _per_object_min(err: torch.Tensor, valid: torch.Tensor, obj_index: torch.Tensor,
                    n_obj: int) -> torch.Tensor:
    """``err (M, J)`` per voxel and symmetric variant -> mean over objects of the minimum over
    valid variants of the per-object mean."""
    sums = err.new_zeros(n_obj, err.shape[1]).index_add_(0, obj_index, err)
    counts = torch.bincount(obj_index, minlength=n_obj).clamp_min(1).to(err.dtype)
    means = sums / counts[:, None]
    valid_obj = valid.new_zeros(n_obj, valid.shape[1]).index_copy_(0, obj_index, valid)
    return means.masked_fill(~valid_obj, float("inf")).min(1).values.mean()


def detection_loss(outputs: dict, t: Targets, head: str, sym_loss: bool = True) -> tuple:
    """``(loss, metrics)``; metrics are detached floats for the log."""
    logits = outputs["logits"].float()
    ce = F.cross_entropy(logits, t.label)
    metrics = {"ce": ce.detach()}
    idx = t.obj.nonzero().squeeze(1)
    if len(idx) == 0:
        metrics["loss"] = ce.detach()
        return ce, metrics
    label = t.label[idx]
    log_half = outputs["log_half"][idx, label].float()
    size = F.mse_loss(log_half, t.log_half[idx])
    loss = ce + size
    metrics["size"] = size.detach()
    obj_ids, obj_index = torch.unique(t.instance[idx], return_inverse=True)
    n_obj = len(obj_ids)
    if head == "regression":
        offset = F.l1_loss(outputs["offset"][idx].float(), t.offset[idx])
        heading = _heading_loss(outputs["heading_logits"][idx].float(),
                                outputs["heading_res"][idx].float(), t.yaw[idx], t.sym[idx],
                                obj_index, n_obj, sym_loss)
        loss = loss + offset + heading
        metrics.update(offset=offset.detach(), heading=heading.detach())
    else:
        pred = outputs["lcc"][idx, label].float()
        target = t.lcc[idx]
        if sym_loss:
            angles, valid = sym_rotations(t.sym[idx])
            targets = rotate_lcc(target, angles)                              # (M, J, 3)
            err = (pred[:, None, :] - targets).square().mean(-1)              # (M, J)
            lcc_loss = _per_object_min(err, valid, obj_index, n_obj)
        else:
            lcc_loss = F.mse_loss(pred, target)
        loss = loss + lcc_loss
        metrics["lcc"] = lcc_loss.detach()
    metrics["loss"] = loss.detach()
    return loss, metrics


def _heading_loss(logits, residual, yaw, sym, obj_index, n_obj, sym_loss: bool):
    H = logits.shape[1]
    width = 2 * math.pi / H
    if sym_loss:
        angles, valid = sym_rotations(sym)
    else:
        angles = torch.zeros(len(yaw), 1, device=yaw.device)
        valid = torch.ones(len(yaw), 1, dtype=torch.bool, device=yaw.device)
    J = angles.shape[1]
    target = torch.remainder(yaw[:, None] + angles, 2 * math.pi)                 # (M, J)
    shifted = torch.remainder(target + width / 2, 2 * math.pi)
    b = torch.div(shifted, width, rounding_mode="floor").long().clamp_(0, H - 1)
    res = (target - b * width + math.pi) % (2 * math.pi) - math.pi            # in [-w/2, w/2)
    logp = torch.log_softmax(logits, 1)
    ce = -logp.gather(1, b)                                                    # (M, J)
    r = residual.gather(1, b)
    err = ce + F.smooth_l1_loss(r, res / width, reduction="none")
    if J == 1 and not sym_loss:
        return err.mean()
    return _per_object_min(err, valid, obj_index, n_obj)

