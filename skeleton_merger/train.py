"""Train Skeleton Merger (arXiv 2103.10814) with the authors' recipe on the shared training core.

    python -m skeleton_merger.train --preset tiny                      # CPU, procedural chairs
    python -m skeleton_merger.train --preset tiny --category airplane
    python -m skeleton_merger.train --preset chair --data /path/shapenetcorev2_hdf5_2048 \\
        --keypointnet /path/KeypointNet --device cuda                  # the paper's chair row
    python -m skeleton_merger.train --resume runs/skeleton_merger/<run>
    torchrun --standalone --nproc-per-node 4 -m skeleton_merger.train --preset chair \\
        --data ... --batch_size 32                                     # data parallel

One model per category. Each step: the network proposes ``k`` keypoints and the strengths of the
``k(k-1)/2`` skeleton edges, the decoder samples every edge, and the loss is the Composite
Chamfer Distance with activation masking plus the offset regulariser (``skeleton_merger.loss``);
Adadelta (lr 1, rho 0.9, eps 1e-2), no schedule, no clipping. Evaluation (every
``--eval_every`` steps and at the end): mIoU@0.01..0.1 and the Dual Alignment Score of the
evaluation shapes' keypoints (procedural shapes, or KeypointNet with ``--keypointnet``), and the
validation CCD. At the end, ``keypoints.png`` in the run directory shows predicted keypoints
and the active skeleton edges (strength > 0.5) of a few evaluation shapes.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import torch

from shared.data import EpochSampler
from shared.parallel.seeding import seed_everything
from shared.parallel.topology import build_topology
from shared.train import StepOutput, Task, entry_point, fit, log0, parse_args, start
from shared.train.config import ConfigError

from .config import PRESETS, Config
from .data import DataError, ShapeSet, build_datasets
from .loss import composite_chamfer, offset_regularizer
from .metrics import THRESHOLDS, keypoint_metrics, random_keypoints
from .models import SkeletonMerger
from .models.pointnet2 import PAPER_RADII
from .parallel import broadcast_buffers, grad_plans, parallelize

ACTIVE = 0.5
"""an edge is drawn (and counted active) when its strength exceeds this"""


def build_model(cfg: Config) -> SkeletonMerger:
    radii = tuple(tuple(r * cfg.radius_scale for r in level) for level in PAPER_RADII)
    return SkeletonMerger(cfg.k, cfg.npoints, radii, width=cfg.width, dropout=cfg.dropout,
                          max_samples=cfg.max_samples)


def build_optimizer(model: torch.nn.Module, cfg: Config) -> torch.optim.Optimizer:
    return torch.optim.Adadelta(model.parameters(), lr=cfg.lr, rho=cfg.rho, eps=cfg.adadelta_eps,
                                weight_decay=cfg.weight_decay)


def check_input(model: SkeletonMerger, points: torch.Tensor, where: str) -> None:
    """One clear error for clouds the encoder cannot take."""
    if points.dim() != 3 or points.shape[-1] != 3:
        raise DataError(f"{where}: clouds must have shape (B, N, 3); got {tuple(points.shape)}")
    if points.shape[1] < model.min_points:
        raise DataError(f"{where}: clouds have {points.shape[1]} points, fewer than the "
                        f"{model.min_points} centres the encoder samples at its first level; "
                        f"give clouds of at least {model.min_points} points or train with a "
                        f"smaller --npoints")
    if not torch.isfinite(points).all():
        raise DataError(f"{where}: the clouds contain NaN or inf coordinates; clean the data")


@torch.no_grad()
def predict(model: SkeletonMerger, points: np.ndarray, batch_size: int, device,
            seed: int = 0, penalty: float = 20.0) -> dict:
    """Keypoints ``(M, k, 3)`` and strengths ``(M, P)`` of normalised clouds ``(M, N, 3)`` in
    eval mode, and the mean CCD. The farthest-point sampling starts are drawn from ``seed`` (the
    global RNG is left as it was). A final batch of one shape is run with a copy beside it, as
    the authors do (their network cannot take a batch of one)."""
    was_training = model.training
    model.eval()
    x_all = torch.as_tensor(points, dtype=torch.float32)
    check_input(model, x_all, "evaluation")
    kps, strengths, losses = [], [], []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for start in range(0, len(x_all), batch_size):
            x = x_all[start:start + batch_size].to(device)
            n = len(x)
            if n == 1:
                x = x.repeat(2, 1, 1)
            out = model(x)
            loss = composite_chamfer(x, out.samples, out.counts, out.strengths, penalty)
            kps.append(out.keypoints[:n].float().cpu())
            strengths.append(out.strengths[:n].float().cpu())
            losses.append(float(loss) * n)
    model.train(was_training)
    return {"keypoints": torch.cat(kps).numpy(), "strengths": torch.cat(strengths).numpy(),
            "ccd": sum(losses) / len(x_all)}


def evaluate_keypoints(model, shapes: ShapeSet, batch_size: int, device, seed: int = 0,
                       penalty: float = 20.0) -> tuple[dict, dict]:
    """``(metrics, prediction)``: validation CCD, and with keypoints mIoU@0.1, its curve, DAS and
    its halves, the mean strength and active edges."""
    pred = predict(model, shapes.points, batch_size, device, seed, penalty)
    metrics = {"val_ccd": pred["ccd"], "val_strength": float(pred["strengths"].mean()),
               "val_active_edges": float((pred["strengths"] > ACTIVE).sum(-1).mean())}
    if shapes.has_keypoints:
        m = keypoint_metrics(pred["keypoints"], shapes.factors, shapes.raw, shapes.keypoints,
                             shapes.semantic_ids, THRESHOLDS, shapes.valid)
        metrics.update({"miou@0.1": m["miou@0.1"], "das": m["das"], "das_fwd": m["fwd"],
                        "das_bwd": m["bwd"]})
        metrics["miou_curve"] = [float(v) for v in m["miou"]]
    return metrics, pred


def random_baseline(shapes: ShapeSet, k: int, seed: int = 0) -> dict:
    """DAS and mIoU@0.1 of ``k`` random input points per shape (the baseline of the tests)."""
    kp = random_keypoints(shapes.points, k, seed)
    m = keypoint_metrics(kp, shapes.factors, shapes.raw, shapes.keypoints, shapes.semantic_ids,
                         THRESHOLDS, shapes.valid)
    return {"das": m["das"], "miou@0.1": m["miou@0.1"], "fwd": m["fwd"], "bwd": m["bwd"]}


def skeleton_item(points, keypoints, strengths, title: str) -> dict:
    """One panel of :func:`shared.pointcloud.render.render_grid`: the cloud in grey, the
    keypoints numbered, the active edges (strength > 0.5) as black segments."""
    from .models import edge_list

    edges = edge_list(len(keypoints)).numpy()
    on = strengths > ACTIVE
    segs = np.stack([keypoints[edges[on, 0]], keypoints[edges[on, 1]]], 1) if on.any() else None
    return dict(points=points, color="darkgray", keypoints=keypoints, segments=segs,
                title=f"{title}: {int(on.sum())} active edges",
                point_size=float(np.clip(12000 / len(points), 2, 24)))


def picture(shapes: ShapeSet, pred: dict, path, count: int, title: str = "") -> Path:
    """PNG of ``count`` shapes: points grey, predicted keypoints numbered, active edges black."""
    from shared.pointcloud.render import render_grid

    items = [skeleton_item(shapes.points[m], pred["keypoints"][m], pred["strengths"][m],
                           f"{title} #{m}") for m in range(min(count, len(shapes)))]
    return render_grid(items, path, cols=min(3, len(items)), cell=(420, 380))


class SkeletonMergerTask(Task):
    """The paper's model, data and step for :func:`shared.train.fit`."""
    paper = "skeleton_merger"
    unit = "shapes"

    def __init__(self, cfg: Config, env):
        self.env, world = env, env.world_size
        self.topo = build_topology("data")
        self.data_group = self.topo["data"]
        if cfg.batch_size % world or cfg.batch_size // world < 2:
            raise ConfigError(f"--batch_size {cfg.batch_size} must be a multiple of the {world} "
                              f"processes with at least 2 shapes each (BatchNorm); use a "
                              f"multiple of {2 * world}")
        seed_everything(cfg.seed)
        self.train_set, self.val_set = build_datasets(cfg)
        if len(self.train_set) < cfg.batch_size:
            raise ConfigError(f"--batch_size {cfg.batch_size} is larger than the "
                              f"{len(self.train_set)} training shapes; lower it")
        if cfg.epochs > 0:
            per_epoch = len(self.train_set) // cfg.batch_size
            cfg = dataclasses.replace(cfg, steps=max(1, math.ceil(cfg.epochs * per_epoch)))
            cfg.validate()
        self.cfg = cfg
        model = build_model(cfg).to(env.device)            # the same weights on every rank
        check_input(model, torch.from_numpy(self.train_set.points[:1]), self.train_set.name)
        self.model = parallelize(model, self.data_group)
        self.n_params = sum(p.numel() for p in model.parameters())
        self.optimizer = build_optimizer(self.model, cfg)
        seed_everything(cfg.seed + 1000 * env.rank)         # own dropout / FPS starts per rank
        self.baseline = (random_baseline(self.val_set, cfg.k, cfg.seed)
                         if self.val_set.has_keypoints else {})

    def grad_plans(self):
        return grad_plans(self.model, self.data_group)

    def batches(self, start_step: int):
        sampler = EpochSampler(len(self.train_set), self.cfg.batch_size, seed=self.cfg.seed,
                               rank=self.data_group.rank, world=self.data_group.size)
        sampler.seek(start_step)
        points = torch.from_numpy(self.train_set.points)
        return (points[idx].to(self.env.device) for idx in sampler)

    def step(self, batch, step: int) -> StepOutput:
        cfg = self.cfg
        broadcast_buffers(self.model, self.data_group)
        out = self.model(batch)
        ccd, terms = composite_chamfer(batch, out.samples, out.counts, out.strengths,
                                       cfg.penalty, return_terms=True)
        reg = offset_regularizer(out.offsets, cfg.offset_weight)
        loss = ccd + reg
        strengths = out.strengths.detach()
        metrics = {"loss": loss.detach(), "ccd": ccd.detach(), "ccd_forward": terms["forward"],
                   "ccd_backward": terms["backward"], "ccd_penalty": terms["penalty"],
                   "offset_reg": reg.detach(), "strength": strengths.mean(),
                   "active_edges": (strengths > ACTIVE).float().sum(-1).mean(),
                   "samples": out.counts.float().mean()}
        return StepOutput(loss, metrics, items=cfg.batch_size)

    def evaluate(self) -> dict:
        broadcast_buffers(self.model, self.data_group)
        metrics, self.last_prediction = evaluate_keypoints(
            self.model, self.val_set, self.cfg.batch_size, self.env.device, self.cfg.seed,
            self.cfg.penalty)
        metrics.pop("miou_curve", None)
        return metrics

    def describe(self) -> str:
        return (f"skeleton_merger k={self.cfg.k}: {self.n_params / 1e6:.3f}M parameters, "
                f"{len(self.train_set)} training shapes ({self.train_set.name}), "
                f"{len(self.val_set)} evaluation shapes ({self.val_set.name}), "
                f"{self.cfg.num_points} points each")


@entry_point
def main(argv=None) -> dict:
    cfg = parse_args(Config, PRESETS, argv, paper="skeleton_merger")
    env = start(cfg)
    task = SkeletonMergerTask(cfg, env)
    summary = fit(task.cfg, task)
    summary.update(params=task.n_params, category=task.cfg.category,
                   **{f"random_{k}": v for k, v in task.baseline.items()})
    if env.rank == 0 and summary["step"] == task.cfg.steps:
        pred = getattr(task, "last_prediction", None)
        if pred is not None and task.cfg.pictures:
            png = picture(task.val_set, pred, Path(summary["run_dir"]) / "keypoints.png",
                          task.cfg.pictures, task.cfg.category)
            summary["picture"] = str(png)
        if "das" in summary:
            log0(f"skeleton_merger {task.cfg.category}: mIoU@0.1 {100 * summary['miou@0.1']:.1f}"
                 f", DAS {100 * summary['das']:.1f} (fwd {100 * summary['das_fwd']:.1f}, bwd "
                 f"{100 * summary['das_bwd']:.1f}; random keypoints: DAS "
                 f"{100 * summary['random_das']:.1f}, mIoU@0.1 "
                 f"{100 * summary['random_miou@0.1']:.1f}), {summary['step']} steps in "
                 f"{summary['seconds']:.0f} s; "
                 f"{'keypoints.png and ' if 'picture' in summary else ''}checkpoint in "
                 f"{summary['run_dir']}")
        else:
            log0(f"skeleton_merger {task.cfg.category}: validation CCD "
                 f"{summary.get('val_ccd', float('nan')):.4f} (no keypoint annotations: give "
                 f"--keypointnet for mIoU and DAS), {summary['step']} steps in "
                 f"{summary['seconds']:.0f} s; run dir {summary['run_dir']}")
    elif env.rank == 0:
        log0(f"skeleton_merger: stopped at step {summary['step']} of {task.cfg.steps}; continue "
             f"with --resume {summary['run_dir']}")
    return summary


if __name__ == "__main__":
    main()
