"""WideNet models: ``create_model(name, **overrides)`` and ``list_models(pattern)``.

Registered: ``vit_b16``, ``vit_l16``, ``vit_moe_b``, ``vit_moe_l``, ``widenet_b``, ``widenet_l``,
``widenet_h`` (the paper's ImageNet-1K rows) and the CPU variants ``vit_tiny``, ``vit_moe_tiny``,
``widenet_tiny`` (same width, depth and recipe, so they compare like the paper's rows); the NLP
half (v3): ``albert_base``, ``widenet_nlp_e4/e8/e16`` and ``albert_tiny``, ``widenet_nlp_tiny``.
"""
from . import albert as _albert  # noqa: F401  (registers the NLP entry points)
from . import widenet as _widenet  # noqa: F401  (registers the entry points)
from .moe import MoE, MoEStats, expert_capacity, load_balance_loss
from .registry import create_model, list_models, register_model
from .vit import ModelOutput, VisionTransformer, count_parameters, moe_modules

__all__ = ["create_model", "list_models", "register_model", "VisionTransformer", "ModelOutput",
           "MoE", "MoEStats", "expert_capacity", "load_balance_loss", "count_parameters",
           "moe_modules"]
