"""Face verification metrics, as insightface's and the official F2C evaluation compute them.

* embeddings: the network's feature of the image plus that of its horizontal flip, summed and
  L2-normalised;
* accuracy: 10-fold cross-validation over the pairs (folds in order, no shuffle); on nine folds
  the threshold on the squared distance ``||a - b||^2`` (a grid 0, 0.01, ..., 3.99) with the best
  accuracy is chosen (the first, on ties) and applied to the tenth; mean and std over folds;
* TAR at FAR: the threshold leaves at most ``FAR * n_impostor`` impostor pairs above it (in cosine
  similarity), TAR is the share of genuine pairs above it; ``nan`` where there are fewer than
  ``1 / FAR`` impostor pairs (a FAR below one pair is not measurable).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .data import normalize_images

FARS = (1e-4, 1e-5)


@torch.no_grad()
def embed(model, images: torch.Tensor, batch_size: int = 256, device="cpu",
          flip: bool = True) -> torch.Tensor:
    """``(M, d)`` L2-normalised embeddings (flip-augmented) of ``images``, in eval mode."""
    was = model.training
    model.eval()
    out = []
    for chunk in images.split(batch_size):
        chunk = chunk.to(device)
        if chunk.dtype == torch.uint8:
            chunk = normalize_images(chunk)
        e = model(chunk).float()
        if flip:
            e = e + model(chunk.flip(-1)).float()
        out.append(F.normalize(e, dim=1).cpu())
    model.train(was)
    return torch.cat(out)


def kfold_accuracy(dist: np.ndarray, issame: np.ndarray, folds: int = 10) -> tuple[float, float]:
    """Mean and std over ``folds`` of the test-fold accuracy at the best training threshold."""
    thresholds = np.arange(0, 4, 0.01)
    predict = dist[None, :] < thresholds[:, None]                         # (T, P)
    correct = predict == issame[None, :]
    bounds = np.linspace(0, len(dist), folds + 1).astype(int)
    accs = []
    for k in range(folds):
        test = np.zeros(len(dist), bool)
        test[bounds[k]:bounds[k + 1]] = True
        best = np.argmax(correct[:, ~test].mean(1))
        accs.append(correct[best, test].mean())
    return float(np.mean(accs)), float(np.std(accs))


def tar_at_far(scores: np.ndarray, genuine: np.ndarray, far: float) -> float:
    """TAR at ``far`` (similarity ``scores``, ``genuine`` bool mask); nan when not measurable."""
    imp = np.sort(scores[~genuine])[::-1]
    k = int(np.floor(far * len(imp)))
    if k < 1 or genuine.sum() == 0:
        return float("nan")
    return float((scores[genuine] > imp[k - 1]).mean())


def verify(model, pairset, batch_size: int = 256, device="cpu") -> dict:
    """Accuracy (mean, std) on the pairs and TAR at :data:`FARS` for one verification set."""
    emb = embed(model, pairset.images, batch_size, device)
    a, b = emb[pairset.pairs[:, 0]], emb[pairset.pairs[:, 1]]
    dist = (a - b).square().sum(1).numpy()
    issame = pairset.issame.numpy()
    acc, std = kfold_accuracy(dist, issame)
    out = {f"{pairset.name}_acc": acc, f"{pairset.name}_acc_std": std}
    if pairset.labels is not None:             # every pair of images (generated identities)
        sim = emb @ emb.T
        iu = torch.triu_indices(len(emb), len(emb), 1)
        scores = sim[iu[0], iu[1]].numpy()
        genuine = (pairset.labels[iu[0]] == pairset.labels[iu[1]]).numpy()
    else:
        scores, genuine = (a * b).sum(1).numpy(), issame
    for far in FARS:
        out[f"{pairset.name}_tar@far{far:.0e}"] = tar_at_far(scores, genuine, far)
    return out
