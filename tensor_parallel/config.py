"""Training configuration: one dataclass, presets, ``--key value`` overrides (shared.train.config)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Config:
    preset: str = "tiny"
    """name of the preset the run started from (recorded in config.json)"""
    mode: str = "1d"
    """tensor-parallel mode: 1d (Megatron), 2d (Optimus), 2p5d (Tesseract), 3d; one process = serial"""
    depth: int = 1
    """2.5D depth d (world size = q²·d)"""
    data: str | None = None
    """corpus path (nanoGPT train.bin/val.bin dir, a uint16 .bin, text files); None: Python stdlib source"""
    max_bytes: int = 4_000_000
    """cap on the bytes of a text corpus (the default corpus included)"""
    out_dir: str | None = None
    """run directory root; default <repo>/runs/tensor_parallel"""
    run_name: str | None = None
    """run sub-directory; default a timestamp"""
    resume: str | None = None
    """checkpoint to start from (saved by any mode and world size)"""
    seq_len: int = 64
    hidden: int = 96
    heads: int = 8
    layers: int = 2
    dropout: float = 0.0
    vocab_multiple: int = 64
    """the model's vocabulary is the corpus's rounded up to a multiple of this (and of the grid)"""
    batch_size: int = 16
    """global batch (sequences per step, over the whole grid)"""
    steps: int = 800
    """length of the run (the learning-rate schedule ends here)"""
    stop_at: int | None = None
    """end this invocation early at this step, with a checkpoint (resume later with --resume)"""
    lr: float = 3e-3
    min_lr: float = 3e-4
    warmup: int = 50
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    eval_every: int = 200
    eval_batches: int = 8
    ckpt_every: int = 200
    seed: int = 1337
    threads: int = 1
    """CPU threads per process (0: torch's default); one thread is much faster on a shared 2-core machine"""


PRESETS = {
    # CPU, one process: a few minutes on two cores; learns the byte statistics of Python source.
    "tiny": dict(),
    # seconds: used by the tests and as a smoke run
    "smoke": dict(seq_len=16, hidden=24, heads=4, layers=1, batch_size=8, steps=6,
                  eval_every=3, eval_batches=2, ckpt_every=3, warmup=2, max_bytes=200_000),
    # GPU-sized; hidden, heads and batch from the Optimus benchmark script (bcmk_ParallelTransformer.sh,
    # see the brief); layers and sequence length are ours (the script benchmarks a transformer stack).
    "optimus_script": dict(seq_len=512, hidden=2048, heads=32, layers=12, batch_size=96,
                           steps=5000, lr=3e-4, min_lr=3e-5, warmup=500, eval_every=500,
                           max_bytes=64_000_000),
}
