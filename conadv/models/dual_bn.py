"""Dual batch normalisation (AdvProp, arXiv 1911.09665): one BatchNorm for clean images and an
auxiliary one for adversarial images, with every other weight shared.

:func:`convert_dual_bn` swaps every BatchNorm of a torchvision or timm model (``BatchNorm2d``,
timm's ``BatchNormAct2d``, ...) for a :class:`DualBatchNorm` holding the original module as
``main`` and a copy as ``adv`` (own affine weights and running statistics). A whole batch goes
through one branch, chosen for the whole model with :func:`route`::

    with route(model, "adv"):
        logits_adv = model(x_adv)          # every DualBatchNorm uses .adv
    logits = model(x)                      # default: .main (training and inference)

The route is an attribute of each module, not of a thread, so two threads that attack and train
at the same time must use two model objects (``conadv.attack`` keeps a shadow copy).
"""
from __future__ import annotations

import contextlib
import copy

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

ROUTES = ("main", "adv")


class DualBatchNorm(nn.Module):
    """``main`` and ``adv`` copies of one BatchNorm; ``route`` says which one ``forward`` uses."""

    def __init__(self, bn: nn.Module):
        super().__init__()
        self.main = bn
        self.adv = copy.deepcopy(bn)
        self.route = "main"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.adv(x) if self.route == "adv" else self.main(x)

    def extra_repr(self) -> str:
        return f"route={self.route}"


def convert_dual_bn(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm inside ``module`` by a :class:`DualBatchNorm` (in place; returns
    ``module``). The adversarial copy starts with the same weights and statistics."""
    for name, child in module.named_children():
        if isinstance(child, _BatchNorm):
            setattr(module, name, DualBatchNorm(child))
        else:
            convert_dual_bn(child)
    return module


def dual_bns(model: nn.Module) -> list[DualBatchNorm]:
    return [m for m in model.modules() if isinstance(m, DualBatchNorm)]


def set_route(model: nn.Module, name: str) -> None:
    if name not in ROUTES:
        raise ValueError(f"route {name!r}: choose one of {ROUTES}")
    for m in dual_bns(model):
        m.route = name


@contextlib.contextmanager
def route(model: nn.Module, name: str):
    """Send every batch inside the block through the ``name`` ("main" | "adv") BatchNorms."""
    set_route(model, name)
    try:
        yield model
    finally:
        set_route(model, "main")
