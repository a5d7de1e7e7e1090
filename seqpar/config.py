"""Training config for sequence-parallel BERT (MLM), with presets.

``tiny`` trains on two CPU cores in a few minutes. ``bert_base`` / ``bert_large`` are the paper's
model sizes (arXiv 2105.13120 §4: Base 12 layers, H 768, 12 heads; Large 24 layers, H 1024,
16 heads; sequence 512; the example config's lr 1e-4, weight decay 0.01, clip 1.0, global batch
32); they need GPUs.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Config:
    preset: str = "tiny"
    mode: str = "seq"
    """Parallel mode: only "seq" (sequence parallel × data parallel on the remaining ranks)."""
    seq_parallel: int = 0
    """Ranks per sequence group N; 0 = all ranks (no data parallelism)."""
    lean: bool = False
    """Memory-lean log-sum-exp attention instead of the paper's RSA."""
    overlap: bool = True
    """Overlap each ring transfer with the matmul on the current block."""
    # model
    hidden: int = 64
    heads: int = 4
    layers: int = 2
    ffn: int = 256
    dropout: float = 0.0
    """Hidden dropout (the paper's BERT: 0.1; the tiny CPU model under-fits, so 0 by default)."""
    attn_dropout: float = 0.0
    # data
    data: str | None = None
    """Corpus: a train.bin/val.bin dir, a .bin file or text files; None = Python stdlib source."""
    max_bytes: int = 4 * 2 ** 20
    seq_len: int = 64
    mask_prob: float = 0.15
    min_len_fraction: float = 0.5
    """Each sample keeps a random length in [min_len_fraction·L, L]; the rest is padding."""
    # optimisation
    batch_size: int = 32
    """Global batch (over data-parallel replicas)."""
    steps: int = 1500
    lr: float = 3e-3
    min_lr: float = 3e-4
    warmup: int = 100
    weight_decay: float = 0.01
    clip: float = 1.0
    # bookkeeping
    threads: int = 0
    """CPU threads per process (0 = torch's default); the tiny model runs fastest on 1."""
    seed: int = 0
    log_every: int = 25
    eval_every: int = 250
    eval_batches: int = 8
    ckpt_every: int = 250
    out_dir: str = ""
    """Run directory root; empty = <repo>/runs/seqpar."""
    run_name: str = ""
    resume: str = ""
    """A checkpoint file or run directory to resume from."""
    stop_at: int = 0
    """Stop after this step (the schedule still spans ``steps``); 0 = run to ``steps``."""


PRESETS = {
    "tiny": dict(threads=1),
    "bert_base": dict(hidden=768, heads=12, layers=12, ffn=3072, seq_len=512, batch_size=32,
                      dropout=0.1, attn_dropout=0.1,
                      lr=1e-4, min_lr=1e-5, warmup=10_000, steps=1_000_000, max_bytes=2 ** 31,
                      min_len_fraction=1.0, log_every=100, eval_every=5000, ckpt_every=5000),
    "bert_large": dict(hidden=1024, heads=16, layers=24, ffn=4096, seq_len=512, batch_size=32,
                       dropout=0.1, attn_dropout=0.1,
                       lr=1e-4, min_lr=1e-5, warmup=500, steps=50_000, max_bytes=2 ** 31,
                       min_len_fraction=1.0, log_every=100, eval_every=5000, ckpt_every=5000),
}
