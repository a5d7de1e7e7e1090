"""Train BERT (MLM) with sequence parallelism, composed with data parallelism.

    python -m seqpar.train --preset tiny                                   # one CPU process
    torchrun --standalone --nproc-per-node 4 -m seqpar.train               # sequence parallel 4
    torchrun --standalone --nproc-per-node 4 -m seqpar.train --seq_parallel 2   # 2 seq x 2 data
    python -m seqpar.train --resume runs/seqpar/<run>                       # continue a run

(``make train-seqpar [NPROC=4] [ARGS="--seq_parallel 2"]``.) The run directory holds
config.json, metrics.jsonl, checkpoint.pt and curves.png.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import torch

from shared.train.checkpoint import load_checkpoint
from shared.parallel.comm import raw_all_gather, raw_all_reduce
from shared.train.config import ConfigError, load_config, parse_config
from shared.data.sampler import EpochSampler
from shared.parallel.dist import init_distributed, main_guard
from shared.train.run import Progress, RunDir, check_finite, log0
from shared.parallel.seeding import capture_rng_state, restore_rng_state, seed_everything
from shared.parallel.topology import build_topology

from .config import PRESETS, Config
from .data import MLMData
from .models.bert import BertConfig, BertMLM
from .parallel import SequenceParallelBert
from .rsa import check_sequence_split

REPO = Path(__file__).resolve().parents[1]


def build_model(cfg: Config, vocab_size: int) -> BertMLM:
    """The serial model, initialised from ``cfg.seed`` (identical on every rank)."""
    seed_everything(cfg.seed)
    return BertMLM(BertConfig(vocab_size=vocab_size, hidden=cfg.hidden, heads=cfg.heads,
                              layers=cfg.layers, ffn=cfg.ffn, max_len=cfg.seq_len,
                              dropout=cfg.dropout, attn_dropout=cfg.attn_dropout))


def build_optimizer(model: BertMLM, cfg: Config) -> torch.optim.Optimizer:
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)


def lr_at(step: int, cfg: Config) -> float:
    """Linear warm-up, then cosine decay to ``min_lr``."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    frac = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * frac))


@torch.no_grad()
def evaluate(sp: SequenceParallelBert, data: MLMData, batches: int, batch_size: int) -> dict:
    """Validation MLM loss (mean over masked tokens) and accuracy, over fixed batches."""
    was_training = sp.training
    sp.eval()
    totals = torch.zeros(3, dtype=torch.float64)                # loss sum, correct, count
    for ids, key_mask, labels in data.eval_batches(batches, batch_size):
        logits = sp(sp.local_chunk(ids), key_mask)
        labels = sp.local_chunk(labels)
        keep = labels != -100
        totals[0] += torch.nn.functional.cross_entropy(
            logits[keep].float(), labels[keep], reduction="sum").item() if keep.any() else 0.0
        totals[1] += (logits[keep].argmax(-1) == labels[keep]).sum().item()
        totals[2] += keep.sum().item()
    totals = raw_all_reduce(totals, sp.seq)                     # every replica saw the same batches
    sp.train(was_training)
    count = max(1.0, totals[2].item())
    return {"val_loss": totals[0].item() / count, "val_acc": totals[1].item() / count}


def gather_streams(sp: SequenceParallelBert) -> torch.Tensor:
    """Every rank's dropout RNG streams, ``[world, streams, state bytes]`` (uint8), gathered
    over the sequence then the data group (global rank = data rank · N + sequence rank)."""
    names = sorted(sp.streams.state_dict())
    mine = torch.stack([torch.cat([t for t in sp.streams.state_dict()[k] if t is not None])
                        for k in names])[None]                  # [1, streams, bytes]
    return raw_all_gather(raw_all_gather(mine, 0, sp.seq), 0, sp.data)


def load_streams(sp: SequenceParallelBert, states: torch.Tensor) -> None:
    names = sorted(sp.streams.state_dict())
    if states.shape[0] != sp.topo.world_size:
        raise ValueError(f"the checkpoint holds dropout RNG streams of {states.shape[0]} ranks, "
                         f"this run has {sp.topo.world_size}; resume with the same number of "
                         f"processes and --seq_parallel")
    current = sp.streams.state_dict()
    restored = {}
    for i, k in enumerate(names):
        flat, (cpu, cuda) = states[sp.topo.rank, i], current[k]
        restored[k] = (flat[:cpu.numel()].clone(),
                       None if cuda is None else flat[cpu.numel():].clone())
    sp.streams.load_state_dict(restored)


def _resume_source(path: str) -> tuple[Path, Path]:
    """(checkpoint file, run directory) of a ``--resume`` argument."""
    p = Path(path)
    ckpt = p / "checkpoint.pt" if p.is_dir() else p
    if not ckpt.is_file():
        raise FileNotFoundError(f"--resume {path}: no checkpoint at {ckpt}; give a run directory "
                                f"holding checkpoint.pt or the checkpoint file itself")
    return ckpt, ckpt.parent


def train(cfg: Config) -> dict:
    env = init_distributed()
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    if cfg.mode != "seq":
        raise ConfigError(f"seqpar trains with --mode seq (sequence x data parallel); got "
                          f"{cfg.mode!r}. Set the sequence-group size with --seq_parallel N")
    n = cfg.seq_parallel or env.world_size
    topo = build_topology("seq", grid_size=n)
    check_sequence_split(cfg.seq_len, n)
    if cfg.batch_size % topo.dp_size:
        raise ConfigError(f"--batch_size {cfg.batch_size} is not divisible by the {topo.dp_size} "
                          f"data-parallel replicas; use a multiple of {topo.dp_size}")
    data = MLMData.from_config(cfg)
    model = build_model(cfg, data.vocab_size).to(env.device)
    sp = SequenceParallelBert(model, topo, lean=cfg.lean, overlap=cfg.overlap, seed=cfg.seed)
    opt = build_optimizer(model, cfg)
    share = cfg.batch_size // topo.dp_size
    rows = slice(topo.coords["data"] * share, (topo.coords["data"] + 1) * share)
    # every rank draws the same global batch (windows and masking), then keeps its replica's
    # rows: the run is the same whatever the layout, and exactly resumable
    sampler = EpochSampler(data.num_items("train"), cfg.batch_size, seed=cfg.seed)
    start = 0
    if cfg.resume:
        ckpt_path, run_path = _resume_source(cfg.resume)
        run = RunDir(run_path.parent, None, name=run_path.name)
        state = load_checkpoint(ckpt_path)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sampler.load_state_dict(state["sampler"])
        load_streams(sp, state["streams"])
        restore_rng_state(state["rng"])
        start = state["step"]
        log0(f"resumed from {ckpt_path} at step {start}")
    else:
        root = Path(cfg.out_dir) if cfg.out_dir else REPO / "runs" / "seqpar"
        run = RunDir(root, cfg, name=cfg.run_name or None)
    log0(f"seqpar: {data.corpus.source}; world {topo.world_size} = {topo.dp_size} data x {n} "
         f"sequence; {'lean' if cfg.lean else 'RSA'} attention; "
         f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters; run {run.path}")

    def save(step: int) -> None:
        run.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                  "sampler": sampler.state_dict(), "streams": gather_streams(sp),
                  "rng": capture_rng_state(), "step": step, "config": vars(cfg)})

    tokens_per_step = cfg.batch_size * cfg.seq_len
    last = cfg.stop_at or cfg.steps
    metrics = {}
    sp.train()
    with Progress(last, desc="seqpar", unit_name="tok", initial=start) as bar:
        for step in range(start, last):
            for group in opt.param_groups:
                group["lr"] = lr_at(step, cfg)
            items = next(sampler)
            ids, key_mask, labels = (t[rows].to(env.device)
                                     for t in data.batch("train", items, key=step))
            logits = sp(sp.local_chunk(ids), key_mask)
            loss, true_loss = sp.loss(logits, sp.local_chunk(labels))
            value = true_loss.item()
            check_finite(value, step)                   # before the update touches the weights
            opt.zero_grad(set_to_none=True)
            loss.backward()
            sp.sync_gradients()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
            opt.step()
            bar.update(items=tokens_per_step, loss=value)
            if (step + 1) % cfg.log_every == 0 or step + 1 == last:
                run.log(step + 1, loss=value, lr=lr_at(step, cfg), grad_norm=float(grad_norm))
            if (step + 1) % cfg.eval_every == 0 or step + 1 == last:
                metrics = evaluate(sp, data, cfg.eval_batches, cfg.batch_size)
                run.log(step + 1, **metrics)
            if (step + 1) % cfg.ckpt_every == 0 or step + 1 == last:
                save(step + 1)
    run.plot()
    summary = {"step": last, "train_loss": value if last > start else float("nan"), **metrics,
               "seconds": run.elapsed(), "run": str(run.path)}
    log0(f"seqpar done: step {last}, train loss {summary['train_loss']:.4f}, "
         f"val loss {metrics.get('val_loss', float('nan')):.4f}, "
         f"val acc {metrics.get('val_acc', float('nan')):.3f}, {summary['seconds']:.0f} s, "
         f"run {run.path}")
    return summary


@main_guard
def main(argv=None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    cfg = parse_config(Config, PRESETS, argv)
    if cfg.resume:  # the run's own config, with the command line's overrides on top
        _, run_path = _resume_source(cfg.resume)
        saved = load_config(Config, run_path / "config.json")
        rest, i = [], 0
        while i < len(argv):                    # drop --preset: the saved config replaces it
            if argv[i] == "--preset":
                i += 2
                continue
            if not argv[i].startswith("--preset="):
                rest.append(argv[i])
            i += 1
        extra = {**vars(saved), "stop_at": 0}   # an interrupted run goes on to its end
        cfg = parse_config(Config, None, rest, default_preset=None, extra=extra)
    return train(cfg)


if __name__ == "__main__":
    main()
