"""Validation loss of a checkpoint, under any mode and world size.

    python -m tensor_parallel.eval                           # latest run's checkpoint, one process
    torchrun --standalone --nproc-per-node 8 -m tensor_parallel.eval --mode 3d --ckpt runs/.../checkpoint.pt
    make eval-tensor_parallel MODE=2d                        # one process (a grid of one)

The checkpoint is in the serial layout, so it does not matter which mode or world size wrote it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from shared.parallel import build_topology, init_distributed, main_guard
from shared.train import latest_run, load_checkpoint, log0, parse_config

from .data import load_corpus
from .models import GPT, GPTConfig
from .parallelize import check_shapes, parallelize
from .train import CKPT_FORMAT, Config, default_out_dir, evaluate


@dataclass
class EvalConfig:
    ckpt: str | None = None
    """checkpoint path; default the newest runs/tensor_parallel/*/checkpoint.pt"""
    mode: str = "1d"
    depth: int = 1
    data: str | None = None
    """corpus; default: the one the checkpoint was trained on"""
    split: str = "val"
    eval_batches: int | None = None
    batch_size: int | None = None


def evaluate_checkpoint(ecfg: EvalConfig) -> float:
    env = init_distributed()
    path = Path(ecfg.ckpt) if ecfg.ckpt else latest_run(default_out_dir()) / "checkpoint.pt"
    ckpt = load_checkpoint(path)
    if ckpt.get("format") != CKPT_FORMAT:
        raise ValueError(f"{path} is not a tensor_parallel checkpoint (format "
                         f"{ckpt.get('format')!r})")
    train_cfg = Config(**{**ckpt["config"], "mode": ecfg.mode, "depth": ecfg.depth})
    if ecfg.data is not None:
        train_cfg.data = ecfg.data
    if ecfg.eval_batches:
        train_cfg.eval_batches = ecfg.eval_batches
    if ecfg.batch_size:
        train_cfg.batch_size = ecfg.batch_size
    topo = build_topology(ecfg.mode, depth=ecfg.depth)
    gcfg = GPTConfig(**ckpt["gpt_config"])
    check_shapes(gcfg, topo, train_cfg.batch_size)
    serial = GPT(gcfg)
    serial.load_state_dict(ckpt["model"])
    pmodel = parallelize(serial, topo).to(env.device)
    corpus = load_corpus(train_cfg.data, max_bytes=train_cfg.max_bytes)
    loss = evaluate(pmodel, corpus, train_cfg, env.device, ecfg.split)
    log0(f"tensor_parallel eval: {path} (step {ckpt['step']}, written by {ckpt['mode']} on "
         f"{ckpt['world']} rank(s)) under {ecfg.mode} on {env.world_size} rank(s): "
         f"{ecfg.split} loss {loss:.5f}")
    return loss


@main_guard
def main(argv=None) -> float:
    return evaluate_checkpoint(parse_config(EvalConfig, None, argv, default_preset=None))


if __name__ == "__main__":
    main()
