"""Train the GPT language model with 1D / 2D / 2.5D / 3D tensor parallelism.

    python -m tensor_parallel.train --preset tiny                          # one CPU process
    torchrun --standalone --nproc-per-node 4 -m tensor_parallel.train --mode 2d
    torchrun --standalone --nproc-per-node 8 -m tensor_parallel.train --mode 2p5d --depth 2
    torchrun --standalone --nproc-per-node 8 -m tensor_parallel.train --mode 3d
    make train-tensor_parallel MODE=2d NPROC=4 [DATA=/path/to/corpus] [ARGS="--steps 100"]

Every rank builds the same serial model from the seed (or from ``--resume``), then keeps only its
shards (``parallelize``). All ranks of the grid read the same global batch; the model splits it.
Checkpoints hold the *serial* state dict and the AdamW moments in the serial layout, so a run
can resume under another mode or world size (``tensor_parallel.convert`` reads them as well).
"""
from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import torch

from shared.data.sampler import EpochSampler
from shared.parallel import RNGStreams, build_topology, capture_rng_state, init_distributed, main_guard, restore_rng_state, seed_everything
from shared.train import Progress, RunDir, check_finite, load_checkpoint, log0, parse_config

from .config import PRESETS, Config
from .data import load_corpus, padded_vocab
from .models import GPT, GPTConfig
from .parallelize import (check_shapes, global_grad_norm, parallelize, serial_state_dict,
                          set_streams, shard_like)

CKPT_FORMAT = "tensor_parallel/serial-v1"
REPO_ROOT = Path(__file__).resolve().parents[1]


def default_out_dir() -> Path:
    return REPO_ROOT / "runs" / "tensor_parallel"


def model_config(cfg: Config, vocab: int) -> GPTConfig:
    return GPTConfig(vocab_size=vocab, seq_len=cfg.seq_len, hidden=cfg.hidden, heads=cfg.heads,
                     layers=cfg.layers, dropout=cfg.dropout)


def lr_at(step: int, cfg: Config) -> float:
    """Linear warm-up, then cosine decay to ``min_lr`` at ``steps``."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    frac = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.min_lr + 0.5 * (1 + math.cos(math.pi * frac)) * (cfg.lr - cfg.min_lr)


def make_optimizer(pmodel, cfg: Config):
    """AdamW; matrices (≥2-D pieces, the same set in every mode) get weight decay."""
    decay = [p for p in pmodel.parameters() if p.dim() >= 2]
    other = [p for p in pmodel.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": other, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95))


def optimizer_state_serial(pmodel, opt) -> dict:
    """AdamW moments in the serial layout (collective)."""
    if not opt.state:
        return {}
    moments = {}
    for key in ("exp_avg", "exp_avg_sq"):
        moments[key] = serial_state_dict(pmodel, pick=lambda p, k=key: opt.state[p][k])
    moments["step"] = float(next(iter(opt.state.values()))["step"])
    return moments


def load_optimizer_state(pmodel, opt, moments: dict) -> None:
    if not moments:
        return
    pieces = {k: shard_like(pmodel, moments[k]) for k in ("exp_avg", "exp_avg_sq")}
    for i, p in enumerate(pmodel.parameters()):
        opt.state[p] = {"step": torch.tensor(moments["step"]),
                        "exp_avg": pieces["exp_avg"][i].clone().to(p.device),
                        "exp_avg_sq": pieces["exp_avg_sq"][i].clone().to(p.device)}


def build(cfg: Config, env):
    """Topology, corpus, parallel model and (resumed) state for a run. Fails before any work on
    an impossible world size or shape."""
    topo = build_topology(cfg.mode, depth=cfg.depth)
    ckpt = load_checkpoint(cfg.resume) if cfg.resume else None
    if ckpt is not None and ckpt.get("format") != CKPT_FORMAT:
        raise ValueError(f"{cfg.resume} is not a tensor_parallel training checkpoint "
                         f"(format {ckpt.get('format')!r}, expected {CKPT_FORMAT!r})")
    corpus = load_corpus(cfg.data, max_bytes=cfg.max_bytes)
    if ckpt is not None:
        gcfg = GPTConfig(**ckpt["gpt_config"])
        if gcfg.vocab_size < corpus.vocab_size:
            raise ValueError(f"the checkpoint's vocabulary ({gcfg.vocab_size}) is smaller than "
                             f"the corpus's ({corpus.vocab_size}); resume with the same data")
    else:
        gcfg = model_config(cfg, padded_vocab(corpus.vocab_size, cfg.vocab_multiple, topo))
    check_shapes(gcfg, topo, cfg.batch_size)
    seed_everything(cfg.seed)
    serial = GPT(gcfg)
    if ckpt is not None:
        serial.load_state_dict(ckpt["model"])
    pmodel = parallelize(serial, topo).to(env.device)
    del serial
    return topo, corpus, gcfg, pmodel, ckpt


@torch.no_grad()
def evaluate(pmodel, corpus, cfg: Config, device, split: str = "val") -> float:
    """Mean loss over ``eval_batches`` fixed, evenly spaced windows of ``split``."""
    was = pmodel.training
    pmodel.eval()
    n = corpus.num_windows(split, cfg.seq_len)
    total = cfg.eval_batches * cfg.batch_size
    starts = torch.linspace(0, n - 1, total).long()
    losses = []
    for chunk in starts.split(cfg.batch_size):
        x, y = corpus.lm_batch(split, chunk, cfg.seq_len)
        losses.append(pmodel(x.to(device), y.to(device))[1].item())
    pmodel.train(was)
    return sum(losses) / len(losses)


def train(cfg: Config) -> dict:
    env = init_distributed()
    if cfg.threads > 0 and env.device.type == "cpu":
        torch.set_num_threads(cfg.threads)
    topo, corpus, gcfg, pmodel, ckpt = build(cfg, env)
    opt = make_optimizer(pmodel, cfg)
    sampler = EpochSampler(corpus.num_windows("train", cfg.seq_len), cfg.batch_size, cfg.seed)
    step = 0
    if ckpt is not None:
        load_optimizer_state(pmodel, opt, ckpt["optim"])
        sampler.load_state_dict(ckpt["sampler"])
        step = ckpt["step"]
        restore_rng_state(ckpt["rng"])
    run = RunDir(cfg.out_dir or default_out_dir(), cfg, name=cfg.run_name)
    shape = ", ".join(f"{k}={v}" for k, v in topo.shape.items()) or "serial"
    log0(f"tensor_parallel: mode {cfg.mode} ({shape}) on {env.world_size} rank(s), "
         f"{sum(p.numel() for p in GPT(gcfg).parameters()) / 1e6:.2f}M parameters, "
         f"corpus: {corpus.source}, run dir {run.path}")

    def checkpoint():
        state = {"format": CKPT_FORMAT, "gpt_config": dataclasses.asdict(gcfg),
                 "model": serial_state_dict(pmodel), "optim": optimizer_state_serial(pmodel, opt),
                 "step": step, "sampler": sampler.state_dict(), "config": dataclasses.asdict(cfg),
                 "rng": capture_rng_state(), "mode": cfg.mode, "world": env.world_size}
        run.save(state)

    first_val = evaluate(pmodel, corpus, cfg, env.device) if step == 0 else None
    if first_val is not None:
        run.log(0, val_loss=first_val)
    bar = Progress(cfg.steps, desc=f"train {cfg.mode}", unit_name="tok", initial=step)
    start = time.perf_counter()
    val = first_val
    pmodel.train()
    last = min(cfg.steps, cfg.stop_at) if cfg.stop_at else cfg.steps
    while step < last:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        # dropout streams re-seeded from (seed, step): a resumed run draws the same masks
        set_streams(pmodel, RNGStreams(cfg.seed + 7919 * step, topo.grid_rank, topo.coords["data"]))
        x, y = corpus.lm_batch("train", next(sampler), cfg.seq_len)
        _, loss = pmodel(x.to(env.device), y.to(env.device))
        check_finite(loss.item(), step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = global_grad_norm(pmodel)
        if cfg.grad_clip > 0 and norm.item() > cfg.grad_clip:
            for p in pmodel.parameters():
                p.grad.mul_(cfg.grad_clip / (norm.item() + 1e-6))
        opt.step()
        step += 1
        bar.update(items=cfg.batch_size * cfg.seq_len, loss=loss.item())
        metrics = {"train_loss": loss.item(), "lr": lr_at(step - 1, cfg), "grad_norm": norm.item()}
        if step % cfg.eval_every == 0 or step == last:
            val = evaluate(pmodel, corpus, cfg, env.device)
            metrics["val_loss"] = val
            log0(f"\nstep {step}: val loss {val:.4f}")
        run.log(step, **metrics)
        if step % cfg.ckpt_every == 0 or step == last:
            checkpoint()
    bar.close()
    if val is None:
        val = evaluate(pmodel, corpus, cfg, env.device)
    run.plot()
    elapsed = time.perf_counter() - start
    log0(f"tensor_parallel: done, mode {cfg.mode} on {env.world_size} rank(s): val loss "
         f"{val:.4f}" + (f" (initial {first_val:.4f})" if first_val is not None else "")
         + f", {step} steps, {elapsed:.1f} s, run dir {run.path}")
    return {"val_loss": val, "initial_val_loss": first_val, "steps": step,
            "run_dir": str(run.path), "seconds": elapsed}


@main_guard
def main(argv=None) -> dict:
    return train(parse_config(Config, PRESETS, argv))


if __name__ == "__main__":
    main()
