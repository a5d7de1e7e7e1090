"""EfficientNets from timm: B0 (the paper's v1 second model) and timm's tiny test variant for CPU.

timm's EfficientNet uses ``BatchNormAct2d`` (BatchNorm fused with its activation); the dual
BatchNorm conversion copies the whole module, activation included.
"""
from __future__ import annotations

import timm
import torch.nn as nn


def efficientnet_b0(num_classes: int = 1000) -> nn.Module:
    """timm ``efficientnet_b0`` (5.3M parameters at 1000 classes), no pre-trained weights."""
    return timm.create_model("efficientnet_b0", pretrained=False, num_classes=num_classes)


def efficientnet_tiny(num_classes: int = 10) -> nn.Module:
    """timm ``test_efficientnet`` (the same blocks at a fraction of the width and depth), for
    32x32 CPU runs."""
    return timm.create_model("test_efficientnet", pretrained=False, num_classes=num_classes)
