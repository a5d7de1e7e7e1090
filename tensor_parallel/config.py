"""Training configuration: the shared glossary (:class:`shared.train.TrainConfig`) plus the GPT's
sizes and the corpus options, and the presets (``--preset NAME``, then ``--key value``)."""
from __future__ import annotations

from dataclasses import dataclass

from shared.train import ConfigError, TrainConfig, with_defaults


# this paper's defaults for fields of the shared glossary
_Base = with_defaults(
    TrainConfig, steps=800, warmup_steps=50, lr=3e-3, min_lr=3e-4, weight_decay=0.1, grad_clip=1.0,
    batch_size=16, eval_every=200, ckpt_every=200, seed=1337, threads=1)


@dataclass
class Config(_Base):
    MODES = ("1d", "2d", "2p5d", "3d")
    """1d (Megatron), 2d (Optimus), 2p5d (Tesseract), 3d; one process = the serial model"""
    FIXED_ON_RESUME = ("seq_len", "hidden", "heads", "layers", "dropout", "vocab_size",
                       "vocab_multiple", "max_bytes")

    depth: int = 1
    """2.5D depth d (tensor grid = q²·d ranks); ignored by the other modes"""
    dp: int = 1
    """data-parallel replicas of the tensor grid (world size = grid × dp); each takes its chunk
    of the global --batch_size"""
    max_bytes: int = 4_000_000
    """cap on the bytes of a text corpus (the default corpus included)"""
    seq_len: int = 64
    hidden: int = 96
    heads: int = 8
    layers: int = 2
    dropout: float = 0.0
    vocab_multiple: int = 64
    """the model's vocabulary is the corpus's rounded up to a multiple of this (and of the grid)"""
    vocab_size: int = 0
    """the model's vocabulary; 0 = the corpus's, padded (a run records the value it used)"""
    checkpoint_activations: bool = False
    """recompute each block's activations in backward instead of storing them (less memory,
    about one more forward of compute; gradients unchanged)"""
    regather: bool = False
    """3d: gather each Linear's input and weight blocks again in backward instead of saving the
    gathered copies (q× less saved, 4/3 of the 3D communication); the other modes ignore it"""
    eval_batches: int = 8
    """validation loss = mean over this many fixed batches of the validation split"""

    def validate(self) -> None:
        super().validate()
        for name in ("depth", "dp", "seq_len", "hidden", "heads", "layers", "vocab_multiple",
                     "eval_batches", "max_bytes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name} must be at least 1; got {getattr(self, name)}")
        if self.vocab_size < 0:
            raise ConfigError(f"--vocab_size must be >= 0 (0 = the corpus's); got "
                              f"{self.vocab_size}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"--dropout must be in [0, 1); got {self.dropout}")
        if self.hidden % self.heads:
            fit = self.hidden + (-self.hidden) % self.heads
            raise ConfigError(f"--hidden {self.hidden} must be a multiple of --heads "
                              f"{self.heads} (e.g. --hidden {fit})")


PRESETS = {
    # CPU, one process: a few minutes on two cores; learns the byte statistics of Python source.
    "tiny": dict(),
    # seconds: used by the tests and as a smoke run
    "smoke": dict(seq_len=16, hidden=24, heads=4, layers=1, batch_size=8, steps=6, log_every=1,
                  eval_every=3, eval_batches=2, ckpt_every=3, warmup_steps=2, max_bytes=200_000),
    # GPU-sized; hidden, heads and batch from the Optimus benchmark script (bcmk_ParallelTransformer.sh,
    # see the brief); layers and sequence length are ours (the script benchmarks a transformer stack).
    "optimus_script": dict(seq_len=512, hidden=2048, heads=32, layers=12, batch_size=96,
                           steps=5000, lr=3e-4, min_lr=3e-5, warmup_steps=500, eval_every=500,
                           max_bytes=64_000_000),
}
