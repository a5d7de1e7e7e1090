"""Models of ConAdv: image classifiers whose every BatchNorm is a dual (clean / adversarial)
BatchNorm and whose first layer normalises [0,1] pixels, so that attacks act in pixel space.

    from conadv.models import create_model, list_models
    model = create_model("resnet50", num_classes=1000)          # ImageNet, 224 px
    model = create_model("resnet_tiny", num_classes=10)         # CPU, 16-32 px

==================  ===========================================  ==============
name                model                                        optimizer
==================  ===========================================  ==============
resnet50            torchvision ResNet-50 (the paper's model)    LARS
efficientnet_b0     timm EfficientNet-B0 (the paper's v1)        LAMB
resnet_tiny         ResNet-10 at 1/8 width, CIFAR stem           LARS
resnet_small        ResNet-18 at 1/4 width, CIFAR stem           LARS
efficientnet_tiny   timm test_efficientnet                       LAMB
==================  ===========================================  ==============
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from .dual_bn import DualBatchNorm, convert_dual_bn, dual_bns, route, set_route
from .efficientnet import efficientnet_b0, efficientnet_tiny
from .resnet import SmallResNet, resnet50, resnet_small, resnet_tiny

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageClassifier(nn.Module):
    """``net((x - mean) / std)`` for images ``x`` in [0, 1]: (B, 3, H, W) -> logits (B, classes).
    ``mean`` and ``std`` are buffers (saved with the weights)."""

    def __init__(self, net: nn.Module, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


# name -> (builder(num_classes), default optimizer)
_MODELS: dict[str, tuple[Callable[[int], nn.Module], str]] = {
    "resnet50": (resnet50, "lars"),
    "efficientnet_b0": (efficientnet_b0, "lamb"),
    "resnet_tiny": (resnet_tiny, "lars"),
    "resnet_small": (resnet_small, "lars"),
    "efficientnet_tiny": (efficientnet_tiny, "lamb"),
}


def list_models() -> list[str]:
    return list(_MODELS)


def default_optimizer(name: str) -> str:
    """The paper's optimizer for a model: LARS for ResNets, LAMB for EfficientNets."""
    return _MODELS[name][1]


def create_model(name: str, num_classes: int = 1000, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                 dual_bn: bool = True) -> ImageClassifier:
    """A registered model with dual BatchNorms (``dual_bn``) and input normalisation."""
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(_MODELS)}")
    net = _MODELS[name][0](num_classes)
    if dual_bn:
        convert_dual_bn(net)
    return ImageClassifier(net, mean, std)


__all__ = ["DualBatchNorm", "ImageClassifier", "SmallResNet", "convert_dual_bn",
           "create_model", "default_optimizer", "dual_bns", "list_models", "route", "set_route"]
