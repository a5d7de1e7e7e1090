"""ResNets: torchvision's ResNet-50 (the paper's model) and a narrow CPU variant for 16-32 px
images built from torchvision's ``BasicBlock`` (the ResNet-18 block).

Both zero-initialise the last BatchNorm scale of every residual block (Goyal et al. 2017, as the
large-batch LARS recipes do); the dual BatchNorm conversion happens afterwards, so the adversarial
copies start from the same values.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torchvision.models import resnet50 as tv_resnet50
from torchvision.models.resnet import BasicBlock


def resnet50(num_classes: int = 1000) -> nn.Module:
    """torchvision ResNet-50 v1.5 (stride 2 in the 3x3 conv), no pre-trained weights."""
    return tv_resnet50(weights=None, num_classes=num_classes, zero_init_residual=True)


class SmallResNet(nn.Module):
    """A ResNet for small images: a 3x3 stride-1 stem (no max-pool), then one stage per width of
    ``depth`` BasicBlocks (stride 2 from the second stage on, 1x1 projection shortcuts), global
    average pooling and a linear head.

    Args:
        widths: channels of each stage; the stem has ``widths[0]``.
        depths: BasicBlocks per stage.
    """

    def __init__(self, widths=(8, 16, 32, 64), depths=(1, 1, 1, 1), num_classes: int = 10):
        super().__init__()
        if len(widths) != len(depths) or not widths:
            raise ValueError(f"widths {widths} and depths {depths} must have one entry per stage")
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        stages, inplanes = [], widths[0]
        for i, (width, depth) in enumerate(zip(widths, depths)):
            blocks = []
            for j in range(depth):
                stride = 2 if i > 0 and j == 0 else 1
                down = None
                if stride != 1 or inplanes != width:
                    down = nn.Sequential(nn.Conv2d(inplanes, width, 1, stride, bias=False),
                                         nn.BatchNorm2d(width))
                blocks.append(BasicBlock(inplanes, width, stride, down))
                inplanes = width
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(inplanes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        for m in self.modules():
            if isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)        # zero-init residual (identity at the start)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))          # (B, w0, S, S)
        x = self.stages(x)                              # (B, w_last, S / 2^(n-1), ...)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def resnet_tiny(num_classes: int = 10) -> nn.Module:
    """One BasicBlock per stage, widths 8-16-32-64 (ResNet-10 at 1/8 width): ~78k parameters, a
    few thousand 16x16 images per second on one CPU core."""
    return SmallResNet((8, 16, 32, 64), (1, 1, 1, 1), num_classes)


def resnet_small(num_classes: int = 10) -> nn.Module:
    """Two BasicBlocks per stage, widths 16-32-64-128 (ResNet-18 at 1/4 width): ~0.7M parameters,
    for 32x32 images (CIFAR-10)."""
    return SmallResNet((16, 32, 64, 128), (2, 2, 2, 2), num_classes)
