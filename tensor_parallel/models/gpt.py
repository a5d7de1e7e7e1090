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

import math
import zlib
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


# ---- initialisation: a counter-based draw, so that any piece of a weight is generated alone

_M32 = 0xFFFFFFFF
_CHUNK = 1 << 13          # elements generated at a time: temporaries of 64 KiB, reused


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (int64 tensors holding values < 2³²; no product exceeds 2⁶³)."""
    for _ in range(2):
        x = ((x ^ (x >> 16)) * 0x45D9F3B) & _M32
    return x ^ (x >> 16)


def _uniforms(idx: torch.Tensor, keys) -> tuple[torch.Tensor, torch.Tensor]:
    """Two U(0, 1) (open) float64 tensors for element indices ``idx``: hashes of (keys, index)."""
    h = (idx & _M32) ^ keys[0]
    if idx.numel() and int(idx.max()) > _M32:
        h = h ^ _mix32(idx >> 32)
    h1 = _mix32(h)
    h2 = _mix32(h1 ^ keys[1])
    return (h1.double() + 0.5) / 4294967296.0, (h2.double() + 0.5) / 4294967296.0


def init_kind(name: str) -> str:
    """How the GPT initialises parameter ``name``: "normal" (std 0.02: Linear and embedding
    weights, as GPT-2), "ones" (LayerNorm γ) or "zeros" (biases, LayerNorm β)."""
    module, _, leaf = name.rpartition(".")
    if leaf == "bias":
        return "zeros"
    return "ones" if module.rpartition(".")[2].startswith("ln") else "normal"


def init_values(name: str, shape, region, seed: int, std: float = 0.02,
                device=None) -> torch.Tensor:
    """The initial values of ``region`` (``[(start, length)]`` per dim) of parameter ``name``
    (serial ``shape``) of a GPT whose ``init_seed`` is ``seed``, as a float32 tensor on ``device``.

    Element ``i`` (flat index in the serial tensor) of a "normal" parameter is
    ``std·sqrt(−2 ln u₁)·cos(2π u₂)`` (Box–Muller) with ``u₁, u₂`` hashes of ``(seed, name, i)``:
    the serial model and every shard of a parallel one compute the same values, each only its
    own piece (no full tensor, no shared RNG state)."""
    size = [n for _, n in region]
    kind = init_kind(name)
    if kind != "normal":
        return (torch.ones if kind == "ones" else torch.zeros)(size, device=device)
    key = [zlib.crc32(f"{seed}:{name}:{k}".encode()) for k in (1, 2)]
    cols = shape[1] if len(shape) > 1 else 1
    c0, nc = region[1] if len(shape) > 1 else (0, 1)
    r0, nr = region[0]
    out = torch.empty(nr, nc, device=device)
    step = max(1, _CHUNK // nc)
    col = torch.arange(c0, c0 + nc, dtype=torch.int64, device=device)
    for a in range(0, nr, step):
        rows = torch.arange(r0 + a, r0 + min(a + step, nr), dtype=torch.int64, device=device)
        idx = rows[:, None] * cols + col[None, :]
        u1, u2 = _uniforms(idx, key)
        out[a:a + len(rows)] = (std * torch.sqrt(-2.0 * torch.log(u1))
                                * torch.cos(2.0 * math.pi * u2)).float()
    return out.reshape(size)


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
        # one draw from the global RNG (before any layer's own init) picks the initial values,
        # which init_values computes (so a meta-device build draws the same seed)
        self.init_seed = int(torch.randint(0, 2 ** 31 - 1, (), device="cpu"))
        self.tok = nn.Embedding(cfg.vocab_size, cfg.hidden)
        self.pos = nn.Embedding(cfg.seq_len, cfg.hidden)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.layers))
        self.ln_f = nn.LayerNorm(cfg.hidden)
        self.head = nn.Linear(cfg.hidden, cfg.vocab_size, bias=False)
        self.init_weights()

    def init_weights(self) -> None:
        """Every parameter from :func:`init_values` (nothing to do on the meta device)."""
        with torch.no_grad():
            for name, p in self.named_parameters():
                if not p.is_meta:
                    full = [(0, n) for n in p.shape]
                    p.copy_(init_values(name, p.shape, full, self.init_seed, device=p.device))

    def set_checkpointing(self, on: bool = True, context_fn=None) -> None:
        """Activation checkpointing per block (``--checkpoint_activations``): each block's
        activations are recomputed in backward instead of stored; gradients are unchanged."""
        for block in self.blocks:
            block.checkpoint = on
            block.checkpoint_context = context_fn or noop_context_fn

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
