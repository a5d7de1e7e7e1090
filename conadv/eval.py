"""Evaluate a trained run: test top-1 of its checkpoint (main BatchNorms) on the validation split.

    python -m conadv.eval                          # the newest run under <repo>/runs/conadv
    python -m conadv.eval --run runs/conadv/<run> [--data /path/to/imagenet]
    make eval-conadv MODE=disadv                   # the newest DisAdv run

One process, whatever the run's number of processes: the model and data come from the run's
``config.json``; the weights from its ``checkpoint.pt``, or, for a data-parallel run, from its
``checkpoint-rank<r>.pt`` files (the same weights, each rank's own BatchNorm running statistics,
averaged here as the run's own evaluation averages them). The validation images are taken in the
run's shares and batches, so the result equals the run's own final evaluation.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from shared.errors import UsageError
from shared.train import entry_point, load_checkpoint, load_config, parse_config, runs_root
from shared.train.config import ConfigError
from shared.train.run import checkpoint_files, resolve_run

from .config import Config
from .data import build_data
from .models import create_model
from .train import evaluate


@dataclass
class EvalConfig:
    run: str = ""
    """run directory, or a run name under --out_dir; "" = the newest run with a checkpoint"""
    out_dir: str = ""
    """root of the run directories; "" = <repo>/runs/conadv"""
    mode: str = ""
    """without --run: the newest run of this mode; with --run: the run must be of this mode"""
    data: str = ""
    """override the run's data path"""
    batch_size: int = 0
    """evaluation batch; 0 = the run's micro-batch (the batches its own evaluation used)"""
    device: str = "auto"
    """auto (CUDA when present) | cpu | cuda"""
    debug: bool = False

    def validate(self) -> None:
        if self.mode and self.mode not in Config.MODES:
            raise ConfigError(f"--mode {self.mode!r} is not a mode of conadv; choose one of: "
                              f"{', '.join(Config.MODES)}")
        if self.batch_size < 0:
            raise ConfigError(f"--batch_size must be >= 0; got {self.batch_size}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"--device {self.device!r}: choose auto, cpu or cuda")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise UsageError("--device cuda, but CUDA is not available on this machine; use "
                             "--device cpu or auto")


def newest_run_of_mode(root: Path, mode: str) -> str:
    found = []
    for d in (root.iterdir() if root.is_dir() else ()):
        files = checkpoint_files(d) if d.is_dir() else []
        if files and (d / "config.json").is_file():
            if json.loads((d / "config.json").read_text()).get("mode") == mode:
                found.append((max(f.stat().st_mtime for f in files), d))
    if not found:
        raise UsageError(f"no run of --mode {mode} with a checkpoint under {root}; train one "
                         f"first (make train-conadv MODE={mode}) or pass --run PATH")
    return str(max(found)[1])


def load_weights(run: Path) -> tuple[dict, int, int]:
    """The run's model state (running statistics averaged over its ranks), step, processes."""
    files = checkpoint_files(run)
    weights, step = None, None
    for path in files:
        state = load_checkpoint(path, map_location="cpu")
        if state.get("paper") != "conadv":
            raise UsageError(f"{path} is a checkpoint of {state.get('paper')!r}, not of conadv")
        model = state["task"]["model"]
        if weights is None:
            weights = model
        else:
            for name, value in model.items():
                if name.endswith(("running_mean", "running_var")):
                    weights[name] = weights[name] + value
        step = state["step"]
    for name in weights:
        if name.endswith(("running_mean", "running_var")):
            weights[name] = weights[name] / len(files)
    return weights, step, len(files)


@entry_point
def main(argv=None) -> dict:
    args = parse_config(EvalConfig, None, argv, default_preset=None)
    root = runs_root(args, "conadv")
    run = resolve_run(root, args.run or (newest_run_of_mode(root, args.mode) if args.mode else ""))
    cfg = load_config(Config, run / "config.json")
    if args.mode and args.mode != cfg.mode:
        raise UsageError(f"run {run} was trained with --mode {cfg.mode}, not {args.mode}; "
                         f"pass --run with a run of that mode, or drop --mode")
    cfg = dataclasses.replace(cfg, data=args.data or cfg.data)
    device = torch.device("cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu")
    weights, step, world = load_weights(run)
    data = build_data(cfg)
    model = create_model(cfg.model, data.num_classes, data.mean, data.std)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise UsageError(f"the checkpoint of {run} does not fit {cfg.model} as its config.json "
                         f"describes it: missing {missing[:3]}, unexpected {unexpected[:3]}")
    model.to(device)
    batch = args.batch_size or cfg.micro_batch or cfg.batch_size // world
    metrics = evaluate(model, data, batch, device, ranks=range(world), world=world)
    print(f"conadv {cfg.mode} {cfg.model} ({run}): test top-1 {100 * metrics['val_acc']:.2f}%, "
          f"CE {metrics['val_loss']:.4f} on {metrics['val_images']} of {data.val_size} images "
          f"(step {step}, trained on {world} process(es))", flush=True)
    return dict(metrics, run=str(run), step=step, mode=cfg.mode)


if __name__ == "__main__":
    main()
