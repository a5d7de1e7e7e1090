"""Masked-language-model batches over a token corpus (``shared.data.text_corpus``).

Items are disjoint windows of ``seq_len`` tokens of the train (or validation) split. For each
batch, BERT's masking (Devlin et al. 2019): 15 % of the real tokens are selected as targets; of
those 80 % become ``[MASK]``, 10 % a random token, 10 % stay. To exercise the key-padding mask
each sample keeps a random length in ``[min_len_fraction·L, L]`` and the rest is ``[PAD]``
(ignored as keys and as targets).

Every rank builds the *same* global batch from the same seeded generator (no broadcast needed)
and keeps its replica's rows and its chunk of tokens, so a run does not depend on the layout.
Validation uses fixed batches, :func:`validation_batches`, the same in training and in ``eval``.
"""
from __future__ import annotations

import math

import torch

from shared.data.text_corpus import Corpus, load_corpus
from shared.errors import UsageError


class MLMData:
    """MLM batches of one corpus. Token ids ``vocab`` and ``vocab+1`` are ``[MASK]``/``[PAD]``."""

    def __init__(self, corpus: Corpus, seq_len: int, mask_prob: float = 0.15,
                 min_len_fraction: float = 1.0, seed: int = 0, causal: bool = False):
        if not 0.0 < mask_prob < 1.0:
            raise UsageError(f"--mask_prob must be in (0, 1); got {mask_prob}")
        if not 0.0 < min_len_fraction <= 1.0:
            raise UsageError(f"--min_len_fraction must be in (0, 1]; got {min_len_fraction}")
        self.corpus, self.seq_len, self.mask_prob = corpus, seq_len, mask_prob
        self.min_len = max(1, math.ceil(min_len_fraction * seq_len))
        self.seed, self.causal = seed, causal
        self.mask_id, self.pad_id = corpus.vocab_size, corpus.vocab_size + 1
        self.vocab_size = corpus.vocab_size + 2
        for split in ("train", "val"):
            if self.num_items(split) < 1:
                raise UsageError(f"the {split} split of {corpus.source} has "
                                 f"{corpus.tokens(split).numel()} tokens, fewer than one window of "
                                 f"{seq_len + 1}; use a shorter --seq_len or more data")

    @classmethod
    def from_config(cls, cfg) -> "MLMData":
        corpus = load_corpus(cfg.data or None, max_bytes=cfg.max_bytes)
        return cls(corpus, cfg.seq_len, cfg.mask_prob, cfg.min_len_fraction, cfg.seed,
                   causal=getattr(cfg, "model", "bert") == "gpt")

    def num_items(self, split: str) -> int:
        """Disjoint windows in a split."""
        return self.corpus.num_windows(split, self.seq_len) // self.seq_len

    def batch(self, split: str, items: torch.Tensor, key: int):
        """Full-sequence batch of the windows ``items``; masking drawn from seed ``key``.

        Returns ``ids`` [B, L] int64 (masked, padded), ``key_mask`` [B, L] bool (True = real
        token) and ``labels`` [B, L] int64 (the original token at targets, −100 elsewhere).
        With ``causal`` (the GPT model): the window, no padding, and the next tokens as labels.
        """
        x, y = self.corpus.lm_batch(split, items.long() * self.seq_len, self.seq_len)  # [B, L]
        b, length = x.shape
        if self.causal:             # causal LM: next-token targets everywhere, no padding
            return x, torch.ones(b, length, dtype=torch.bool), y
        gen = torch.Generator().manual_seed(self.seed * 7_919 + key)
        lengths = torch.randint(self.min_len, length + 1, (b,), generator=gen)
        key_mask = torch.arange(length)[None, :] < lengths[:, None]
        target = (torch.rand(b, length, generator=gen) < self.mask_prob) & key_mask
        labels = torch.where(target, x, torch.full_like(x, -100))
        r = torch.rand(b, length, generator=gen)
        random_tokens = torch.randint(0, self.corpus.vocab_size, (b, length), generator=gen)
        ids = torch.where(target & (r < 0.8), torch.full_like(x, self.mask_id), x)
        ids = torch.where(target & (r >= 0.8) & (r < 0.9), random_tokens, ids)
        ids = torch.where(key_mask, ids, torch.full_like(x, self.pad_id))
        return ids, key_mask, labels

    def eval_batches(self, count: int, batch_size: int):
        """The same ``count`` validation batches every time (evenly spaced windows)."""
        n = self.num_items("val")
        out = []
        for i in range(count):
            items = (torch.arange(batch_size) * max(1, n // (batch_size * count)) + i) % n
            out.append(self.batch("val", items, key=10_000_019 + i))
        return out


def validation_batches(data: MLMData, cfg) -> list:
    """The validation batches of a run: ``cfg.eval_batches`` global batches of ``cfg.batch_size``
    fixed windows (the same in train-time validation and in ``seqpar.eval``)."""
    return data.eval_batches(cfg.eval_batches, cfg.batch_size)
