"""Train ViT / ViT-MoE / WideNet with the paper's recipe (arXiv 2107.11817, brief Sec. 3), on the
shared training core.

    python -m widenet.train --preset tiny                        # CPU, generated data, minutes
    python -m widenet.train --preset tiny --model vit_tiny
    python -m widenet.train --resume runs/widenet/<run>           # continue a run, its config
    torchrun --standalone --nproc-per-node 2 -m widenet.train --mode expert   # experts on 2 ranks
    torchrun --standalone --nproc-per-node 8 -m widenet.train --preset widenet_l \\
        --data /path/to/imagenet --mode expert --expert_ranks 4     # 4 experts over 4 ranks, dp 2

Recipe: LAMB (timm) with weight decay on all parameters (each shared parameter passed once, one
trust ratio per expert and weight as in the official code), clipping by the global norm, linear
warm-up ``min_lr -> lr`` then linear decay to ``min_lr`` (``--schedule linear``), mixup
Beta(a, a) on every batch with label smoothing and soft-target cross-entropy, RandAugment(2, 15)
in the data pipeline, loss = CE + aux_weight * (load-balancing loss summed over all MoE
applications).

Parallelism from outside the model: ``--mode data`` replicates it on every rank;
``--mode expert`` shards the experts over groups of ``--expert_ranks`` ranks with all-to-all
dispatch (``widenet.parallel``). Every rank trains on its own share of the global batch; the
training core averages the gradients as ``widenet.parallel.grad_plans`` says, clips by the
global norm and logs global means. Each rank draws its own mixup, dropout, router noise and
augmentation (seeded ``seed + 1000 * rank``).
"""
from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from shared.data import EpochSampler
from shared.parallel.seeding import seed_everything
from shared.parallel.topology import build_topology
from shared.train import (StepOutput, Task, entry_point, fit, log0, parse_args, reduce_metrics,
                          start)
from shared.train.config import ConfigError

from .config import PRESETS, Config
from .data import build_datasets
from .models import count_parameters, create_model, moe_modules
from .parallel import grad_plans, parallelize


def build_model(cfg: Config, num_classes: int):
    """The registered model with the config's data and MoE settings applied."""
    kw = dict(img_size=cfg.img_size, num_classes=num_classes, dropout=cfg.dropout)
    if cfg.patch_size:
        kw["patch_size"] = cfg.patch_size
    if "moe" in cfg.model or "widenet" in cfg.model:
        kw.update(num_experts=cfg.num_experts, top_k=cfg.top_k,
                  capacity_factor=cfg.capacity_factor)
    try:
        return create_model(cfg.model, **kw)
    except ValueError as exc:          # unknown model, indivisible image size, heads, ...
        raise ConfigError(str(exc)) from None


def head_classes(cfg: Config, data_classes: int) -> int:
    """Classes of the head: ``cfg.num_classes`` (1001 for ImageNet as in the official code, where
    index 1000 stays unused), which must cover the data's classes."""
    if cfg.num_classes < data_classes:
        raise ConfigError(f"the data has {data_classes} classes but --num_classes is "
                          f"{cfg.num_classes}; pass --num_classes {data_classes} (or more)")
    return cfg.num_classes


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return torch.sum(-target * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


def mix(images, labels, num_classes, cfg: Config):
    """Mixup with lambda ~ Beta(a, a) on every batch (batch mixed with its reverse), and label
    smoothing; returns images and soft targets. ``mixup_alpha = 0``: smoothing only."""
    off = cfg.label_smoothing / num_classes
    target = torch.full((len(labels), num_classes), off, device=images.device)
    target.scatter_(1, labels[:, None], 1.0 - cfg.label_smoothing + off)
    if cfg.mixup_alpha <= 0:
        return images, target
    lam = float(torch.distributions.Beta(cfg.mixup_alpha, cfg.mixup_alpha).sample())
    return (lam * images + (1 - lam) * images.flip(0),
            lam * target + (1 - lam) * target.flip(0))


@torch.no_grad()
def evaluate(model, val_set, batch_size: int, device, groups=(), rank: int = 0, world: int = 1,
             chunks: int = 1, workers: int = 0) -> dict:
    """Top-1 accuracy and CE on the validation set, in full global batches of ``batch_size``
    (the last partial batch is dropped, as in the official evaluation).

    Each of the ``world`` ranks takes its share of every global batch (its sums are all-reduced
    over ``groups``) and routes it as one group of tokens; ``chunks`` cuts a share further into
    routing groups, so that one process (``world=1, chunks=N``) reproduces the evaluation of a
    run of N ranks exactly.
    """
    was_training = model.training
    model.eval()
    per = world * chunks
    bs = min(batch_size, len(val_set))
    bs -= bs % per
    if bs < 1:
        raise ConfigError(f"the validation set ({len(val_set)} images) is smaller than the "
                          f"{per} routing groups of one evaluation batch; use more images")
    sampler = EpochSampler(len(val_set), bs, shuffle=False, rank=rank, world=world)
    loader = DataLoader(val_set, batch_sampler=sampler, num_workers=workers,
                        generator=torch.Generator())     # leaves the global RNG alone
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    for _, (x, y) in zip(range(sampler.batches_per_epoch), loader):
        for xc, yc in zip(x.chunk(chunks), y.chunk(chunks)):
            xc, yc = xc.to(device), yc.to(device)
            logits = model(xc).logits.float()
            sums += torch.stack([(logits.argmax(-1) == yc).sum().double(),
                                 F.cross_entropy(logits, yc, reduction="sum").double(),
                                 torch.tensor(float(len(yc)), dtype=torch.float64,
                                              device=device)])
    correct, loss, count = sums.tolist()
    out = reduce_metrics({"val_acc": (correct, count), "val_loss": (loss, count),
                          "val_images": count}, list(groups), device)
    model.train(was_training)
    out["val_images"] = int(round(out["val_images"] * _sizes(groups)))   # mean -> total
    return out


def _sizes(groups) -> int:
    n = 1
    for g in groups:
        if g is not None:
            n *= g.size
    return n


class WideNetTask(Task):
    """The paper's model, data and step for :func:`shared.train.fit`."""
    paper = "widenet"
    unit = "img"

    def __init__(self, cfg: Config, env):
        self.env, world = env, env.world_size
        if cfg.mode == "expert":
            self.topo = build_topology("expert", grid_size=cfg.expert_ranks or world)
            self.expert_group = self.topo["expert"]
        else:
            self.topo = build_topology("data")
            self.expert_group = None
        self.data_group = self.topo["data"]
        if cfg.batch_size % world:
            raise ConfigError(f"--batch_size {cfg.batch_size} is not divisible by the {world} "
                              f"processes (each trains on its share); use a multiple of {world}")
        if cfg.mixup_alpha > 0 and (cfg.batch_size // world) % 2:
            raise ConfigError(f"mixup pairs each image with another: the per-rank batch "
                              f"{cfg.batch_size // world} (--batch_size {cfg.batch_size} over "
                              f"{world} processes) must be even")

        seed_everything(cfg.seed)
        self.train_set, self.val_set, data_classes = build_datasets(cfg)
        if len(self.train_set) < cfg.batch_size:
            raise ConfigError(f"--batch_size {cfg.batch_size} is larger than the "
                              f"{len(self.train_set)} training images; lower it")
        per_epoch = len(self.train_set) // cfg.batch_size
        if cfg.epochs > 0:                        # --epochs: the schedule in steps
            cfg = dataclasses.replace(cfg, steps=max(1, math.ceil(cfg.epochs * per_epoch)),
                                      warmup_steps=int(cfg.warmup_epochs * per_epoch))
            cfg.validate()
        self.cfg = cfg
        self.num_classes = head_classes(cfg, data_classes)
        model = build_model(cfg, self.num_classes).to(env.device)  # same weights on every rank
        self.n_params = count_parameters(model)
        if self.expert_group is not None:
            if not moe_modules(model):
                raise ConfigError(f"--mode expert shards the experts of an MoE model, and "
                                  f"{cfg.model} has none; choose a vit_moe_* or widenet_* "
                                  f"model, or --mode data")
            parallelize(model, self.expert_group)
        self.model = model
        self.checkpoint_per_rank = self.expert_group is not None and self.expert_group.size > 1
        seed_everything(cfg.seed + 1000 * env.rank)      # own dropout/noise/mixup/aug per rank

        from timm.optim import Lamb
        self.optimizer = Lamb(model.parameters(), lr=cfg.lr, betas=(0.9, 0.999),
                              weight_decay=cfg.weight_decay, max_grad_norm=None)
        self.best_acc = 0.0

    # ---- the parallel plans (widenet.parallel)
    def grad_plans(self):
        return grad_plans(self.model, self.expert_group, self.data_group)

    def metric_groups(self):
        return [g for g in (self.expert_group, self.data_group) if g is not None]

    # ---- data and step
    def batches(self, start_step: int):
        env = self.env
        sampler = EpochSampler(len(self.train_set), self.cfg.batch_size, seed=self.cfg.seed,
                               rank=env.rank, world=env.world_size).seek(start_step)
        # created here, not lazily: creating the iterator draws from the global RNG
        loader = iter(DataLoader(self.train_set, batch_sampler=sampler,
                                 num_workers=self.cfg.workers))
        return ((x.to(env.device), y.to(env.device)) for x, y in loader)

    def step(self, batch, step: int) -> StepOutput:
        cfg = self.cfg
        images, target = mix(*batch, self.num_classes, cfg)
        out = self.model(images)
        ce = soft_cross_entropy(out.logits, target)
        loss = ce + cfg.aux_weight * out.aux_loss
        metrics = {"loss": loss.detach(), "ce": ce.detach(), "aux": out.aux_loss.detach()}
        if out.dropped:          # fraction of dropped assignments: mean and worst MoE call
            dropped = torch.stack(out.dropped)
            metrics.update(dropped=dropped.mean(), dropped_max=dropped.max())
        return StepOutput(loss, metrics, items=cfg.batch_size)

    def evaluate(self) -> dict:
        metrics = evaluate(self.model, self.val_set, self.cfg.batch_size, self.env.device,
                           groups=self.metric_groups(), rank=self.env.rank,
                           world=self.env.world_size, workers=self.cfg.workers)
        self.best_acc = max(self.best_acc, metrics["val_acc"])
        return dict(metrics, best_acc=self.best_acc)

    # ---- checkpoint content: the model under the serial names (an expert-parallel rank holds
    # its experts only), the optimizer, the best accuracy so far
    def state_dict(self) -> dict:
        return dict(super().state_dict(), best_acc=self.best_acc)

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.best_acc = state["best_acc"]

    def describe(self) -> str:
        return (f"{self.cfg.model}: {self.n_params / 1e6:.3f}M parameters, "
                f"{len(self.train_set)} train / {len(self.val_set)} val images")


@entry_point
def main(argv=None) -> dict:
    cfg = parse_args(Config, PRESETS, argv, paper="widenet")
    env = start(cfg)
    task = WideNetTask(cfg, env)
    summary = fit(task.cfg, task)
    summary.update(model=task.cfg.model, params=task.n_params)
    if "val_acc" in summary:
        log0(f"{task.cfg.model}: val top-1 {100 * summary['val_acc']:.2f}% (best "
             f"{100 * summary['best_acc']:.2f}%), {task.n_params / 1e6:.3f}M params, "
             f"{summary['step']} steps in {summary['seconds']:.0f} s; run dir "
             f"{summary['run_dir']}")
    else:
        log0(f"{task.cfg.model}: stopped at step {summary['step']} of {summary['steps']} after "
             f"{summary['seconds']:.0f} s; continue with --resume {summary['run_dir']}")
    return summary


if __name__ == "__main__":
    main()
