"""Evaluate a trained run: mIoU@0.01..0.1 and DAS of its keypoints, their robustness to input
noise and subsampling, and a picture.

    python -m skeleton_merger.eval                                # the newest run
    python -m skeleton_merger.eval --run runs/skeleton_merger/<run>
    python -m skeleton_merger.eval --run RUN --keypointnet /path/KeypointNet   # a ShapeNet run
    python -m skeleton_merger.eval --run RUN --noise 0,0.01,0.02,0.04 --keep 1,0.5,0.25

The model, data and category come from the run's ``config.json``, the weights from its
``checkpoint.pt``. Evaluation shapes: the run's procedural evaluation shapes, or KeypointNet's
annotated models of the category (``--keypointnet``, or the run's own). Robustness (the paper's
claim): the same metrics with Gaussian noise of standard deviation ``sigma`` (in the clouds'
units: a unit bounding-box diagonal for the procedural clouds and KeypointNet) added to every
input point, and with the input randomly subsampled to a fraction ``keep`` of its points
(filled back to N points by repeating kept points, since the encoder takes N points; repeats
add no information).
Predictions are always snapped to, and scored against, the clean cloud. Writes
``keypoints.png`` (and ``eval.json``) into the run directory.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import numpy as np

from shared.train import EvalConfig as BaseEvalConfig
from shared.train import entry_point, load_config, parse_config, runs_root
from shared.train.config import ConfigError
from shared.train.restore import load_run_weights, load_weights_into
from shared.train.run import resolve_run

from .config import Config
from .data import ShapeSet, build_datasets, keypointnet, procedural
from .metrics import normalize
from .train import build_model, evaluate_keypoints, picture, random_baseline


@dataclass
class EvalConfig(BaseEvalConfig):
    """``--batch_size`` 0 = the run's batch size; ``--data``: the run's ShapeNet data from
    another path."""
    keypointnet: str = ""
    """KeypointNet root to evaluate on (default: the run's own evaluation data)"""
    noise: tuple[float, ...] = (0.0, 0.01, 0.02, 0.04)
    """standard deviations of the Gaussian input noise (robustness)"""
    keep: tuple[float, ...] = (1.0, 0.5, 0.25)
    """fractions of the input points kept (robustness)"""
    pictures: int = 6
    seed: int = 0
    """seeds the noise, the subsampling and the farthest-point-sampling starts"""

    def validate(self) -> None:
        super().validate()
        if any(s < 0 for s in self.noise):
            raise ConfigError(f"--noise values must be >= 0; got {self.noise}")
        if any(not 0 < f <= 1 for f in self.keep):
            raise ConfigError(f"--keep values must be in (0, 1]; got {self.keep}")
        if self.pictures < 0:
            raise ConfigError(f"--pictures must be >= 0; got {self.pictures}")


def perturb(shapes: ShapeSet, noise: float = 0.0, keep: float = 1.0, seed: int = 0) -> ShapeSet:
    """The evaluation set with a perturbed network input (noise, then subsampling); the clean
    clouds and ground truth stay for scoring."""
    if noise == 0 and keep == 1:
        return shapes
    rng = np.random.default_rng(seed)
    x = shapes.raw.astype(np.float64)
    if noise > 0:
        x = x + noise * rng.standard_normal(x.shape)
    if keep < 1:
        M, N, _ = x.shape
        n = max(1, int(round(keep * N)))
        idx = np.stack([np.concatenate([kept, rng.choice(kept, N - n)])
                        for kept in (rng.choice(N, n, replace=False) for _ in range(M))])
        x = np.take_along_axis(x, idx[..., None], axis=1)
    points, factors = normalize(x)
    return dataclasses.replace(shapes, points=points.astype(np.float32), factors=factors)


def robustness(model, shapes: ShapeSet, noises, keeps, batch_size: int, device,
               seed: int = 0) -> list[dict]:
    """mIoU@0.1 and DAS under each noise level (all points) and each kept fraction (no noise)."""
    rows = []
    conditions = ([("noise", s, 1.0) for s in noises]
                  + [("keep", 0.0, f) for f in keeps if f < 1])
    for kind, sigma, keep in conditions:
        m, _ = evaluate_keypoints(model, perturb(shapes, sigma, keep, seed), batch_size, device,
                                  seed)
        rows.append({"perturbation": kind, "noise sigma": sigma, "kept fraction": keep,
                     "miou@0.1": m["miou@0.1"], "das": m["das"]})
    return rows


def load_run(run_arg: str = "", out_dir: str = ""):
    """``(run dir, config, model with the checkpoint's weights, step)``; ``run_arg`` "" = the
    newest run under ``out_dir`` (default ``<repo>/runs/skeleton_merger``)."""
    root = runs_root(EvalConfig(out_dir=out_dir), "skeleton_merger")
    run = resolve_run(root, run_arg)
    cfg = load_config(Config, run / "config.json")
    weights, step, _ = load_run_weights(run, "skeleton_merger")
    model = build_model(cfg)
    load_weights_into(model, weights, run, f"the {cfg.category} model")
    return run, cfg, model, step


def evaluation_set(cfg: Config, keypointnet_root: str = "") -> ShapeSet:
    """The shapes a run is evaluated on (its procedural evaluation shapes, or KeypointNet)."""
    root = keypointnet_root or cfg.keypointnet
    if root:
        return keypointnet(root, cfg.category)
    if cfg.data:
        return build_datasets(cfg)[1]
    return procedural(cfg.category, cfg.val_shapes, cfg.num_points, cfg.seed, "val")


@entry_point
def main(argv=None) -> dict:
    args = parse_config(EvalConfig, None, argv, default_preset=None)
    run, cfg, model, step = load_run(args.run, args.out_dir)
    cfg = dataclasses.replace(cfg, data=args.data or cfg.data)
    device = args.torch_device()
    model.to(device)
    shapes = evaluation_set(cfg, args.keypointnet)
    batch = args.batch_size or cfg.batch_size
    metrics, pred = evaluate_keypoints(model, shapes, batch, device, args.seed, cfg.penalty)
    out = {"run": str(run), "step": step, "category": cfg.category, "shapes": len(shapes),
           **metrics}
    if shapes.has_keypoints:
        out["random"] = random_baseline(shapes, cfg.k, args.seed)
        out["robustness"] = robustness(model, shapes, args.noise, args.keep, batch, device,
                                       args.seed)
        print(f"{cfg.category} ({run}, step {step}, {len(shapes)} shapes of {shapes.name}): "
              f"mIoU@0.1 {100 * metrics['miou@0.1']:.1f}, DAS {100 * metrics['das']:.1f} (fwd "
              f"{100 * metrics['das_fwd']:.1f}, bwd {100 * metrics['das_bwd']:.1f}); random "
              f"keypoints: mIoU@0.1 {100 * out['random']['miou@0.1']:.1f}, DAS "
              f"{100 * out['random']['das']:.1f}", flush=True)
        for row in out["robustness"]:
            what = (f"noise sigma {row['noise sigma']:g}" if row["perturbation"] == "noise"
                    else f"keep {row['kept fraction']:g} of the points")
            print(f"  {what}: mIoU@0.1 {100 * row['miou@0.1']:.1f}, DAS {100 * row['das']:.1f}")
    else:
        print(f"{cfg.category} ({run}, step {step}): validation CCD {metrics['val_ccd']:.4f} "
              f"(no keypoint annotations: give --keypointnet ROOT for mIoU and DAS)")
    if args.pictures:
        out["picture"] = str(picture(shapes, pred, run / "keypoints.png", args.pictures,
                                     cfg.category))
    (run / "eval.json").write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
