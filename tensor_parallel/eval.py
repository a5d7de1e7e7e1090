"""Loss of a run's checkpoint, under any mode and world size.

    python -m tensor_parallel.eval                               # the newest run, one process
    python -m tensor_parallel.eval --run NAME_OR_PATH [--split train]
    torchrun --standalone --nproc-per-node 8 -m tensor_parallel.eval -- --run RUN --mode 3d
    make eval-tensor_parallel [MODE=2d] [ARGS="--run RUN"]

The run's config comes from its ``config.json``; ``--mode``, ``--depth``, ``--dp``, ``--data``,
``--eval_batches`` and ``--batch_size`` override it. The checkpoint is sharded in pieces of the
serial tensors, so it does not matter which mode or world size wrote it: each rank reads only its
own pieces (``torch.distributed.checkpoint``) into a model built on the meta device, so no rank
holds the whole model.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from shared.train import EvalConfig as BaseEvalConfig
from shared.train import (ConfigError, entry_point, load_config, log0, parse_config, resolve_run,
                          runs_root, start)

from .config import Config
from .data import load_corpus
from .models import GPT
from .parallel import build_grid, check_shapes, parallelize
from .train import PAPER, evaluate_loss, load_weights, read_run


@dataclass
class EvalConfig(BaseEvalConfig):
    """``--mode`` "" = the run's mode (any mode reads any checkpoint)."""
    MODES = Config.MODES
    timeout: float = 600.0
    """seconds a collective may wait before the job stops"""
    depth: int = 0
    """2.5D depth; 0 = the run's"""
    split: str = "val"
    eval_batches: int = 0
    """0 = the run's"""
    batch_size: int = 0
    """0 = the run's"""
    threads: int = 1
    dp: int = 1
    """data-parallel replicas of the grid (world = grid × dp)"""


def run_config(ecfg: EvalConfig):
    """The run directory and its training config with the evaluation's overrides applied."""
    if ecfg.split not in ("train", "val"):
        raise ConfigError(f"--split {ecfg.split!r}: choose train or val")
    for name in ("depth", "eval_batches", "batch_size"):
        if getattr(ecfg, name) < 0:
            raise ConfigError(f"--{name} must be >= 0 (0 = the run's); got {getattr(ecfg, name)}")
    run_path = resolve_run(runs_root(ecfg, PAPER), ecfg.run)
    cfg = load_config(Config, run_path / "config.json")
    changes = {k: getattr(ecfg, k) for k in ("mode", "depth", "data", "eval_batches",
                                             "batch_size") if getattr(ecfg, k)}
    changes["dp"] = ecfg.dp
    changes.update(device=ecfg.device, timeout=ecfg.timeout, threads=ecfg.threads, resume="")
    cfg = dataclasses.replace(cfg, **changes)
    cfg.validate()
    return run_path, cfg


def evaluate_run(ecfg: EvalConfig) -> float:
    run_path, cfg = run_config(ecfg)
    state, gcfg, shards = read_run(run_path)
    env = start(cfg)
    task_state = state["task"]
    topo = build_grid(cfg.mode, cfg.depth, dp=cfg.dp)
    check_shapes(gcfg, topo, cfg.batch_size)
    with torch.device("meta"):
        serial = GPT(gcfg)
    pmodel = parallelize(serial, topo).to_empty(device=env.device)
    load_weights(pmodel, shards)
    corpus = load_corpus(cfg.data or None, max_bytes=cfg.max_bytes)
    loss = evaluate_loss(pmodel, corpus, cfg, env.device, ecfg.split)
    log0(f"{PAPER} eval: {run_path} (step {state['step']}, written by {task_state['mode']} on "
         f"{task_state['world']} rank(s)) under {cfg.mode} on {env.world_size} rank(s): "
         f"{ecfg.split} loss {loss:.5f}")
    return loss


@entry_point
def main(argv=None) -> float:
    return evaluate_run(parse_config(EvalConfig, None, argv, default_preset=None))


if __name__ == "__main__":
    main()
