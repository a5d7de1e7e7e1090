"""Evaluate a trained run: top-1 accuracy of its checkpoint on the validation split.

    python -m widenet.eval                         # the newest run under <repo>/runs/widenet
    python -m widenet.eval --run runs/widenet/<run> [--data /path/to/imagenet]
    make eval-widenet MODE=expert                  # the newest expert-parallel run

One process, whatever the mode of the run: the model, data and MoE settings come from the run's
``config.json``; the weights from its ``checkpoint.pt`` or, for an expert-parallel run, from all
its ``checkpoint-rank<r>.pt`` files, whose expert shards (saved under the serial parameter names)
together make the serial model. Each evaluation batch is routed in as many groups as the run had
processes, so the result equals the run's own final evaluation. ``--data``/``--dataset``
override where the data is read from.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from shared.train import entry_point, load_checkpoint, load_config, parse_config, runs_root
from shared.train.config import ConfigError
from shared.train.run import checkpoint_files, resolve_run
from shared.errors import UsageError

from .config import Config
from .data import build_datasets
from .nlp import is_nlp
from .train import build_model, evaluate, head_classes


@dataclass
class EvalConfig:
    run: str = ""
    """run directory, or a run name under --out_dir; "" = the newest run with a checkpoint"""
    out_dir: str = ""
    """root of the run directories; "" = <repo>/runs/widenet"""
    mode: str = ""
    """without --run: the newest run of this mode (make eval-widenet MODE=...); with --run: the
    run must have been trained in this mode"""
    data: str = ""
    """override the run's data path"""
    dataset: str = ""
    """override the run's dataset kind"""
    batch_size: int = 0
    """0 = the run's batch size (the last partial batch is dropped)"""
    device: str = "auto"
    """auto (CUDA when present) | cpu | cuda"""
    debug: bool = False

    def validate(self) -> None:
        if self.mode and self.mode not in Config.MODES:
            raise ConfigError(f"--mode {self.mode!r} is not a mode of widenet; choose one of: "
                              f"{', '.join(Config.MODES)}")
        if self.batch_size < 0:
            raise ConfigError(f"--batch_size must be >= 0; got {self.batch_size}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"--device {self.device!r}: choose auto, cpu or cuda")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise UsageError("--device cuda, but CUDA is not available on this machine; use "
                             "--device cpu or auto")


def newest_run_of_mode(root: Path, mode: str) -> str:
    """The run under ``root`` trained with ``--mode mode`` whose checkpoint is the newest."""
    found = []
    for d in (root.iterdir() if root.is_dir() else ()):
        files = checkpoint_files(d) if d.is_dir() else []
        if files and (d / "config.json").is_file():
            if json.loads((d / "config.json").read_text()).get("mode") == mode:
                found.append((max(f.stat().st_mtime for f in files), d))
    if not found:
        raise UsageError(f"no run of --mode {mode} with a checkpoint under {root}; train one "
                         f"first (make train-widenet MODE={mode}) or pass --run PATH")
    return str(max(found)[1])


@entry_point
def main(argv=None) -> dict:
    args = parse_config(EvalConfig, None, argv, default_preset=None)
    root = runs_root(args, "widenet")
    run = resolve_run(root, args.run or (newest_run_of_mode(root, args.mode) if args.mode else ""))
    cfg = load_config(Config, run / "config.json")
    if is_nlp(cfg.model):
        raise UsageError(f"run {run} trained the NLP model {cfg.model}; eval evaluates the vision "
                         f"models only (the NLP run's validation accuracy is in its "
                         f"metrics.jsonl); pass --run with a vision run")
    if args.mode and args.mode != cfg.mode:
        raise UsageError(f"run {run} was trained with --mode {cfg.mode}, not {args.mode}; "
                         f"pass --run with a run of that mode, or drop --mode")
    cfg = dataclasses.replace(cfg, batch_size=args.batch_size or cfg.batch_size,
                              data=args.data or cfg.data, dataset=args.dataset or cfg.dataset)
    device = torch.device("cuda" if args.device != "cpu" and torch.cuda.is_available()
                          else "cpu")

    weights, step, world = {}, None, 1
    for path in checkpoint_files(run):            # one file, or one per rank: their union
        state = load_checkpoint(path, map_location="cpu")
        if state.get("paper") != "widenet":
            raise UsageError(f"{path} is a checkpoint of {state.get('paper')!r}, not of widenet")
        weights.update(state["task"]["model"])
        step, world = state["step"], state.get("world_size", 1)
        del state
    _, val_set, data_classes = build_datasets(cfg)
    model = build_model(cfg, head_classes(cfg, data_classes))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise UsageError(f"the checkpoint of {run} does not fit {cfg.model} as its config.json "
                         f"describes it: missing {missing[:3]}, unexpected {unexpected[:3]} "
                         f"(is a rank's checkpoint file missing?)")
    model.to(device)
    metrics = evaluate(model, val_set, cfg.batch_size, device, chunks=world,
                       workers=cfg.workers)
    print(f"{cfg.model} ({run}): val top-1 {100 * metrics['val_acc']:.2f}%, "
          f"val CE {metrics['val_loss']:.4f} on {metrics['val_images']} of {len(val_set)} images "
          f"(full batches; step {step}, {cfg.mode} mode on {world} process(es))", flush=True)
    return dict(metrics, run=str(run), step=step)


if __name__ == "__main__":
    main()
