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

from shared.train import EvalConfig as BaseEvalConfig
from shared.train import entry_point, load_config, parse_config, runs_root
from shared.train.restore import load_run_weights, load_weights_into
from shared.train.run import resolve_run

from .config import Config
from .data import build_val_sets
from .models import create_backbone
from .train import summary_line
from .verification import verify


@dataclass
class EvalConfig(BaseEvalConfig):
    """``--data``: the run's verification .bin files from another directory; ``--batch_size``
    0 = the run's ``--eval_batch_size``."""
    val_targets: str = ""
    """override the run's verification set names"""


def load_backbone(run) -> tuple[Config, torch.nn.Module, int]:
    """The run's config, its probe net with rank 0's weights (CPU), and the step."""
    cfg = load_config(Config, run / "config.json")
    weights, step, _ = load_run_weights(run, "f2c", rank0_only=True)
    weights = {k[len("backbone."):]: v for k, v in weights.items() if k.startswith("backbone.")}
    backbone = create_backbone(cfg.backbone, cfg.img_size, cfg.embedding_size)
    load_weights_into(backbone, weights, run, cfg.backbone)
    return cfg, backbone, step


@entry_point
def main(argv=None) -> dict:
    args = parse_config(EvalConfig, None, argv, default_preset=None)
    run = resolve_run(runs_root(args, "f2c"), args.run)
    cfg, backbone, step = load_backbone(run)
    cfg = dataclasses.replace(cfg, data=args.data or cfg.data,
                              val_targets=args.val_targets or cfg.val_targets)
    device = args.torch_device()
    backbone.to(device)
    metrics = {}
    for pairs in build_val_sets(cfg):
        metrics.update(verify(backbone, pairs, args.batch_size or cfg.eval_batch_size, device))
    print(f"{cfg.method} ({cfg.backbone}, {run}, step {step}): {summary_line(metrics)}",
          flush=True)
    return dict(metrics, run=str(run), step=step)


if __name__ == "__main__":
    main()
