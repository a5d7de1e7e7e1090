"""Sequence parallelism applied from outside to the serial BERT, composed with data parallelism.

Layout (``build_topology("seq", grid_size=N)``): the world is ``dp × N``; each sequence group of
N ranks holds the same samples, rank n the tokens ``[n·c, (n+1)·c)`` with ``c = L/N``; each
data-parallel group holds the ranks with the same n. Weights are replicated everywhere.

The distribution is a plan keyed by module name (:func:`sequence_parallel_plan`), applied with
:func:`shared.parallel.plan.apply_plan` to :class:`seqpar.models.bert.BertMLM`::

    "embed"         ChunkPositions: the local chunk's absolute positions n·c + arange(c)
    "layers.*.attn" RingAttention: Ring Self-Attention (:mod:`seqpar.parallel_rsa`) over the
                    sequence group, with the key padding mask over the full sequence

Every other module (LayerNorm, projections, MLP, dropout, the MLM head) runs locally on the chunk
with no communication. Both styles change the module in place, so parameter names and the state
dict stay those of the serial model (a checkpoint loads into either).

* Loss (:func:`mlm_loss`): each rank's sum of masked-token cross-entropy divided by the *global*
  count of masked tokens (every rank reads the whole global batch, so it knows that count with no
  communication). Summing the parameter gradients over the sequence group and over the data
  group (:meth:`SequenceParallelBert.grad_plans`: ``GradSync(..., average=False)``) then gives
  exactly the gradient of the true global mean (the reference sums per-rank means: N× the true
  loss). The reported loss is a ``(sum, count)`` pair, an exact global mean whatever the layout.
* Dropout draws from the "sharded" RNG stream: every rank holds different tokens.
  :meth:`SequenceParallelBert.reseed` seeds it from (seed, step, rank) at every training step, so
  a resumed run draws the same masks without any RNG state in the checkpoint.
"""
from __future__ import annotations

import functools
import hashlib

import torch
import torch.nn as nn

from shared.errors import UsageError
from shared.parallel.plan import apply_plan
from shared.parallel.seeding import RNGStreams
from shared.parallel.topology import Group, Topology
from shared.train.gradients import GradSync, NormPart

from .models.bert import BertMLM, mlm_loss_terms
from .parallel_rsa import (check_sequence_split, layout_positions, ring_self_attention,
                           to_layout)
from .parallel_ulysses import check_heads, ulysses_attention


# ----------------------------------------------------------------------------------------------
# the plan's styles: style(name, module) -> module (here: the same module, changed in place)


class ChunkPositions:
    """Style for the embedding: position ids of the local chunk become absolute: ``n·c + i``
    (contiguous layout) or the chunk's slots of :func:`layout_positions` (zigzag)."""

    def __init__(self, group: Group, layout: str = "contiguous"):
        self.group, self.layout = group, layout

    def __call__(self, name: str, module: nn.Module) -> nn.Module:
        old = getattr(module, "_chunk_positions", None)
        if old is not None:                            # applied again: the latest group wins
            old.remove()
        module._chunk_positions = module.register_forward_pre_hook(self._shift)
        return module

    def _shift(self, module, args):
        ids, positions = args                         # [B, c], [c]
        c, n = ids.shape[1], self.group.size
        if self.layout == "contiguous":
            positions = positions + self.group.rank * c
        else:
            rows = slice(self.group.rank * c, (self.group.rank + 1) * c)
            positions = layout_positions(c * n, n, self.layout, positions.device)[rows]
        limit, largest = module.position.num_embeddings, int(positions.max())
        if largest >= limit:
            raise UsageError(f"position {largest} exceeds the model's max_len {limit}; "
                             f"use a sequence of at most {limit} tokens (--seq_len)")
        return ids, positions


class RingAttention:
    """Style for an attention layer: its core becomes Ring Self-Attention over ``group``
    (``attention="ulysses"``: all-to-all over heads, :mod:`seqpar.parallel_ulysses`). Masks
    reach the core in layout order; the layout's positions give the causal order."""

    def __init__(self, group: Group, lean: bool = False, overlap: bool = True,
                 attention: str = "rsa", layout: str = "contiguous"):
        if attention == "ulysses":
            self.core = functools.partial(ulysses_attention, group=group)
        else:
            self.core = functools.partial(ring_self_attention, group=group, lean=lean,
                                          overlap=overlap)
        self.group, self.layout = group, layout

    def __call__(self, name: str, module: nn.Module) -> nn.Module:
        module.core = functools.partial(_core, self.core, self.group, self.layout)
        return module


def _core(core, group, layout, q, k, v, key_mask, dropout_p, causal=False):
    n = group.size
    positions = None if layout == "contiguous" else \
        layout_positions(q.shape[2] * n, n, layout, q.device)
    return core(q, k, v, key_mask=key_mask, dropout_p=dropout_p, causal=causal,
                positions=positions)


def sequence_parallel_plan(group: Group, lean: bool = False, overlap: bool = True,
                           attention: str = "rsa", layout: str = "contiguous") -> dict:
    """How :class:`BertMLM` (or :class:`GPT`) is distributed over a sequence group, keyed by
    module name."""
    return {
        "embed": ChunkPositions(group, layout),
        "layers.*.attn": RingAttention(group, lean, overlap, attention, layout),
    }


# ----------------------------------------------------------------------------------------------
# the wrapper


def step_seed(seed: int, step: int, rank: int) -> int:
    """A 63-bit seed for (run seed, step, global rank): a hash, so distinct triples get
    unrelated streams."""
    digest = hashlib.blake2b(f"seqpar/{seed}/{step}/{rank}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class SequenceParallelBert(nn.Module):
    """A :class:`BertMLM` whose attention layers run Ring Self-Attention (see the module
    docstring); ``forward`` takes this rank's chunk of tokens.

    Args:
        model: the serial model (its weights are used as they are: replicate them by building
            it from the same seed on every rank, or by loading the same state dict). The plan is
            applied to it in place.
        topo: a ``"seq"`` topology (sequence group ``topo["seq"]``, data group ``topo["data"]``).
        lean: use the memory-lean log-sum-exp attention instead of the paper's RSA.
        overlap: overlap each ring transfer with the matmul on the current block.
        seed: seeds the dropout RNG streams (until :meth:`reseed`).
    """

    def __init__(self, model: BertMLM, topo: Topology, lean: bool = False, overlap: bool = True,
                 seed: int = 0, attention: str = "rsa", layout: str = "contiguous"):
        super().__init__()
        if topo.mode != "seq":
            raise ValueError(f"SequenceParallelBert needs a 'seq' topology; got {topo.mode!r}")
        self.topo, self.seq, self.data = topo, topo["seq"], topo["data"]
        if attention == "ulysses":
            check_heads(model.cfg.heads, self.seq.size)
        self.layout = layout
        self.model = apply_plan(model, sequence_parallel_plan(self.seq, lean, overlap, attention,
                                                              layout))
        self.seed = seed
        self.streams = RNGStreams(seed, topo.grid_rank, topo.coords["data"])

    def to_layout(self, x: torch.Tensor) -> torch.Tensor:
        """A full-sequence tensor ``[B, L, ...]`` in the order of the layout (dim 1)."""
        n = self.seq.size
        check_sequence_split(x.shape[1], n, self.layout)
        if self.layout == "contiguous":
            return x
        return to_layout(x, layout_positions(x.shape[1], n, self.layout, x.device))

    def local_chunk(self, x: torch.Tensor) -> torch.Tensor:
        """This rank's chunk of a full-sequence tensor ``[B, L, ...]`` (dim 1)."""
        c = check_sequence_split(x.shape[1], self.seq.size, self.layout)
        return self.to_layout(x)[:, self.seq.rank * c:(self.seq.rank + 1) * c]

    def local_rows(self, x: torch.Tensor) -> torch.Tensor:
        """This data-parallel replica's rows of a global batch ``[B, ...]`` (dim 0)."""
        dp, d = self.data.size, self.data.rank
        if x.shape[0] % dp:
            raise UsageError(f"a batch of {x.shape[0]} samples cannot be split evenly over "
                             f"{dp} data-parallel replicas; use a batch size that is a multiple "
                             f"of {dp} (--batch_size), or a larger --seq_parallel")
        share = x.shape[0] // dp
        return x[d * share:(d + 1) * share]

    def reseed(self, step: int) -> None:
        """Seed the dropout stream from (seed, step, global rank)."""
        self.streams.add("sharded", step_seed(self.seed, step, self.topo.rank))

    def forward(self, ids_local, key_mask=None):
        """ids_local: [B, c] this rank's chunk; key_mask: [B, L] full. Returns logits [B, c, V]."""
        b, c = ids_local.shape
        length = c * self.seq.size
        if key_mask is not None and tuple(key_mask.shape) != (b, length):
            raise UsageError(f"key mask must be [B, L] = [{b}, {length}] over the full sequence; "
                             f"got {tuple(key_mask.shape)}")
        if key_mask is not None:
            key_mask = self.to_layout(key_mask)
        with self.streams.fork("sharded"):
            return self.model(ids_local, key_mask)

    def grad_plans(self) -> tuple[list[GradSync], list[NormPart]]:
        """Replicated weights, loss normalised by the global token count: gradients are summed
        over the sequence and the data groups; the norm is counted once."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        return [GradSync(params, [self.seq, self.data], average=False)], [NormPart(params, None)]


def mlm_loss(logits, labels_local, global_count):
    """(loss to backpropagate on this rank, ``(sum, count)`` of this rank for reporting).

    ``global_count``: masked tokens of the whole global batch (every replica, every chunk)."""
    loss_sum, count = mlm_loss_terms(logits, labels_local)
    loss = loss_sum / max(float(global_count), 1.0)
    return loss, (loss_sum.detach(), count.detach())
