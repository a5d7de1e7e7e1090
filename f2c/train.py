"""Train face recognition with F2C's Dynamic Class Pool, or with the full FC / Partial FC
baselines, on the shared training core.

    python -m f2c.train                                   # F2C, tiny, generated data, CPU
    python -m f2c.train --preset tiny_fc                  # the full-FC baseline, same recipe
    python -m f2c.train --resume runs/f2c/<run>           # continue a run, its config
    torchrun --standalone --nproc-per-node 8 -m f2c.train --preset ms1mv2_f2c \\
        --data /data/faces_emore                          # MS1MV2 (insightface RecordIO)

The F2C step (official ``FFC.forward``, ../shared/papers/f2c.md Sec. 2), on each rank with its
views ``x`` and ``y`` (identity-loader pairs split over the two, instances halved):

1. EMA update of the gallery net (once per step, before any gallery forward);
2. trial pass: probe = x, gallery = y; the gallery features of all ranks are all-gathered in
   rank order and inserted into the pool; loss, backward; the pool edits are undone;
3. committed pass: probe = y, gallery = x; loss, backward; the pool keeps these edits.

The loss of the step is the sum of the two passes (each ``h(cos1) + h(cos2)``, see
``f2c.models.f2c``). Each pass runs its own backward (the pool is restored in place between
them, so its tensors cannot wait for a joint backward); the gradients add up as the official
joint backward. The training core then averages the P-Net gradients over the ranks, steps the
optimizer, logs and checkpoints (the pool and its LRU inside the model's state dict).

FC / Partial FC: the backbone embeds ``batch_size`` instances, the sharded head computes the
margin softmax over the global batch (``f2c.parallel_fc``).
"""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

from shared.parallel.seeding import seed_everything
from shared.parallel.topology import build_topology
from shared.train import StepOutput, Task, entry_point, fit, log0, parse_args, start
from shared.train.config import ConfigError

from .config import PRESETS, Config
from .data import build_train_set, build_val_sets, f2c_indices, flip_, flip_mask, instance_indices
from .models import F2C, FaceClassifier, MarginFC, PartialFC, create_backbone
from .parallel import broadcast_buffers, gather_gallery, grad_plans, parallelize
from .verification import verify


class StepImages(Dataset):
    """``(step, (indices, ...)) -> ([images, ...], [labels, ...])``: one step's images of this
    rank, each flipped with probability 0.5 from a ``(seed, step, rank)`` stream (the same
    images whether they are decoded here or in a worker process)."""

    def __init__(self, faces, seed: int, rank: int):
        self.faces, self.seed, self.rank = faces, seed, rank

    def __getitem__(self, item):
        step, parts = item
        images = [flip_(self.faces.load(idx),
                        flip_mask(len(idx), self.seed + salt, step, self.rank))
                  for salt, idx in enumerate(parts)]
        return images, [self.faces.label_of(idx) for idx in parts]


def build_model(cfg: Config, num_classes: int, group, device) -> torch.nn.Module:
    """The P-Net backbone with the method's classifier: F2C's pool and gallery net, or the FC /
    Partial FC head sharded over ``group`` (the full centre matrix is never built)."""
    backbone = create_backbone(cfg.backbone, cfg.img_size, cfg.embedding_size).to(device)
    if cfg.method == "f2c":
        return F2C(backbone, cfg.pool_size, cfg.scale, cfg.margin, cfg.margin_type, cfg.ema,
                   cfg.arc_guard, cfg.mask_empty, seed=cfg.seed)
    kw = dict(scale=cfg.scale, margin=cfg.margin, margin_type=cfg.margin_type,
              arc_guard=cfg.arc_guard, seed=cfg.seed, device="meta")
    dim = backbone.embedding_size
    head = (PartialFC(num_classes, dim, cfg.sample_rate, **kw) if cfg.method == "pfc"
            else MarginFC(num_classes, dim, **kw))
    return parallelize(FaceClassifier(backbone, head), group, device)


def check_sizes(cfg: Config, world: int, num_images: int, num_classes: int) -> None:
    """Sizes that depend on the number of processes and the data (one-line errors)."""
    if cfg.method == "f2c":
        n_id, n_inst = cfg.views()
        if n_id % world or n_inst % (2 * world):
            raise ConfigError(f"--batch_size {cfg.batch_size} gives {n_id} identities and "
                              f"{n_inst} instances per step; over {world} processes each needs "
                              f"a whole share (identities divisible by {world}, instances by "
                              f"{2 * world}); use a batch size that is a multiple of {6 * world}")
        if n_id > num_classes or n_inst > num_images:
            raise ConfigError(f"a step draws {n_id} identities and {n_inst} instances, but the "
                              f"data has {num_classes} identities and {num_images} images; "
                              f"lower --batch_size")
    else:
        if cfg.batch_size % world:
            raise ConfigError(f"--batch_size {cfg.batch_size} is not divisible by the {world} "
                              f"processes; use a multiple of {world}")
        if cfg.batch_size > num_images:
            raise ConfigError(f"--batch_size {cfg.batch_size} is larger than the {num_images} "
                              f"training images; lower it")
        if num_classes < world:
            raise ConfigError(f"{num_classes} classes cannot be sharded over {world} processes")


class FaceTask(Task):
    """F2C, full FC or Partial FC for :func:`shared.train.fit`."""
    paper = "f2c"
    unit = "img"

    def __init__(self, cfg: Config, env):
        self.cfg, self.env = cfg, env
        self.topo = build_topology("data")
        self.data_group = self.topo["data"]
        world = env.world_size
        seed_everything(cfg.seed)
        self.train_set = build_train_set(cfg)
        self.val_sets = build_val_sets(cfg)
        self.num_classes = self.train_set.num_classes
        check_sizes(cfg, world, len(self.train_set), self.num_classes)
        self.model = build_model(cfg, self.num_classes, self.data_group, env.device)
        self.checkpoint_per_rank = cfg.method != "f2c" and world > 1   # centre shards
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                                         nesterov=cfg.nesterov, weight_decay=cfg.weight_decay)
        self.n_params = sum(p.numel() for p in self.model.backbone.parameters())
        seed_everything(cfg.seed + 1000 * env.rank)

    # ---- parallel plans (f2c.parallel)
    def grad_plans(self):
        return grad_plans(self.model, self.data_group)

    # ---- data
    def batches(self, start_step: int):
        cfg, env = self.cfg, self.env
        if cfg.method == "f2c":
            n_id, n_inst = cfg.views()
            items = ((step, (x, y)) for step, x, y in f2c_indices(
                self.train_set, n_id, n_inst, cfg.seed, env.rank, env.world_size, start_step))
        else:
            items = ((step, (i,)) for step, i in instance_indices(
                self.train_set, cfg.batch_size, cfg.seed, env.rank, env.world_size, start_step))
        loader = StepImages(self.train_set, cfg.seed, env.rank)
        if cfg.workers > 0:        # decoding in worker processes, in order, a few steps ahead
            stream = iter(DataLoader(loader, batch_size=None, sampler=items,
                                     num_workers=cfg.workers, persistent_workers=True))
        else:
            stream = map(loader.__getitem__, items)
        for images, labels in stream:
            images = [x.to(env.device, non_blocking=True) for x in images]
            labels = [y.to(env.device) for y in labels]
            yield (images[0], images[1], labels[0], labels[1]) if len(images) == 2 \
                else (images[0], labels[0])

    # ---- the step
    def _backward(self, loss: torch.Tensor) -> None:
        with torch.autocast(self.env.device.type, enabled=False):
            loss.backward()

    def _f2c_pass(self, probe, probe_labels, gallery, gallery_labels):
        model: F2C = self.model
        p = model.probe_features(probe)
        g, gl = gather_gallery(model.gallery_features(gallery), gallery_labels, self.data_group)
        loss, stats = model.pass_loss(p, probe_labels, g, gl.tolist())
        self._backward(loss)
        stats["unique"] = len(set(gl.tolist()))
        return loss.detach(), stats

    def step(self, batch, step: int) -> StepOutput:
        cfg, world = self.cfg, self.env.world_size
        if cfg.method != "f2c":
            x, labels = batch
            loss = self.model.loss(x, labels, step)
            return StepOutput(loss, {"loss": loss.detach()}, items=cfg.batch_size)
        x, y, lx, ly = batch
        model: F2C = self.model
        model.update_gallery()
        with model.pool.trial():
            l1, s1 = self._f2c_pass(x, lx, y, ly)
        l2, s2 = self._f2c_pass(y, ly, x, lx)
        out = s1["outliers"] + s2["outliers"]
        probes = s1["probes"] + s2["probes"]
        metrics = {"loss": l1 + l2, "ce": s1["ce"] + s2["ce"], "neg": s1["neg"] + s2["neg"],
                   "hit_rate": (probes - out, probes),
                   # (count, 1/world): summed over ranks, then divided by 1 = the job's count
                   "outliers": (out, 1.0 / world),
                   "unique_ids": (s1["unique"] + s2["unique"]) / 2,
                   "pool_used": model.pool.used / model.pool.size}
        return StepOutput(None, metrics, items=cfg.batch_size)

    # ---- evaluation: the probe net (all methods: the backbone), rank 0's BN statistics
    def evaluate(self) -> dict:
        broadcast_buffers(self.model.backbone, self.data_group)
        out = {}
        for pairs in self.val_sets:
            out.update(verify(self.model.backbone, pairs, self.cfg.eval_batch_size, self.env.device))
        return out

    def describe(self) -> str:
        cfg = self.cfg
        what = {"f2c": f"F2C, pool {cfg.pool_size}", "fc": "full FC",
                "pfc": f"Partial FC r={cfg.sample_rate}"}[cfg.method]
        return (f"{cfg.backbone} ({self.n_params / 1e6:.3f}M parameters), {what}; "
                f"{len(self.train_set)} images of {self.num_classes} identities")


def summary_line(summary: dict) -> str:
    """``lfw acc 99.1% (TAR@FAR=1e-4 ...)`` for every verification set of a summary."""
    parts = []
    for key in summary:
        if key.endswith("_acc") and not key.startswith("last_"):
            name = key[:-4]
            tar = [f"TAR@FAR={k.split('far')[1]} {100 * summary[k]:.2f}%"
                   for k in summary if k.startswith(f"{name}_tar@far")
                   and summary[k] == summary[k]]
            parts.append(f"{name} verification accuracy {100 * summary[key]:.2f}% "
                         f"(+-{100 * summary[name + '_acc_std']:.2f})"
                         + (f", {', '.join(tar)}" if tar else ""))
    return "; ".join(parts)


@entry_point
def main(argv=None) -> dict:
    cfg = parse_args(Config, PRESETS, argv, paper="f2c")
    env = start(cfg)
    task = FaceTask(cfg, env)
    summary = fit(cfg, task)
    summary.update(method=cfg.method, params=task.n_params)
    if summary.get("stopped") is None and summary["step"] == cfg.steps:
        log0(f"{cfg.method} ({cfg.backbone}): {summary_line(summary)}; {summary['step']} "
             f"steps in {summary['seconds']:.0f} s; run dir {summary['run_dir']}")
    else:
        log0(f"{cfg.method}: stopped at step {summary['step']} of {cfg.steps} after "
             f"{summary['seconds']:.0f} s; continue with --resume {summary['run_dir']}")
    return summary


if __name__ == "__main__":
    main()
