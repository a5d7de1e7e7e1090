"""PointNet++ semantic-segmentation encoder with multi-scale grouping (MSG), as Skeleton Merger
uses it (Qi et al., NeurIPS 2017; the configuration of the pure-PyTorch port the authors build on,
see ../shared/papers/skeleton_merger.md Sec. 1), on the shared point operations.

Layout: channels-last everywhere, ``xyz (B, N, 3)``, ``features (B, N, C)``. Every 1x1
convolution of the original is a ``Linear`` on the last axis followed by ``BatchNorm`` over the
channel axis and ReLU (the same function: BN statistics are taken over every other axis).

    SA1 1024 pts  r 0.05/0.1  16/32 nbrs  [16,16,32] [32,32,64]       ->  96 ch
    SA2  256 pts  r 0.1/0.2   16/32 nbrs  [64,64,128] [64,96,128]     -> 256 ch
    SA3   64 pts  r 0.2/0.4   16/32 nbrs  [128,196,256] x2            -> 512 ch
    SA4   16 pts  r 0.4/0.8   16/32 nbrs  [256,256,512] [256,384,512] -> 1024 ch
    FP4 1536->[256,256]  FP3 512->[256,256]  FP2 352->[256,128]  FP1 128->[128,128,128]
    head 128->128 (BN, ReLU, dropout 0.5) -> k, log-softmax over the k channels

Point operations (``shared.pointcloud.points``): farthest point sampling from a random start,
ball query (the first ``nsample`` indices within the radius, padded with the first), grouping with
coordinates relative to the centre, inverse-squared-distance interpolation over the 3 nearest
points. ``width`` scales every channel count and ``npoints`` may be set for smaller clouds (the
CPU presets); the defaults are the paper's.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from shared.pointcloud.points import (ball_query, farthest_point_sample, gather_points,
                                      three_interpolate)

PAPER_NPOINTS = (1024, 256, 64, 16)
PAPER_RADII = ((0.05, 0.1), (0.1, 0.2), (0.2, 0.4), (0.4, 0.8))
PAPER_NSAMPLES = ((16, 32), (16, 32), (16, 32), (16, 32))
PAPER_SA_MLPS = (((16, 16, 32), (32, 32, 64)),
                 ((64, 64, 128), (64, 96, 128)),
                 ((128, 196, 256), (128, 196, 256)),
                 ((256, 256, 512), (256, 384, 512)))
PAPER_FP_MLPS = ((256, 256), (256, 256), (256, 128), (128, 128, 128))


class SharedMLP(nn.Module):
    """``(..., C_in) -> (..., C_out)``: [Linear, BatchNorm over the channel, ReLU] per layer (a 1x1
    convolution + BN + ReLU stack of PointNet, channels-last)."""

    def __init__(self, in_channels: int, channels: Sequence[int]):
        super().__init__()
        self.linears = nn.ModuleList()
        self.norms = nn.ModuleList()
        for out in channels:
            self.linears.append(nn.Linear(in_channels, out))
            self.norms.append(nn.BatchNorm1d(out))
            in_channels = out
        self.out_channels = in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape[:-1]
        x = x.reshape(-1, x.shape[-1])                              # (M, C): BN over all rows
        for linear, norm in zip(self.linears, self.norms):
            x = F.relu(norm(linear(x)))
        return x.reshape(*shape, x.shape[-1])


class SetAbstractionMsg(nn.Module):
    """Sample ``npoint`` centres by FPS, group each scale's ball, run its MLP on
    ``[features, xyz - centre]`` and max-pool over the ball; the scales are concatenated.

    ``xyz (B, N, 3)``, ``features (B, N, C)`` -> ``new_xyz (B, S, 3)``, ``(B, S, sum of last
    widths)``."""

    def __init__(self, npoint: int, radii: Sequence[float], nsamples: Sequence[int],
                 in_channels: int, mlps: Sequence[Sequence[int]]):
        super().__init__()
        if not len(radii) == len(nsamples) == len(mlps):
            raise ValueError("one radius, neighbour count and MLP per scale")
        self.npoint, self.radii, self.nsamples = npoint, tuple(radii), tuple(nsamples)
        self.mlps = nn.ModuleList(SharedMLP(in_channels + 3, m) for m in mlps)
        self.out_channels = sum(m.out_channels for m in self.mlps)

    def forward(self, xyz: torch.Tensor, features: torch.Tensor):
        idx = farthest_point_sample(xyz.detach(), self.npoint)                   # (B, S)
        new_xyz = gather_points(xyz, idx)                                        # (B, S, 3)
        out = []
        for radius, nsample, mlp in zip(self.radii, self.nsamples, self.mlps):
            group = ball_query(xyz.detach(), new_xyz.detach(), radius, nsample)  # (B, S, K)
            rel = gather_points(xyz, group) - new_xyz[:, :, None, :]             # (B, S, K, 3)
            grouped = torch.cat([gather_points(features, group), rel.to(features.dtype)], -1)
            out.append(mlp(grouped).amax(dim=2))                                 # (B, S, C_s)
        return new_xyz, torch.cat(out, -1)


class FeaturePropagation(nn.Module):
    """Interpolate coarse features ``(B, S, C2)`` at ``(B, S, 3)`` onto ``xyz (B, N, 3)``
    (inverse squared distance over the 3 nearest), concatenate the skip features ``(B, N, C1)``
    (if any) before them, and run the MLP."""

    def __init__(self, in_channels: int, mlp: Sequence[int]):
        super().__init__()
        self.mlp = SharedMLP(in_channels, mlp)
        self.out_channels = self.mlp.out_channels

    def forward(self, xyz, coarse_xyz, skip, coarse_features):
        interpolated = three_interpolate(xyz.detach(), coarse_xyz.detach(), coarse_features)
        if skip is not None:
            interpolated = torch.cat([skip, interpolated.to(skip.dtype)], -1)
        return self.mlp(interpolated)


class PointNet2MsgSeg(nn.Module):
    """The encoder: ``xyz (B, N, 3)`` -> per-point log-probabilities over ``k`` channels
    ``(B, N, k)`` and the 1024-channel features of the coarsest level ``(B, npoints[3], C4)``.

    The input features are the coordinates repeated three times (9 channels), as in the
    authors' code (the semantic-segmentation model expects 9 input channels)."""

    def __init__(self, k: int, npoints: Sequence[int] = PAPER_NPOINTS,
                 radii=PAPER_RADII, nsamples=PAPER_NSAMPLES, width: float = 1.0,
                 dropout: float = 0.5):
        super().__init__()
        if len(npoints) != 4:
            raise ValueError(f"npoints needs 4 levels; got {tuple(npoints)}")
        w = lambda c: max(1, int(round(c * width)))                          # noqa: E731
        self.npoints = tuple(int(n) for n in npoints)
        sa, channels, in_ch = [], [], 9
        for level in range(4):
            mlps = [[w(c) for c in m] for m in PAPER_SA_MLPS[level]]
            layer = SetAbstractionMsg(self.npoints[level], radii[level], nsamples[level], in_ch,
                                      mlps)
            sa.append(layer)
            channels.append(layer.out_channels)
            in_ch = layer.out_channels
        self.sa = nn.ModuleList(sa)
        fp_mlps = [[w(c) for c in m] for m in PAPER_FP_MLPS]
        fp4 = FeaturePropagation(channels[3] + channels[2], fp_mlps[0])
        fp3 = FeaturePropagation(fp4.out_channels + channels[1], fp_mlps[1])
        fp2 = FeaturePropagation(fp3.out_channels + channels[0], fp_mlps[2])
        fp1 = FeaturePropagation(fp2.out_channels, fp_mlps[3])
        self.fp = nn.ModuleList([fp4, fp3, fp2, fp1])
        self.head = SharedMLP(fp1.out_channels, [w(128)])
        self.drop = nn.Dropout(dropout)
        self.classifier = nn.Linear(w(128), k)
        self.global_channels = channels[3]

    def forward(self, xyz: torch.Tensor):
        xyzs, feats = [xyz], [xyz.repeat(1, 1, 3)]                            # (B, N, 9)
        for layer in self.sa:
            new_xyz, new_feats = layer(xyzs[-1], feats[-1])
            xyzs.append(new_xyz)
            feats.append(new_feats)
        f = feats[4]
        for i, fp in enumerate(self.fp):                                      # FP4 .. FP1
            level = 3 - i
            skip = feats[level] if level > 0 else None
            f = fp(xyzs[level], xyzs[level + 1], skip, f)
        logits = self.classifier(self.drop(self.head(f)))                    # (B, N, k)
        return F.log_softmax(logits.float(), dim=-1), feats[4]
