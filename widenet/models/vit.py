"""Pre-LN Vision Transformer with optional MoE blocks and cross-block sharing.

One class covers the three model families of WideNet (arXiv 2107.11817):

* ViT (Dosovitskiy et al., arXiv 2010.11929): dense FFN in every block, CLS-token classifier;
* ViT-MoE: the last ``n`` blocks use their own MoE FFN (official ``switch_deepth``), GAP head;
* WideNet: every block reuses *one* attention module and *one* MoE (router + experts), while each
  block keeps its own two LayerNorms, GAP head.

Block i: ``x += Attn(LN_i^att(x)); x += FFN_i(LN_i^ffn(x))``. Shared modules are the same Python
objects in every block, so ``model.parameters()`` yields them once and their gradients accumulate
over all uses. Conventions of the official code (brief, Sec. 1-2): patch conv p x p stride p,
constant zero CLS token (a buffer, not trained), learned position embedding N(0, 0.02), embedding
dropout, pre-logits Dense(d) + tanh, 1001 classes for ImageNet, LN eps 1e-6, Glorot-uniform
Dense/conv kernels with zero biases, attention dropout 0, a GELU after both FFN Dense layers.

``forward`` returns :class:`ModelOutput` with the logits, the load-balancing loss summed over all
MoE applications (returned explicitly, never kept in global state) and the per-application
fraction of dropped assignments.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from timm.layers import Attention, PatchEmbed

from .moe import MoE


@dataclass
class ModelOutput:
    logits: torch.Tensor                      # (B, num_classes)
    aux_loss: torch.Tensor                    # scalar: sum of the MoE load-balancing losses
    dropped: list = field(default_factory=list)  # per MoE application: dropped fraction (scalar)


def glorot_(linear: nn.Linear) -> nn.Linear:
    nn.init.xavier_uniform_(linear.weight)
    if linear.bias is not None:
        nn.init.zeros_(linear.bias)
    return linear


def patch_embed(img_size: int, patch_size: int, in_chans: int, dim: int) -> nn.Module:
    """timm's ``PatchEmbed``: image (B, 3, H, W) -> patch tokens (B, H/p * W/p, d) by a p x p conv
    with stride p (the official embedding), Glorot-uniform kernel, zero bias."""
    if img_size % patch_size:
        raise ValueError(f"image size {img_size} is not divisible by the patch size "
                         f"{patch_size}; choose an image size that is a multiple of it")
    embed = PatchEmbed(img_size, patch_size, in_chans, dim)
    embed.patch_size = patch_size                                   # an int, as in the config
    nn.init.xavier_uniform_(embed.proj.weight)
    nn.init.zeros_(embed.proj.bias)
    return embed


def attention(dim: int, heads: int) -> nn.Module:
    """timm's ``Attention`` (fused scaled-dot-product, Q/K/V/O with biases, no attention dropout):
    the official multi-head attention, Glorot-uniform kernels, zero biases."""
    if dim % heads:
        raise ValueError(f"width {dim} is not divisible by {heads} heads")
    attn = Attention(dim, num_heads=heads, qkv_bias=True)
    glorot_(attn.qkv)
    glorot_(attn.proj)
    return attn


class Mlp(nn.Module):
    """Dense FFN ``Dense(d->f) GELU Drop Dense(f->d) [GELU] Drop`` (official Keras ``mlp()``).

    Written here, not timm's ``Mlp``: the official FFN has a GELU after the second Dense too,
    which timm's does not."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.1, second_gelu: bool = True):
        super().__init__()
        self.fc1 = glorot_(nn.Linear(dim, hidden))
        self.fc2 = glorot_(nn.Linear(hidden, dim))
        self.drop = nn.Dropout(dropout)
        self.second_gelu = second_gelu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc2(self.drop(F.gelu(self.fc1(x))))
        return self.drop(F.gelu(y) if self.second_gelu else y)


class Block(nn.Module):
    """Pre-LN block with its own LayerNorms around (possibly shared) attention and FFN/MoE."""

    def __init__(self, dim: int, attn: nn.Module, ffn: nn.Module):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = attn
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.ffn = ffn

    def forward(self, x: torch.Tensor):
        x = x + self.attn(self.norm1(x))
        if isinstance(self.ffn, MoE):
            y, stats = self.ffn(self.norm2(x))
            return x + y, stats
        return x + self.ffn(self.norm2(x)), None


class VisionTransformer(nn.Module):
    """ViT / ViT-MoE / WideNet.

    Args:
        img_size, patch_size, in_chans, num_classes: input and output sizes.
        dim, depth, heads, mlp_dim: width, number of blocks, heads, dense FFN width.
        num_moe_layers: how many of the *last* blocks use an MoE FFN (0: plain ViT).
        moe_dim, num_experts, top_k, capacity_factor, noise_std: MoE settings (see ``MoE``).
        share_attention: one attention module for all blocks (WideNet ``--share_att``).
        share_ffn: one FFN/MoE module for all blocks (WideNet ``--share_ffn``).
        pool: ``"cls"`` (the CLS token) or ``"gap"`` (mean over all tokens, CLS included).
        representation: pre-logits Dense(d) + tanh before the head.
        dropout: embedding and FFN dropout.
    """

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3,
                 num_classes: int = 1001, dim: int = 768, depth: int = 12, heads: int = 12,
                 mlp_dim: int = 3072, num_moe_layers: int = 0, moe_dim: int = 4096,
                 num_experts: int = 4, top_k: int = 2, capacity_factor: float = 1.2,
                 noise_std: float | None = None, share_attention: bool = False,
                 share_ffn: bool = False, pool: str = "cls", representation: bool = True,
                 dropout: float = 0.1, second_gelu: bool = True):
        super().__init__()
        if pool not in ("cls", "gap"):
            raise ValueError(f"pool must be 'cls' or 'gap'; got {pool!r}")
        if not 0 <= num_moe_layers <= depth:
            raise ValueError(f"num_moe_layers={num_moe_layers} must be between 0 and depth={depth}")
        self.pool = pool
        self.patch_embed = patch_embed(img_size, patch_size, in_chans, dim)
        self.register_buffer("cls_token", torch.zeros(1, 1, dim))  # constant zero, not trained
        self.pos_embed = nn.Parameter(torch.empty(1, self.patch_embed.num_patches + 1, dim))
        nn.init.normal_(self.pos_embed, std=0.02)
        self.pos_drop = nn.Dropout(dropout)

        def make_attn():
            return attention(dim, heads)

        def make_ffn(i):
            if i >= depth - num_moe_layers:
                return MoE(dim, moe_dim, num_experts, top_k, capacity_factor, noise_std,
                           dropout, second_gelu)
            return Mlp(dim, mlp_dim, dropout, second_gelu)

        shared_attn = make_attn() if share_attention else None   # one object for every block
        shared_ffn = make_ffn(depth - 1) if share_ffn else None
        self.blocks = nn.ModuleList(
            Block(dim, shared_attn if share_attention else make_attn(),
                  shared_ffn if share_ffn else make_ffn(i)) for i in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pre_logits = (nn.Sequential(glorot_(nn.Linear(dim, dim)), nn.Tanh())
                           if representation else nn.Identity())
        self.head = glorot_(nn.Linear(dim, num_classes))

    def forward(self, images: torch.Tensor) -> ModelOutput:
        x = self.patch_embed(images)                                   # (B, N, d)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        x = self.pos_drop(x + self.pos_embed)                          # (B, N+1, d)
        aux = x.new_zeros((), dtype=torch.float32)
        dropped = []
        for block in self.blocks:
            x, stats = block(x)
            if stats is not None:
                aux = aux + stats.aux_loss
                dropped.append(stats.dropped)
        x = self.norm(x)
        x = x[:, 0] if self.pool == "cls" else x.mean(dim=1)          # (B, d)
        return ModelOutput(self.head(self.pre_logits(x)), aux, dropped)


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters, each shared object counted once (``parameters()`` deduplicates)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def moe_modules(model: nn.Module) -> list:
    """The distinct MoE modules of a model (a WideNet has exactly one)."""
    seen, out = set(), []
    for m in model.modules():
        if isinstance(m, MoE) and id(m) not in seen:
            seen.add(id(m))
            out.append(m)
    return out

