"""Run bookkeeping: rank-0 logging, a progress bar with throughput, a run directory holding the
resolved config, JSONL metrics, checkpoints and a PNG of the curves.

A training script does::

    run = RunDir("runs/widenet", cfg)                  # writes runs/widenet/<time>/config.json
    bar = Progress(cfg.steps, desc="train", unit_name="img")
    for step in ...:
        ...
        bar.update(items=batch_size, loss=loss.item())
        run.log(step, loss=loss.item(), lr=lr)          # one JSON line in metrics.jsonl
    run.save({"model": ..., ...})                       # atomic checkpoint.pt
    run.plot()                                          # curves.png
"""
from __future__ import annotations

import json
import logging
import math
import sys
import time
from pathlib import Path

from tqdm.auto import tqdm

from .checkpoint import save_checkpoint
from .config import save_config
from ..parallel.dist import is_main_process


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


def check_finite(value: float, step: int, what: str = "loss") -> None:
    """Stop with one clear error on a NaN/inf loss instead of training on garbage."""
    if not math.isfinite(value):
        raise FloatingPointError(
            f"{what} became {value} at step {step}; lower the learning rate, enable gradient "
            f"clipping, or resume from the last checkpoint")


class RunDir:
    """A run's directory: ``config.json``, ``metrics.jsonl``, ``checkpoint.pt``, ``curves.png``.

    Only rank 0 writes (``is_main`` defaults to it). ``path`` defaults to ``root/<timestamp>``.
    """

    def __init__(self, root, cfg=None, name: str | None = None, is_main: bool | None = None):
        self.is_main = is_main_process() if is_main is None else is_main
        name = name or time.strftime("%Y%m%d-%H%M%S")
        self.path = Path(root) / name
        self.start = time.perf_counter()
        if self.is_main:
            self.path.mkdir(parents=True, exist_ok=True)
            if cfg is not None:
                save_config(cfg, self.path / "config.json")

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def checkpoint_path(self) -> Path:
        return self.path / "checkpoint.pt"

    def log(self, step: int, **metrics) -> None:
        """Append one JSON line ``{"step", "time", **metrics}`` to ``metrics.jsonl``."""
        if not self.is_main:
            return
        row = {"step": step, "time": round(time.perf_counter() - self.start, 3)}
        row.update({k: (float(v) if hasattr(v, "item") else v) for k, v in metrics.items()})
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(row) + "\n")

    def save(self, state: dict, path=None) -> Path | None:
        """Atomic checkpoint (rank 0 only); returns the path written."""
        if not self.is_main:
            return None
        return save_checkpoint(state, path or self.checkpoint_path)

    def plot(self, keys=None, out=None) -> Path | None:
        """Draw the metrics' curves against step into ``curves.png`` (rank 0 only)."""
        if not self.is_main or not self.metrics_path.exists():
            return None
        from .plot import plot_metrics
        return plot_metrics(read_metrics(self.metrics_path), out or self.path / "curves.png", keys=keys)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start


def latest_run(root) -> Path:
    """The run directory under ``root`` (e.g. ``runs/<paper>``) whose ``checkpoint.pt`` is the
    newest; a clear error when there is none."""
    root = Path(root)
    found = sorted(root.glob("*/checkpoint.pt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(f"no run with a checkpoint under {root}; train one first "
                                f"(make train-{root.name}) or pass the run's path")
    return found[-1].parent


def read_metrics(path) -> list[dict]:
    """The rows of a ``metrics.jsonl`` file."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
