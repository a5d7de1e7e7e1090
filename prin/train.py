"""Train SPRIN, PRIN or the PointNet baseline for part segmentation or classification, on the
shared training core, and evaluate under both test rotation protocols (NR and AR).

    python -m prin.train                                  # SPRIN, generated shapes, CPU minutes
    python -m prin.train --model prin                     # PRIN at bandwidth 16 (preset tiny)
    make train-prin MODEL=prin                            # the same through make
    python -m prin.train --train_rotation ar              # protocol AR/* (train rotated)
    python -m prin.train --preset sprin_shapenet --data /path/shapenet_part_seg_hdf5_data
    torchrun --standalone --nproc-per-node 4 -m prin.train --preset prin_shapenet --data ...

The step: a global batch of shapes (``--batch_size``), a random subset of ``--points`` points per
shape, jitter, and under ``--train_rotation ar`` a uniform SO(3) rotation per shape;
cross-entropy over the parts (with the category one-hot as input) or the classes. Evaluation
(every ``--eval_every`` steps and at the end) scores the fixed test subsets unrotated (NR) and
with one fixed uniform rotation per shape (AR): instance/class mIoU from per-shape lists, or
accuracy. Data parallel under torchrun (:mod:`prin.parallel`); bf16 autocast on CUDA (the
spherical FFTs run in float32).
"""
from __future__ import annotations


import torch
import torch.nn.functional as F

from shared.data import EpochSampler
from shared.parallel.seeding import seed_everything
from shared.parallel.topology import build_topology
from shared.train import StepOutput, Task, entry_point, fit, log0, parse_args, start
from shared.train.cli import runs_root
from shared.train.config import ConfigError

from . import metrics
from .config import PRESETS, Config
from .data import PROTOCOLS, ShapeSet, build_datasets, make_batch, one_hot, test_batches
from .models import count_parameters, create_model
from .parallel import average_buffers, gather_lists, grad_plans

EVAL_SEED = 4242          # SPRIN's random dilation and FPS starts are seeded in evaluation


def build_model(cfg: Config, train: ShapeSet):
    """The config's model for its task and dataset."""
    try:
        return create_model(cfg.model, cfg.task, num_categories=train.num_categories,
                            num_parts=max(train.num_parts, 1), num_classes=train.num_categories,
                            bandwidth=cfg.bandwidth, prin_channels=cfg.prin_channels or None,
                            sprin_levels=cfg.sprin_levels, sprin_width=cfg.sprin_width,
                            sprin_k_scale=cfg.sprin_k_scale,
                            pointnet_widths=cfg.pointnet_widths or None)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def forward(model, batch: dict, data: ShapeSet, task: str, device):
    points = batch["points"].to(device)
    labels = batch["labels"].to(device)
    cat = one_hot(labels, data.num_categories) if task == "seg" else None
    return model(points, cat)


@torch.no_grad()
def evaluate(model, test: ShapeSet, cfg: Config, device, group=None, rank: int = 0,
             world: int = 1) -> dict:
    """Test metrics under both protocols: ``{nr,ar}_inst_miou``, ``{nr,ar}_cls_miou`` (seg) or
    ``{nr,ar}_acc`` (cls), plus the per-shape lists under ``"lists"``.

    The test shapes are cut into batches of ``eval_batch_size``; batch ``k`` is scored by rank
    ``k mod world`` with the torch RNG seeded ``EVAL_SEED + k`` (SPRIN's random dilation and FPS
    start), so every shape gets the same prediction on any number of processes; the per-shape
    lists are gathered (:func:`prin.parallel.gather_lists`) and the means taken over them."""
    was_training = model.training
    model.eval()
    n = min(len(test), cfg.eval_shapes) if cfg.eval_shapes else len(test)
    chunks = [list(range(s, min(s + cfg.eval_batch_size, n))) for s in range(0, n, cfg.eval_batch_size)]
    mine = list(range(rank, len(chunks), world))
    mask = test.part_mask() if cfg.task == "seg" else None
    out, lists = {}, {}
    for protocol in PROTOCOLS:
        rec = {"index": [], "label": [], "score": []}
        with torch.random.fork_rng(devices=[]):
            for k, batch in zip(mine, test_batches(test, cfg.points, protocol, [chunks[k] for k in mine])):
                torch.manual_seed(EVAL_SEED + k)
                logits = forward(model, batch, test, cfg.task, device).float()
                labels = batch["labels"]
                if cfg.task == "seg":
                    pred = metrics.restricted_argmax(logits.cpu(), labels, mask)
                    rec["score"] += metrics.shape_ious(pred, batch["parts"], labels, test.part_ranges)
                else:
                    rec["score"] += (logits.argmax(-1).cpu() == labels).double().tolist()
                rec["index"] += batch["index"].tolist()
                rec["label"] += labels.tolist()
        rec = gather_lists(rec, group)
        lists[protocol] = rec
        if cfg.task == "seg":
            inst, cls, _ = metrics.miou(rec["score"], rec["label"], test.num_categories)
            out.update({f"{protocol}_inst_miou": inst, f"{protocol}_cls_miou": cls})
        else:
            out[f"{protocol}_acc"] = float(sum(rec["score"]) / max(len(rec["score"]), 1))
    model.train(was_training)
    out["lists"] = lists
    return out


class PRINTask(Task):
    """Model, data and step of one (model, task, protocol) for :func:`shared.train.fit`."""
    paper = "prin"
    unit = "shapes"

    def __init__(self, cfg: Config, env):
        self.cfg, self.env = cfg, env
        self.topo = build_topology("data")
        self.data_group = self.topo["data"]
        if cfg.batch_size % env.world_size:
            raise ConfigError(f"--batch_size {cfg.batch_size} is not divisible by the "
                              f"{env.world_size} processes; use a multiple of {env.world_size}")
        self.train_set, self.test_set = build_datasets(cfg, runs_root(cfg, "prin") / "cache")
        if len(self.train_set) < cfg.batch_size:
            raise ConfigError(f"--batch_size {cfg.batch_size} is larger than the "
                              f"{len(self.train_set)} training shapes; lower it")
        if cfg.task == "seg" and self.train_set.parts is None:
            raise ConfigError("this dataset has no part labels; use --task cls")
        if cfg.model == "sprin" and cfg.points < cfg.sprin_levels[0]:
            raise ConfigError(f"--points {cfg.points} is below SPRIN's first level "
                              f"{cfg.sprin_levels[0]}")
        seed_everything(cfg.seed)                         # the same weights on every rank
        self.model = build_model(cfg, self.train_set).to(env.device)
        self.n_params = count_parameters(self.model)
        opt = torch.optim.RAdam if cfg.optimizer == "radam" else torch.optim.Adam
        self.optimizer = opt(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        seed_everything(cfg.seed + 1000 * env.rank)       # own points, jitter, rotations per rank
        self.last_eval: dict = {}

    def grad_plans(self):
        return grad_plans(self.model, self.data_group)

    def batches(self, start_step: int):
        cfg, env = self.cfg, self.env
        sampler = EpochSampler(len(self.train_set), cfg.batch_size, seed=cfg.seed,
                               rank=env.rank, world=env.world_size).seek(start_step)
        for idx in sampler:                                # lazily: draws after a resume's RNG restore
            yield make_batch(self.train_set, idx, cfg.points, cfg.train_rotation, cfg.jitter,
                             cfg.jitter_clip)

    def step(self, batch, step: int) -> StepOutput:
        cfg = self.cfg
        logits = forward(self.model, batch, self.train_set, cfg.task, self.env.device)
        if cfg.task == "seg":
            target = batch["parts"].to(self.env.device)
            loss = F.cross_entropy(logits.float().flatten(0, 1), target.flatten())
            correct = (logits.argmax(-1) == target).sum()
            count = target.numel()
        else:
            target = batch["labels"].to(self.env.device)
            loss = F.cross_entropy(logits.float(), target)
            correct, count = (logits.argmax(-1) == target).sum(), target.numel()
        return StepOutput(loss, {"loss": loss.detach(), "train_acc": (correct.item(), count)},
                          items=cfg.batch_size)

    def evaluate(self) -> dict:
        average_buffers(self.model, self.data_group)
        res = evaluate(self.model, self.test_set, self.cfg, self.env.device, self.data_group,
                       self.env.rank, self.env.world_size)
        self.last_eval = res
        return {k: v for k, v in res.items() if k != "lists"}

    def state_dict(self) -> dict:
        average_buffers(self.model, self.data_group)
        return super().state_dict()

    def describe(self) -> str:
        c = self.cfg
        extra = f", bandwidth {c.bandwidth}" if c.model == "prin" else ""
        return (f"{c.model} {c.task}{extra}: {self.n_params / 1e6:.3f}M parameters, "
                f"{len(self.train_set)} train / {len(self.test_set)} test shapes, "
                f"{c.points} points, train rotation {c.train_rotation.upper()}")


def summary_line(cfg: Config, s: dict) -> str:
    """``sprin seg trained NR: NR/NR inst 80.1 cls 78.2 | NR/AR inst ... ``"""
    tr = cfg.train_rotation.upper()
    parts = []
    for p in PROTOCOLS:
        key = f"{tr}/{p.upper()}"
        if cfg.task == "seg" and f"{p}_inst_miou" in s:
            parts.append(f"{key} inst mIoU {100 * s[f'{p}_inst_miou']:.2f}, "
                         f"cls mIoU {100 * s[f'{p}_cls_miou']:.2f}")
        elif f"{p}_acc" in s:
            parts.append(f"{key} acc {100 * s[f'{p}_acc']:.2f}%")
    return f"{cfg.model} {cfg.task}: " + " | ".join(parts)


@entry_point
def main(argv=None) -> dict:
    cfg = parse_args(Config, PRESETS, argv, paper="prin")
    env = start(cfg)
    task = PRINTask(cfg, env)
    summary = fit(cfg, task)
    summary.update(model=cfg.model, task=cfg.task, params=task.n_params,
                   lists=task.last_eval.get("lists"))
    if summary.get("stopped") or summary["step"] < cfg.steps:
        log0(f"{cfg.model}: stopped at step {summary['step']} of {cfg.steps}; continue with "
             f"--resume {summary['run_dir']}")
    else:
        log0(f"{summary_line(cfg, summary)}; {summary['step']} steps in "
             f"{summary['seconds']:.0f} s; run dir {summary['run_dir']}")
    return summary


if __name__ == "__main__":
    main()
