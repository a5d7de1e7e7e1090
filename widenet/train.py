"""Train ViT / ViT-MoE / WideNet with the paper's recipe (arXiv 2107.11817, brief Sec. 3), on the
shared training core.

    python -m widenet.train --preset tiny                        # CPU, generated data, minutes
    python -m widenet.train --preset tiny --model vit_tiny
    python -m widenet.train --resume runs/widenet/<run>           # continue a run, its config
    torchrun --standalone --nproc-per-node 2 -m widenet.train --mode expert   # experts on 2 ranks
    torchrun --standalone --nproc-per-node 8 -m widenet.train --preset widenet_l \\
        --data /path/to/imagenet --mode expert --expert_ranks 4     # 4 experts over 4 ranks, dp 2

Recipe, through timm: LAMB (``timm.optim.Lamb``, trust ratio always applied) with weight decay
on all parameters (each shared parameter passed once, one trust ratio per expert and weight as in
the official code), clipping by the global norm, linear warm-up ``min_lr -> lr`` then linear decay
to ``min_lr`` (``--schedule linear``, a ``timm.scheduler`` in the core), mixup Beta(a, a) on every
batch with one lambda per sample (``timm.data.Mixup``, as the official ``mix_up``) with label
smoothing and ``SoftTargetCrossEntropy``, RandAugment(2, 15) in the data pipeline
(``timm.data.create_transform``), loss = CE + aux_weight * (load-balancing loss summed over all MoE
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
import os

import torch
import torch.nn.functional as F
from timm.data import Mixup
from timm.data.mixup import mixup_target
from timm.loss import SoftTargetCrossEntropy
from timm.optim import Lamb
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
    if cfg.pool:
        kw["pool"] = cfg.pool
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


def build_mixup(cfg: Config, num_classes: int):
    """The official mixup through timm: a lambda ~ Beta(a, a) drawn *per sample* on every batch
    (the official ``mix_up`` samples ``batch_size`` lambdas), with label smoothing folded into the
    soft targets (smoothing commutes with mixing). ``mixup_alpha = 0``: smoothing only.
    Returns ``f(images, labels) -> (images, soft targets)``."""
    if cfg.mixup_alpha <= 0:
        return lambda x, y: (x, mixup_target(y, num_classes, 1.0, cfg.label_smoothing))
    return Mixup(mixup_alpha=cfg.mixup_alpha, cutmix_alpha=0.0, prob=1.0, switch_prob=0.0,
                 mode="elem", label_smoothing=cfg.label_smoothing, num_classes=num_classes)


def build_optimizer(model, cfg: Config):
    """timm's LAMB with the trust ratio applied to every parameter, with or without weight
    decay (``always_adapt``; timm skips it for wd 0 otherwise, which is not LAMB), weight decay on
    all parameters (official ``weight_decay_rate`` on all variables), beta2 0.999; the core
    clips by the global norm, so LAMB's own clipping is off."""
    return Lamb(model.parameters(), lr=cfg.lr, betas=(0.9, 0.999),
                weight_decay=cfg.weight_decay, max_grad_norm=None, always_adapt=True)


def loader_options(workers: int, device) -> dict:
    """DataLoader workers and pinned memory: ``workers < 0`` = 8 workers per process on CUDA
    (fewer if the CPUs are fewer), 0 on CPU (resume is bit-exact with any fixed number)."""
    cuda = torch.device(device).type == "cuda"
    if workers < 0:
        per_proc = (os.cpu_count() or 1) // max(1, torch.cuda.device_count() if cuda else 1)
        workers = min(8, max(0, per_proc - 1)) if cuda else 0
    return dict(num_workers=workers, pin_memory=cuda)


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
    loader = DataLoader(val_set, batch_sampler=sampler, generator=torch.Generator(),
                        **loader_options(workers, device))    # leaves the global RNG alone
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    for _, (x, y) in zip(range(sampler.batches_per_epoch), loader):
        for xc, yc in zip(x.chunk(chunks), y.chunk(chunks)):
            xc, yc = xc.to(device, non_blocking=True), yc.to(device, non_blocking=True)
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
    best = {"best_acc": "val_acc"}
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

        self.optimizer = build_optimizer(model, cfg)
        self.mix = build_mixup(cfg, self.num_classes)
        self.loss_fn = SoftTargetCrossEntropy()

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
                                 **loader_options(self.cfg.workers, env.device)))
        return ((x.to(env.device, non_blocking=True), y.to(env.device, non_blocking=True))
                for x, y in loader)

    def step(self, batch, step: int) -> StepOutput:
        cfg = self.cfg
        images, target = self.mix(*batch)
        out = self.model(images)
        ce = self.loss_fn(out.logits.float(), target)
        loss = ce + cfg.aux_weight * out.aux_loss
        metrics = {"loss": loss.detach(), "ce": ce.detach(), "aux": out.aux_loss.detach()}
        skipped = getattr(self.train_set, "skipped", None)
        if skipped is not None:   # unreadable images skipped so far (--skip_bad_images)
            metrics["skipped_images"] = float(skipped.sum())
        if out.dropped:          # fraction of dropped assignments: mean and worst MoE call
            dropped = torch.stack(out.dropped)
            metrics.update(dropped=dropped.mean(), dropped_max=dropped.max())
        return StepOutput(loss, metrics, items=cfg.batch_size)

    def evaluate(self) -> dict:
        metrics = evaluate(self.model, self.val_set, self.cfg.batch_size, self.env.device,
                           groups=self.metric_groups(), rank=self.env.rank,
                           world=self.env.world_size, workers=self.cfg.workers)
        return metrics

    def describe(self) -> str:
        return (f"{self.cfg.model}: {self.n_params / 1e6:.3f}M parameters, "
                f"{len(self.train_set)} train / {len(self.val_set)} val images")


@entry_point
def main(argv=None) -> dict:
    cfg = parse_args(Config, PRESETS, argv, paper="widenet")
    env = start(cfg)
    from .nlp import is_nlp, run_nlp                # the NLP half (paper v3)
    if is_nlp(cfg.model):
        return run_nlp(cfg, env)
    task = WideNetTask(cfg, env)
    summary = fit(task.cfg, task)
    summary.update(model=task.cfg.model, params=task.n_params,
                   steps_per_epoch=len(task.train_set) // task.cfg.batch_size)
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
