"""Model registry (after timm): ``@register_model`` entry points, ``create_model``, ``list_models``."""
from __future__ import annotations

import fnmatch

_MODELS: dict = {}


def register_model(fn):
    """Register ``fn(**overrides) -> nn.Module`` under its function name."""
    _MODELS[fn.__name__] = fn
    return fn


def list_models(pattern: str = "*") -> list[str]:
    """Sorted names of the registered models matching a shell pattern (``"widenet_*"``)."""
    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern))


def create_model(name: str, **overrides):
    """Build a registered model; keyword overrides replace its default settings.

    Build it under ``with torch.device("meta"):`` to count parameters without allocating them.
    """
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(list_models())}")
    return _MODELS[name](**overrides)
