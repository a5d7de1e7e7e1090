"""A pre-LN BERT for masked language modelling, single-device (no process groups here).

Architecture as in the paper's Megatron BERT example (arXiv 2105.13120, §4; Megatron-LM's
pre-LayerNorm encoder): word + position embeddings → dropout → ``layers`` × [x + Attn(LN(x)),
x + MLP(LN(x))] → final LN → MLM head (dense, GELU, LN, decoder tied to the word embedding, bias).
The sentence-order (SOP) head of the paper's example is not included: we pre-train MLM only.

Parallelism is applied from outside: every attention layer calls ``self.core(q, k, v, key_mask,
dropout_p)``, which is :func:`dense_attention` here and Ring Self-Attention once
the plan of :mod:`seqpar.parallel` is applied to the model. The model itself only sees a chunk
of tokens (``positions`` tells it which), so the same code runs serially and on one chunk.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F



@dataclass
class BertConfig:
    vocab_size: int = 258           # 256 bytes + [MASK] + [PAD]
    hidden: int = 64
    heads: int = 4
    layers: int = 2
    ffn: int = 256
    max_len: int = 512
    dropout: float = 0.1
    attn_dropout: float = 0.1
    ln_eps: float = 1e-5
    causal: bool = False            # True: a decoder (each token sees itself and the past)

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def __post_init__(self):
        if self.hidden % self.heads:
            raise ValueError(f"hidden size {self.hidden} is not divisible by {self.heads} heads")


def mask_value(dtype: torch.dtype) -> float:
    """A finite "minus infinity" for padded keys: a fully masked row softmaxes to uniform instead
    of NaN, identically in the dense reference, in RSA and in the log-sum-exp merge."""
    return torch.finfo(dtype).min


def allowed_keys(key_mask, q_pos, k_pos, causal: bool, q_docs=None, k_docs=None):
    """Which keys each query may attend to, ``[B or 1, 1, rows, cols]`` bool (None = all).

    key_mask: [B, cols] (True = a real key); q_pos [rows], k_pos [cols]: absolute positions
    (causal: a key at a later position is hidden); q_docs [B, rows], k_docs [B, cols]: document
    ids of packed sequences (a key of another document is hidden)."""
    allowed = None

    def both(a, b):
        return b if a is None else a & b

    if key_mask is not None:
        allowed = key_mask[:, None, None, :]
    if causal:
        allowed = both(allowed, (q_pos[:, None] >= k_pos[None, :])[None, None])
    if q_docs is not None:
        allowed = both(allowed, (q_docs[:, None, :, None] == k_docs[:, None, None, :]))
    return allowed


def fill_hidden(scores: torch.Tensor, allowed, fill: float | None = None) -> torch.Tensor:
    """Fill the hidden entries (``allowed`` False) of scores ``[B, Z, rows, cols]``."""
    if allowed is None:
        return scores
    fill = mask_value(scores.dtype) if fill is None else fill
    return scores.masked_fill(~allowed, fill)


def dense_attention(q, k, v, key_mask=None, dropout_p: float = 0.0, causal: bool = False,
                    doc_ids=None) -> torch.Tensor:
    """Reference attention. q, k, v: [B, Z, L, A]; key_mask: [B, L] bool, True = attend;
    causal: query i sees keys j <= i; doc_ids: [B, L] document of each token (packed
    sequences: no attention across documents)."""
    scores = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))   # [B, Z, L, L]
    pos = torch.arange(q.shape[2], device=q.device)
    allowed = allowed_keys(key_mask, pos, pos, causal, doc_ids, doc_ids)
    probs = torch.softmax(fill_hidden(scores, allowed), dim=-1)
    if dropout_p > 0:
        probs = F.dropout(probs, dropout_p, training=True)
    return probs @ v                                                      # [B, Z, L, A]


class Embeddings(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.word = nn.Embedding(cfg.vocab_size, cfg.hidden)
        self.position = nn.Embedding(cfg.max_len, cfg.hidden)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, ids, positions):                # [B, c], [c] → [B, c, H]
        return self.drop(self.word(ids) + self.position(positions)[None])


class SelfAttention(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.heads, self.attn_dropout, self.causal = cfg.heads, cfg.attn_dropout, cfg.causal
        self.qkv = nn.Linear(cfg.hidden, 3 * cfg.hidden)
        self.proj = nn.Linear(cfg.hidden, cfg.hidden)
        self.core = dense_attention                   # replaced from outside for parallelism

    def forward(self, x, key_mask=None):              # x: [B, c, H]; key_mask: [B, L]
        b, c, h = x.shape
        q, k, v = self.qkv(x).view(b, c, 3, self.heads, h // self.heads).permute(2, 0, 3, 1, 4)
        p = self.attn_dropout if self.training else 0.0
        out = self.core(q, k, v, key_mask, p, causal=self.causal)   # [B, Z, c, A]
        return self.proj(out.transpose(1, 2).reshape(b, c, h))


class MLP(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.hidden, cfg.ffn)
        self.fc2 = nn.Linear(cfg.ffn, cfg.hidden)

    def forward(self, x):                             # [B, c, H] → [B, c, H]
        return self.fc2(F.gelu(self.fc1(x)))


class EncoderLayer(nn.Module):
    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.hidden, eps=cfg.ln_eps)
        self.attn = SelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.hidden, eps=cfg.ln_eps)
        self.mlp = MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, key_mask=None):
        x = x + self.drop(self.attn(self.ln1(x), key_mask))
        return x + self.drop(self.mlp(self.ln2(x)))


class MLMHead(nn.Module):
    def __init__(self, cfg: BertConfig, word: nn.Embedding):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden, cfg.hidden)
        self.ln = nn.LayerNorm(cfg.hidden, eps=cfg.ln_eps)
        self.word = word                              # tied decoder weight [V, H]
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))

    def forward(self, x):                             # [B, c, H] → [B, c, V]
        return F.linear(self.ln(F.gelu(self.dense(x))), self.word.weight, self.bias)


class BertMLM(nn.Module):
    """Pre-LN BERT with an MLM head. ``forward`` returns logits ``[B, c, V]``."""

    def __init__(self, cfg: BertConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = Embeddings(cfg)
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.layers))
        self.ln_f = nn.LayerNorm(cfg.hidden, eps=cfg.ln_eps)
        self.head = MLMHead(cfg, self.embed.word)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(self, ids, key_mask=None, positions=None):
        """ids: [B, c] token ids of a chunk; key_mask: [B, L] over the full sequence (True =
        real token); positions: [c] absolute positions of the chunk (default 0..c-1)."""
        if positions is None:
            positions = torch.arange(ids.shape[1], device=ids.device)
        if int(positions[-1]) >= self.cfg.max_len:
            raise ValueError(f"position {int(positions[-1])} exceeds the model's max_len "
                             f"{self.cfg.max_len}; raise max_len or shorten the sequence")
        x = self.embed(ids, positions)
        for layer in self.layers:
            x = layer(x, key_mask)
        return self.head(self.ln_f(x))


def mlm_loss_terms(logits, labels):
    """(sum of cross-entropy over masked tokens, their count); labels −100 are ignored."""
    loss_sum = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                               ignore_index=-100, reduction="sum")
    return loss_sum, (labels != -100).sum()
