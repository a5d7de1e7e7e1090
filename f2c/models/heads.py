"""Margin softmax and the two classifier baselines, single-device: the full FC layer and Partial
FC (insightface arcface_torch, ``PartialFC_V2``).

Margins act on the cosine of the target class, in fp32 (the official F2C code computes them
after ``.float()``; bf16 cosines would lose the margin's precision):

* ``cosface`` (CosFace / AM-softmax): ``cos - m``;
* ``arcface``: ``cos(theta + m) = cos*cos(m) - sin*sin(m)``; with ``arc_guard`` (insightface's
  threshold) the target becomes ``cos - m*sin(m)`` where ``theta + m > pi``, where ArcFace's logit
  would rise again; F2C's official code has no guard (the default here);
* ``sv`` (SV-softmax style, F2C's third option): hard negatives (``cos > gt - m``) become
  ``1.2*cos + 0.2``, the target ``gt - m`` when ``gt > m``.

Class centres are initialised N(0, 0.01) (insightface) from a stream of fixed blocks of rows
(``init_rows``): block ``b`` of every run with the same seed holds the same numbers, so a shard of
rows ``[lo, hi)`` can be built directly, without the full matrix, and equals the same rows of the
single-device layer (``f2c.parallel_fc`` shards the centres over ranks this way).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

MARGINS = ("cosface", "arcface", "sv")
INIT_BLOCK = 4096
"""rows per block of the class-centre init stream"""


def margin_logits(cos: torch.Tensor, target: torch.Tensor, kind: str, m: float,
                  arc_guard: bool = False) -> torch.Tensor:
    """``cos`` (rows, classes) with the margin applied to ``cos[i, target[i]]`` for every row with
    ``target[i] >= 0`` (rows with ``-1`` are returned unchanged). Returns fp32, out of place."""
    cos = cos.float()
    rows = torch.nonzero(target >= 0).squeeze(1)
    if rows.numel() == 0:
        return cos
    t = target[rows]
    gt = cos[rows, t]
    if kind == "cosface":
        new = gt - m
    elif kind == "arcface":
        sin = torch.sqrt((1.0 - gt * gt).clamp_min(1e-12))
        new = gt * math.cos(m) - sin * math.sin(m)
        if arc_guard:   # insightface: beyond theta = pi - m, fall back to a CosFace-like margin
            new = torch.where(gt > math.cos(math.pi - m), new, gt - math.sin(math.pi - m) * m)
    elif kind == "sv":
        sub = cos[rows]
        hard = sub > (gt - m).unsqueeze(1)
        sub = torch.where(hard, 1.2 * sub + 0.2, sub)
        cos = cos.index_put((rows,), sub)
        new = torch.where(gt > m, gt - m, gt)
    else:
        raise ValueError(f"unknown margin {kind!r}; choose one of {', '.join(MARGINS)}")
    return cos.index_put((rows, t), new)


def shard_bounds(num_classes: int, world: int, rank: int) -> tuple[int, int]:
    """Rows ``[lo, hi)`` of shard ``rank`` of ``world``: sizes differ by at most one, the first
    ``num_classes % world`` shards one larger (insightface's split)."""
    base, extra = divmod(num_classes, world)
    lo = base * rank + min(rank, extra)
    return lo, lo + base + (rank < extra)


def init_rows(lo: int, hi: int, dim: int, seed: int, std: float = 0.01) -> torch.Tensor:
    """Rows ``[lo, hi)`` of the class-centre init stream (CPU, fp32; see the module docstring)."""
    out = torch.empty(hi - lo, dim)
    for b in range(lo // INIT_BLOCK, -(-hi // INIT_BLOCK) if hi > lo else 0):
        g = torch.Generator().manual_seed(seed * 1_000_003 + b + 17)
        block = torch.randn(INIT_BLOCK, dim, generator=g).mul_(std)
        a, z = max(lo, b * INIT_BLOCK), min(hi, (b + 1) * INIT_BLOCK)
        out[a - lo:z - lo] = block[a - b * INIT_BLOCK:z - b * INIT_BLOCK]
    return out


class MarginFC(nn.Module):
    """The full FC layer: ``C`` class centres, logits ``s * margin(cos(e, W))``, cross-entropy
    averaged over the batch. Holds the rows ``rows = (lo, hi)`` of the class-centre matrix
    (default all); a module built on the ``meta`` device allocates nothing (the sharded layer of
    ``f2c.parallel_fc`` materialises only its own rows)."""

    def __init__(self, num_classes: int, dim: int, scale: float = 64.0, margin: float = 0.5,
                 margin_type: str = "arcface", arc_guard: bool = False, seed: int = 0,
                 rows: tuple[int, int] | None = None, device=None):
        super().__init__()
        if margin_type not in MARGINS:
            raise ValueError(f"unknown margin {margin_type!r}; choose one of {', '.join(MARGINS)}")
        self.num_classes, self.dim = num_classes, dim
        self.scale, self.margin = scale, margin
        self.margin_type, self.arc_guard = margin_type, arc_guard
        self.seed = seed
        self.rows = rows or (0, num_classes)
        device = torch.device(device) if device is not None else None
        n = self.rows[1] - self.rows[0]
        if device is not None and device.type == "meta":
            self.weight = nn.Parameter(torch.empty(n, dim, device="meta"))
        else:
            self.weight = nn.Parameter(init_rows(*self.rows, dim, seed).to(device))

    def cosine(self, emb: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        w = self.weight if weight is None else weight
        return F.linear(F.normalize(emb), F.normalize(w)).clamp(-1, 1)

    def forward(self, emb: torch.Tensor, labels: torch.Tensor, step: int = 0) -> torch.Tensor:
        logits = margin_logits(self.cosine(emb), labels, self.margin_type, self.margin,
                               self.arc_guard) * self.scale
        return F.cross_entropy(logits, labels)

    def extra_repr(self) -> str:
        return (f"classes={self.num_classes}, rows={self.rows}, dim={self.dim}, "
                f"{self.margin_type} m={self.margin} s={self.scale}")


def sample_centres(labels_local: torch.Tensor, num_local: int, num_sample: int,
                   generator: torch.Generator) -> torch.Tensor:
    """Partial FC's sampling on one shard: every positive centre (a class among ``labels_local``,
    shard-local indices), then uniformly random negatives up to ``num_sample``, as sorted
    indices. When the positives alone exceed ``num_sample`` only they are kept (insightface)."""
    positive = torch.unique(labels_local.cpu(), sorted=True)
    if num_sample < positive.numel():
        return positive
    score = torch.rand(num_local, generator=generator)
    score[positive] = 2.0
    return torch.topk(score, num_sample).indices.sort().values


def pfc_generator(seed: int, step: int, shard: int) -> torch.Generator:
    """The random draw of shard ``shard`` at ``step``: a function of (seed, step, shard) alone, so a
    resumed run draws the same negatives and one process reproduces any number of ranks."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 4099 + shard + 1)


class PartialFC(MarginFC):
    """Partial FC (insightface ``PartialFC_V2``): per shard of the class centres, the positives of
    the batch plus uniformly sampled negatives, ``int(sample_rate * C_shard)`` rows in all; softmax
    over the sampled rows only. Single device: ``shards`` virtual shards reproduce the sampling of
    a run on that many ranks exactly. The full centre matrix stays a parameter: rows that were not
    sampled get a zero gradient (SGD still applies weight decay and momentum to them, as in V2)."""

    def __init__(self, num_classes: int, dim: int, sample_rate: float = 0.1, shards: int = 1,
                 **kw):
        super().__init__(num_classes, dim, **kw)
        if not 0 < sample_rate <= 1:
            raise ValueError(f"the Partial FC sample rate must be in (0, 1]; got {sample_rate}")
        self.sample_rate, self.shards = sample_rate, shards

    def forward(self, emb: torch.Tensor, labels: torch.Tensor, step: int = 0) -> torch.Tensor:
        index, target = [], torch.full_like(labels, -1)
        offset = 0
        for s in range(self.shards):
            lo, hi = shard_bounds(self.num_classes, self.shards, s)
            local = (labels >= lo) & (labels < hi)
            idx = sample_centres(labels[local] - lo, hi - lo, int(self.sample_rate * (hi - lo)),
                                 pfc_generator(self.seed, step, s)).to(labels.device)
            target[local] = offset + torch.searchsorted(idx, labels[local] - lo)
            index.append(idx + lo)
            offset += idx.numel()
        index = torch.cat(index)
        logits = margin_logits(self.cosine(emb, self.weight[index]), target, self.margin_type,
                               self.margin, self.arc_guard) * self.scale
        return F.cross_entropy(logits, target)


class FaceClassifier(nn.Module):
    """A backbone and a classifier head (full FC or Partial FC): ``forward(x)`` is the embedding,
    ``loss(x, labels, step)`` the head's margin-softmax loss."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def loss(self, x: torch.Tensor, labels: torch.Tensor, step: int = 0) -> torch.Tensor:
        return self.head(self.backbone(x), labels, step)
