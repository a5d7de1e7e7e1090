"""Evaluate a trained run: top-1 accuracy of its checkpoint on the validation split.

    python -m widenet.eval                         # the latest run under <repo>/runs/widenet
    python -m widenet.eval --run runs/widenet/<run> [--data /path/to/imagenet]

The model, data and MoE settings come from the run's ``config.json``; ``--data``/``--dataset``
override where the data is read from. Single process, data-parallel checkpoints only
(an expert-parallel run saves one checkpoint per rank: evaluate it under torchrun with training).
"""
from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from shared.train.checkpoint import load_checkpoint
from shared.train.config import load_config, parse_config
from shared.parallel.dist import init_distributed
from shared.train.run import latest_run

from .config import Config
from .data import build_datasets
from .train import REPO, Parallel, build_model, evaluate, head_classes


@dataclass
class EvalConfig:
    run: str = ""          # run directory; "" = the newest under <repo>/runs/widenet
    data: str = ""         # override the run's data path
    dataset: str = ""      # override the run's dataset kind
    mode: str = "data"
    batch_size: int = 0    # 0 = the run's batch size (the last partial batch is dropped)


def main(argv=None) -> dict:
    args = parse_config(EvalConfig, None, argv)
    run = Path(args.run) if args.run else latest_run(REPO / "runs" / "widenet")
    cfg = load_config(Config, run / "config.json")
    cfg = dataclasses.replace(cfg, batch_size=args.batch_size or cfg.batch_size, mode=args.mode,
                              data=args.data or cfg.data, dataset=args.dataset or cfg.dataset)
    env = init_distributed()
    _, val_set, data_classes = build_datasets(cfg)
    model = build_model(cfg, head_classes(cfg, data_classes)).to(env.device)
    state = load_checkpoint(run / "checkpoint.pt", map_location=env.device)
    model.load_state_dict(state["model"])
    metrics = evaluate(model, val_set, cfg, Parallel(cfg, env), env.device)
    print(f"{cfg.model} ({run}): val top-1 {100 * metrics['val_acc']:.2f}%, "
          f"val CE {metrics['val_loss']:.4f} on {metrics['val_images']} of {len(val_set)} images "
          f"(full batches; step {state['step']})")
    return metrics


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main(sys.argv[1:])
