"""Training config for sequence-parallel BERT (MLM), with presets.

``tiny`` trains on two CPU cores in a few minutes. ``bert_base`` / ``bert_large`` are the paper's
model sizes (arXiv 2105.13120 §4: Base 12 layers, H 768, 12 heads; Large 24 layers, H 1024,
16 heads; sequence 512; the example config's lr 1e-4, weight decay 0.01, clip 1.0, global batch
32); they need GPUs.
"""
from __future__ import annotations

from dataclasses import dataclass

from shared.train.config import ConfigError, TrainConfig, with_defaults


# this paper's defaults for fields of the shared glossary
_Base = with_defaults(
    TrainConfig, steps=1500, lr=3e-3, min_lr=3e-4, warmup_steps=100, weight_decay=0.01, grad_clip=1.0,
    batch_size=32, log_every=25, eval_every=250, ckpt_every=250)


@dataclass
class Config(_Base):
    MODES = ("seq",)
    """sequence parallel over ``--seq_parallel`` ranks × data parallel over the rest"""
    FIXED_ON_RESUME = ("model", "hidden", "heads", "layers", "ffn", "dropout", "attn_dropout", "max_bytes",
                       "seq_len", "mask_prob", "min_len_fraction")

    model: str = "bert"
    """bert: BERT MLM (the paper's); gpt: a GPT-style causal LM (next-token prediction)"""
    seq_parallel: int = 0
    """ranks per sequence group N; 0 = all ranks (no data parallelism)"""
    attention: str = "rsa"
    """rsa: Ring Self-Attention (the paper's); ulysses: all-to-all over heads"""
    layout: str = ""
    """placement of the tokens over the ranks: contiguous or zigzag; "" = zigzag for gpt
    (equal causal work per rank), contiguous for bert"""
    lean: bool = False
    """memory-lean log-sum-exp attention instead of the paper's RSA"""
    overlap: bool = True
    """overlap each ring transfer with the matmul on the current block"""
    # ---- model
    hidden: int = 64
    heads: int = 4
    layers: int = 2
    ffn: int = 256
    dropout: float = 0.0
    """hidden dropout (the paper's BERT: 0.1; the tiny CPU model under-fits, so 0 by default)"""
    attn_dropout: float = 0.0
    # ---- data (``--data``: a train.bin/val.bin dir, a .bin file or text; "" = Python stdlib)
    max_bytes: int = 4 * 2 ** 20
    """bytes read from a text corpus (the default or a text path)"""
    seq_len: int = 64
    mask_prob: float = 0.15
    min_len_fraction: float = 0.5
    """each sample keeps a random length in [min_len_fraction·L, L]; the rest is padding"""
    eval_batches: int = 8
    """validation batches (of ``batch_size`` fixed windows) in train-time validation and eval"""

    def validate(self) -> None:
        super().validate()
        choices = {"model": ("bert", "gpt"), "attention": ("rsa", "ulysses"),
                   "layout": ("", "contiguous", "zigzag")}
        for name, valid in choices.items():
            if getattr(self, name) not in valid:
                raise ConfigError(f"--{name} {getattr(self, name)!r}: choose one of "
                                  f"{', '.join(v for v in valid if v)}")
        if self.lean and self.attention != "rsa":
            raise ConfigError("--lean true is a mode of ring attention; drop it with "
                              "--attention ulysses")
        if self.seq_parallel < 0:
            raise ConfigError(f"--seq_parallel must be >= 0 (0 = all ranks); got "
                              f"{self.seq_parallel}")
        for name in ("hidden", "heads", "layers", "ffn", "seq_len", "eval_batches", "max_bytes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name} must be at least 1; got {getattr(self, name)}")
        if self.hidden % self.heads:
            divisors = [h for h in range(1, self.hidden + 1) if self.hidden % h == 0]
            near = sorted(divisors, key=lambda h: abs(h - self.heads))[:2]
            raise ConfigError(f"--hidden {self.hidden} is not divisible by --heads {self.heads}; "
                              f"use --heads {' or '.join(map(str, sorted(near)))}, or change "
                              f"--hidden")
        for name in ("dropout", "attn_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"--{name} must be in [0, 1); got {getattr(self, name)}")
        if not 0.0 < self.mask_prob < 1.0:
            raise ConfigError(f"--mask_prob must be in (0, 1); got {self.mask_prob}")
        if not 0.0 < self.min_len_fraction <= 1.0:
            raise ConfigError(f"--min_len_fraction must be in (0, 1]; got "
                              f"{self.min_len_fraction}")


    @property
    def placement(self) -> str:
        """The layout in use (``--layout``, or the model's default)."""
        return self.layout or ("zigzag" if self.model == "gpt" else "contiguous")


PRESETS = {
    "tiny": dict(threads=1),
    "bert_base": dict(hidden=768, heads=12, layers=12, ffn=3072, seq_len=512, batch_size=32,
                      dropout=0.1, attn_dropout=0.1, lr=1e-4, min_lr=1e-5, warmup_steps=10_000,
                      steps=1_000_000, max_bytes=2 ** 31, min_len_fraction=1.0, log_every=100,
                      eval_every=5000, ckpt_every=5000),
    "bert_large": dict(hidden=1024, heads=16, layers=24, ffn=4096, seq_len=512, batch_size=32,
                       dropout=0.1, attn_dropout=0.1, lr=1e-4, min_lr=1e-5, warmup_steps=500,
                       steps=50_000, max_bytes=2 ** 31, min_len_fraction=1.0, log_every=100,
                       eval_every=5000, ckpt_every=5000),
}
