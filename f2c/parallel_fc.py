"""The classifier baselines with their class centres sharded over ranks (model parallelism, as
insightface's arcface_torch): full FC and Partial FC with a distributed softmax.

Each of the ``g`` ranks of ``group`` holds the centre rows ``[lo, hi)`` of
:func:`f2c.models.heads.shard_bounds` (built directly from the init stream: the full matrix never
exists). A forward pass on a rank's local embeddings ``e`` (b, d) and labels:

1. ``E = all_gather(e)`` (backward: reduce-scatter, so each rank receives the summed gradient of
   its own rows) and the labels, gathered: every rank sees the global batch ``B = g*b``;
2. local logits ``s * margin(cos(E, W_shard))`` (B, C_shard); the margin is applied on the rank
   that holds the row's class;
3. the softmax cross-entropy across shards (:class:`ShardedCrossEntropy`): the row maxima are
   all-gathered, the sums of exponentials and the target logits all-reduced; the loss is the
   mean over the global batch, the same number on every rank; the backward pass needs no
   communication (each rank's logit gradient is ``softmax - onehot`` on its own columns).

So the loss and every gradient equal those of the single-device layer on the global batch: the
centre gradients shard by shard, the embedding gradients after the reduce-scatter. The backbone
gradients of the ranks are partial sums of the global one and are *summed* over the data group
(``f2c.parallel.grad_plans``), not averaged.

Partial FC samples on each rank independently, from the (seed, step, rank) stream that the
single-device :class:`~f2c.models.heads.PartialFC` uses for shard ``rank`` of ``g`` virtual shards.
"""
from __future__ import annotations

import torch

from shared.parallel.comm import all_gather, raw_all_gather, raw_all_reduce
from shared.parallel.topology import Group

from .models.heads import (MarginFC, PartialFC, margin_logits, pfc_generator, sample_centres,
                           shard_bounds)


class ShardedCrossEntropy(torch.autograd.Function):
    """Mean softmax cross-entropy over classes split across the ranks of ``group``.

    Forward: ``logits`` (B, C_local) fp32, ``target`` (B,) local column or -1 where the class
    lives on another rank. Backward: ``(softmax - onehot) / B`` on the local columns."""

    @staticmethod
    def forward(ctx, logits, target, group):
        rows = logits.shape[0]
        local_max = logits.detach().max(dim=1).values if logits.shape[1] else \
            logits.new_full((rows,), float("-inf"))       # a shard that sampled no centre
        row_max = raw_all_gather(local_max.unsqueeze(0), 0, group)
        row_max = row_max.max(dim=0).values                                        # (B,)
        exp = (logits.detach() - row_max.unsqueeze(1)).exp()
        mine = target >= 0
        picked = torch.zeros(rows, dtype=logits.dtype, device=logits.device)
        picked[mine] = logits.detach()[mine, target[mine]]
        sums = raw_all_reduce(torch.stack([exp.sum(dim=1), picked]), group)         # (2, B)
        loss = (sums[0].log() + row_max - sums[1]).mean()
        ctx.save_for_backward(exp.div_(sums[0].unsqueeze(1)), target)
        return loss

    @staticmethod
    def backward(ctx, grad):
        softmax, target = ctx.saved_tensors
        out = softmax.clone()
        mine = target >= 0
        out[mine, target[mine]] -= 1.0
        return out.mul_(grad / softmax.shape[0]), None, None


def sharded_cross_entropy(logits: torch.Tensor, target: torch.Tensor, group: Group) -> torch.Tensor:
    return ShardedCrossEntropy.apply(logits, target, group)


def _gather_batch(emb: torch.Tensor, labels: torch.Tensor, group: Group):
    return all_gather(emb, 0, group), raw_all_gather(labels, 0, group)


class ShardedMarginFC(MarginFC):
    """The full FC layer, this rank's centre rows only (see the module docstring)."""

    def __init__(self, serial: MarginFC, group: Group, device=None):
        lo_hi = shard_bounds(serial.num_classes, group.size, group.rank)
        super().__init__(serial.num_classes, serial.dim, serial.scale, serial.margin,
                         serial.margin_type, serial.arc_guard, serial.seed, rows=lo_hi,
                         device=device)
        self.group = group

    def _targets(self, labels: torch.Tensor) -> torch.Tensor:
        lo, hi = self.rows
        return torch.where((labels >= lo) & (labels < hi), labels - lo, -1)

    def forward(self, emb, labels, step: int = 0):
        E, L = _gather_batch(emb, labels, self.group)
        target = self._targets(L)
        logits = margin_logits(self.cosine(E), target, self.margin_type, self.margin,
                               self.arc_guard) * self.scale
        return sharded_cross_entropy(logits, target, self.group)


class ShardedPartialFC(ShardedMarginFC):
    """Partial FC on this rank's centre rows: positives plus sampled negatives."""

    def __init__(self, serial: PartialFC, group: Group, device=None):
        super().__init__(serial, group, device)
        self.sample_rate = serial.sample_rate

    def forward(self, emb, labels, step: int = 0):
        E, L = _gather_batch(emb, labels, self.group)
        lo, hi = self.rows
        local = self._targets(L)
        mine = local >= 0
        idx = sample_centres(local[mine], hi - lo, int(self.sample_rate * (hi - lo)),
                             pfc_generator(self.seed, step, self.group.rank)).to(L.device)
        target = torch.full_like(L, -1)
        target[mine] = torch.searchsorted(idx, local[mine])
        logits = margin_logits(self.cosine(E, self.weight[idx]), target, self.margin_type,
                               self.margin, self.arc_guard) * self.scale
        return sharded_cross_entropy(logits, target, self.group)
