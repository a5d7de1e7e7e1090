"""Megatron-style 1D tensor parallelism of the same BERT, the paper's baseline (for reproduce.py).

Built from a serial :class:`~seqpar.models.bert.BertMLM` with the 1D layers of
``shared.parallel.tp1d`` (Shoeybi et al. 2019): every rank holds the whole sequence and ``Z/P`` heads.

* word embedding: vocabulary-parallel (the tied MLM decoder uses the same local rows, so the
  logits stay split over the vocabulary and the loss is ``vocab_parallel_cross_entropy``);
  position embedding, LayerNorms, the MLM head's dense layer: replicated;
* attention: the fused QKV projection is column-parallel by heads (its rows are regrouped from
  the serial ``[q | k | v]`` layout to per-head ``[q_h k_h v_h]`` first), the output projection
  row-parallel; MLP: fc1 column-, fc2 row-parallel;
* dropout: the "sharded" RNG stream for per-head probabilities, "replicated" elsewhere.

Heads must be divisible by P: this is the cap the paper lifts (BERT-Base's 12 heads stop TP at
12 GPUs, while RSA only needs L divisible by N).
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from shared.errors import UsageError
from shared.parallel.comm import copy_to_group
from shared.parallel.seeding import RNGStreams
from shared.parallel.topology import Topology
from shared.parallel.tp1d import (ColumnParallelLinear, RowParallelLinear, VocabParallelEmbedding,
                         parallel_dropout, vocab_parallel_cross_entropy)

from .models.bert import BertMLM, dense_attention


def check_heads(heads: int, p: int) -> None:
    if heads % p:
        raise UsageError(f"1D tensor parallelism splits attention heads: {heads} heads cannot be "
                         f"divided among {p} ranks; use a number of ranks that divides {heads}")


def _per_head_qkv(qkv: nn.Linear, heads: int) -> nn.Linear:
    """The serial fused projection with its output rows regrouped (3, Z, A) → (Z, 3, A)."""
    h3, h = qkv.weight.shape
    a = h // heads
    out = nn.Linear(h, h3)
    with torch.no_grad():
        out.weight.copy_(qkv.weight.view(3, heads, a, h).transpose(0, 1).reshape(h3, h))
        out.bias.copy_(qkv.bias.view(3, heads, a).transpose(0, 1).reshape(h3))
    return out


class TPAttention(nn.Module):
    def __init__(self, attn, group, streams, heads: int):
        super().__init__()
        self.group, self.streams = group, streams
        self.local_heads = heads // group.size
        self.attn_dropout = attn.attn_dropout
        self.qkv = ColumnParallelLinear.from_serial(_per_head_qkv(attn.qkv, heads), group)
        self.proj = RowParallelLinear.from_serial(attn.proj, group)

    def forward(self, x, key_mask=None):              # x: [B, L, H] replicated
        b, length, h = x.shape
        zl = self.local_heads
        a = h // (zl * self.group.size)
        q, k, v = self.qkv(x).view(b, length, zl, 3, a).permute(3, 0, 2, 1, 4)  # [B, Z/P, L, A]
        p = self.attn_dropout if self.training else 0.0
        with self.streams.fork("sharded"):
            out = dense_attention(q, k, v, key_mask, p)   # [B, Z/P, L, A]
        return self.proj(out.transpose(1, 2).reshape(b, length, -1))


class TPLayer(nn.Module):
    def __init__(self, layer, group, streams, heads: int, dropout: float):
        super().__init__()
        self.streams, self.p = streams, dropout
        self.ln1, self.ln2 = copy.deepcopy(layer.ln1), copy.deepcopy(layer.ln2)
        self.attn = TPAttention(layer.attn, group, streams, heads)
        self.fc1 = ColumnParallelLinear.from_serial(layer.mlp.fc1, group)
        self.fc2 = RowParallelLinear.from_serial(layer.mlp.fc2, group)

    def _drop(self, x):
        return parallel_dropout(x, self.p, self.training, self.streams, "replicated")

    def forward(self, x, key_mask=None):
        x = x + self._drop(self.attn(self.ln1(x), key_mask))
        return x + self._drop(self.fc2(F.gelu(self.fc1(self.ln2(x)))))


class TensorParallelBert(nn.Module):
    """1D tensor-parallel BERT over ``topo["tensor"]`` built from a serial ``BertMLM``."""

    def __init__(self, model: BertMLM, topo: Topology, seed: int = 0):
        super().__init__()
        cfg = model.cfg
        self.group = topo["tensor"]
        check_heads(cfg.heads, self.group.size)
        self.streams = RNGStreams(seed, topo.grid_rank, topo.coords["data"])
        self.p = cfg.dropout
        self.word = VocabParallelEmbedding.from_serial(model.embed.word, self.group)
        self.position = copy.deepcopy(model.embed.position)
        self.layers = nn.ModuleList(TPLayer(layer, self.group, self.streams, cfg.heads, cfg.dropout)
                                    for layer in model.layers)
        self.ln_f = copy.deepcopy(model.ln_f)
        self.dense, self.head_ln = copy.deepcopy(model.head.dense), copy.deepcopy(model.head.ln)
        v_local = self.word.per_rank
        self.bias = nn.Parameter(model.head.bias.detach()[self.group.rank * v_local:
                                                         (self.group.rank + 1) * v_local].clone())

    def forward(self, ids, key_mask=None):
        """ids: [B, L] (whole sequence on every rank). Returns local logits [B, L, V/P]."""
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = parallel_dropout(self.word(ids) + self.position(positions)[None], self.p,
                             self.training, self.streams, "replicated")
        for layer in self.layers:
            x = layer(x, key_mask)
        h = self.head_ln(F.gelu(self.dense(self.ln_f(x))))
        return F.linear(copy_to_group(h, self.group), self.word.weight, self.bias)

    def loss(self, local_logits, labels):
        """Mean MLM loss over masked tokens (replicated on every rank)."""
        per_token = vocab_parallel_cross_entropy(local_logits, labels, self.group)
        return per_token.sum() / (labels != -100).sum().clamp_min(1)
