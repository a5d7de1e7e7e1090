"""The one training loop. A paper gives a :class:`Task` (its model, optimizer, data and step);
:func:`fit` owns everything else, the same way in every paper:

* the learning-rate schedule (``--schedule``, timm) as a function of the step;
* gradient synchronisation over the data group (and any other group the paper's
  ``parallel.py`` names) and clipping by the global norm over every shard and replica
  (:mod:`shared.train.gradients`), with ``--grad_clip 0`` meaning off;
* metrics that are global means over the data group, so a curve does not change with the number
  of processes; the NaN guard (before the update, so a checkpoint is never poisoned); the progress
  bar; ``metrics.jsonl``, ``curves.png`` and, with ``--tensorboard``, TensorBoard files;
* checkpoints every ``--ckpt_every`` steps and at the end (atomic; rank 0 writes one file for
  replicated state, or every rank its own ``checkpoint-rank<r>.pt``), holding the model, the
  optimizer, the step and every rank's RNG state; ``--resume`` continues bit-identically. A task
  whose model is sharded may return its tensors from ``Task.sharded_state_dict`` (DTensors):
  they are then written with ``torch.distributed.checkpoint`` into ``shards-step<N>-<tag>/``
  (every rank its own pieces, nothing gathered) and ``checkpoint.pt`` names that directory, so
  a run resumes under another layout or number of processes;
* SIGTERM / SIGINT: the job finishes the current step, writes a checkpoint and exits 0;
* bf16 autocast around the step (on CUDA by default, ``--amp`` on CPU).

Each step draws one global batch (``Task.batches(start_step)`` yields them from a given step, so
the data position is the step itself and needs no state of its own).
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch

from ..errors import UsageError
from ..parallel.comm import raw_all_gather_object, raw_all_reduce, raw_broadcast_object
from ..parallel.seeding import capture_rng_state, restore_rng_state, seed_everything
from ..parallel.topology import Group, world_group
from .checkpoint import (load_checkpoint, load_sharded, remove_shards, save_checkpoint,
                         save_sharded)
from .cli import runs_root
from .gradients import GradSync, NormPart, clip_gradients, replicated_plan, sync_gradients
from .run import Progress, RunDir, check_finite, checkpoint_files, log0, new_run_path
from .schedule import build_scheduler


@dataclass
class StepOutput:
    """What a paper's step returns.

    ``loss``: the tensor to differentiate (the core calls ``backward``); ``None`` when the step did
    its own backward passes. ``metrics``: values of this rank, each a float / 0-d tensor (averaged
    over the metric groups) or a ``(sum, count)`` pair (summed, then divided: an exact global
    ratio); must include ``"loss"``. ``items``: images or tokens the whole job processed.
    """
    loss: torch.Tensor | None
    metrics: dict = field(default_factory=dict)
    items: int = 0


class Task:
    """What a paper hands the core; override what differs from the defaults.

    Attributes set by the paper: ``paper`` (its package name), ``model``, ``optimizer``, ``env``
    (from :func:`shared.train.cli.start`), ``data_group`` (default: no data parallelism).
    """
    paper: str = "paper"
    unit: str = "items"
    checkpoint_per_rank: bool = False
    """True when ranks hold different state (expert or tensor shards saved as they are)"""

    best: dict[str, str] = {}
    """``{reported key: evaluation metric}``: the core reports, beside each evaluation, the best
    value so far of each such metric (higher is better), kept in the checkpoint across resume"""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    env = None
    data_group: Group | None = None

    # ---- parallel plans (shared.train.gradients); defaults: a replicated model
    def grad_plans(self) -> tuple[list[GradSync], list[NormPart]]:
        return replicated_plan(self.model.parameters(), self.data_group)

    def metric_groups(self) -> list[Group]:
        """Groups over which metrics are averaged (ranks that see different data)."""
        return [self.data_group] if self.data_group is not None else []

    # ---- data and step
    def batches(self, start_step: int) -> Iterator:
        raise NotImplementedError("a Task must yield its batches")

    def step(self, batch, step: int) -> StepOutput:
        raise NotImplementedError("a Task must define its step")

    def evaluate(self) -> dict:
        """Global evaluation metrics (the same on every rank); ``{}`` = none."""
        return {}

    # ---- sharded checkpoint content (torch.distributed.checkpoint); default: none
    def sharded_state_dict(self) -> dict | None:
        """``{key: tensor or DTensor}`` of this rank, written and read by
        ``torch.distributed.checkpoint`` (None: everything goes through :meth:`state_dict`).
        The tensors must be the live ones (or views of them): a resume loads into them in
        place, whatever layout wrote the checkpoint."""
        return None

    def load_sharded_state_dict(self, state: dict) -> None:
        """Called after ``state`` (from :meth:`sharded_state_dict`) was filled in place."""

    # ---- checkpoint content (collective where the model is sharded)
    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])

    def describe(self) -> str:
        n = sum(p.numel() for p in self.model.parameters())
        return f"{self.paper}: {n / 1e6:.3f}M parameters"


class StopRequest:
    """SIGTERM/SIGINT set a flag that the loop checks at each step boundary; a second SIGINT
    interrupts at once."""

    def __init__(self):
        self.signal_name = None
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. inside a test runner thread)
                pass
        return self

    def _handle(self, signum, frame):
        if self.signal_name is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False


def _autocast(cfg, device: torch.device):
    amp = getattr(cfg, "amp", None)
    on = device.type == "cuda" if amp is None else bool(amp)
    if not on:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def reduce_metrics(metrics: dict, groups: list[Group], device) -> dict:
    """Global values of a step's metrics (see :class:`StepOutput`), in one all-reduce."""
    names, slots, values = [], [], []
    for name, v in metrics.items():
        if isinstance(v, tuple):
            slots.append((name, len(values), True))
            values += [float(v[0]), float(v[1])]
        else:
            slots.append((name, len(values), False))
            values.append(float(v))
        names.append(name)
    if not values:
        return {}
    vec = torch.tensor(values, dtype=torch.float64, device=device)
    size = 1
    for g in groups:
        if g is not None and g.size > 1:
            vec = raw_all_reduce(vec, g)
            size *= g.size
    vec = vec.tolist()
    out = {}
    for name, i, ratio in slots:
        out[name] = vec[i] / max(vec[i + 1], 1e-300) if ratio else vec[i] / size
    return out


def _stop_everywhere(stop: StopRequest, world: Group, device) -> bool:
    flag = 1.0 if stop.signal_name else 0.0
    if world.size > 1:
        flag = raw_all_reduce(torch.tensor([flag], device=device), world).item()
    return flag > 0


def fit(cfg, task: Task) -> dict:
    """Train ``task`` as ``cfg`` says; returns the summary (final metrics, steps, run dir)."""
    env = task.env
    device = env.device
    world = world_group()
    root = runs_root(cfg, task.paper)

    # ---- the run directory and, on resume, the checkpoint
    state, start = None, 0
    if cfg.resume:
        run_path = Path(cfg.resume)          # resolved by shared.train.cli.parse_args
        files = checkpoint_files(run_path)
        if task.checkpoint_per_rank:
            if len(files) != world.size or files[0].name == "checkpoint.pt":
                raise UsageError(f"{run_path} holds {len(files)} checkpoint file(s) of a run whose "
                                 f"ranks each save their own state; resume it with "
                                 f"{len(files)} processes")
            state = load_checkpoint(files[world.rank], map_location=device)
        else:
            if not files or files[0].name != "checkpoint.pt":
                raise UsageError(f"{run_path} has no checkpoint.pt to resume from")
            state = load_checkpoint(files[0], map_location=device)
        if state.get("paper") != task.paper:
            raise UsageError(f"{run_path} is a checkpoint of {state.get('paper')!r}, not of "
                             f"{task.paper!r}; resume it with that paper's train")
        start = int(state["step"])
    else:
        path = new_run_path(root, cfg.run) if world.rank == 0 else None
        run_path = raw_broadcast_object(path, world)

    # batches first: creating an iterator may draw from the RNG that the checkpoint restores
    batches = task.batches(start)
    best = dict(state.get("best", {})) if state is not None else {}

    def evaluate() -> dict:
        metrics = task.evaluate()
        for key, source in task.best.items():
            if source in metrics:
                best[key] = max(best.get(key, -math.inf), metrics[source])
                metrics[key] = best[key]
        return metrics

    if state is not None:
        task.load_state_dict(state["task"])
        if state.get("shards"):
            dest = task.sharded_state_dict()
            if dest is None:
                raise UsageError(f"{run_path} holds a sharded checkpoint, which {task.paper} "
                                 f"cannot read")
            load_sharded(dest, run_path / state["shards"])
            task.load_sharded_state_dict(dest)
        rng = state["rng"]
        if isinstance(rng, list) and len(rng) == world.size:
            restore_rng_state(rng[world.rank])
        elif not isinstance(rng, list):
            restore_rng_state(rng)
        else:
            seed_everything(cfg.seed + 7919 * start + 104729 * world.rank)
            log0(f"note: the run was saved by {len(rng)} processes and continues on "
                 f"{world.size}: data order and the model are unchanged, random draws "
                 f"(dropout, augmentation) are re-seeded")
        run = RunDir.reopen(run_path, start, cfg)
        log0(f"resumed {run_path} at step {start}")
    else:
        run = RunDir.create(run_path, cfg)
    if cfg.tensorboard:
        run.enable_tensorboard()

    sync_plan, norm_plan = task.grad_plans()
    metric_groups = task.metric_groups()
    scheduler = build_scheduler(task.optimizer, cfg.schedule, cfg.steps, cfg.warmup_steps,
                                cfg.min_lr, cfg.poly_power)
    last = min(cfg.steps, cfg.stop_at) if cfg.stop_at else cfg.steps
    log0(f"{task.describe()}; world {world.size}, mode {cfg.mode}; steps {start}->{last} of "
         f"{cfg.steps}; run dir {run.path}")

    shards = [state.get("shards") if state is not None else None]   # the current shards dir

    def save(step: int) -> None:
        content = {"paper": task.paper, "step": step, "task": task.state_dict(),
                   "config": dataclasses.asdict(cfg), "world_size": world.size, "best": dict(best)}
        sharded = task.sharded_state_dict()
        if sharded is not None:
            content["shards"] = save_sharded(sharded, run.path, step, world, device)
        if task.checkpoint_per_rank:
            content["rng"] = capture_rng_state()
            save_checkpoint(content, run.rank_checkpoint_path(world.rank))
        else:
            content["rng"] = raw_all_gather_object(capture_rng_state(), world)
            if world.rank == 0:
                save_checkpoint(content, run.checkpoint_path)
        if world.size > 1:
            raw_all_reduce(torch.zeros(1, device=device), world)   # every file is written
        if sharded is not None:                # checkpoint.pt names the new shards: drop the old
            if world.rank == 0 and shards[0] and shards[0] != content["shards"]:
                remove_shards(run.path / shards[0])
            shards[0] = content["shards"]

    eval_metrics: dict = {}
    summary: dict = {"stopped": None}
    autocast = _autocast(cfg, device)
    bar = Progress(last, desc=task.paper, unit_name=task.unit, initial=start,
                   enabled=None if not cfg.quiet else False)
    t0 = time.perf_counter()
    step = start
    saved_at = start if state is not None else -1
    task.model.train()
    with StopRequest() as stop:
        while step < last:
            scheduler.step_update(step)
            batch = next(batches)
            task.optimizer.zero_grad(set_to_none=True)
            with autocast:
                out = task.step(batch, step)
            if out.loss is not None:
                out.loss.backward()
            sync_gradients(sync_plan)
            norm = clip_gradients(norm_plan, cfg.grad_clip)
            metrics = reduce_metrics(out.metrics, metric_groups, device)
            if "loss" not in metrics:
                raise RuntimeError(f"{task.paper}'s step must report a 'loss' metric")
            check_finite(metrics["loss"], step)
            task.optimizer.step()
            step += 1
            metrics.update(lr=task.optimizer.param_groups[0]["lr"], grad_norm=float(norm))
            bar.update(items=out.items, loss=metrics["loss"])
            if step % cfg.log_every == 0 or step == last:
                run.log(step, **metrics)
            if (cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.steps:
                eval_metrics = evaluate()
                task.model.train()
                if eval_metrics:
                    run.log(step, **eval_metrics)
            stopping = _stop_everywhere(stop, world, device)
            if (cfg.ckpt_every and step % cfg.ckpt_every == 0) or step == last or stopping:
                save(step)
                saved_at = step
            if stopping:
                summary["stopped"] = stop.signal_name or "signal on another rank"
                break
    bar.close()
    seconds = time.perf_counter() - t0
    if summary["stopped"] is None and saved_at != step:
        save(step)
    if not eval_metrics and step == cfg.steps:
        eval_metrics = evaluate()
    run.plot()
    run.close()
    summary.update(step=step, steps=cfg.steps, seconds=seconds, run_dir=str(run.path),
                   throughput=bar.throughput, **{f"last_{k}": v for k, v in
                                                 (metrics.items() if step > start else [])},
                   **eval_metrics)
    if summary["stopped"]:
        log0(f"stopped by {summary['stopped']} at step {step}; checkpoint saved; continue with "
             f"--resume {run.path}")
    return summary
