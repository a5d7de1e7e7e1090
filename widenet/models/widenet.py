"""Entry points for ViT, ViT-MoE and WideNet (arXiv 2107.11817, Table 1 and the brief, Sec. 2).

WideNet = ``VisionTransformer(share_attention=True, share_ffn=True, num_moe_layers=depth)``:
one attention and one MoE (router + E experts) reused by every block, individual LayerNorms.
ViT-MoE = ViT whose last ``num_moe_layers`` blocks have their own MoE (official ``switch_deepth``;
2 of 12 for B and 4 of 24 for L reproduce the paper's 128M and 406M). MoE models use the GAP head,
ViT the CLS-token head; all have the pre-logits tanh layer and 1001 classes (official code).

The ``*_tiny`` variants share one setting (width 64, 6 blocks, 4 heads, 32x32 images with 8x8
patches, 10 classes) so that the CPU reproduction compares them at matched width and depth.
"""
from __future__ import annotations

from .registry import register_model
from .vit import VisionTransformer

_B = dict(dim=768, depth=12, heads=12, mlp_dim=3072, moe_dim=4096)
_L = dict(dim=1024, depth=24, heads=16, mlp_dim=4096, moe_dim=4096)
_H = dict(dim=1280, depth=32, heads=16, mlp_dim=5120, moe_dim=5120)
_TINY = dict(img_size=32, patch_size=8, num_classes=10, dim=64, depth=6, heads=4, mlp_dim=256,
             moe_dim=256)
_MOE = dict(num_experts=4, top_k=2, capacity_factor=1.2, pool="gap")
_WIDE = dict(_MOE, share_attention=True, share_ffn=True)


def _vit(base: dict, overrides: dict, **kind) -> VisionTransformer:
    return VisionTransformer(**{**base, **kind, **overrides})


def _widenet(base: dict, overrides: dict) -> VisionTransformer:
    depth = overrides.get("depth", base["depth"])  # every block uses the shared MoE
    return _vit(base, overrides, num_moe_layers=depth, **_WIDE)


@register_model
def vit_b16(**kw):
    """ViT-B/16: 12 x 768, 12 heads, FFN 3072; paper 87M."""
    return _vit(_B, kw, pool="cls")


@register_model
def vit_l16(**kw):
    """ViT-L/16: 24 x 1024, 16 heads, FFN 4096; paper 305M."""
    return _vit(_L, kw, pool="cls")


@register_model
def vit_tiny(**kw):
    return _vit(_TINY, kw, pool="cls")


@register_model
def vit_moe_b(**kw):
    """ViT-MoE-B: ViT-B with MoE (E=4, expert FFN 4096) in the last 2 blocks; paper 128M."""
    return _vit(_B, kw, num_moe_layers=2, **_MOE)


@register_model
def vit_moe_l(**kw):
    """ViT-MoE-L: ViT-L with MoE (E=4, expert FFN 4096) in the last 4 blocks; paper 406M."""
    return _vit(_L, kw, num_moe_layers=4, **_MOE)


@register_model
def vit_moe_tiny(**kw):
    return _vit(_TINY, kw, num_moe_layers=2, **_MOE)


@register_model
def widenet_b(**kw):
    """WideNet-B: 12 blocks of width 768 sharing one attention and one MoE (E=4, 4096); 29M."""
    return _widenet(_B, kw)


@register_model
def widenet_l(**kw):
    """WideNet-L: 24 blocks of width 1024 sharing one attention and one MoE (E=4, 4096); 40M."""
    return _widenet(_L, kw)


@register_model
def widenet_h(**kw):
    """WideNet-H: 32 blocks of width 1280 sharing one attention and one MoE (E=4, 5120); 63M."""
    return _widenet(_H, kw)


@register_model
def widenet_tiny(**kw):
    return _widenet(_TINY, kw)
