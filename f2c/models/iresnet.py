"""IResNet, the face-recognition ResNet of ArcFace (Deng et al., CVPR 2019, arXiv 1801.07698), as
used for ``ir50`` by F2C's official code and by insightface's arcface_torch.

Differences from the ImageNet ResNet (the "improved residual" unit, paper Fig. 7 of ArcFace):

* a 3x3 stem with stride 1 (112x112 input keeps full resolution into the first stage);
* the basic block is ``BN - conv3x3 - BN - PReLU - conv3x3(stride) - BN`` plus the shortcut, with
  the stride on the *second* convolution;
* the head is ``BN2d - Dropout - flatten - Linear(C*7*7 -> d) - BN1d``: the spatial layout is
  kept (no global pooling), so the embedding is position aware. The final BN1d has a fixed scale
  of 1 (insightface freezes it).

``ir50`` = layers (3, 4, 14, 3), widths (64, 128, 256, 512), 112x112 input, 512-d embedding.
``ir_tiny`` is the CPU variant used by the scaled-down runs: the same block and head, one block
per stage, widths (16, 32, 64, 128), 32x32 input, 128-d embedding.

The network returns the BN1d feature, not normalised: each method normalises it (F2C: the probe
and gallery features; FC / Partial FC: inside the margin head).
"""
from __future__ import annotations

import torch
import torch.nn as nn


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    """``x + F(x)``, F = BN, conv3x3, BN, PReLU, conv3x3 (stride), BN."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin, eps=1e-5)
        self.conv1 = conv3x3(cin, cout)
        self.bn2 = nn.BatchNorm2d(cout, eps=1e-5)
        self.prelu = nn.PReLU(cout)
        self.conv2 = conv3x3(cout, cout, stride)
        self.bn3 = nn.BatchNorm2d(cout, eps=1e-5)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(cout, eps=1e-5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + (x if self.downsample is None else self.downsample(x))


class IResNet(nn.Module):
    """IResNet backbone: images ``(B, 3, S, S)`` -> features ``(B, embedding_size)``.

    Args:
        layers: blocks per stage (4 stages, each halving the resolution).
        widths: channels per stage.
        img_size: input side; must be divisible by 16.
        embedding_size: the feature dimension ``d``.
        dropout: before the embedding Linear (insightface: 0).
    """

    def __init__(self, layers=(3, 4, 14, 3), widths=(64, 128, 256, 512), img_size: int = 112,
                 embedding_size: int = 512, dropout: float = 0.0):
        super().__init__()
        if len(layers) != 4 or len(widths) != 4:
            raise ValueError(f"IResNet has 4 stages; got layers {layers} and widths {widths}")
        if img_size % 16:
            raise ValueError(f"IResNet halves the image 4 times: the image size must be "
                             f"divisible by 16; got {img_size}")
        self.img_size, self.embedding_size = img_size, embedding_size
        self.conv1 = conv3x3(3, widths[0])
        self.bn1 = nn.BatchNorm2d(widths[0], eps=1e-5)
        self.prelu = nn.PReLU(widths[0])
        stages, cin = [], widths[0]
        for n, cout in zip(layers, widths):
            blocks = [IBasicBlock(cin, cout, stride=2)]
            blocks += [IBasicBlock(cout, cout) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.bn2 = nn.BatchNorm2d(cin, eps=1e-5)
        self.dropout = nn.Dropout(dropout)
        side = img_size // 16
        self.fc = nn.Linear(cin * side * side, embedding_size)
        self.features = nn.BatchNorm1d(embedding_size, eps=1e-5)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0, 0.1)
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        self.features.weight.requires_grad_(False)      # fixed scale 1, as insightface

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))                          # (B, w0, S, S)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))        # (B, w3, S/16, S/16)
        x = self.dropout(torch.flatten(self.bn2(x), 1))
        return self.features(self.fc(x).float())                         # (B, d), fp32


_ARCHS = {
    # name: (layers, widths, default image size, default embedding size)
    "ir50": ((3, 4, 14, 3), (64, 128, 256, 512), 112, 512),
    "ir18": ((2, 2, 2, 2), (64, 128, 256, 512), 112, 512),
    "ir_tiny": ((1, 1, 1, 1), (16, 32, 64, 128), 32, 128),
}


def list_backbones() -> list[str]:
    return sorted(_ARCHS)


def backbone_defaults(name: str) -> tuple[int, int]:
    """(image size, embedding size) of a registered backbone."""
    return _ARCHS[name][2], _ARCHS[name][3]


def create_backbone(name: str, img_size: int = 0, embedding_size: int = 0,
                    dropout: float = 0.0) -> IResNet:
    """A registered IResNet; ``img_size``/``embedding_size`` 0 = the architecture's default."""
    if name not in _ARCHS:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(list_backbones())}")
    layers, widths, size, dim = _ARCHS[name]
    return IResNet(layers, widths, img_size or size, embedding_size or dim, dropout)
