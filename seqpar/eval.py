"""Evaluate a trained run: masked-LM loss and accuracy on the validation batches of the run.

    python -m seqpar.eval --run RUN                              # one process
    torchrun --standalone --nproc-per-node 2 -m seqpar.eval -- --run RUN   # sequence parallel 2

``RUN`` is a run directory or a run name under ``runs/seqpar`` (default: the newest run). The
run's config.json gives the model, the data and the validation batches, which are the ones of
train-time validation (:func:`seqpar.data.validation_batches`); the result does not depend on the
number of processes or ``--seq_parallel``. ``--data`` evaluates on another corpus of the same
vocabulary. (``make eval-seqpar ARGS="--run RUN"``.) Under torchrun, put ``--`` before the
script's flags: torchrun's own parser otherwise takes ``--run`` for an abbreviation of its
``--run-path``.
"""
from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass

from shared.errors import UsageError
from shared.train import EvalConfig as BaseEvalConfig
from shared.parallel.topology import build_topology
from shared.train import (ConfigError, checkpoint_files, entry_point, load_checkpoint,
                          load_config, log0, parse_config, resolve_run, runs_root, start)

from .config import Config
from .data import MLMData, validation_batches
from .parallel import SequenceParallelBert
from .train import build_model, check_layout, evaluate


@dataclass
class EvalConfig(BaseEvalConfig):
    """``--data``: evaluate on this corpus instead of the run's (same vocabulary)."""
    seq_parallel: int = 0
    """ranks per sequence group; 0 = all processes"""
    eval_batches: int = 0
    """validation batches; 0 = the run's (those of its train-time validation)"""

    MODES = Config.MODES
    timeout: float = 600.0
    """seconds a collective may wait before the job stops"""

    def validate(self) -> None:
        super().validate()
        if self.timeout <= 0:
            raise ConfigError(f"--timeout must be a positive number of seconds; got {self.timeout}")
        for name in ("seq_parallel", "eval_batches"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name} must be >= 0 (0 = the default); got "
                                  f"{getattr(self, name)}")


@entry_point
def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_config(EvalConfig, None, argv, default_preset=None)
    run = resolve_run(runs_root(args, "seqpar"), args.run)
    cfg = load_config(Config, run / "config.json")
    cfg = dataclasses.replace(cfg, data=args.data or cfg.data,
                              eval_batches=args.eval_batches or cfg.eval_batches,
                              batch_size=args.batch_size or cfg.batch_size,
                              device=args.device, timeout=args.timeout, threads=args.threads)
    files = checkpoint_files(run)
    if files[0].name != "checkpoint.pt":
        raise UsageError(f"{run} holds per-rank checkpoints, but seqpar saves one replicated "
                         f"checkpoint.pt; is it a run of another paper?")
    env = start(cfg)
    n = check_layout(args.seq_parallel, env.world_size, cfg.seq_len, cfg.placement,
                     cfg.heads if cfg.attention == "ulysses" else 0)
    topo = build_topology("seq", grid_size=n)
    data = MLMData.from_config(cfg)
    state = load_checkpoint(files[0], map_location=env.device)
    if state.get("paper") != "seqpar":
        raise UsageError(f"{files[0]} is a checkpoint of {state.get('paper')!r}, not of seqpar; "
                         f"evaluate it with that paper's eval")
    weights = state["task"]["model"]
    vocab = weights["embed.word.weight"].shape[0]
    if vocab != data.vocab_size:
        raise UsageError(f"--data {cfg.data}: its vocabulary has {data.vocab_size} ids, the "
                         f"model of {run} was trained on {vocab}; evaluate on a corpus of the "
                         f"same tokenizer")
    model = build_model(cfg, data.vocab_size).to(env.device)
    model.load_state_dict(weights)
    sp = SequenceParallelBert(model, topo, lean=cfg.lean, overlap=cfg.overlap, seed=cfg.seed,
                              attention=cfg.attention, layout=cfg.placement)
    metrics = evaluate(sp, validation_batches(data, cfg), env.device)
    log0(f"seqpar eval: step {state['step']}, val loss {metrics['val_loss']:.4f}, "
         f"val acc {metrics['val_acc']:.3f} ({cfg.eval_batches} batches of {cfg.batch_size} x "
         f"{cfg.seq_len} tokens, {data.corpus.source}; {topo.dp_size} data x {n} sequence); "
         f"run {run}")
    return {**metrics, "step": state["step"], "run": str(run)}


if __name__ == "__main__":
    main()
