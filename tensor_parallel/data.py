"""Data for the language model: the shared byte/token corpora (shared.data.text_corpus) and the
vocabulary padding the parallel LM head needs.

Default: the Python standard library's own source files, byte level (vocabulary 256),
deterministic train/val split. Real data (``--data PATH``): a nanoGPT directory with
``train.bin``/``val.bin`` (uint16 tokens), one ``.bin`` file, or text files (bytes).
"""
from __future__ import annotations

import math

from shared.data.text_corpus import Corpus, CorpusError, load_corpus

__all__ = ["Corpus", "CorpusError", "load_corpus", "grid_divisor", "padded_vocab"]


def grid_divisor(topo) -> int:
    """The vocabulary must split over this many ranks (the LM head's output dimension)."""
    return topo.grid_size if topo.mode == "1d" else topo.shape.get("q", 1)


def padded_vocab(corpus_vocab: int, multiple: int, topo) -> int:
    """The corpus vocabulary rounded up to a multiple of ``multiple`` and of the grid divisor
    (Megatron pads its vocabulary the same way); the extra ids are never targets."""
    m = math.lcm(multiple, grid_divisor(topo))
    return -(-corpus_vocab // m) * m
