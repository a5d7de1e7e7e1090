"""Skeleton Merger: unsupervised aligned keypoints by reconstructing a point cloud from a
skeleton of its keypoints (Shi et al., CVPR 2021, arXiv 2103.10814).

    @inproceedings{shi2021skeleton,
      title={Skeleton Merger: an Unsupervised Aligned Keypoint Detector},
      author={Shi, Ruoxi and Xue, Zhengrong and You, Yang and Lu, Cewu},
      booktitle={CVPR}, year={2021}}

The network (exact to the authors' code, ../shared/papers/skeleton_merger.md Sec. 1):

1. **Encoder**: PointNet++ MSG (:mod:`.pointnet2`) -> per-point log-probabilities ``(B, N, k)``
   and the coarsest features ``(B, 16, 1024)``.
2. **Keypoint proposal**: ``Linear(k, k)`` on the log-probabilities, then a softmax over the
   **points** for each of the k channels: heatmaps ``H (B, k, N)``, rows summing to one;
   keypoints ``K = H X (B, k, 3)`` are convex combinations of the input points.
3. **Activation strengths**: the max over the coarsest level's points of its features ->
   MLP 1024-512-256 (Linear, BN, ReLU) -> Linear(256, P) -> sigmoid: one strength per edge of the
   complete graph on the keypoints, ``P = k(k-1)/2`` edges ordered ``(i, j)`` for ``i`` in
   ``0..k-1``, ``j < i``.
4. **Skeleton decoder** (:class:`SkeletonDecoder`): each edge owns a learnable offset table
   ``O_e (200, 3)``, initialised N(0, 0.002^2) and shared by all shapes (input independent). Edge
   ``e = (i, j)`` is sampled at ``c_e`` points ``q_s = t_s K_i + (1 - t_s) K_j + O_e[s]``,
   ``t_s = linspace(0, 1, c_e)``, where ``c_e = clamp(floor(mean_b sqrt(1e-3 + |K_i - K_j|^2)
   / 0.01), 15, 200)`` (the batch-mean length, so one count per edge for the whole batch).

The sub-clouds have different sizes; :class:`SkeletonOutput` holds them padded in one tensor
``samples (B, P, C_max, 3)`` with ``counts (P,)`` (row ``s >= c_e`` repeats row ``c_e - 1``, so a
nearest-neighbour search over the padded rows finds the same point), which is what the vectorised
loss consumes; :meth:`SkeletonOutput.sub_clouds` gives the list of the paper.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .pointnet2 import PAPER_NPOINTS, PAPER_NSAMPLES, PAPER_RADII, PointNet2MsgSeg, SharedMLP


def edge_list(k: int) -> torch.Tensor:
    """``(P, 2)`` int64 pairs ``(i, j)``, ``j < i``, in the authors' order (``i`` outer)."""
    return torch.tensor([(i, j) for i in range(k) for j in range(i)], dtype=torch.long).view(-1, 2)


@dataclass
class SkeletonOutput:
    keypoints: torch.Tensor        # (B, k, 3), convex combinations of the input points
    heatmaps: torch.Tensor         # (B, k, N), each row a distribution over the points
    strengths: torch.Tensor        # (B, P) activation strengths in (0, 1)
    samples: torch.Tensor          # (B, P, C_max, 3) edge samples, padded (see module doc)
    counts: torch.Tensor           # (P,) int64 samples per edge (the same for the whole batch)
    offsets: torch.Tensor          # (P, max_samples, 3) the decoder's offset tables (parameter)
    log_probs: torch.Tensor        # (B, N, k) the encoder's per-point log-softmax

    def sub_clouds(self) -> list[torch.Tensor]:
        """The paper's list of P sub-clouds ``(B, c_e, 3)``."""
        return [self.samples[:, e, :c] for e, c in enumerate(self.counts.tolist())]


class SkeletonDecoder(nn.Module):
    """Point samples along every edge of the keypoint skeleton, plus learnable offsets.

    ``keypoints (B, k, 3)`` -> ``(samples (B, P, C_max, 3), counts (P,))``. ``counts`` may be
    given (e.g. to replay a data-parallel step serially); otherwise it is computed from the batch
    mean of the edge lengths (:meth:`sample_counts`)."""

    def __init__(self, k: int, max_samples: int = 200, min_samples: int = 15,
                 sample_spacing: float = 0.01, offset_std: float = 0.002):
        super().__init__()
        self.k, self.max_samples, self.min_samples = k, max_samples, min_samples
        self.sample_spacing = sample_spacing
        self.register_buffer("edges", edge_list(k), persistent=False)
        self.offsets = nn.Parameter(torch.randn(len(self.edges), max_samples, 3) * offset_std)

    @property
    def num_edges(self) -> int:
        return len(self.edges)

    def mean_lengths(self, keypoints: torch.Tensor) -> torch.Tensor:
        """``(P,)`` batch mean of ``sqrt(1e-3 + |K_i - K_j|^2)`` per edge (no gradient)."""
        with torch.no_grad():
            k = keypoints.float()
            d = k[:, self.edges[:, 0]] - k[:, self.edges[:, 1]]                  # (B, P, 3)
            return torch.sqrt(1e-3 + d.square().sum(-1)).mean(0)

    def sample_counts(self, keypoints: torch.Tensor) -> torch.Tensor:
        """``c_e = clamp(floor(mean length / spacing), min, max)`` per edge, ``(P,)`` int64."""
        c = torch.floor(self.mean_lengths(keypoints) / self.sample_spacing)
        return c.clamp(self.min_samples, self.max_samples).long()

    def forward(self, keypoints: torch.Tensor, counts: torch.Tensor | None = None):
        if counts is None:
            counts = self.sample_counts(keypoints)
        counts = counts.to(device=keypoints.device, dtype=torch.long)
        c_max = int(counts.max())
        s = torch.arange(c_max, device=keypoints.device)
        row = torch.minimum(s[None, :], counts[:, None] - 1)                     # (P, C) pad
        t = row.to(keypoints.dtype) / (counts[:, None] - 1).to(keypoints.dtype)  # linspace(0, 1)
        ki = keypoints[:, self.edges[:, 0]][:, :, None, :]                       # (B, P, 1, 3)
        kj = keypoints[:, self.edges[:, 1]][:, :, None, :]
        t = t[None, :, :, None]
        offsets = self.offsets.gather(1, row[..., None].expand(-1, -1, 3))       # (P, C, 3)
        samples = t * ki + (1 - t) * kj + offsets.to(keypoints.dtype)            # (B, P, C, 3)
        return samples, counts


class SkeletonMerger(nn.Module):
    """The whole network: ``xyz (B, N, 3)`` normalised to ``[-1, 1]`` -> :class:`SkeletonOutput`.

    Args:
        k: keypoints (10 in the paper).
        npoints, radii, nsamples, width: encoder configuration (:class:`PointNet2MsgSeg`);
            defaults are the paper's (N = 2048 input points).
        max_samples, min_samples, sample_spacing, offset_std: decoder (paper: 200, 15, 0.01,
            0.002).
    """

    def __init__(self, k: int = 10, npoints: Sequence[int] = PAPER_NPOINTS, radii=PAPER_RADII,
                 nsamples=PAPER_NSAMPLES, width: float = 1.0, dropout: float = 0.5,
                 max_samples: int = 200, min_samples: int = 15, sample_spacing: float = 0.01,
                 offset_std: float = 0.002):
        super().__init__()
        if k < 2:
            raise ValueError(f"Skeleton Merger needs at least 2 keypoints (one edge); got k={k}")
        self.k = k
        self.encoder = PointNet2MsgSeg(k, npoints, radii, nsamples, width, dropout)
        self.proposal = nn.Linear(k, k)
        num_edges = k * (k - 1) // 2
        hidden = [max(1, int(round(c * width))) for c in (512, 256)]
        self.strength_mlp = SharedMLP(self.encoder.global_channels, hidden)
        self.strength_out = nn.Linear(hidden[-1], num_edges)
        self.decoder = SkeletonDecoder(k, max_samples, min_samples, sample_spacing, offset_std)

    @property
    def min_points(self) -> int:
        """The fewest input points the encoder can sample its first level from."""
        return self.encoder.npoints[0]

    def forward(self, xyz: torch.Tensor, counts: torch.Tensor | None = None) -> SkeletonOutput:
        log_probs, coarse = self.encoder(xyz)                        # (B, N, k), (B, S4, C4)
        global_feat = coarse.amax(dim=1)                             # (B, C4)
        strengths = torch.sigmoid(self.strength_out(self.strength_mlp(global_feat)).float())
        # keypoints and skeleton in float32 also under bf16 autocast: a keypoint is a weighted
        # mean of N points, and bf16 (8 bits of mantissa) would move it by ~0.004
        with torch.autocast(xyz.device.type, enabled=False):
            logits = self.proposal(log_probs.float())                # (B, N, k)
            heatmaps = F.softmax(logits.transpose(1, 2), dim=-1)     # (B, k, N), over points
            keypoints = heatmaps @ xyz.float()                       # (B, k, 3)
            samples, counts = self.decoder(keypoints, counts)
        return SkeletonOutput(keypoints, heatmaps, strengths, samples, counts,
                              self.decoder.offsets, log_probs)
