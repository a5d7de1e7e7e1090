"""Evaluate a trained run under both test protocols, and draw its predicted parts.

    python -m prin.eval                                   # the newest run under <repo>/runs/prin
    python -m prin.eval --run runs/prin/<run> [--data /path] [--picture parts.png]

The model, data and sizes come from the run's ``config.json``, the weights from its
``checkpoint.pt``. Prints instance/class mIoU (segmentation) or accuracy (classification) with
the test shapes unrotated (NR) and under one fixed uniform rotation each (AR), the same numbers
as the run's own final evaluation. For segmentation runs it writes a PNG (default
``<run>/parts.png``): a few test shapes, ground truth beside the predictions from the
unrotated and from the rotated input (all drawn in the canonical pose).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from shared.pointcloud.render import render_grid
from shared.train import EvalConfig as BaseEvalConfig
from shared.train import entry_point, load_config, parse_config, runs_root
from shared.train.config import ConfigError
from shared.train.restore import load_run_weights, load_weights_into
from shared.train.run import resolve_run

from .config import Config
from .data import build_datasets, one_hot, test_batches
from .metrics import restricted_argmax
from .train import build_model, evaluate, summary_line


@dataclass
class EvalConfig(BaseEvalConfig):
    """``--batch_size`` 0 = the run's ``--eval_batch_size``."""
    picture: str = ""
    """PNG of predicted parts (segmentation runs); "" = <run>/parts.png; "none" = no picture"""
    shapes: int = 4
    """test shapes in the picture"""

    def validate(self) -> None:
        super().validate()
        if self.shapes < 1:
            raise ConfigError(f"--shapes must be >= 1; got {self.shapes}")


def load_run(run: Path, data: str = "", device="cpu"):
    """``(cfg, model, test set, step)`` of a run directory, the model on ``device`` in eval mode."""
    cfg = load_config(Config, run / "config.json")
    cfg = dataclasses.replace(cfg, data=data or cfg.data)
    weights, step, _ = load_run_weights(run, "prin")
    train, test = build_datasets(cfg, runs_root(cfg, "prin") / "cache")
    model = build_model(cfg, train)
    load_weights_into(model, weights, run, f"{cfg.model} ({cfg.task})")
    return cfg, model.to(device).eval(), test, step


def one_per_category(test, shapes: int) -> list[int]:
    """The first test shape of each of the first ``shapes`` categories."""
    picks, seen = [], set()
    for i, c in enumerate(test.labels.tolist()):
        if c not in seen:
            seen.add(c)
            picks.append(i)
    return picks[:shapes]


@torch.no_grad()
def prediction_items(model, test, cfg, picks, label: str = "") -> list[dict]:
    """Picture cells for the test shapes ``picks``: ground truth, the prediction from the
    unrotated input (NR) and the one from the input under its fixed AR rotation, all drawn in
    the canonical pose (points correspond one to one) so the shape is recognisable."""
    device = next(model.parameters()).device
    mask = test.part_mask()
    out = {}
    for protocol in ("nr", "ar"):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            batch = next(test_batches(test, cfg.points, protocol, [picks]))
            logits = model(batch["points"].to(device),
                           one_hot(batch["labels"], test.num_categories).to(device))
        out[protocol] = (batch, restricted_argmax(logits.float().cpu(), batch["labels"], mask))
    (nr_batch, nr_pred), (_, ar_pred) = out["nr"], out["ar"]
    items = []
    for k in range(len(picks)):
        c = int(nr_batch["labels"][k])
        lo, hi = test.part_ranges[c]
        names = test.part_names[lo:hi] if test.part_names else None
        gt = nr_batch["parts"][k]
        for labels, what in ((gt, "ground truth"), (nr_pred[k], "unrotated input"),
                             (ar_pred[k], "rotated input")):
            if what == "ground truth":
                title = f"{test.names[c]}, ground truth"
            else:
                right = 100 * (labels == gt).float().mean().item()
                title = f"{label or test.names[c]}, {what}: {right:.0f}% right"
            items.append(dict(points=nr_batch["points"][k], labels=labels - lo, label_names=names,
                              title=title))
    return items


def part_pictures(model, test, cfg, path, shapes: int = 4) -> Path:
    """A PNG grid: one test shape per category (up to ``shapes``) with ground truth and the
    predictions for the unrotated and the rotated input."""
    return render_grid(prediction_items(model, test, cfg, one_per_category(test, shapes)), path,
                       cols=3, cell=(330, 300))


@entry_point
def main(argv=None) -> dict:
    args = parse_config(EvalConfig, None, argv, default_preset=None)
    root = runs_root(args, "prin")
    run = resolve_run(root, args.run)
    device = args.torch_device()
    cfg, model, test, step = load_run(run, args.data, device)
    if args.batch_size:
        cfg = dataclasses.replace(cfg, eval_batch_size=args.batch_size)
    res = evaluate(model, test, cfg, device)
    print(f"{summary_line(cfg, res)} ({run}, step {step}, {len(test)} test shapes, "
          f"{cfg.points} points)", flush=True)
    if cfg.task == "seg" and args.picture != "none":
        path = part_pictures(model, test, cfg, args.picture or run / "parts.png", args.shapes)
        print(f"wrote {path}")
    return dict(res, run=str(run), step=step)


if __name__ == "__main__":
    main()
