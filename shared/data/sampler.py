"""A deterministic, resumable batch sampler shared by every paper's training loop.

``EpochSampler`` draws index batches: epoch ``e`` is a permutation from ``seed + e``; each
global batch is cut into equal contiguous shares, one per data-parallel rank. Its position
(``epoch``, ``batch``) is part of a checkpoint, so a resumed run sees exactly the batches the
uninterrupted run would have seen.
"""
from __future__ import annotations

import torch


class EpochSampler:
    """Yields ``LongTensor`` index batches forever (``next()``), ``batch_size // world`` per rank.

    Args:
        n: dataset size.
        batch_size: global batch size (over all data-parallel ranks).
        seed: permutation seed; epoch ``e`` uses ``seed + e``.
        shuffle: permute each epoch (otherwise 0..n-1 in order).
        rank, world: this rank's index among the data-parallel ranks, and their number.
    Incomplete last batches are dropped (each epoch has ``n // batch_size`` batches).
    """

    def __init__(self, n: int, batch_size: int, seed: int = 0, shuffle: bool = True,
                 rank: int = 0, world: int = 1):
        if batch_size < 1 or n < batch_size:
            raise ValueError(f"need 1 <= batch_size <= dataset size; got batch_size={batch_size} "
                             f"for a dataset of {n} items")
        if batch_size % world:
            raise ValueError(f"global batch size {batch_size} is not divisible by the {world} "
                             f"data-parallel ranks; use a multiple of {world}")
        self.n, self.batch_size, self.seed, self.shuffle = n, batch_size, seed, shuffle
        self.rank, self.world = rank, world
        self.epoch, self.batch = 0, 0
        self._perm = None

    @property
    def batches_per_epoch(self) -> int:
        return self.n // self.batch_size

    def _permutation(self) -> torch.Tensor:
        if self._perm is None or self._perm[0] != self.epoch:
            if self.shuffle:
                g = torch.Generator().manual_seed(self.seed + self.epoch)
                perm = torch.randperm(self.n, generator=g)
            else:
                perm = torch.arange(self.n)
            self._perm = (self.epoch, perm)
        return self._perm[1]

    def __iter__(self):
        return self

    def __next__(self) -> torch.Tensor:
        if self.batch >= self.batches_per_epoch:
            self.epoch, self.batch = self.epoch + 1, 0
        start = self.batch * self.batch_size
        share = self.batch_size // self.world
        idx = self._permutation()[start + self.rank * share: start + (self.rank + 1) * share]
        self.batch += 1
        return idx

    def seek(self, batches: int) -> "EpochSampler":
        """Position the sampler after ``batches`` global batches from the start (the training
        core's data position is the step itself: one global batch per step)."""
        self.epoch, self.batch = divmod(batches, self.batches_per_epoch)
        self._perm = None
        return self

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batch": self.batch, "seed": self.seed, "n": self.n,
                "batch_size": self.batch_size}

    def load_state_dict(self, state: dict) -> None:
        if state["n"] != self.n or state["batch_size"] != self.batch_size:
            raise ValueError(
                f"sampler state is for {state['n']} items in batches of {state['batch_size']}, "
                f"but this run has {self.n} items in batches of {self.batch_size}; resume with "
                f"the same data and batch size")
        self.epoch, self.batch, self.seed = state["epoch"], state["batch"], state["seed"]
        self._perm = None
