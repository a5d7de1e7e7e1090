"""F2C: a probe net trained by SGD, a gallery net that is its moving average, and the Dynamic
Class Pool in place of the FC layer (arXiv 2105.10375; the official code's mechanics in
../shared/papers/f2c.md Sec. 2). Single-device pieces; the step that puts them together, with
the all-gather of gallery features, is ``f2c.train.F2CTask.step``.

One pass (probe images ``P``, gallery images ``G``, all ranks' gallery features gathered):

1. ``p = normalize(P-Net(P))`` with gradient; ``g = normalize(G-Net(G))`` without;
2. the gathered ``g`` go into the pool in a fixed order (:meth:`DynamicClassPool.insert`);
3. each probe's target is its identity's pool column, or ``-1`` (an *outlier*) when absent;
4. ``loss = h(cos1) + h(cos2)`` over the two prototype slots, where for a logit matrix ``cos``

   ``h = CE(s * margin(cos[pos]), target[pos])  +  mean(clamp(topk(cos[out], k), min=0))``

   the first term averaged over the positive rows, the second over the outlier rows and their k
   largest cosines (``k = clamp(int(0.0002 Q), 3, 10)``, no scale, weight 1), each term 0 when
   its kind of row is absent.

The symmetric step runs a *trial* pass (EMA update of the gallery first, probe = x, gallery = y,
pool edits undone afterwards) and a committed pass (probe = y, gallery = x); its loss is the sum.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from .heads import margin_logits
from .pool import DynamicClassPool


def hard_negatives(pool_size: int) -> int:
    """k of the outlier term: ``clamp(int(0.0002 * Q), 3, 10)`` (official code), at most Q."""
    return min(pool_size, min(max(int(pool_size * 0.0002), 3), 10))


def pool_loss(cos: torch.Tensor, target: torch.Tensor, scale: float, kind: str, m: float,
              k: int, valid: torch.Tensor | None = None, arc_guard: bool = False):
    """``h(cos)`` of the module docstring; returns ``(loss, ce, neg)`` (0-d tensors, fp32).

    ``valid``: optional ``(Q,)`` mask of the columns that hold an identity; columns outside it are
    left out of both terms (off by default: the official code lets the random initial columns act
    as negatives until the pool fills)."""
    cos = cos.float()
    if valid is not None:
        cos = cos.masked_fill(~valid, float("-inf"))
    pos, out = target >= 0, target < 0
    zero = cos.new_zeros(())
    ce = neg = zero
    if pos.any():
        logits = margin_logits(cos[pos], target[pos], kind, m, arc_guard) * scale
        ce = F.cross_entropy(logits, target[pos])
    if out.any():
        neg = cos[out].topk(k, dim=1).values.clamp_min(0).mean()
    return ce + neg, ce.detach(), neg.detach()


@torch.no_grad()
def ema_update_(gallery: nn.Module, probe: nn.Module, momentum: float) -> None:
    """``g <- m * g + (1 - m) * p`` over the parameters (buffers such as BN statistics are not
    copied: the gallery keeps its own, as in the official code)."""
    g = [q for q in gallery.parameters()]
    p = [q.detach() for q in probe.parameters()]
    torch._foreach_mul_(g, momentum)
    torch._foreach_add_(g, p, alpha=1.0 - momentum)


class F2C(nn.Module):
    """P-Net (``backbone``), G-Net (``gallery``, a copy updated only by :meth:`update_gallery`)
    and the pool. ``forward(x)`` is the P-Net's embedding (what evaluation uses)."""

    def __init__(self, backbone: nn.Module, pool_size: int, scale: float = 32.0,
                 margin: float = 0.5, margin_type: str = "cosface", momentum: float = 0.99,
                 arc_guard: bool = False, mask_empty: bool = False, seed: int = 0):
        super().__init__()
        self.backbone = backbone
        self.gallery = copy.deepcopy(backbone)
        self.gallery.requires_grad_(False)
        dim = backbone.embedding_size
        device = next(backbone.parameters()).device
        self.pool = DynamicClassPool(pool_size, dim, seed=seed, device=device)
        self.scale, self.margin, self.margin_type = scale, margin, margin_type
        self.momentum, self.arc_guard, self.mask_empty = momentum, arc_guard, mask_empty
        self.k = hard_negatives(pool_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def update_gallery(self) -> None:
        ema_update_(self.gallery, self.backbone, self.momentum)

    @torch.no_grad()
    def gallery_features(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.gallery(images).float(), dim=1)

    def probe_features(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.backbone(images), dim=1)

    def pass_loss(self, p: torch.Tensor, probe_labels: torch.Tensor, g: torch.Tensor,
                  gallery_labels) -> tuple[torch.Tensor, dict]:
        """One pass given the probe features ``p`` (with gradient) and the gathered gallery
        features ``g`` and labels (the same on every rank). Edits the pool."""
        ones = self.pool.insert(g, gallery_labels)
        target = torch.tensor(self.pool.lookup(probe_labels.tolist()), dtype=torch.long,
                              device=p.device)
        valid = self.pool.valid() if self.mask_empty else None
        cos1, cos2 = self.pool.logits(p, ones)
        l1, ce1, neg1 = pool_loss(cos1, target, self.scale, self.margin_type, self.margin,
                                  self.k, valid, self.arc_guard)
        l2, ce2, neg2 = pool_loss(cos2, target, self.scale, self.margin_type, self.margin,
                                  self.k, valid, self.arc_guard)
        n_out = int((target < 0).sum())
        stats = {"ce": ce1 + ce2, "neg": neg1 + neg2, "outliers": n_out,
                 "probes": int(target.numel())}
        return l1 + l2, stats
