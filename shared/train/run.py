"""Run bookkeeping: rank-0 logging, a progress bar with throughput, and run directories that are
never silently reused.

A run directory holds ``config.json`` (the resolved config), ``metrics.jsonl`` (one JSON row per
logged step, ``step`` = optimizer steps completed), the checkpoint (``checkpoint.pt``, or
``checkpoint-rank<r>.pt`` per rank where each rank holds different state), ``curves.png`` and,
with ``--tensorboard``, TensorBoard event files.

* :meth:`RunDir.create` makes a new directory: ``--run NAME`` that already exists is refused
  (resume it or pick another name); the default timestamp name gets a ``-2``, ``-3`` suffix.
* :meth:`RunDir.reopen` continues one at a checkpoint's step: metric rows past that step (logged
  after the checkpoint by the interrupted run) are dropped, so the metrics never repeat a step.
"""
from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from pathlib import Path

from tqdm.auto import tqdm

from ..errors import UsageError
from ..parallel.dist import is_main_process
from .config import save_config

CHECKPOINT = "checkpoint.pt"


def get_logger(name: str = "papers") -> logging.Logger:
    """A logger that prints INFO on rank 0 and only warnings elsewhere (prefixed by the rank)."""
    import torch.distributed as dist

    logger = logging.getLogger(name)
    if not getattr(logger, "_papers_configured", False):
        handler = logging.StreamHandler(sys.stdout)
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        prefix = f"[rank {rank}] " if rank else ""
        handler.setFormatter(logging.Formatter(f"{prefix}%(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
        logger._papers_configured = True
    logger.setLevel(logging.INFO if is_main_process() else logging.WARNING)
    return logger


def log0(*parts) -> None:
    """print() on rank 0 only."""
    if is_main_process():
        print(*parts, flush=True)


class Progress:
    """A tqdm bar on rank 0 (silent elsewhere) that shows items per second.

    ``update(items=n, **postfix)`` advances one step, adds ``n`` processed items (images, tokens)
    to the throughput and shows the postfix values (floats are formatted compactly).
    """

    def __init__(self, total: int, desc: str = "train", unit_name: str = "items",
                 initial: int = 0, enabled: bool | None = None):
        enabled = is_main_process() if enabled is None else enabled
        self.bar = tqdm(total=total, desc=desc, initial=initial, unit="step", dynamic_ncols=True,
                        disable=not enabled, mininterval=0.5, file=sys.stdout)
        self.unit_name = unit_name
        self.items = 0
        self.start = time.perf_counter()

    def update(self, n: int = 1, items: int = 0, **postfix) -> None:
        self.items += items
        shown = {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in postfix.items()}
        if items:
            elapsed = max(time.perf_counter() - self.start, 1e-9)
            shown[f"{self.unit_name}/s"] = f"{self.items / elapsed:.4g}"
        if shown:
            self.bar.set_postfix(shown, refresh=False)
        self.bar.update(n)

    @property
    def throughput(self) -> float:
        return self.items / max(time.perf_counter() - self.start, 1e-9)

    def close(self) -> None:
        self.bar.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


class NonFiniteLoss(UsageError, FloatingPointError):
    """The loss became NaN or infinite."""


def check_finite(value: float, step: int, what: str = "loss") -> None:
    """Stop with one clear error on a NaN/inf loss instead of training on garbage."""
    if not math.isfinite(value):
        raise NonFiniteLoss(
            f"{what} became {value} at step {step}; lower the learning rate (--lr), enable "
            f"gradient clipping (--grad_clip 1), or resume from the last checkpoint (--resume)")


def _timestamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


def new_run_path(root, name: str = "") -> Path:
    """The directory of a new run under ``root``: ``root/name`` (refused when it exists), or a
    fresh timestamp (``-2``, ``-3`` … appended if taken). Pure: creates nothing."""
    root = Path(root)
    if name:
        if Path(name).name != name:
            raise UsageError(f"--run {name!r} must be a plain name (the directory is "
                             f"{root}/NAME); use --out_dir for another root")
        path = root / name
        if path.exists():
            raise UsageError(f"run directory {path} already exists; continue it with --resume "
                             f"{path}, or choose another --run name")
        return path
    stem = _timestamp()
    path, i = root / stem, 1
    while path.exists():
        i += 1
        path = root / f"{stem}-{i}"
    return path


class RunDir:
    """A run's directory; only rank 0 writes files (``is_main`` defaults to it)."""

    def __init__(self, path, is_main: bool | None = None):
        self.path = Path(path)
        self.is_main = is_main_process() if is_main is None else is_main
        self.start = time.perf_counter()
        self._tb = None

    # ---- creation
    @classmethod
    def create(cls, path, cfg=None, is_main: bool | None = None) -> "RunDir":
        """A new run at ``path`` (see :func:`new_run_path`): writes ``config.json``."""
        run = cls(path, is_main)
        if run.is_main:
            run.path.mkdir(parents=True, exist_ok=False)
            if cfg is not None:
                save_config(cfg, run.path / "config.json")
        return run

    @classmethod
    def reopen(cls, path, step: int, cfg=None, is_main: bool | None = None) -> "RunDir":
        """Continue the run at ``path`` from a checkpoint at ``step``: keeps the metric rows up to
        ``step`` and drops later ones; rewrites ``config.json`` with the resumed config."""
        run = cls(path, is_main)
        if run.is_main:
            if cfg is not None:
                save_config(cfg, run.path / "config.json")
            if run.metrics_path.exists():
                rows = [r for r in read_metrics(run.metrics_path) if r.get("step", 0) <= step]
                tmp = run.metrics_path.with_suffix(".jsonl.tmp")
                tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
                os.replace(tmp, run.metrics_path)
        return run

    # ---- files
    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def checkpoint_path(self) -> Path:
        return self.path / CHECKPOINT

    def rank_checkpoint_path(self, rank: int) -> Path:
        return self.path / f"checkpoint-rank{rank}.pt"

    def enable_tensorboard(self) -> None:
        """Write TensorBoard event files into the run directory from now on (rank 0)."""
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UsageError("--tensorboard needs the tensorboard package, which is not "
                             "installed; pip install tensorboard, or drop --tensorboard") from None
        if self.is_main:
            self._tb = SummaryWriter(log_dir=str(self.path))

    def log(self, step: int, **metrics) -> None:
        """Append one JSON row ``{"step", "time", **metrics}`` to ``metrics.jsonl`` (and the
        numeric values to TensorBoard when enabled)."""
        if not self.is_main:
            return
        row = {"step": step, "time": round(time.perf_counter() - self.start, 3)}
        row.update({k: (float(v) if hasattr(v, "item") else v) for k, v in metrics.items()})
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self._tb is not None:
            for k, v in row.items():
                if k not in ("step", "time") and isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, step)
            self._tb.flush()

    def plot(self, keys=None, out=None) -> Path | None:
        """Draw the metrics' curves against step into ``curves.png`` (rank 0 only)."""
        if not self.is_main or not self.metrics_path.exists():
            return None
        from .plot import plot_metrics
        rows = read_metrics(self.metrics_path)
        if keys is not None:
            keys = [k for k in keys if any(k in r for r in rows)]
        return plot_metrics(rows, out or self.path / "curves.png", keys=keys or None)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def elapsed(self) -> float:
        return time.perf_counter() - self.start


def checkpoint_files(run_dir) -> list[Path]:
    """The checkpoint of a run: ``[checkpoint.pt]``, or the per-rank files in rank order, or
    ``[]`` when it has none."""
    run_dir = Path(run_dir)
    if (run_dir / CHECKPOINT).is_file():
        return [run_dir / CHECKPOINT]
    ranked = list(run_dir.glob("checkpoint-rank*.pt"))
    return sorted(ranked, key=lambda p: int(p.stem.rsplit("rank", 1)[1]))


def _checkpoint_mtime(run_dir: Path) -> float | None:
    files = checkpoint_files(run_dir)
    return max(f.stat().st_mtime for f in files) if files else None


def run_mode(run_dir) -> str:
    """The ``mode`` a run was trained with (from its config.json; "" when it has none)."""
    path = Path(run_dir) / "config.json"
    try:
        return str(json.loads(path.read_text()).get("mode", "")) if path.is_file() else ""
    except (OSError, ValueError):
        return ""


def latest_run(root, mode: str = "") -> Path:
    """The run directory under ``root`` (e.g. ``runs/<paper>``) whose checkpoint is the newest,
    among the runs trained with ``--mode mode`` when ``mode`` is given; a clear error when there
    is none."""
    root = Path(root)
    found = [(t, d) for d in (root.iterdir() if root.is_dir() else ()) if d.is_dir()
             for t in [_checkpoint_mtime(d)] if t is not None and (not mode or run_mode(d) == mode)]
    if not found:
        of_mode = f" of --mode {mode}" if mode else ""
        make_mode = f" MODE={mode}" if mode else ""
        raise UsageError(f"no run{of_mode} with a checkpoint under {root}; train one first "
                         f"(make train-{root.name}{make_mode}) or pass --run PATH")
    return max(found, key=lambda x: x[0])[1]


def resolve_run(root, arg: str, mode: str = "") -> Path:
    """A ``--run``/``--resume`` argument as a run directory: a path, or a name under ``root``;
    ``""`` = the newest run under ``root`` (of ``mode``, when given). The directory must hold a
    checkpoint, and a named run given with ``mode`` must have been trained in that mode."""
    if not arg:
        return latest_run(root, mode)
    path = Path(arg)
    if not path.exists() and (Path(root) / arg).exists():
        path = Path(root) / arg
    if path.is_file():
        path = path.parent
    if not path.is_dir():
        raise UsageError(f"no run directory {arg} (looked in the current directory and in "
                         f"{root}); give a run's path or its name")
    if not checkpoint_files(path):
        raise UsageError(f"run {path} has no checkpoint (checkpoint.pt or checkpoint-rank*.pt); "
                         f"it may have stopped before its first save")
    if mode and run_mode(path) != mode:
        raise UsageError(f"run {path} was trained with --mode {run_mode(path) or '(none)'}, not "
                         f"{mode}; pass --run with a run of that mode, or drop --mode")
    return path


def read_metrics(path) -> list[dict]:
    """The rows of a ``metrics.jsonl`` file."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
