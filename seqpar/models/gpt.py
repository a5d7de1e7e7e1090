"""A GPT-style causal language model, single-device (no process groups here).

The pre-LN transformer of :mod:`seqpar.models.bert` with causal self-attention (each token sees
itself and the tokens before it) and a plain tied LM head: logits = LN_f(x)·Wᵀ. Trained on
next-token prediction (labels are the inputs shifted by one, cut before the sequence is split, so
sequence parallelism needs no communication for the loss). Parameter names are BERT's, so the
same plans (:mod:`seqpar.parallel`) distribute it.
"""
from __future__ import annotations

import dataclasses

import torch.nn as nn
import torch.nn.functional as F

from .bert import BertConfig, BertMLM


class LMHead(nn.Module):
    def __init__(self, word: nn.Embedding):
        super().__init__()
        self.word = word                              # tied decoder weight [V, H]

    def forward(self, x):                             # [B, c, H] → [B, c, V]
        return F.linear(x, self.word.weight)


class GPT(BertMLM):
    """Causal LM. ``forward(ids, key_mask=None, positions=None)`` returns logits ``[B, c, V]``."""

    def __init__(self, cfg: BertConfig):
        super().__init__(dataclasses.replace(cfg, causal=True))
        self.head = LMHead(self.embed.word)
