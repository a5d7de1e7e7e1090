"""Large-batch optimizers from timm, with biases and BatchNorm parameters left out of weight
decay and of the trust ratio, and the learning rate scaled with the batch.

LARS (``timm.optim.Lars``, You et al. 2017), per parameter tensor w with gradient g, as timm
computes it (and as TensorFlow's ``LARSOptimizer`` used by the MLPerf ResNet-50 recipes)::

    u     = g + wd * w
    trust = eta * ||w|| / (||g|| + wd * ||w|| + 1e-8)     (1 when ||w|| or ||g|| is 0)
    m     = momentum * m + trust * u
    w     = w - lr * m

For biases and BatchNorm parameters (every tensor of one dimension) ``wd = 0`` and there is no
trust ratio: ``m = momentum * m + g; w = w - lr * m``. LAMB (``timm.optim.Lamb``) uses the same
two groups, with timm's global-norm clipping off (the training core clips, ``--grad_clip``).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .models import default_optimizer


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: conv/linear weights (weight decay, trust ratio) and every 1-D tensor (biases,
    BatchNorm scales and shifts: neither)."""
    decay, plain = [], []
    for p in model.parameters():
        if p.requires_grad:
            (plain if p.ndim <= 1 else decay).append(p)
    return [dict(params=decay, weight_decay=weight_decay, always_adapt=True),
            dict(params=plain, weight_decay=0.0, always_adapt=False)]


def scaled_lr(cfg) -> float:
    """The peak learning rate of a run: ``cfg.lr`` at ``cfg.base_batch``, times
    ``(batch / base_batch) ** {sqrt: 1/2, linear: 1, none: 0}``."""
    power = {"sqrt": 0.5, "linear": 1.0, "none": 0.0}[cfg.lr_scaling]
    return cfg.lr * (cfg.batch_size / cfg.base_batch) ** power


def optimizer_name(cfg) -> str:
    return default_optimizer(cfg.model) if cfg.optimizer == "auto" else cfg.optimizer


def build_optimizer(model: nn.Module, cfg) -> torch.optim.Optimizer:
    """LARS or LAMB (``cfg.optimizer``, auto = the paper's for the model) at the scaled lr."""
    from timm.optim import Lamb, Lars

    groups = param_groups(model, cfg.weight_decay)
    lr = scaled_lr(cfg)
    if optimizer_name(cfg) == "lars":
        return Lars(groups, lr=lr, momentum=cfg.momentum, trust_coeff=cfg.trust_coeff)
    return Lamb(groups, lr=lr, betas=(0.9, 0.999), max_grad_norm=None)
