"""Loss of a run's checkpoint, under any mode and world size.

    python -m tensor_parallel.eval                               # the newest run, one process
    python -m tensor_parallel.eval --run NAME_OR_PATH [--split train]
    torchrun --standalone --nproc-per-node 8 -m tensor_parallel.eval -- --run RUN --mode 3d
    make eval-tensor_parallel [MODE=2d] [ARGS="--run RUN"]

The run's config comes from its ``config.json``; ``--mode``, ``--depth``, ``--data``,
``--eval_batches`` and ``--batch_size`` override it. The checkpoint is in the serial layout, so
it does not matter which mode or world size wrote it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from shared.errors import UsageError
from shared.train import EvalConfig as BaseEvalConfig
from shared.train import (ConfigError, checkpoint_files, entry_point, load_checkpoint,
                          load_config, log0, parse_config, resolve_run, runs_root, start)

from .config import Config
from .data import load_corpus
from .models import GPT, GPTConfig
from .parallel import build_grid, check_shapes, parallelize
from .train import PAPER, check_format, evaluate_loss


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
    changes.update(device=ecfg.device, timeout=ecfg.timeout, threads=ecfg.threads, resume="")
    cfg = dataclasses.replace(cfg, **changes)
    cfg.validate()
    return run_path, cfg


def evaluate_run(ecfg: EvalConfig) -> float:
    run_path, cfg = run_config(ecfg)
    files = checkpoint_files(run_path)
    if files[0].name != "checkpoint.pt":
        raise UsageError(f"{run_path} holds per-rank checkpoint files, not the serial-layout "
                         f"checkpoint.pt of a tensor_parallel run")
    env = start(cfg)
    state = load_checkpoint(files[0])
    if state.get("paper") != PAPER:
        raise UsageError(f"{files[0]} is a checkpoint of {state.get('paper')!r}, not of "
                         f"{PAPER!r}; evaluate it with that paper's eval")
    task_state = state["task"]
    check_format(task_state)
    gcfg = GPTConfig(**task_state["gpt_config"])
    topo = build_grid(cfg.mode, cfg.depth)
    check_shapes(gcfg, topo, cfg.batch_size)
    serial = GPT(gcfg)
    serial.load_state_dict(task_state["model"])
    pmodel = parallelize(serial, topo).to(env.device)
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
