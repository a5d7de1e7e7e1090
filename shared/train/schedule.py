"""Learning-rate schedules, from ``timm.scheduler``, as one function of the step.

Every paper uses the same shapes (``--schedule``): linear warm-up from ``min_lr`` to ``lr``
over ``warmup_steps``, then a cosine, linear or polynomial decay to ``min_lr`` at ``steps``, or a
constant ``lr``. ``poly`` decays as ``(1 - progress) ** power`` (the large-batch LARS recipes use
power 2; ``--poly_power``). timm's schedulers keep each parameter group's
own base learning rate, so a paper that scales some groups (e.g. a smaller lr for a head) keeps
the ratio.

The schedule is a pure function of the step (``scheduler.step_update(step)``), so a resumed run
continues on the same curve without any scheduler state in the checkpoint.
"""
from __future__ import annotations

import torch


def build_scheduler(optimizer: torch.optim.Optimizer, kind: str, total_steps: int,
                    warmup_steps: int = 0, min_lr: float = 0.0, power: float = 2.0):
    """A timm scheduler over ``total_steps`` optimizer steps; call ``.step_update(step)`` before
    each step. ``kind``: cosine | linear | constant | poly (``power``: its exponent)."""
    from timm.scheduler import CosineLRScheduler, PolyLRScheduler, StepLRScheduler

    decay_steps = max(1, total_steps - warmup_steps)
    common = dict(warmup_t=warmup_steps, warmup_lr_init=min_lr, t_in_epochs=False)
    if kind == "cosine":
        return CosineLRScheduler(optimizer, t_initial=decay_steps, lr_min=min_lr,
                                 warmup_prefix=True, **common)
    if kind == "linear":
        return PolyLRScheduler(optimizer, t_initial=decay_steps, power=1.0, lr_min=min_lr,
                               warmup_prefix=True, **common)
    if kind == "poly":
        return PolyLRScheduler(optimizer, t_initial=decay_steps, power=power, lr_min=min_lr,
                               warmup_prefix=True, **common)
    if kind == "constant":
        return StepLRScheduler(optimizer, decay_t=10 ** 12, decay_rate=1.0, **common)
    raise ValueError(f"unknown schedule {kind!r}; choose cosine, linear, constant or poly")


def lr_curve(kind: str, lr: float, total_steps: int, warmup_steps: int = 0,
             min_lr: float = 0.0, power: float = 2.0) -> list[float]:
    """The learning rate at every step of a schedule (for plots and tests)."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    sched = build_scheduler(opt, kind, total_steps, warmup_steps, min_lr, power)
    out = []
    for step in range(total_steps):
        sched.step_update(step)
        out.append(opt.param_groups[0]["lr"])
    return out
