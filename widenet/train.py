"""Train ViT / ViT-MoE / WideNet with the paper's recipe (arXiv 2107.11817, brief Sec. 3).

    python -m widenet.train --preset tiny                        # CPU, generated data, minutes
    python -m widenet.train --preset widenet_tiny --model vit_tiny
    python -m widenet.train --preset tiny --resume runs/widenet/<run>
    torchrun --standalone --nproc-per-node 8 -m widenet.train --preset widenet_l \\
        --data /path/to/imagenet --mode expert --expert_ranks 4     # 4 experts over 4 ranks, dp 2

Recipe: LAMB (timm) with weight decay on all parameters (each shared parameter passed once),
global clip-norm, linear warmup lr_min -> lr then linear decay -> lr_min, mixup Beta(a, a) on every
batch with label smoothing and soft-target cross-entropy, RandAugment(2, 15) in the data pipeline,
loss = CE + aux_weight * (load-balancing loss summed over all MoE applications).

Parallelism from outside the model: ``--mode data`` replicates it on every rank;
``--mode expert`` shards the experts over groups of ``expert_ranks`` ranks with all-to-all
dispatch (``widenet.parallel``). Gradients are averaged with ``widenet.parallel.sync_gradients``.
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from shared.train.checkpoint import load_checkpoint, save_checkpoint
from shared.parallel.comm import raw_all_reduce
from shared.train.config import parse_config
from shared.data.sampler import EpochSampler
from shared.parallel.dist import init_distributed, main_guard
from shared.train.run import Progress, RunDir, check_finite, log0
from shared.parallel.seeding import capture_rng_state, restore_rng_state, seed_everything
from shared.parallel.topology import build_topology

from .config import PRESETS, Config
from .data import build_datasets
from .models import count_parameters, create_model
from .parallel import apply_expert_parallel, sync_gradients

REPO = Path(__file__).resolve().parent.parent


def build_model(cfg: Config, num_classes: int):
    """The registered model with the config's data and MoE settings applied."""
    kw = dict(img_size=cfg.img_size, num_classes=num_classes, dropout=cfg.dropout)
    if cfg.patch_size:
        kw["patch_size"] = cfg.patch_size
    if "moe" in cfg.model or "widenet" in cfg.model:
        kw.update(num_experts=cfg.num_experts, top_k=cfg.top_k,
                  capacity_factor=cfg.capacity_factor)
    return create_model(cfg.model, **kw)


def head_classes(cfg: Config, data_classes: int) -> int:
    """Classes of the head: ``cfg.num_classes`` (1001 for ImageNet as in the official code, where
    index 1000 stays unused), which must cover the data's classes."""
    if cfg.num_classes < data_classes:
        raise ValueError(f"the data has {data_classes} classes but num_classes={cfg.num_classes}; "
                         f"pass --num_classes {data_classes} (or more)")
    return cfg.num_classes


def lr_at(step: int, total: int, warmup: int, cfg: Config) -> float:
    """Linear warmup lr_min -> lr over ``warmup`` steps, then linear decay to lr_min at ``total``."""
    if step < warmup:
        return cfg.lr_min + (cfg.lr - cfg.lr_min) * step / warmup
    frac = (step - warmup) / max(1, total - warmup)
    return cfg.lr + (cfg.lr_min - cfg.lr) * min(1.0, frac)


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


class Parallel:
    """This rank's place: topology groups for gradient averaging and for evaluation sums."""

    def __init__(self, cfg: Config, env):
        self.env, self.world = env, env.world_size
        if cfg.mode not in ("data", "expert"):
            raise ValueError(f"--mode must be 'data' or 'expert'; got {cfg.mode!r}")
        if cfg.mode == "expert":
            self.topo = build_topology("expert", grid_size=cfg.expert_ranks or env.world_size)
            self.world_groups = [self.topo["expert"], self.topo["data"]]
        else:
            self.topo = build_topology("data")
            self.world_groups = [self.topo["data"]]

    def all_sum(self, x: torch.Tensor) -> torch.Tensor:
        for g in self.world_groups:
            x = raw_all_reduce(x, g)
        return x


@torch.no_grad()
def evaluate(model, val_set, cfg: Config, par: Parallel, device) -> dict:
    """Top-1 accuracy and CE on the validation set, each rank on its share of full batches
    (the last partial batch is dropped, as in the official evaluation)."""
    model.eval()
    bs = min(cfg.batch_size, len(val_set))
    sampler = EpochSampler(len(val_set), bs - bs % par.world, shuffle=False,
                           rank=par.env.rank, world=par.world)
    loader = DataLoader(val_set, batch_sampler=sampler, num_workers=cfg.workers)
    sums = torch.zeros(3, dtype=torch.float64)
    for _, (x, y) in zip(range(sampler.batches_per_epoch), loader):
        x, y = x.to(device), y.to(device)
        logits = model(x).logits.float()
        sums += torch.tensor([(logits.argmax(-1) == y).sum().item(),
                              F.cross_entropy(logits, y, reduction="sum").item(), len(y)],
                             dtype=torch.float64)
    sums = par.all_sum(sums)
    model.train()
    return {"val_acc": (sums[0] / sums[2]).item(), "val_loss": (sums[1] / sums[2]).item(),
            "val_images": int(sums[2].item())}


def _checkpoint_path(run_path: Path, par: Parallel) -> Path:
    sharded = par.world > 1 and par.topo.mode == "expert"
    return run_path / (f"checkpoint-rank{par.env.rank}.pt" if sharded else "checkpoint.pt")


def train(cfg: Config) -> dict:
    """Run one training job; returns its summary (accuracy, steps, time, run directory)."""
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    env = init_distributed()
    par = Parallel(cfg, env)
    device = env.device
    seed_everything(cfg.seed)
    train_set, val_set, data_classes = build_datasets(cfg)
    num_classes = head_classes(cfg, data_classes)
    model = build_model(cfg, num_classes).to(device)       # same weights on every rank (seed)
    n_params = count_parameters(model)
    if par.topo.mode == "expert":
        apply_expert_parallel(model, par.topo["expert"])
    seed_everything(cfg.seed + 1000 * env.rank)            # own dropout/noise/aug per rank

    from timm.optim import Lamb
    params = list(model.parameters())                      # shared parameters appear once
    opt = Lamb(params, lr=cfg.lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay,
               max_grad_norm=None)
    steps_per_epoch = max(1, len(train_set) // cfg.batch_size)
    total = max(1, math.ceil(cfg.epochs * steps_per_epoch))
    if cfg.max_steps:
        total = min(total, cfg.max_steps)
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    eval_every = cfg.eval_every or steps_per_epoch
    sampler = EpochSampler(len(train_set), cfg.batch_size, seed=cfg.seed, rank=env.rank,
                           world=par.world)
    if cfg.batch_size // par.world % 2 and cfg.mixup_alpha > 0:
        raise ValueError(f"mixup pairs each image with another: the per-rank batch "
                         f"{cfg.batch_size // par.world} must be even")

    # the iterator draws a base seed from the global RNG: create it before restoring a checkpoint
    data_iter = iter(DataLoader(train_set, batch_sampler=sampler, num_workers=cfg.workers))
    start, best = 0, 0.0
    if cfg.resume:
        resume = Path(cfg.resume)
        run_path = resume if resume.is_dir() else resume.parent
        run = RunDir(run_path.parent, cfg, name=run_path.name)
        state = load_checkpoint(_checkpoint_path(run_path, par), map_location=device)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sampler.load_state_dict(state["sampler"])
        restore_rng_state(state["rng"])
        start, best = state["step"], state["best_acc"]
        log0(f"resumed {run_path} at step {start}")
    else:
        root = Path(cfg.out_dir) if cfg.out_dir else REPO / "runs" / "widenet"
        stamp = par.all_sum(torch.tensor([time.time() if env.rank == 0 else 0.0],
                                         dtype=torch.float64))  # rank 0's clock on every rank
        name = cfg.run_name or time.strftime("%Y%m%d-%H%M%S", time.localtime(stamp.item()))
        run = RunDir(root, cfg, name=name)
        if run.is_main and run.metrics_path.exists():  # a fresh run reusing a name starts clean
            run.metrics_path.unlink()
    log0(f"{cfg.model}: {n_params / 1e6:.3f}M parameters, {len(train_set)} train / "
         f"{len(val_set)} val images, {total} steps, world {par.world} ({par.topo.mode})")

    def save(step):
        state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
                 "sampler": sampler.state_dict(), "rng": capture_rng_state(), "best_acc": best}
        if par.world > 1 and par.topo.mode == "expert":
            save_checkpoint(state, _checkpoint_path(run.path, par))
        else:
            run.save(state)

    amp = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cfg.amp and device.type == "cuda")
    model.train()
    bar = Progress(total, desc=cfg.model, unit_name="img", initial=start,
                   enabled=None if not cfg.quiet else False)
    t0, metrics = time.perf_counter(), {}
    first_loss = last_loss = None
    for step in range(start, total):
        images, labels = next(data_iter)
        images, labels = images.to(device), labels.to(device)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, total, warmup, cfg)
        images, target = mix(images, labels, num_classes, cfg)
        with amp:
            out = model(images)
        ce = soft_cross_entropy(out.logits, target)
        loss = ce + cfg.aux_weight * out.aux_loss
        check_finite(loss.item(), step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        sync_gradients(model, par.world_groups, par.topo["data"], par.world)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad)
        opt.step()
        last_loss = loss.item()
        first_loss = last_loss if first_loss is None else first_loss
        dropped = [round(d.item(), 4) for d in out.dropped]
        bar.update(items=len(images) * par.world, loss=last_loss)
        if step % cfg.log_every == 0 or step == total - 1:
            run.log(step, loss=last_loss, ce=ce.item(), aux=out.aux_loss.item(),
                    lr=opt.param_groups[0]["lr"], grad_norm=grad_norm.item(),
                    dropped_per_block=dropped)
        if (step + 1) % eval_every == 0 or step == total - 1:
            metrics = evaluate(model, val_set, cfg, par, device)
            best = max(best, metrics["val_acc"])
            run.log(step, **metrics)
            save(step + 1)
        elif cfg.stop_at and step + 1 == cfg.stop_at:
            save(step + 1)
        if cfg.stop_at and step + 1 == cfg.stop_at:
            break
    bar.close()
    seconds = time.perf_counter() - t0
    if not metrics:  # resumed at the end: evaluate once for the summary
        metrics = evaluate(model, val_set, cfg, par, device)
    run.plot(keys=["loss", "val_acc"])
    return {"model": cfg.model, "params": n_params, "val_acc": metrics["val_acc"],
            "val_loss": metrics["val_loss"], "best_acc": max(best, metrics["val_acc"]),
            "steps": total, "seconds": seconds, "run_dir": str(run.path),
            "first_loss": first_loss, "last_loss": last_loss,
            "images_per_s": bar.throughput, "dropped_last": dropped if total > start else []}


@main_guard
def main(argv=None) -> dict:
    cfg = parse_config(Config, PRESETS, argv)
    s = train(cfg)
    log0(f"{s['model']}: val top-1 {100 * s['val_acc']:.2f}% (best {100 * s['best_acc']:.2f}%), "
         f"{s['params'] / 1e6:.3f}M params, {s['steps']} steps in {s['seconds']:.0f} s; "
         f"run dir {s['run_dir']}")
    return s


if __name__ == "__main__":
    main(sys.argv[1:])
