"""MinkUNet: the sparse residual U-Net of MinkowskiEngine's examples, on our plain-PyTorch
sparse convolutions (:mod:`canonical_voting.models.sparse`).

Layout (brief Sec. 1, MinkUNet34C): a kernel-5 stem to ``init_dim`` channels; four encoder
stages, each a kernel-2 stride-2 convolution + BN + ReLU followed by ``layers[i]`` BasicBlocks of
``planes[i]`` channels; four decoder stages, each a kernel-2 stride-2 transposed convolution to
``planes[4 + i]`` + BN + ReLU, concatenated with the encoder output of the same stride (the last
with the stem's output), then ``layers[4 + i]`` BasicBlocks; a final 1x1 convolution with bias.
BasicBlock = k3 conv, BN, ReLU, k3 conv, BN, + shortcut (1x1 conv + BN when the width changes),
ReLU.

Registry (``create_backbone(name, in_channels, out_channels)``):

* ``minkunet34c``: the paper's backbone, layers (2,3,4,6,2,2,2,2), planes
  (32,64,128,256,256,128,96,96), init 32, stem kernel 5 (~37.8M parameters with a 64-channel
  head);
* ``minkunet14``: MinkowskiEngine's MinkUNet14A depth (one block per stage), planes of 34C;
* ``minkunet_small``: the CPU variant (one block per stage, planes (16,32,48,64,48,48,32,32),
  init 16, stem kernel 3): same structure, a few minutes of training on two cores.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from .sparse import SparseBatchNorm, SparseConv3d, SparseReLU, SparseTensor, cat


@dataclass(frozen=True)
class UNetSpec:
    layers: tuple[int, ...]
    planes: tuple[int, ...]
    init_dim: int = 32
    stem_kernel: int = 5


SPECS = {
    "minkunet34c": UNetSpec((2, 3, 4, 6, 2, 2, 2, 2), (32, 64, 128, 256, 256, 128, 96, 96)),
    "minkunet14": UNetSpec((1, 1, 1, 1, 1, 1, 1, 1), (32, 64, 128, 256, 256, 128, 96, 96)),
    "minkunet_small": UNetSpec((1, 1, 1, 1, 1, 1, 1, 1), (16, 32, 48, 64, 48, 48, 32, 32),
                               init_dim=16, stem_kernel=3),
}


def list_backbones() -> list[str]:
    return sorted(SPECS)


class ConvBNReLU(nn.Sequential):
    def __init__(self, cin, cout, kernel_size, stride=1, transposed=False, bn_momentum=0.1):
        super().__init__(SparseConv3d(cin, cout, kernel_size, stride, transposed=transposed),
                         SparseBatchNorm(cout, momentum=bn_momentum), SparseReLU())


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, bn_momentum: float = 0.1):
        super().__init__()
        self.conv1 = SparseConv3d(inplanes, planes, 3)
        self.norm1 = SparseBatchNorm(planes, momentum=bn_momentum)
        self.conv2 = SparseConv3d(planes, planes, 3)
        self.norm2 = SparseBatchNorm(planes, momentum=bn_momentum)
        self.relu = SparseReLU()
        self.downsample = None
        if inplanes != planes:
            self.downsample = nn.Sequential(SparseConv3d(inplanes, planes, 1),
                                            SparseBatchNorm(planes, momentum=bn_momentum))

    def forward(self, x: SparseTensor) -> SparseTensor:
        out = self.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        residual = x if self.downsample is None else self.downsample(x)
        return self.relu(out.replace(out.feats + residual.feats))


def _stage(inplanes: int, planes: int, blocks: int, bn_momentum: float) -> nn.Sequential:
    return nn.Sequential(*[BasicBlock(inplanes if i == 0 else planes, planes, bn_momentum)
                           for i in range(blocks)])


class MinkUNet(nn.Module):
    """``forward(SparseTensor (N, in_channels)) -> SparseTensor (N, out_channels)`` on the
    input's sites."""

    def __init__(self, in_channels: int, out_channels: int, spec: UNetSpec,
                 bn_momentum: float = 0.1):
        super().__init__()
        L, P, init = spec.layers, spec.planes, spec.init_dim
        m = bn_momentum
        self.stem = ConvBNReLU(in_channels, init, spec.stem_kernel, bn_momentum=m)
        self.down = nn.ModuleList()
        self.enc = nn.ModuleList()
        inplanes, skips = init, [init]
        for i in range(4):
            self.down.append(ConvBNReLU(inplanes, inplanes, 2, stride=2, bn_momentum=m))
            self.enc.append(_stage(inplanes, P[i], L[i], m))
            inplanes = P[i]
            skips.append(inplanes)
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for i in range(4):
            self.up.append(ConvBNReLU(inplanes, P[4 + i], 2, stride=2, transposed=True,
                                      bn_momentum=m))
            skip = skips[3 - i]                 # strides 8, 4, 2 from the encoder, then the stem
            self.dec.append(_stage(P[4 + i] + skip, P[4 + i], L[4 + i], m))
            inplanes = P[4 + i]
        self.final = SparseConv3d(inplanes, out_channels, 1, bias=True)
        self.out_channels = out_channels

    def forward(self, x: SparseTensor) -> SparseTensor:
        out = self.stem(x)
        skips = [out]
        for down, enc in zip(self.down, self.enc):
            out = enc(down(out))
            skips.append(out)
        for i, (up, dec) in enumerate(zip(self.up, self.dec)):
            out = dec(cat(up(out), skips[3 - i]))
        return self.final(out)


def create_backbone(name: str, in_channels: int, out_channels: int,
                    bn_momentum: float = 0.1) -> MinkUNet:
    if name not in SPECS:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(list_backbones())}")
    return MinkUNet(in_channels, out_channels, SPECS[name], bn_momentum)
