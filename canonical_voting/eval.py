"""Evaluate a trained run: per-class AP and mAP at IoU 0.25 and 0.5 on the validation scenes, and a
PNG of one scene's detections.

    python -m canonical_voting.eval                          # the newest run with a checkpoint
    python -m canonical_voting.eval --run runs/canonical_voting/<run> [--data /path/to/scannet]
    python -m canonical_voting.eval --run a,b,c              # separate models: their union

The model, data and inference settings come from the run's ``config.json``, the weights from
its ``checkpoint.pt``. Several runs of ``--head separate`` models (one class each) are evaluated
together, as the reference's ``eval_separate.py``: each model detects its class, and the mAP is
over the union of their classes.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Optional


from shared.errors import UsageError
from shared.train import EvalConfig as BaseEvalConfig
from shared.train import entry_point, load_config, parse_config, runs_root
from shared.train.config import ConfigError
from shared.train.restore import load_run_weights, load_weights_into
from shared.train.run import resolve_run

from .config import Config
from .data import build_data
from .metrics import SceneBoxes, evaluate_detections
from .train import IOUS, Evaluator, build_model, model_classes

PAPER = "canonical_voting"


@dataclass
class EvalConfig(BaseEvalConfig):
    """``--run``: comma-separated runs are evaluated together as separate models (one class
    each)."""
    eval_scenes: int = -1
    """validation scenes; -1 = the run's setting, 0 = all"""
    lcc_check: Optional[bool] = None
    """override the run's LCC back-projection check (false: the paper's ablation)"""
    picture: bool = True
    """write detections.png beside the (first) run's checkpoint"""

    def validate(self) -> None:
        super().validate()
        if self.batch_size:
            raise ConfigError("--batch_size: canonical_voting evaluates one scene at a time; "
                              "drop it")
        if self.eval_scenes < -1:
            raise ConfigError(f"--eval_scenes must be >= 0 (or -1: the run's); got "
                              f"{self.eval_scenes}")


def load_run(run: Path, args: EvalConfig, device) -> tuple[Config, Evaluator, int]:
    cfg = load_config(Config, run / "config.json")
    cfg = dataclasses.replace(cfg, data=args.data or cfg.data,
                              eval_scenes=cfg.eval_scenes if args.eval_scenes < 0 else args.eval_scenes,
                              lcc_check=cfg.lcc_check if args.lcc_check is None else args.lcc_check)
    weights, step, _ = load_run_weights(run, PAPER)
    _, val, dataset_classes = build_data(cfg)
    classes, _ = model_classes(cfg, dataset_classes)
    model = build_model(cfg, len(classes))
    load_weights_into(model, weights, run, f"the {cfg.method} detector")
    model.to(device)
    return cfg, Evaluator(cfg, model, val, classes, dataset_classes, device), step


@entry_point
def main(argv=None) -> dict:
    args = parse_config(EvalConfig, None, argv, default_preset=None)
    root = runs_root(args, PAPER)
    device = args.torch_device()
    names = [n for n in args.run.split(",") if n] if args.run else [""]
    runs = [resolve_run(root, n) for n in names]
    loaded = [load_run(r, args, device) for r in runs]
    if len(loaded) > 1:
        heads = {cfg.head for cfg, _, _ in loaded}
        if heads != {"separate"}:
            raise UsageError("several --run are evaluated together only as separate models "
                             "(--head separate, one class each); pass one run otherwise")
        if len({(cfg.dataset, cfg.data, cfg.voxel_size, cfg.val_scenes, cfg.data_seed)
                for cfg, _, _ in loaded}) > 1:
            raise UsageError("the separate models were trained on different data; evaluate "
                             "runs of the same dataset together")
    first = loaded[0][1]
    classes = [c for _, ev, _ in loaded for c in ev.classes]
    n = first.n_eval
    dets = [[d for _, ev, _ in loaded for d in ev.detections(i)] for i in range(n)]
    gts = []
    for i in range(n):
        s = first.sample(i)
        names_ = [first.dataset_classes[l] for l in s.box_labels.tolist()]
        keep = [j for j, c in enumerate(names_) if c in classes]
        gts.append(SceneBoxes(s.boxes.double().numpy()[keep], [names_[j] for j in keep]))
    res = evaluate_detections(dets, gts, classes, IOUS)
    print(f"{', '.join(str(r) for r in runs)} (step {', '.join(str(s) for _, _, s in loaded)}): "
          f"{n} validation scenes, {sum(len(d) for d in dets)} detections")
    print(f"  {'class':<12} {'GT':>5} {'AP@0.25':>8} {'AP@0.5':>8}")
    for c in classes:
        print(f"  {c:<12} {res['gt_count'][c]:>5} {100 * res['ap'][0.25][c]:>8.1f} "
              f"{100 * res['ap'][0.5][c]:>8.1f}")
    print(f"  {'mAP':<12} {'':>5} {100 * res['map'][0.25]:>8.1f} {100 * res['map'][0.5]:>8.1f}",
          flush=True)
    out = {"map25": res["map"][0.25], "map50": res["map"][0.5], "ap": res["ap"],
           "runs": [str(r) for r in runs], "detections": sum(len(d) for d in dets)}
    if args.picture and len(loaded) == 1:
        out["picture"] = str(first.picture(runs[0] / "detections.png"))
        print(f"wrote {out['picture']}")
    return out


if __name__ == "__main__":
    main()
