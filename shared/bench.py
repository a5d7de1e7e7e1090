"""Benchmark helpers: timers that synchronise CUDA, peak memory, and paper-vs-ours tables.

Speed and memory targets are reported as ratios against a baseline measured in the same
process, so the numbers mean something on any machine; :func:`hardware_info` records which.
"""
from __future__ import annotations

import csv
import os
import platform
import re
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch


def _sync(device=None) -> None:
    if torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda"):
        torch.cuda.synchronize(device)


class Timer:
    """``with Timer() as t: ...``; ``t.seconds`` is wall time, CUDA work included (synchronised)."""

    def __init__(self, device=None):
        self.device = device

    def __enter__(self):
        _sync(self.device)
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        _sync(self.device)
        self.seconds = time.perf_counter() - self._t0
        return False


def time_fn(fn, warmup: int = 2, repeat: int = 5, device=None) -> dict:
    """Run ``fn()`` ``warmup`` times untimed then ``repeat`` times timed.

    Returns ``{"median", "min", "mean", "repeat"}`` in seconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        with Timer(device) as t:
            fn()
        times.append(t.seconds)
    return {"median": statistics.median(times), "min": min(times),
            "mean": statistics.fmean(times), "repeat": repeat}


def _rss_peak_kib() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _rss_now_kib() -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class PeakMemory:
    """Peak memory of the block: the CUDA allocator's peak on a GPU device, otherwise the
    process's peak resident set (Linux: VmHWM, reset through ``/proc/self/clear_refs``).

    ``bytes`` is the peak over the block; ``delta_bytes`` the peak above the start.
    On CPU the RSS also counts the Python heap and freed-but-cached pages, so compare
    ``delta_bytes`` of runs in the same process rather than absolute values.
    """

    def __init__(self, device="cpu"):
        self.device = torch.device(device)

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
        else:
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
            except OSError:
                pass
            self._start = (_rss_now_kib() or 0) * 1024
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.bytes = torch.cuda.max_memory_allocated(self.device)
        else:
            self.bytes = (_rss_peak_kib() or 0) * 1024
        self.delta_bytes = max(0, self.bytes - self._start)
        return False


class SavedTensorBytes:
    """Exact bytes autograd saves for backward inside the block.

    ``with SavedTensorBytes(model.parameters()) as saved: loss = model(x)``; then ``saved.bytes``
    is the size of the distinct storages packed by ``torch.autograd.graph.saved_tensors_hooks``,
    excluding the storages of ``params`` (weights are counted separately). Views of one storage
    count once.
    """

    def __init__(self, params=()):
        self._skip = {p.untyped_storage().data_ptr() for p in params}
        self._seen: dict[int, int] = {}

    @property
    def bytes(self) -> int:
        return sum(self._seen.values())

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key not in self._skip and key not in self._seen:
            self._seen[key] = storage.nbytes()
        return t

    def __enter__(self):
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self._hooks.__exit__(*exc)
        return False


@dataclass
class ResultsConfig:
    """Options shared by every paper's ``reproduce.py`` and ``bench.py`` (parsed with
    :func:`shared.config.parse_config`, so ``--smoke`` alone means true)."""
    smoke: bool = False
    """tiny sizes that run in seconds (what the tests run); never written into results/"""
    out: str = ""
    """output directory; "" = the paper's results/ (or runs/<paper>/smoke_results with --smoke)"""


def results_dir(results, out: str = "", smoke: bool = False) -> Path:
    """Where a reproduce/bench run writes its tables: ``out`` when given; otherwise the paper's
    committed ``results`` folder for full runs and ``<repo>/runs/<paper>/smoke_results`` for smoke
    runs, so smoke numbers never enter ``results/``."""
    if out:
        return Path(out)
    results = Path(results)
    if smoke:
        return results.parent.parent / "runs" / results.parent.name / "smoke_results"
    return results


def hardware_info() -> str:
    """One line: CPU model and cores, GPU (if any), torch and Python versions."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{cpu}, {os.cpu_count()} cores, {gpu}; torch {torch.__version__}, "
            f"Python {platform.python_version()}")


def _fmt(v) -> str:
    if isinstance(v, float):
        if v != v:
            return "n/a"
        return f"{v:.4g}" if abs(v) < 1e5 else f"{v:.3e}"
    return "" if v is None else str(v)


def copy_tables_to_readme(readme, results) -> list[str]:
    """Copy generated tables into a README, so that no result there is typed by hand.

    The text between each ``<!-- table:NAME -->`` and ``<!-- /table:NAME -->`` marker pair of
    ``readme`` is replaced by ``results/NAME.md`` without its ``# title`` line (the README gives
    each table its own heading). Returns the names copied; a marker whose table does not exist
    raises FileNotFoundError naming it.
    """
    readme, results = Path(readme), Path(results)
    text = readme.read_text()
    names = re.findall(r"<!-- table:([\w.-]+) -->", text)
    for name in names:
        md = results / f"{name}.md"
        if not md.is_file():
            raise FileNotFoundError(f"{readme} shows the table {name!r}, but {md} does not exist; "
                                    f"run the paper's reproduce and bench commands first")
        body = md.read_text().split("\n", 1)[1].strip()          # drop the '# title' line
        text = re.sub(rf"(<!-- table:{re.escape(name)} -->\n).*?(<!-- /table:{re.escape(name)} -->)",
                      lambda m: m.group(1) + body + "\n" + m.group(2), text, flags=re.S)
    readme.write_text(text)
    return names


def print_rows(title: str, rows: list[dict]) -> None:
    """Print a table's rows as ``key=value`` lines (floats to 4 significant digits)."""
    print(f"\n{title}:")
    for row in rows:
        print("  " + ", ".join(f"{k}={_fmt(v)}" for k, v in row.items()))


def write_table(stem, rows: list[dict], title: str, command: str | None = None,
                seed: int | None = None, notes: list[str] | tuple = (), columns=None) -> tuple[Path, Path]:
    """Write ``<stem>.csv`` and ``<stem>.md`` from a list of row dicts.

    The Markdown starts with the title, the command that produced it (default: this process's
    command line), the hardware, the seed and the notes (e.g. "paper: Table 3 of arXiv …;
    ours: scaled-down, tiny preset"). Paper columns must hold only numbers quoted from the paper.
    """
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    if columns is None:
        columns = []
        for row in rows:
            for k in row:
                if k not in columns:
                    columns.append(k)
    command = command or " ".join(getattr(sys, "orig_argv", sys.argv))
    csv_path = stem.with_suffix(".csv")
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        for row in rows:
            w.writerow({k: row.get(k, "") for k in columns})
    md = [f"# {title}", "", f"- command: `{command}`", f"- hardware: {hardware_info()}",
          f"- date: {time.strftime('%Y-%m-%d')}"]
    if seed is not None:
        md.append(f"- seed: {seed}")
    md += [f"- {n}" for n in notes]
    md += ["", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    md += ["| " + " | ".join(_fmt(row.get(k)) for k in columns) + " |" for row in rows]
    md_path = stem.with_suffix(".md")
    md_path.write_text("\n".join(md) + "\n")
    return csv_path, md_path
