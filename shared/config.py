"""Configs as dataclasses, named presets, and ``--key value`` command-line overrides.

A paper defines one dataclass and a dict of presets (partial overrides of the defaults, named
after the paper's table rows plus ``tiny`` for CPU runs)::

    @dataclass
    class Config:
        lr: float = 1e-3
        layers: int = 12
        mode: str = "1d"

    PRESETS = {"tiny": dict(layers=2), "paper_base": dict(layers=12, lr=3e-4)}
    cfg = parse_config(Config, PRESETS, ["--preset", "tiny", "--lr", "0.01"])

Values are converted to the field's annotated type (int, float, str, bool, Optional[...],
tuple/list of those written comma-separated); a boolean key given without a value (``--smoke``)
means true; an unknown key, a bad value or an unknown preset
raises :class:`ConfigError` naming it and the valid choices. ``save_config`` writes the resolved
config as JSON beside a run; ``load_config`` reads it back.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import sys
import types
import typing
from pathlib import Path


class ConfigError(ValueError):
    """A bad preset name, key or value on the command line."""


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _convert(text: str, tp, key: str):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if text.lower() in ("none", "null") and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(text, inner[0], key)
    if origin in (tuple, list):
        item = args[0] if args else str
        parts = [p for p in text.split(",") if p.strip() != ""]
        vals = [_convert(p.strip(), item, key) for p in parts]
        return tuple(vals) if origin is tuple else vals
    if tp is bool:
        low = text.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ConfigError(f"--{key} expects a boolean (true/false); got {text!r}")
    if tp is int:
        try:
            return int(text)
        except ValueError:
            pass
        try:  # accept 1e4-style integers
            f = float(text)
        except ValueError:
            f = None
        if f is not None and f.is_integer():
            return int(f)
        raise ConfigError(f"--{key} expects int; got {text!r}")
    if tp in (float, str):
        try:
            return tp(text)
        except ValueError:
            raise ConfigError(f"--{key} expects {tp.__name__}; got {text!r}") from None
    if tp is typing.Any:
        return text
    raise ConfigError(f"--{key}: cannot parse values of type {tp}")


def _check_value(value, tp, key: str):
    """Type-check a preset/default value (so presets cannot silently carry the wrong type)."""
    if isinstance(value, str):
        return _convert(value, tp, key) if tp is not str else value
    return value


def config_fields(cls) -> dict[str, tuple]:
    """``{name: (type, default)}`` of a config dataclass."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        out[f.name] = (hints[f.name], default)
    return out


def _unknown(key: str, valid) -> ConfigError:
    close = difflib.get_close_matches(key, list(valid), n=3)
    hint = f"; did you mean {', '.join('--' + c for c in close)}?" if close else ""
    return ConfigError(f"unknown config key --{key}{hint} Valid keys: "
                       f"{', '.join(sorted(valid))}")


def help_text(cls, presets: dict | None = None) -> str:
    """The ``--help`` text: every key with its type and default, and the preset names."""
    lines = [f"{cls.__name__} options (--key value):"]
    for name, (tp, default) in config_fields(cls).items():
        tname = getattr(tp, "__name__", str(tp).replace("typing.", ""))
        lines.append(f"  --{name:<24} {tname:<14} default {default!r}")
    if presets:
        lines.append(f"presets (--preset NAME): {', '.join(presets)}")
    return "\n".join(lines)


def parse_config(cls, presets: dict | None = None, argv: list[str] | None = None,
                 default_preset: str | None = "tiny", extra: dict | None = None):
    """Build ``cls`` from defaults, then a preset, then ``--key value`` overrides.

    Args:
        cls: the config dataclass.
        presets: name → dict of field overrides.
        argv: command-line words; ``--key=value`` also works. When ``argv`` is None the words
            come from ``sys.argv`` and a bad one ends the program with a one-line error
            (exit status 2, like argparse); with an explicit ``argv`` a :class:`ConfigError`
            is raised instead.
        default_preset: preset used when ``--preset`` is not given (if it exists).
        extra: overrides applied after the preset and before the command line.
    """
    if argv is None:
        try:
            return _parse(cls, presets, sys.argv[1:], default_preset, extra)
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
    return _parse(cls, presets, argv, default_preset, extra)


def _parse(cls, presets, argv, default_preset, extra):
    argv = list(argv)
    presets = presets or {}
    fields = config_fields(cls)
    pairs: list[tuple[str, str]] = []
    i = 0
    while i < len(argv):
        word = argv[i]
        if word in ("-h", "--help"):
            print(help_text(cls, presets))
            raise SystemExit(0)
        if not word.startswith("--"):
            raise ConfigError(f"expected --key value, got {word!r}")
        if "=" in word:
            key, value = word[2:].split("=", 1)
            i += 1
        else:
            key = word[2:]
            bare = i + 1 >= len(argv) or argv[i + 1].startswith("--")
            name = key.replace("-", "_")
            if bare and name not in fields and name != "preset":
                raise _unknown(name, fields)
            if bare and fields.get(name, (None,))[0] is bool:
                value, i = "true", i + 1          # a bare boolean flag: --smoke
            elif bare:
                raise ConfigError(f"--{key} needs a value")
            else:
                value, i = argv[i + 1], i + 2
        pairs.append((key.replace("-", "_"), value))
    preset = default_preset if default_preset in presets else None
    for key, value in pairs:
        if key == "preset":
            preset = value
    values = {name: default for name, (_, default) in fields.items()}
    if preset is not None:
        if preset not in presets:
            raise ConfigError(f"unknown preset {preset!r}; presets: {', '.join(presets)}")
        for key, value in presets[preset].items():
            if key not in fields:
                raise ConfigError(f"preset {preset!r} sets unknown key {key!r}")
            values[key] = _check_value(value, fields[key][0], key)
    for key, value in (extra or {}).items():
        if key not in fields:
            raise _unknown(key, fields)
        values[key] = value
    for key, value in pairs:
        if key == "preset":
            continue
        if key not in fields:
            raise _unknown(key, fields)
        values[key] = _convert(value, fields[key][0], key)
    cfg = cls(**values)
    if "preset" in fields and preset is not None:
        cfg = dataclasses.replace(cfg, preset=preset)
    return cfg


def config_to_dict(cfg) -> dict:
    """The config as a plain dict (what ``save_config`` writes)."""
    return dataclasses.asdict(cfg)


def save_config(cfg, path) -> Path:
    """Write the resolved config as JSON (the run directory's ``config.json``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config_to_dict(cfg), indent=2, default=str) + "\n")
    return path


def load_config(cls, path):
    """Read a config saved by :func:`save_config` (tuples restored from JSON lists)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no config file at {path}")
    data = json.loads(path.read_text())
    fields = config_fields(cls)
    unknown = set(data) - set(fields)
    if unknown:
        raise ConfigError(f"{path} has keys {sorted(unknown)} that {cls.__name__} does not know")
    for key, value in data.items():
        if typing.get_origin(fields[key][0]) is tuple and isinstance(value, list):
            data[key] = tuple(value)
    return cls(**data)
