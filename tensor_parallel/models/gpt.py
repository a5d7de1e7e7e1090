"""A pre-LN GPT language model in plain PyTorch (the serial reference of every parallel mode).

After nanoGPT (Karpathy) and GPT-2 (Radford et al. 2019): token + learned position embedding,
``layers`` pre-LN blocks (causal self-attention, then a GELU MLP of width ``4h``), a final
LayerNorm and an untied LM head. Single-device code: ``tensor_parallel.parallel`` builds the
1D/2D/2.5D/3D versions from this model's weights, from the outside.

Layout detail that the parallel modes rely on: the fused QKV projection's output is ordered
per head, ``[heads, 3, head_dim]`` (q, k, v of head 0, then of head 1, ...), so any contiguous
split of its output features into P chunks (P dividing ``heads``) gives each rank whole heads.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint, noop_context_fn


@dataclass
class GPTConfig:
    vocab_size: int = 256
    seq_len: int = 64
    hidden: int = 96
    heads: int = 6
    layers: int = 2
    dropout: float = 0.0


def num_parameters(cfg: GPTConfig) -> int:
    """Parameters of ``GPT(cfg)``, without building it."""
    h = cfg.hidden
    block = 2 * 2 * h + (3 * h * h + 3 * h) + (h * h + h) + (4 * h * h + 4 * h) + (4 * h * h + h)
    return 2 * cfg.vocab_size * h + cfg.seq_len * h + cfg.layers * block + 2 * h


def attention_core(qkv: torch.Tensor, heads: int, dropout: float, training: bool) -> torch.Tensor:
    """Causal attention of a per-head-ordered QKV tensor.

    qkv: [B, T, heads·3·hd] → [B, T, heads·hd]. Used unchanged by every parallel mode on its
    local heads (``heads`` is then the local head count)."""
    B, T, C3 = qkv.shape
    hd = C3 // (3 * heads)
    qkv = qkv.view(B, T, heads, 3, hd).permute(3, 0, 2, 1, 4)     # (3, B, nh, T, hd)
    q, k, v = qkv[0], qkv[1], qkv[2]
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                       dropout_p=dropout if training else 0.0)  # (B, nh, T, hd)
    return y.transpose(1, 2).reshape(B, T, heads * hd)


class Attention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.heads, self.dropout = cfg.heads, cfg.dropout
        self.qkv = nn.Linear(cfg.hidden, 3 * cfg.hidden)
        self.proj = nn.Linear(cfg.hidden, cfg.hidden)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x):                                  # x: (B, T, h)
        y = attention_core(self.qkv(x), self.heads, self.dropout, self.training)
        return self.drop(self.proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.hidden, 4 * cfg.hidden)
        self.fc2 = nn.Linear(4 * cfg.hidden, cfg.hidden)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x):                                  # (B, T, h) -> (B, T, 4h) -> (B, T, h)
        return self.drop(self.fc2(F.gelu(self.fc1(x))))


class Block(nn.Module):
    """Pre-LN block. With ``checkpoint`` on (:meth:`GPT.set_checkpointing`), training keeps
    only the block's input for backward and recomputes the rest (``torch.utils.checkpoint``,
    non-reentrant); ``checkpoint_context`` is its ``context_fn`` (a parallel model passes one
    that replays its own dropout RNG streams in the recomputation)."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.hidden)
        self.attn = Attention(cfg)
        self.ln2 = nn.LayerNorm(cfg.hidden)
        self.mlp = MLP(cfg)
        self.checkpoint = False
        self.checkpoint_context = noop_context_fn

    def _body(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))

    def forward(self, x):
        if self.checkpoint and torch.is_grad_enabled():
            return checkpoint(self._body, x, use_reentrant=False,
                              context_fn=self.checkpoint_context)
        return self._body(x)


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        if cfg.hidden % cfg.heads:
            raise ValueError(f"hidden={cfg.hidden} is not divisible by heads={cfg.heads}; "
                             f"choose hidden as a multiple of heads")
        self.cfg = cfg
        self.tok = nn.Embedding(cfg.vocab_size, cfg.hidden)
        self.pos = nn.Embedding(cfg.seq_len, cfg.hidden)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.ln_f = nn.LayerNorm(cfg.hidden)
        self.head = nn.Linear(cfg.hidden, cfg.vocab_size, bias=False)
        self.apply(self._init_weights)

    def set_checkpointing(self, on: bool = True, context_fn=None) -> None:
        """Activation checkpointing per block (``--checkpoint_activations``): each block's
        activations are recomputed in backward instead of stored; gradients are unchanged."""
        for block in self.blocks:
            block.checkpoint = on
            block.checkpoint_context = context_fn or noop_context_fn

    @staticmethod
    def _init_weights(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        """idx, targets: (B, T) int64. Returns (logits (B, T, V), mean loss or None)."""
        B, T = idx.shape
        if T > self.cfg.seq_len:
            raise ValueError(f"sequence of {T} tokens is longer than seq_len={self.cfg.seq_len}")
        x = self.drop(self.tok(idx) + self.pos(torch.arange(T, device=idx.device)))  # (B, T, h)
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.ln_f(x))                                            # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
        return logits, loss
