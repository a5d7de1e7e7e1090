"""The Dynamic Class Pool (DCP) of F2C: identity prototypes from the gallery net, kept LRU.

State (every rank holds the same; see ``f2c.parallel``):

* ``queue`` ``(2, Q, d)``: two feature slots per column, initialised uniform in [0, 1) and
  L2-normalised (the official code's init: every early prototype lies in the positive orthant);
* an LRU over identities: label -> column in ``[0, Q)``. A new label takes the next free column, or
  the least recently used one when the pool is full;
* a next-slot bit per column.

:meth:`DynamicClassPool.insert` writes a list of gallery features in order:

* label not in the pool: take a column (free or evicted), write slot 0, next slot = 1;
* label already in the pool (also from earlier in the same list): write the next slot, flip the
  bit, and mark the column in ``ones``;

so an identity's two most recent features sit in its two slots. Where one (slot, column) is
written twice in a list (an identity three times in one pass), the later feature wins, as a
sequential write. :meth:`DynamicClassPool.logits` returns the two logit sets of a pass: ``cos1``
against slot 0 and ``cos2`` against slot 1 for the columns in ``ones``, slot 0 elsewhere.

:meth:`DynamicClassPool.trial` records every edit (queue entries, slot bits, LRU moves,
insertions and evictions) and undoes them at the end of the block, exactly: F2C's first pass of a
step is such a trial.

The LRU is a doubly linked list over the columns (arrays of previous / next column, the head and
tail sentinels at ``Q`` and ``Q + 1``) plus a dict label -> column: every operation and its undo
is O(1), the pool costs O(Q) memory whatever the number of identities.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F


class DynamicClassPool(nn.Module):
    """``size`` columns of two ``dim``-d prototypes each (see the module docstring)."""

    def __init__(self, size: int, dim: int, seed: int = 0, device=None):
        super().__init__()
        if size < 1:
            raise ValueError(f"the pool needs at least one column; got {size}")
        self.size, self.dim = size, dim
        g = torch.Generator().manual_seed(seed * 7919 + 101)
        queue = F.normalize(torch.rand(2, size, dim, generator=g), dim=2)
        self.register_buffer("queue", queue.to(device))
        self._reset_lru()
        self._log: list | None = None

    # ---- the LRU ------------------------------------------------------------------------------
    def _reset_lru(self) -> None:
        Q = self.size
        self._head, self._tail = Q, Q + 1
        self._prev = [-1] * (Q + 2)
        self._next = [-1] * (Q + 2)
        self._next[self._head], self._prev[self._tail] = self._tail, self._head
        self._col: dict[int, int] = {}           # label -> column
        self._label = [-1] * Q                   # column -> label (-1: never used)
        self._slot = [0] * Q                     # column -> next slot to write
        self._used = 0                           # columns 0.._used-1 have been handed out

    def _unlink(self, c: int) -> None:
        p, n = self._prev[c], self._next[c]
        self._next[p], self._prev[n] = n, p

    def _link_after(self, c: int, p: int) -> None:
        n = self._next[p]
        self._prev[c], self._next[c] = p, n
        self._next[p], self._prev[n] = c, c

    def _touch(self, label: int) -> tuple[int, bool]:
        """Column of ``label``, made the most recent; inserts it (evicting) when absent."""
        c = self._col.get(label)
        if c is not None:
            if self._log is not None:
                self._log.append(("get", c, self._prev[c]))
            self._unlink(c)
            self._link_after(c, self._head)
            return c, True
        if self._used < self.size:
            c = self._used
            self._used += 1
            if self._log is not None:
                self._log.append(("add", c, -1))
        else:
            c = self._prev[self._tail]              # least recently used
            old = self._label[c]
            del self._col[old]
            self._unlink(c)
            if self._log is not None:
                self._log.append(("evict", c, old))
        self._col[label], self._label[c] = c, label
        self._link_after(c, self._head)
        return c, False

    def _undo(self, op: str, c: int, arg: int) -> None:
        self._unlink(c)                             # c is the most recent column
        if op == "get":
            self._link_after(c, arg)
            return
        del self._col[self._label[c]]
        if op == "add":
            self._label[c] = -1
            self._used -= 1
        else:                                       # evict: c was the least recent
            self._label[c] = arg
            self._col[arg] = c
            self._link_after(c, self._prev[self._tail])

    # ---- reading -----------------------------------------------------------------------------
    def lookup(self, labels) -> list[int]:
        """Column of each label, ``-1`` when it is not in the pool (the LRU order is untouched)."""
        return [self._col.get(int(l), -1) for l in labels]

    def order(self) -> list[int]:
        """Columns from the most to the least recently used."""
        out, c = [], self._next[self._head]
        while c != self._tail:
            out.append(c)
            c = self._next[c]
        return out

    def labels(self) -> list[int]:
        """Label of each column (``-1``: never used)."""
        return list(self._label)

    def slots(self) -> list[int]:
        return list(self._slot)

    @property
    def used(self) -> int:
        return self._used

    def valid(self) -> torch.Tensor:
        """``(Q,)`` bool: columns holding an identity."""
        v = torch.zeros(self.size, dtype=torch.bool)
        v[:self._used] = True
        return v.to(self.queue.device)

    # ---- writing -----------------------------------------------------------------------------
    @torch.no_grad()
    def insert(self, feats: torch.Tensor, labels) -> torch.Tensor:
        """Write ``feats`` (N, d), L2-normalised, under ``labels`` (N ints) in order; returns the
        ``ones`` mask ``(Q,)`` of the columns whose slot 1 is the second prototype of this pass."""
        labels = [int(l) for l in labels]
        if len(labels) != feats.shape[0]:
            raise ValueError(f"{feats.shape[0]} features but {len(labels)} labels")
        last: dict[tuple[int, int], int] = {}
        ones = []
        for i, label in enumerate(labels):
            c, present = self._touch(label)
            if self._log is not None:
                self._log.append(("slot", c, self._slot[c]))
            if present:
                row = self._slot[c]
                self._slot[c] = 1 - row
                ones.append(c)
            else:
                row = 0
                self._slot[c] = 1
            last[(row, c)] = i                      # a later write of (row, c) wins
        if last:
            dev = self.queue.device
            rc = torch.tensor(list(last.keys()), dtype=torch.long, device=dev)
            src = torch.tensor(list(last.values()), dtype=torch.long, device=dev)
            if self._log is not None:
                self._log.append(("queue", rc, self.queue[rc[:, 0], rc[:, 1]].clone()))
            self.queue[rc[:, 0], rc[:, 1]] = feats[src].to(self.queue.dtype)
        mask = torch.zeros(self.size, dtype=torch.bool)
        mask[ones] = True
        return mask.to(self.queue.device)

    def logits(self, p: torch.Tensor, ones: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``cos1 = p q0^T`` and ``cos2 = p W^T``, W = slot 1 on ``ones`` columns, slot 0 elsewhere
        (``p``: (B, d) normalised probe features; the pool is a constant)."""
        q0 = self.queue[0]
        w2 = torch.where(ones.unsqueeze(1), self.queue[1], q0)
        return F.linear(p, q0.to(p.dtype)), F.linear(p, w2.to(p.dtype))

    @contextlib.contextmanager
    def trial(self):
        """Edits inside the block are undone at its end (the trial pass of an F2C step)."""
        if self._log is not None:
            raise RuntimeError("DynamicClassPool.trial blocks cannot be nested")
        self._log = []
        try:
            yield self
        finally:
            log, self._log = self._log, None
            with torch.no_grad():
                for op, c, arg in reversed(log):
                    if op == "queue":
                        self.queue[c[:, 0], c[:, 1]] = arg
                    elif op == "slot":
                        self._slot[c] = arg
                    else:
                        self._undo(op, c, arg)

    # ---- checkpoint: the LRU travels inside the module's state dict ----------------------------
    def get_extra_state(self) -> dict:
        return {"labels": torch.tensor(self._label, dtype=torch.long),
                "order": torch.tensor(self.order(), dtype=torch.long),
                "slots": torch.tensor(self._slot, dtype=torch.uint8),
                "used": self._used}

    def set_extra_state(self, state: dict) -> None:
        labels = state["labels"].tolist()
        if len(labels) != self.size:
            raise ValueError(f"the saved pool has {len(labels)} columns, this one {self.size}")
        self._reset_lru()
        self._label = labels
        self._slot = [int(s) for s in state["slots"].tolist()]
        self._used = int(state["used"])
        self._col = {l: c for c, l in enumerate(labels) if l != -1}
        p = self._head
        for c in state["order"].tolist():
            self._link_after(c, p)
            p = c

    def extra_repr(self) -> str:
        return f"columns={self.size}, dim={self.dim}, used={self._used}"
