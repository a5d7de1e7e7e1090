"""Evaluate a trained run: masked-LM loss and accuracy on the validation split.

    python -m seqpar.eval --run runs/seqpar/<run>            # one process (serial attention)
    torchrun --nproc-per-node 2 -m seqpar.eval --run ...      # sequence parallel over 2 ranks

(``make eval-seqpar ARGS="--run runs/seqpar/<run>"``.) The run's config.json gives the model
and data; ``--data`` evaluates on another corpus of the same vocabulary.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from shared.train.checkpoint import load_checkpoint
from shared.train.config import load_config, parse_config
from shared.parallel.dist import init_distributed, main_guard
from shared.train.run import latest_run, log0
from shared.parallel.topology import build_topology

from .config import Config
from .data import MLMData
from .parallel import SequenceParallelBert
from .rsa import check_sequence_split
from .train import REPO, build_model, evaluate


@dataclass
class EvalConfig:
    run: str = ""
    """run directory holding config.json and checkpoint.pt ("" = the latest under <repo>/runs/seqpar)"""
    data: str = ""
    """evaluate on this corpus instead of the run's"""
    batches: int = 16
    batch_size: int = 8
    mode: str = "seq"
    """parallel mode (only 'seq')"""


@main_guard
def main(argv=None) -> dict:
    args = parse_config(EvalConfig, None, argv, default_preset=None)
    if args.mode != "seq":
        raise ValueError(f"seqpar evaluates with --mode seq; got {args.mode!r}")
    run = Path(args.run) if args.run else latest_run(REPO / "runs" / "seqpar")
    cfg = load_config(Config, run / "config.json")
    if args.data:
        cfg = dataclasses.replace(cfg, data=args.data)
    env = init_distributed()
    check_sequence_split(cfg.seq_len, env.world_size)
    topo = build_topology("seq")
    data = MLMData.from_config(cfg)
    model = build_model(cfg, data.vocab_size).to(env.device)
    state = load_checkpoint(run / "checkpoint.pt", map_location=env.device)
    model.load_state_dict(state["model"])
    sp = SequenceParallelBert(model, topo, lean=cfg.lean, seed=cfg.seed)
    metrics = evaluate(sp, data, args.batches, args.batch_size)
    log0(f"seqpar eval: step {state['step']}, val loss {metrics['val_loss']:.4f}, "
         f"val acc {metrics['val_acc']:.3f} ({args.batches} batches of {args.batch_size} x "
         f"{cfg.seq_len} tokens, {data.corpus.source})")
    return metrics


if __name__ == "__main__":
    main()
