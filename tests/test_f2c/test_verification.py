"""Verification metrics on hand-made scores: the 10-fold protocol (threshold chosen on nine folds,
applied to the tenth), TAR at FAR (and nan where the FAR is below one impostor pair), and the
flip-augmented embedding."""
import math

import numpy as np
import pytest
import torch

from f2c.data import PairSet
from f2c.verification import embed, kfold_accuracy, tar_at_far, verify


def test_kfold_accuracy_uses_the_other_folds_threshold():
    issame = np.array([True, False] * 10)
    dist = np.where(issame, 0.2, 1.0)
    assert kfold_accuracy(dist, issame) == (1.0, 0.0)
    dist[0] = 1.2              # a genuine pair farther than every impostor: fold 0 gets 1/2
    acc, std = kfold_accuracy(dist, issame)
    assert acc == pytest.approx(0.95) and std == pytest.approx(0.15)


def test_tar_at_far():
    imp = np.arange(1000) / 1000
    gen = np.array([0.9995, 0.9975, 0.5])
    scores = np.concatenate([imp, gen])
    genuine = np.concatenate([np.zeros(1000, bool), np.ones(3, bool)])
    assert tar_at_far(scores, genuine, 1e-2) == pytest.approx(2 / 3)   # threshold 0.990
    assert tar_at_far(scores, genuine, 1e-3) == pytest.approx(1 / 3)   # threshold 0.999
    assert math.isnan(tar_at_far(scores, genuine, 1e-4))               # below one pair


def test_embeddings_add_the_flipped_image_and_verify_names_the_set():
    class Left(torch.nn.Module):          # the mean of the left half: flip-sensitive
        def forward(self, x):
            return torch.stack([x[..., :2].mean((1, 2, 3)), torch.ones(len(x))], 1)

    images = torch.zeros(4, 3, 4, 4, dtype=torch.uint8)
    images[0, ..., :2] = 255                                # bright on the left
    images[1, ..., 2:] = 255                                # its mirror image
    e = embed(Left(), images)
    torch.testing.assert_close(e[0], e[1])                  # the sum over flips is symmetric
    torch.testing.assert_close(e.norm(dim=1), torch.ones(4))
    pairs = PairSet("toy", images, torch.tensor([[0, 1], [0, 2]] * 5),
                    torch.tensor([True, False] * 5))
    out = verify(Left(), pairs)
    assert out["toy_acc"] == 1.0 and set(out) == {"toy_acc", "toy_acc_std",
                                                  "toy_tar@far1e-04", "toy_tar@far1e-05"}
