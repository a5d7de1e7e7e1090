"""Seeding and RNG state: one seed for a run, separate streams for sharded vs replicated work.

Model-parallel dropout needs two kinds of randomness (Megatron's "RNG tracker"):

* **replicated** activations (the same tensor on every rank of a tensor group, e.g. after a 1D
  row-parallel all-reduce) must draw the *same* mask on every rank: stream seeded with ``seed``;
* **sharded** activations (each rank holds a different slice) must draw *different* masks:
  stream seeded with ``seed + 1024 + grid_rank``.

Both are offset by ``1_000_003 · data_rank``, so data-parallel replicas draw different masks.

:class:`RNGStreams` keeps one ``torch.Generator`` state per stream (CPU and, when present, the
current CUDA device) and :meth:`RNGStreams.fork` swaps it in as the default generator for the
body of a ``with`` block, so unmodified ``nn.Dropout`` layers draw from the chosen stream.
"""
from __future__ import annotations

import contextlib
import random

import numpy as np
import torch

_SHARD_OFFSET = 1024
_DATA_OFFSET = 1_000_003


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def capture_rng_state() -> dict:
    """The state of every global RNG (Python, NumPy, torch CPU and CUDA), for checkpoints."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    """Inverse of :func:`capture_rng_state`."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class RNGStreams:
    """Named RNG streams that can be swapped in as torch's default generator.

    ``RNGStreams(seed, grid_rank, data_rank)`` creates ``"replicated"`` (same on the ranks of one
    model-parallel grid, differs across data-parallel replicas) and ``"sharded"`` (differs on
    every rank). ``add(name, seed)`` registers more. Use::

        streams = RNGStreams(cfg.seed, topo.grid_rank, topo.coords["data"])
        with streams.fork("sharded"):
            y = dropout(y)          # each rank gets its own mask
    """

    def __init__(self, seed: int, grid_rank: int = 0, data_rank: int = 0):
        self._states: dict[str, tuple] = {}
        base = seed + _DATA_OFFSET * data_rank
        self.add("replicated", base)
        self.add("sharded", base + _SHARD_OFFSET + grid_rank)

    def add(self, name: str, seed: int) -> None:
        with torch.random.fork_rng(devices=self._devices()):
            torch.manual_seed(seed)
            self._states[name] = self._get()

    @staticmethod
    def _devices():
        return [torch.cuda.current_device()] if torch.cuda.is_available() else []

    @staticmethod
    def _get():
        cuda = torch.cuda.get_rng_state() if torch.cuda.is_available() else None
        return torch.get_rng_state(), cuda

    @staticmethod
    def _set(state) -> None:
        cpu, cuda = state
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state(cuda)

    @contextlib.contextmanager
    def fork(self, name: str):
        """Run the block with stream ``name`` as the default generator; its advance is kept."""
        if name not in self._states:
            raise KeyError(f"no RNG stream {name!r}; streams: {', '.join(self._states)}")
        outer = self._get()
        self._set(self._states[name])
        try:
            yield
        finally:
            self._states[name] = self._get()
            self._set(outer)

    def state_dict(self) -> dict:
        return {k: v for k, v in self._states.items()}

    def load_state_dict(self, state: dict) -> None:
        self._states = dict(state)
