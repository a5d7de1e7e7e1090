"""mIoU from per-shape lists, against hand-computed values."""
import numpy as np
import pytest
import torch

from prin import metrics


def test_shape_iou_by_hand():
    # category 1 owns parts 2, 3, 4; part 4 is absent from both prediction and target -> IoU 1
    pred = torch.tensor([[2, 2, 3, 3, 3, 2]])
    target = torch.tensor([[2, 3, 3, 3, 2, 2]])
    ious = metrics.shape_ious(pred, target, torch.tensor([1]), [(0, 2), (2, 5)])
    # part 2: pred {0,1,5}, target {0,4,5} -> 2/4; part 3: pred {2,3,4}, target {1,2,3} -> 2/4
    assert ious == [pytest.approx((0.5 + 0.5 + 1.0) / 3)]


def test_instance_and_class_miou_differ_on_unbalanced_categories():
    ious = [1.0, 0.5, 0.5, 0.2]
    labels = [0, 1, 1, 1]
    inst, cls, per = metrics.miou(ious, labels, 3)
    assert inst == pytest.approx(2.2 / 4)
    assert cls == pytest.approx((1.0 + 0.4) / 2)          # category 2 absent: not averaged
    assert per[0] == 1.0 and per[1] == pytest.approx(0.4) and np.isnan(per[2])


def test_restricted_argmax_stays_in_the_category():
    logits = torch.tensor([[[0.0, 9.0, 1.0, 2.0]]])       # best overall: part 1 (category 0)
    mask = torch.tensor([[True, True, False, False], [False, False, True, True]])
    assert metrics.restricted_argmax(logits, torch.tensor([1]), mask).item() == 3
    assert metrics.restricted_argmax(logits, torch.tensor([0]), mask).item() == 1
    assert metrics.accuracy([1, 2, 3], [1, 0, 3]) == pytest.approx(2 / 3)
