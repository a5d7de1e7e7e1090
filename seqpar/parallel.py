"""Sequence parallelism applied from outside to the serial BERT, composed with data parallelism.

Layout (``shared.parallel.topology.build_topology("seq", grid_size=N)``): the world is ``dp × N``; each
sequence group of N ranks holds the same samples, rank n the tokens ``[n·c, (n+1)·c)``; each
data-parallel group holds the ranks with the same n. Weights are replicated everywhere.

* Embeddings use absolute positions ``n·c + arange(c)``; LayerNorm, projections, MLP, dropout
  and the MLM head run locally on the chunk, with no communication.
* Attention is Ring Self-Attention (:mod:`seqpar.rsa`) over the sequence group, with the key
  padding mask over the full sequence.
* Loss: each rank's sum of masked-token cross-entropy is divided by the *global* count of masked
  tokens (all ranks of all replicas) and multiplied by ``dp``; the parameter gradients are then
  summed over the sequence group and averaged over data parallelism, which makes them exactly the
  gradients of the true global mean (the reference sums per-rank means: N× the true loss). The
  reported loss is that true mean.
* Dropout draws from the "sharded" RNG stream: every rank holds different tokens.
"""
from __future__ import annotations

import functools

import torch
import torch.nn as nn

from shared.parallel.comm import raw_all_reduce
from shared.parallel.seeding import RNGStreams
from shared.parallel.topology import Topology

from .models.bert import BertMLM, mlm_loss_terms
from .rsa import check_sequence_split, ring_self_attention


class SequenceParallelBert(nn.Module):
    """Wraps a :class:`BertMLM` so that its attention layers run Ring Self-Attention.

    Args:
        model: the serial model (its weights are used as they are: replicate them by building
            it from the same seed on every rank, or by loading the same state dict).
        topo: a ``"seq"`` topology (sequence group ``topo["seq"]``, data group ``topo["data"]``).
        lean: use the memory-lean log-sum-exp attention instead of the paper's RSA.
        overlap: overlap each ring transfer with the matmul on the current block.
        seed: seeds the dropout RNG streams.
    """

    def __init__(self, model: BertMLM, topo: Topology, lean: bool = False, overlap: bool = True,
                 seed: int = 0):
        super().__init__()
        if topo.mode != "seq":
            raise ValueError(f"SequenceParallelBert needs a 'seq' topology; got {topo.mode!r}")
        self.model, self.topo = model, topo
        self.seq, self.data = topo["seq"], topo["data"]
        self.streams = RNGStreams(seed, topo.grid_rank, topo.coords["data"])
        core = functools.partial(ring_self_attention, group=self.seq, lean=lean, overlap=overlap)
        for layer in model.layers:
            layer.attn.core = functools.partial(_core, core)

    def local_chunk(self, x: torch.Tensor) -> torch.Tensor:
        """This rank's chunk of a full-sequence tensor ``[B, L, ...]`` (dim 1)."""
        c = check_sequence_split(x.shape[1], self.seq.size)
        return x[:, self.seq.rank * c:(self.seq.rank + 1) * c]

    def forward(self, ids_local, key_mask=None):
        """ids_local: [B, c] this rank's chunk; key_mask: [B, L] full. Returns logits [B, c, V]."""
        b, c = ids_local.shape
        length = c * self.seq.size
        if key_mask is not None and tuple(key_mask.shape) != (b, length):
            raise ValueError(f"key mask must be [B, L] = [{b}, {length}] over the full sequence; "
                             f"got {tuple(key_mask.shape)}")
        positions = self.seq.rank * c + torch.arange(c, device=ids_local.device)
        with self.streams.fork("sharded"):
            return self.model(ids_local, key_mask, positions)

    def loss(self, logits, labels_local):
        """(loss to backpropagate on this rank, true global mean loss for reporting).

        The global count of masked tokens is all-reduced over sequence and data groups."""
        loss_sum, count = mlm_loss_terms(logits, labels_local)
        totals = torch.stack([loss_sum.detach(), count.to(loss_sum.dtype)])
        totals = raw_all_reduce(raw_all_reduce(totals, self.seq), self.data)
        global_count = totals[1].clamp_min(1.0)
        backprop = loss_sum * (self.data.size / global_count)
        return backprop, totals[0] / global_count

    def sync_gradients(self) -> None:
        """Sum every parameter gradient over the sequence group, average it over data parallel
        (one flat buffer, two all-reduces)."""
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        if not grads or self.topo.world_size == 1:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        flat = raw_all_reduce(raw_all_reduce(flat, self.seq), self.data) / self.data.size
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()


def _core(ring_core, q, k, v, key_mask, dropout_p):
    return ring_core(q, k, v, key_mask=key_mask, dropout_p=dropout_p)
