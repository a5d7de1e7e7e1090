"""Measurement: timers that synchronise CUDA, peak memory (RSS or the CUDA allocator), bytes
saved for backward, and a one-line description of the hardware.

Speed and memory targets are reported as ratios against a baseline measured in the same
process, so the numbers mean something on any machine; :func:`hardware_info` records which.
"""
from __future__ import annotations

import os
import platform
import statistics
import time

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


def rss_follows_tensors(threshold: int = 128 * 1024) -> bool:
    """Make this process's resident set follow its live allocations (call it first thing in a
    fresh process that measures :class:`PeakMemory` on CPU).

    glibc serves a large block with mmap and gives it back at free, but each such free raises its
    mmap threshold to that size (up to 32 MiB): later blocks of that size come from the heap and
    stay resident after they are freed, so the RSS then holds the largest transients a process
    ever freed, not its live tensors. Fixing the threshold (``mallopt(M_MMAP_THRESHOLD)``, which
    also turns the adjustment off) keeps every block above ``threshold`` bytes mmapped. Returns
    False where this is not glibc (nothing changed)."""
    import ctypes
    import ctypes.util
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    M_MMAP_THRESHOLD = -3
    return bool(mallopt(M_MMAP_THRESHOLD, int(threshold)))


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


