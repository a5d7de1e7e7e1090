"""Single-device models of F2C and its baselines (no communication here; ``f2c.parallel``
distributes them).

iresnet: IResNet (``ir50``, ``ir18``, ``ir_tiny``), ``create_backbone``, ``list_backbones``
heads: margins (CosFace, ArcFace, SV), ``MarginFC`` (full FC), ``PartialFC``
pool: ``DynamicClassPool`` (LRU over identities, two slots per column, trial and undo)
f2c: ``F2C`` (P-Net, EMA G-Net, pool), ``pool_loss``, ``ema_update_``
"""
from .f2c import F2C, ema_update_, hard_negatives, pool_loss
from .heads import MARGINS, FaceClassifier, MarginFC, PartialFC, margin_logits, shard_bounds
from .iresnet import IResNet, backbone_defaults, create_backbone, list_backbones
from .pool import DynamicClassPool

__all__ = ["F2C", "ema_update_", "hard_negatives", "pool_loss", "MARGINS", "MarginFC",
           "PartialFC", "margin_logits", "shard_bounds", "IResNet", "create_backbone",
           "list_backbones", "backbone_defaults", "DynamicClassPool", "FaceClassifier"]

