"""Parallelism applied from outside the model, as a plan keyed by module name.

A paper's ``parallel.py`` writes its distribution as ``{pattern: style}``, the way
``torch.distributed.tensor.parallel.parallelize_module`` takes one::

    plan = {"blocks.*.attn.qkv": colwise, "blocks.*.attn.proj": rowwise, "head": vocab_parallel}
    model = apply_plan(model, plan)

``pattern`` is an ``fnmatch`` pattern over the qualified names of ``model.named_modules()``
(``*`` matches within and across dots); ``style(name, module)`` returns the module that takes its
place (it may return the module itself after changing it in place). Every pattern must match at
least one module, so a renamed layer fails loudly instead of silently staying serial.
"""
from __future__ import annotations

import fnmatch

import torch.nn as nn

from ..errors import UsageError


def matches(model: nn.Module, pattern: str) -> list[str]:
    """Qualified names of the submodules of ``model`` that ``pattern`` matches, in module order."""
    return [name for name, _ in model.named_modules() if name and fnmatch.fnmatchcase(name, pattern)]


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def swap(wrappers: dict) -> callable:
    """The style that replaces a module by ``wrappers[its type](module)``: ``{type: make}``,
    tried in order (a subclass before its base); a module of another type is a TypeError that
    names it, so a plan pattern that matches the wrong layer fails loudly."""
    def style(name: str, module: nn.Module) -> nn.Module:
        for kind, make in wrappers.items():
            if isinstance(module, kind):
                return make(module)
        kinds = " or ".join(k.__name__ for k in wrappers)
        raise TypeError(f"{name} is a {type(module).__name__}, not a {kinds}")
    return style


def apply_plan(model: nn.Module, plan: dict, strict: bool = True) -> nn.Module:
    """Replace every submodule matched by a pattern of ``plan`` with ``style(name, module)``.

    Patterns are applied in the plan's order; a module matched by two patterns gets the first.
    Returns ``model`` (changed in place). ``strict``: a pattern that matches nothing raises.
    """
    done: set[str] = set()
    for pattern, style in plan.items():
        names = [n for n in matches(model, pattern) if n not in done]
        if not names and strict:
            raise UsageError(f"parallel plan pattern {pattern!r} matches no module of "
                             f"{type(model).__name__}; module names look like "
                             f"{', '.join(n for n, _ in list(model.named_modules())[1:4])}")
        for name in names:
            new = style(name, model.get_submodule(name))
            if new is not model.get_submodule(name):
                _set(model, name, new)
            done.add(name)
    return model
