"""Evaluate a trained run: verification accuracy (10-fold, flip-augmented embeddings) and TAR at
FAR 1e-4 / 1e-5 of its probe net, on the run's verification sets.

    python -m f2c.eval                                    # the newest run under runs/f2c
    python -m f2c.eval --run runs/f2c/<run>
    python -m f2c.eval --run <run> --data /data/faces_emore --val_targets lfw,cfp_fp,agedb_30

One process whatever the run's world size: the backbone is replicated, so rank 0's checkpoint
(``checkpoint.pt``, or ``checkpoint-rank0.pt`` of an FC / Partial FC run whose centre shards were
saved per rank) holds all of it, with rank 0's BatchNorm statistics, as the run's own
evaluation used.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from shared.errors import UsageError
from shared.train import entry_point, load_checkpoint, load_config, parse_config, runs_root
from shared.train.config import ConfigError
from shared.train.run import checkpoint_files, resolve_run

from .config import Config
from .data import build_val_sets
from .models import create_backbone
from .train import summary_line
from .verification import verify


@dataclass
class EvalConfig:
    run: str = ""
    """run directory, or a run name under --out_dir; "" = the newest run with a checkpoint"""
    out_dir: str = ""
    """root of the run directories; "" = <repo>/runs/f2c"""
    data: str = ""
    """override the run's data directory (its verification .bin files)"""
    val_targets: str = ""
    """override the run's verification set names"""
    batch_size: int = 0
    """0 = the run's --eval_batch"""
    device: str = "auto"
    debug: bool = False

    def validate(self) -> None:
        if self.batch_size < 0:
            raise ConfigError(f"--batch_size must be >= 0; got {self.batch_size}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"--device {self.device!r}: choose auto, cpu or cuda")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise UsageError("--device cuda, but CUDA is not available on this machine; use "
                             "--device cpu or auto")


def load_backbone(run) -> tuple[Config, torch.nn.Module, int]:
    """The run's config, its probe net with the checkpoint's weights (CPU), and the step."""
    cfg = load_config(Config, run / "config.json")
    files = checkpoint_files(run)
    if not files:
        raise UsageError(f"{run} has no checkpoint; train it to the end or --resume it")
    state = load_checkpoint(files[0], map_location="cpu")
    if state.get("paper") != "f2c":
        raise UsageError(f"{files[0]} is a checkpoint of {state.get('paper')!r}, not of f2c")
    weights = {k[len("backbone."):]: v for k, v in state["task"]["model"].items()
               if k.startswith("backbone.")}
    backbone = create_backbone(cfg.backbone, cfg.img_size, cfg.embedding_size)
    missing, unexpected = backbone.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise UsageError(f"the checkpoint of {run} does not fit {cfg.backbone} as its "
                         f"config.json describes it: missing {missing[:3]}, unexpected "
                         f"{unexpected[:3]}")
    return cfg, backbone, int(state["step"])


@entry_point
def main(argv=None) -> dict:
    args = parse_config(EvalConfig, None, argv, default_preset=None)
    run = resolve_run(runs_root(args, "f2c"), args.run)
    cfg, backbone, step = load_backbone(run)
    cfg = dataclasses.replace(cfg, data=args.data or cfg.data,
                              val_targets=args.val_targets or cfg.val_targets)
    device = torch.device("cuda" if args.device != "cpu" and torch.cuda.is_available()
                          else "cpu")
    backbone.to(device)
    metrics = {}
    for pairs in build_val_sets(cfg):
        metrics.update(verify(backbone, pairs, args.batch_size or cfg.eval_batch, device))
    print(f"{cfg.method} ({cfg.backbone}, {run}, step {step}): {summary_line(metrics)}",
          flush=True)
    return dict(metrics, run=str(run), step=step)


if __name__ == "__main__":
    main()
