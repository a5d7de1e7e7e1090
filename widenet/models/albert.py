"""ALBERT and the NLP WideNet (arXiv 2107.11817 v3, Sec. 4.2; brief Sec. 4 "NLP").

ALBERT (Lan et al., arXiv 1909.11942): factorised embedding (vocabulary -> 128 -> width d), one
post-LN transformer layer reused by all 12 blocks (attention, FFN *and* its two LayerNorms
shared). WideNet-NLP replaces ALBERT's FFN by one shared top-2 MoE whose experts are the FFN
(d -> 3072 -> d, GELU) and gives every block its own two LayerNorms:

    x = LN_i^att(x + Attn(x));   x = LN_i^ffn(x + FFN_or_MoE(x))        (post-LN, as ALBERT)

The encoder (embeddings, projection, blocks, pooler) is what #params counts, as ALBERT-base's
published 12M (exactly 11,683,584 with vocabulary 30000, 512 positions, 2 segment types);
the MLM, sentence-order and classification heads are separate modules. The brief's
``12M + (E - 1) 4.72M`` adds one expert FFN (4,722,432) plus its router row (768) per extra
expert; the unshared LayerNorms add 22 x 1536 (see ``tests/test_widenet/test_nlp.py``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from .moe import MoE
from .registry import register_model
from .vit import Mlp, attention, count_parameters


@dataclass
class EncoderOutput:
    hidden: torch.Tensor                      # (B, N, d)
    pooled: torch.Tensor                      # (B, d): tanh(Dense(hidden[:, 0]))
    aux_loss: torch.Tensor                    # summed load-balancing loss of the MoE calls
    dropped: list = field(default_factory=list)


class AlbertEncoder(nn.Module):
    """ALBERT encoder with an optional shared MoE FFN and per-block LayerNorms.

    Args:
        vocab_size, embed_dim, max_len, type_vocab: factorised embedding (vocab -> embed_dim).
        dim, depth, heads, mlp_dim: width, blocks (all reuse one layer), heads, FFN/expert width.
        num_experts: 0 = ALBERT's dense FFN; E > 0 = one shared top-k MoE with E experts.
        share_norms: ALBERT shares its LayerNorms across blocks; WideNet does not.
    """

    def __init__(self, vocab_size: int = 30000, embed_dim: int = 128, max_len: int = 512,
                 type_vocab: int = 2, dim: int = 768, depth: int = 12, heads: int = 12,
                 mlp_dim: int = 3072, num_experts: int = 0, top_k: int = 2,
                 capacity_factor: float = 1.2, noise_std: float | None = None,
                 dropout: float = 0.1, share_norms: bool = True):
        super().__init__()
        self.word = nn.Embedding(vocab_size, embed_dim)
        self.position = nn.Embedding(max_len, embed_dim)
        self.segment = nn.Embedding(type_vocab, embed_dim)
        self.embed_norm = nn.LayerNorm(embed_dim, eps=1e-12)
        self.drop = nn.Dropout(dropout)
        self.project = nn.Linear(embed_dim, dim)
        self.attn = attention(dim, heads)                              # shared by every block
        self.ffn = (MoE(dim, mlp_dim, num_experts, top_k, capacity_factor, noise_std, dropout,
                        second_gelu=False) if num_experts
                    else Mlp(dim, mlp_dim, dropout, second_gelu=False))
        n_norms = 1 if share_norms else depth
        self.norm_attn = nn.ModuleList(nn.LayerNorm(dim, eps=1e-12) for _ in range(n_norms))
        self.norm_ffn = nn.ModuleList(nn.LayerNorm(dim, eps=1e-12) for _ in range(n_norms))
        self.depth, self.max_len = depth, max_len
        self.pooler = nn.Sequential(nn.Linear(dim, dim), nn.Tanh())
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)               # ALBERT/BERT init
        nn.init.zeros_(self.project.bias)

    def forward(self, ids: torch.Tensor, segments: torch.Tensor | None = None,
                pad_mask: torch.Tensor | None = None) -> EncoderOutput:
        # ids (B, N) token ids; segments (B, N) 0/1; pad_mask (B, N) True at real tokens
        B, N = ids.shape
        if N > self.max_len:
            raise ValueError(f"sequence length {N} exceeds the {self.max_len} positions; "
                             f"truncate the inputs")
        pos = torch.arange(N, device=ids.device)
        seg = torch.zeros_like(ids) if segments is None else segments
        x = self.word(ids) + self.position(pos) + self.segment(seg)
        x = self.project(self.drop(self.embed_norm(x)))                # (B, N, d)
        mask = None if pad_mask is None else pad_mask[:, None, None, :]
        aux = x.new_zeros((), dtype=torch.float32)
        dropped = []
        for i in range(self.depth):
            j = i % len(self.norm_attn)
            x = self.norm_attn[j](x + self.attn(x, attn_mask=mask))
            if isinstance(self.ffn, MoE):
                y, stats = self.ffn(x)
                aux, dropped = aux + stats.aux_loss, dropped + [stats.dropped]
            else:
                y = self.ffn(x)
            x = self.norm_ffn[j](x + y)
        return EncoderOutput(x, self.pooler(x[:, 0]), aux, dropped)


class AlbertForPretraining(nn.Module):
    """Encoder + MLM head (Dense d->e, GELU, LN, decoder tied to the word embedding) +
    sentence-order head, + a sentence-classification head for fine-tuning."""

    def __init__(self, num_labels: int = 2, **kw):
        super().__init__()
        self.encoder = AlbertEncoder(**kw)
        e, d = self.encoder.word.embedding_dim, self.encoder.project.out_features
        self.mlm = nn.Sequential(nn.Linear(d, e), nn.GELU(), nn.LayerNorm(e, eps=1e-12))
        self.mlm_bias = nn.Parameter(torch.zeros(self.encoder.word.num_embeddings))
        self.sop = nn.Linear(d, 2)
        self.classifier = nn.Linear(d, num_labels)

    def forward(self, ids, segments=None, pad_mask=None):
        return self.encoder(ids, segments, pad_mask)

    def mlm_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.mlm(hidden) @ self.encoder.word.weight.t() + self.mlm_bias


def encoder_parameters(model: nn.Module) -> int:
    """#params as ALBERT and the paper count them: the encoder without the task heads."""
    return count_parameters(model.encoder if hasattr(model, "encoder") else model)


_BASE = dict(vocab_size=30000, embed_dim=128, max_len=512, dim=768, depth=12, heads=12,
             mlp_dim=3072)
_TINY = dict(vocab_size=128, embed_dim=16, max_len=64, dim=64, depth=4, heads=4, mlp_dim=128)


def _make(base, kw, experts):
    kw = {**base, **kw}
    if experts:
        kw.setdefault("num_experts", experts)
        kw.setdefault("share_norms", False)
    return AlbertForPretraining(**kw)


@register_model
def albert_base(**kw):
    """ALBERT-base: 12 shared layers of width 768, embedding 128, FFN 3072; published 12M."""
    return _make(_BASE, kw, 0)


@register_model
def widenet_nlp_e4(**kw):
    """ALBERT-base with a shared 4-expert MoE FFN and unshared LayerNorms; paper 26M (26.2M)."""
    return _make(_BASE, kw, 4)


@register_model
def widenet_nlp_e8(**kw):
    """8 experts; paper 45M (45.1M)."""
    return _make(_BASE, kw, 8)


@register_model
def widenet_nlp_e16(**kw):
    """16 experts; paper 83M (82.8M)."""
    return _make(_BASE, kw, 16)


@register_model
def albert_tiny(**kw):
    return _make(_TINY, kw, 0)


@register_model
def widenet_nlp_tiny(**kw):
    return _make(_TINY, kw, 4)
