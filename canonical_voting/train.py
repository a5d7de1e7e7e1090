"""Train a Canonical Voting detector (or the regression baseline) on the shared training core.

    python -m canonical_voting.train --preset tiny                    # CPU, procedural rooms
    python -m canonical_voting.train --preset tiny_regression         # the baseline, same recipe
    python -m canonical_voting.train --resume runs/canonical_voting/<run>
    python -m canonical_voting.train --preset scannet_joint --data /path/to/scannet      # 1 GPU
    python -m canonical_voting.train --preset scannet_separate --category table --data ...
    torchrun --standalone --nproc-per-node 2 -m canonical_voting.train --preset scannet_joint \\
        --data /path/to/scannet                                       # data parallel

Each step: a global batch of scenes (each rank its share), the paper's yaw augmentation, one
point per voxel, the sparse U-Net, the per-voxel targets and losses (``canonical_voting.losses``).
Recipe (``canonical_voting.config``): Adam, the paper's lr drops and BN-momentum decay as
functions of the step. Evaluation (every ``--eval_every`` steps and at the end): per-class AP and
mAP at IoU 0.25 and 0.5 on the validation scenes, after canonical voting (or the baseline's direct
votes), back-projection checking and NMS; the run ends with a PNG of one validation scene's
detections (``detections.png`` in the run directory).
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import torch

from shared.data import EpochSampler
from shared.pointcloud.points import yaw_rotation
from shared.parallel.seeding import seed_everything
from shared.parallel.topology import build_topology
from shared.train import StepOutput, Task, entry_point, fit, log0, parse_args, start
from shared.train.config import ConfigError

from .boxes import sym_rotations
from .config import PRESETS, Config
from .data import SceneList, augment_angle, build_data, collate, make_targets, rotate_scene, voxelize
from .detect import DetectConfig, accepted, candidates, detect, finish, vote_maps
from .losses import detection_loss
from .metrics import Detection, SceneBoxes, evaluate_detections
from .models.detector import Detector, predict
from .models.sparse import SparseBatchNorm, SparseTensor
from .parallel import gather_detections, grad_plans, shard

IOUS = (0.25, 0.5)


def model_classes(cfg: Config, classes) -> tuple[tuple[str, ...], torch.Tensor | None]:
    """The classes the model predicts, and the map dataset class -> model class (-1 = none)."""
    if cfg.head != "separate":
        return tuple(classes), None
    if cfg.category not in classes:
        raise ConfigError(f"--category {cfg.category!r} is not a class of this dataset; choose "
                          f"one of: {', '.join(classes)}")
    k = list(classes).index(cfg.category)
    return (cfg.category,), torch.tensor([0 if i == k else -1 for i in range(len(classes))])


def build_model(cfg: Config, num_classes: int) -> Detector:
    return Detector(cfg.backbone, 3, cfg.head_name(), num_classes, cfg.heading_bins,
                    cfg.bn_momentum)


def to_sparse(sample_or_batch, device) -> SparseTensor:
    coords = sample_or_batch.coords
    if coords.shape[1] == 3:                                       # one scene: batch index 0
        coords = torch.cat([torch.zeros(len(coords), 1, dtype=torch.long), coords], 1)
    return SparseTensor(sample_or_batch.feats.to(device), coords.to(device))


VOTE_THRESHOLDS = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
LCC_ERRORS = (0.3, 0.5, 0.8, 1.2, None)          # None: no LCC check


class Evaluator:
    """Validation: detections and per-class AP of a model on the validation scenes."""

    def __init__(self, cfg: Config, model: Detector, val_scenes, classes, dataset_classes,
                 device, data_group=None):
        self.cfg, self.model, self.val_scenes = cfg, model, val_scenes
        self.classes, self.dataset_classes = classes, dataset_classes
        self.device, self.data_group = device, data_group
        self.detect_cfg = cfg.detect_config()
        n = len(val_scenes)
        self.n_eval = min(n, cfg.eval_scenes) if cfg.eval_scenes else n
        self._cache = {} if isinstance(val_scenes, SceneList) else None

    def sample(self, i: int):
        if self._cache is not None and i in self._cache:
            return self._cache[i]
        s = voxelize(self.val_scenes.raw(i), self.cfg.voxel_size)
        if self._cache is not None:
            self._cache[i] = s
        return s

    def ground_truth(self, sample) -> SceneBoxes:
        names = [self.dataset_classes[l] for l in sample.box_labels.tolist()]
        keep = [j for j, n in enumerate(names) if n in self.classes]
        return SceneBoxes(sample.boxes.double().numpy()[keep], [names[j] for j in keep])

    @torch.no_grad()
    def predict(self, sample):
        was = self.model.training
        self.model.eval()
        out = self.model(to_sparse(sample, self.device))
        self.model.train(was)
        return predict(out, sample.positions.to(self.device), self.cfg.head_name())

    def detections(self, i: int) -> list[Detection]:
        return detect(self.predict(self.sample(i)), self.classes, self.detect_cfg)

    def centre_error(self, sample, pred) -> tuple[float, int]:
        """Sum over the object voxels of the distance (m) between the true centre and the centre
        the voxel's prediction implies: ``p + offset`` (regression), or ``p - R_y(yaw)(lcc * h)``
        at the true yaw (canonical voting: the vote of the right yaw; the best of the object's
        symmetric yaws), and the voxel count."""
        t = make_targets(collate([sample]), len(self.dataset_classes))
        keep = t.obj & torch.tensor([self.dataset_classes[l] in self.classes
                                     for l in t.label.clamp_max(len(self.dataset_classes) - 1)
                                     .tolist()], dtype=torch.bool)
        if not keep.any():
            return 0.0, 0
        idx = keep.nonzero().squeeze(1)
        p = sample.positions[idx]
        centre = p + t.offset[idx]
        if pred.offset is not None:
            err = torch.linalg.vector_norm(p + pred.offset[idx].cpu() - centre, dim=1)
        else:
            angles, valid = sym_rotations(t.sym[idx])
            yaw = t.yaw[idx, None] + angles                                        # (M, J)
            local = (pred.lcc[idx] * pred.scale[idx]).cpu()
            R = yaw_rotation(yaw)                                                  # (M, J, 3, 3)
            implied = p[:, None] - (R @ local[:, None, :, None]).squeeze(-1)
            err = torch.linalg.vector_norm(implied - centre[:, None], dim=-1)
            err = err.masked_fill(~valid, float("inf")).min(1).values
        return float(err.sum()), len(idx)

    def evaluate(self) -> dict:
        local = {}
        for i in shard(self.n_eval, self.data_group):
            sample = self.sample(i)
            pred = self.predict(sample)
            dets = detect(pred, self.classes, self.detect_cfg)
            local[i] = ([(d.box, d.label, d.score) for d in dets], self.centre_error(sample, pred))
        every = gather_detections(local, self.data_group)
        dets = [[Detection(*d) for d in every[i][0]] for i in range(self.n_eval)]
        gts = [self.ground_truth(self.sample(i)) for i in range(self.n_eval)]
        res = evaluate_detections(dets, gts, self.classes, IOUS)
        err = sum(every[i][1][0] for i in range(self.n_eval))
        count = sum(every[i][1][1] for i in range(self.n_eval))
        metrics = {"map25": res["map"][0.25], "map50": res["map"][0.5],
                   "detections": sum(len(d) for d in dets),
                   "centre_err": err / count if count else float("nan")}
        for thr, tag in zip(IOUS, ("ap25", "ap50")):        # dicts: in metrics.jsonl, not plotted
            metrics[tag] = {c: v for c, v in res["ap"][thr].items() if res["gt_count"][c]}
        return metrics

    def calibrate(self, train_scenes, count: int) -> dict:
        """Inference thresholds chosen on training rooms, by one rule for every method (the paper
        chose its thresholds by cross-validation on training data): the vote threshold (and, for
        canonical voting, the LCC-check threshold, or no check) maximising mAP@0.25 on the first
        ``count`` training scenes, without augmentation. The peaks are extracted once per scene
        at the lowest threshold (:func:`canonical_voting.detect.candidates`) and each setting
        only filters them; a tie keeps the earlier grid entry. Returns the choice; ``use`` sets
        it."""
        samples = [voxelize(train_scenes.raw(i), self.cfg.voxel_size)
                   for i in range(min(count, len(train_scenes)))]
        low = dataclasses.replace(self.detect_cfg, vote_threshold=min(VOTE_THRESHOLDS))
        cached = []
        for s in samples:
            pred = self.predict(s)
            cached.append((candidates(vote_maps(pred, low), pred, low), self.ground_truth(s)))
        errors = LCC_ERRORS if self.cfg.method == "canonical" else (None,)
        best = None
        for v in VOTE_THRESHOLDS:
            for e in errors:
                dc = self.thresholds(v, e)
                dets = [finish([(c.box, c.label, c.score) for c in cands if accepted(c, dc)],
                               self.classes, dc) for cands, _ in cached]
                m = evaluate_detections(dets, [g for _, g in cached], self.classes,
                                        (0.25,))["map"][0.25]
                m = 0.0 if m != m else m
                if best is None or m > best[0] + 1e-12:
                    best = (m, v, e)
        return {"vote_threshold": best[1], "lcc_error": best[2], "train_map25": best[0],
                "scenes": len(samples)}

    def thresholds(self, vote_threshold: float, lcc_error: float | None) -> DetectConfig:
        """The detection settings with these thresholds (``lcc_error`` None: no LCC check)."""
        return dataclasses.replace(self.detect_cfg, vote_threshold=vote_threshold,
                                   lcc_check=lcc_error is not None,
                                   lcc_error=self.detect_cfg.lcc_error if lcc_error is None
                                   else lcc_error)

    def picture(self, path, index: int = 0) -> Path:
        """PNG of one validation scene: points coloured by predicted class (grey: weight <= 0.5),
        ground-truth boxes black, the highest-scoring detections (at most twice as many as
        ground-truth boxes) magenta."""
        from shared.pointcloud.render import box_edges, render_points
        sample = self.sample(index)
        pred = self.predict(sample)
        dets = detect(pred, self.classes, self.detect_cfg)
        gt = self.ground_truth(sample)
        labels = torch.where(pred.weight > 0.5, pred.label, -1).cpu().numpy()
        segs, colours = [], []
        for b in gt.boxes:
            segs.append(box_edges(b[:3], b[3:6], b[6]))
            colours += ["black"] * 12
        shown = sorted(dets, key=lambda d: -d.score)[:max(2 * len(gt.boxes), 1)]
        for d in shown:
            segs.append(box_edges(d.box[:3], d.box[3:6], d.box[6]))
            colours += ["magenta"] * 12
        title = (f"{sample.name}: {len(gt.boxes)} ground-truth boxes (black), the top "
                 f"{len(shown)} of {len(dets)} detections (magenta); {self.cfg.method} voting")
        return render_points(sample.positions.numpy(), path, labels=labels,
                             label_names=list(self.classes),
                             segments=np.concatenate(segs) if segs else None,
                             segment_colors=colours or None, title=title, view=(45, -60),
                             size=(1000, 800), point_size=2.0)


class CanonicalVotingTask(Task):
    """The paper's model, data and step for :func:`shared.train.fit`."""
    best = {"best_map25": "map25"}
    paper = "canonical_voting"
    unit = "scenes"

    def __init__(self, cfg: Config, env):
        self.cfg, self.env = cfg, env
        self.topo = build_topology("data")
        self.data_group = self.topo["data"]
        world = env.world_size
        if cfg.batch_size % world:
            raise ConfigError(f"--batch_size {cfg.batch_size} is not divisible by the {world} "
                              f"processes (each trains on its share); use a multiple of {world}")
        seed_everything(cfg.seed)
        self.train_scenes, self.val_scenes, dataset_classes = build_data(cfg)
        if len(self.train_scenes) < cfg.batch_size:
            raise ConfigError(f"--batch_size {cfg.batch_size} is larger than the "
                              f"{len(self.train_scenes)} training scenes; lower it")
        self.classes, self.class_map = model_classes(cfg, dataset_classes)
        self.model = build_model(cfg, len(self.classes)).to(env.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr,
                                          weight_decay=cfg.weight_decay)
        self.evaluator = Evaluator(cfg, self.model, self.val_scenes, self.classes,
                                   dataset_classes, env.device, self.data_group)
        seed_everything(cfg.seed + 1000 * env.rank)

    def grad_plans(self):
        return grad_plans(self.model, self.data_group)

    # ---- data and step
    def batches(self, start_step: int):
        cfg, env = self.cfg, self.env
        sampler = EpochSampler(len(self.train_scenes), cfg.batch_size, seed=cfg.seed,
                               rank=env.rank, world=env.world_size).seek(start_step)
        return self._batches(sampler, start_step)

    def _batches(self, sampler, step: int):
        cfg = self.cfg
        for idx in sampler:
            samples = []
            for j, i in enumerate(idx.tolist()):
                # augmentation drawn from (seed, step, rank, slot): resumable without RNG state
                rng = np.random.default_rng([cfg.seed, step, self.env.rank, j])
                raw = self.train_scenes.raw(i)
                if cfg.augment:
                    raw = rotate_scene(raw, augment_angle(rng))
                samples.append(voxelize(raw, cfg.voxel_size, rng))
            yield collate(samples).to(self.env.device)
            step += 1

    def schedule(self, step: int) -> None:
        """The paper's lr drops (x0.1 after each fraction in --lr_drops) on top of the core's
        schedule, and its BN momentum decay, as functions of the step."""
        cfg = self.cfg
        factor = 0.1 ** sum(step >= f * cfg.steps for f in cfg.lr_drops)
        if factor != 1.0:
            for g in self.optimizer.param_groups:
                g["lr"] *= factor
        every = cfg.bn_decay_every * cfg.steps
        halvings = math.floor(step / every) if every > 0 else 0
        momentum = max(cfg.bn_momentum_min, cfg.bn_momentum * 0.5 ** halvings)
        for m in self.model.modules():
            if isinstance(m, SparseBatchNorm):
                m.momentum = momentum

    def step(self, batch, step: int) -> StepOutput:
        self.schedule(step)
        out = self.model(SparseTensor(batch.feats, batch.coords))
        targets = make_targets(batch, len(self.classes), self.class_map)
        loss, metrics = detection_loss(out, targets, self.cfg.head_name(), self.cfg.sym_loss)
        return StepOutput(loss, metrics, items=self.cfg.batch_size)

    def evaluate(self) -> dict:
        return self.evaluator.evaluate()

    def describe(self) -> str:
        n = sum(p.numel() for p in self.model.parameters())
        return (f"{self.cfg.method} ({self.cfg.head_name()} head, {self.cfg.backbone}): "
                f"{n / 1e6:.3f}M parameters, {len(self.train_scenes)} train / "
                f"{len(self.val_scenes)} val scenes, classes {', '.join(self.classes)}")


@entry_point
def main(argv=None) -> dict:
    cfg = parse_args(Config, PRESETS, argv, paper="canonical_voting")
    env = start(cfg)
    task = CanonicalVotingTask(cfg, env)
    summary = fit(cfg, task)
    if "map25" not in summary:
        log0(f"stopped at step {summary['step']} of {summary['steps']} after "
             f"{summary['seconds']:.0f} s; continue with --resume {summary['run_dir']}")
        return summary
    ev, run_dir = task.evaluator, Path(summary["run_dir"])
    chosen = ""
    if cfg.calibrate_scenes:
        # the paper's thresholds suit networks trained 160 epochs on ScanNet; also report the
        # thresholds chosen on training rooms (the same rule for every method)
        choice = ev.calibrate(task.train_scenes, cfg.calibrate_scenes)
        ev.detect_cfg = ev.thresholds(choice["vote_threshold"], choice["lcc_error"])
        tuned = ev.evaluate()
        summary.update(cal_map25=tuned["map25"], cal_map50=tuned["map50"],
                       cal_ap25=tuned["ap25"], cal_ap50=tuned["ap50"],
                       cal_vote_threshold=choice["vote_threshold"],
                       cal_lcc_error="off" if choice["lcc_error"] is None else choice["lcc_error"])
        if env.rank == 0:
            (run_dir / "calibrated.json").write_text(json.dumps(
                {"chosen on training rooms": choice, "map25": tuned["map25"],
                 "map50": tuned["map50"], "ap25": tuned["ap25"], "ap50": tuned["ap50"]},
                indent=2) + "\n")
        chosen = (f"; with thresholds chosen on {choice['scenes']} training rooms (votes "
                  f"{choice['vote_threshold']:g}, LCC error {summary['cal_lcc_error']}): mAP@0.25 "
                  f"{100 * tuned['map25']:.1f}, mAP@0.5 {100 * tuned['map50']:.1f}")
    if env.rank == 0 and cfg.picture:
        summary["picture"] = str(ev.picture(run_dir / "detections.png"))
    log0(f"{cfg.method} ({cfg.head_name()}): mAP@0.25 {100 * summary['map25']:.1f}, mAP@0.5 "
         f"{100 * summary['map50']:.1f} with the paper's thresholds{chosen}; "
         f"{ev.n_eval} validation scenes, {summary['step']} steps in {summary['seconds']:.0f} s; "
         f"detections {summary.get('picture', '-')}; run dir {run_dir}")
    return summary


if __name__ == "__main__":
    main()
