"""Data in bounded memory.

sampler: EpochSampler (deterministic, resumable, sharded over data-parallel ranks)
text_corpus: load_corpus, Corpus, CorpusError (text streamed up to ``max_bytes``; ``.bin`` token
files memory-mapped)
"""
from .sampler import EpochSampler
from .text_corpus import Corpus, CorpusError, load_corpus

__all__ = ["EpochSampler", "Corpus", "CorpusError", "load_corpus"]
