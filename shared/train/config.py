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
from dataclasses import dataclass
from typing import ClassVar, Optional
import difflib
import json
import sys
import types
import typing
from pathlib import Path

from ..errors import UsageError


class ConfigError(UsageError):
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


def _is_bool(tp) -> bool:
    """``bool`` or ``Optional[bool]``: a bare ``--flag`` means true."""
    if tp is bool:
        return True
    args = typing.get_args(tp)
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and bool in args


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
                 default_preset: str | None = "tiny", extra: dict | None = None,
                 check: bool = True):
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
        check: call the config's ``validate()`` (off where the values are not final yet, e.g.
            the flags given with ``--resume`` before the run's own config is read).
    """
    if argv is None:
        try:
            return _parse(cls, presets, sys.argv[1:], default_preset, extra, check)
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
    return _parse(cls, presets, argv, default_preset, extra, check)


def _parse(cls, presets, argv, default_preset, extra, check=True):
    argv = [w for w in argv if w != "--"]     # torchrun ... -m paper.train -- --key value
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
            if bare and _is_bool(fields.get(name, (None,))[0]):
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
    validate = getattr(cfg, "validate", None)
    if check and callable(validate):
        validate()
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


# ----------------------------------------------------------------------------------------------
# The glossary: every paper's config derives from TrainConfig, so the same flag means the same
# thing everywhere. A paper adds its own fields (model sizes, data options) and presets.

@dataclass
class TrainConfig:
    """Fields and flags shared by every paper's ``train.py`` (and read by ``eval.py``).

    A paper subclasses it as a dataclass, sets ``MODES`` (its valid ``--mode`` values, first =
    default) and ``FIXED_ON_RESUME`` (its fields that define the model or the data split), and may
    extend :meth:`validate`.
    """
    MODES: ClassVar[tuple[str, ...]] = ("data",)
    FIXED_ON_RESUME: ClassVar[tuple[str, ...]] = ()

    # ---- the same flags in every paper
    preset: str = "tiny"
    """named preset the run starts from (a paper's table rows, plus ``tiny`` for CPU)"""
    mode: str = ""
    """parallel mode; "" = the paper's first mode (see ``MODES``)"""
    data: str = ""
    """dataset path; "" = the paper's generated (or built-in) data"""
    run: str = ""
    """run name: the run directory is ``out_dir/run``; "" = a timestamp; an existing name is refused"""
    resume: str = ""
    """run directory (or run name under ``out_dir``) to continue; restores its config"""
    device: str = "auto"
    """auto (CUDA when present) | cpu | cuda"""
    seed: int = 0
    timeout: float = 600.0
    """seconds a collective waits for a silent rank before the job ends, naming that rank"""
    # ---- optimisation and schedule
    steps: int = 1000
    """optimizer steps of the whole run (the schedule ends here)"""
    warmup_steps: int = 0
    """linear warm-up from ``min_lr`` to ``lr`` over this many steps"""
    schedule: str = "cosine"
    """cosine | linear | constant | poly: the decay from ``lr`` to ``min_lr`` after warm-up (timm)"""
    poly_power: float = 2.0
    """exponent of the ``poly`` decay, ``(1 - progress) ** poly_power``"""
    lr: float = 1e-3
    min_lr: float = 0.0
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    """clip the global gradient norm (over every shard and replica) to this; 0 = off"""
    batch_size: int = 32
    """global batch, over all data-parallel ranks"""
    # ---- bookkeeping
    log_every: int = 10
    eval_every: int = 0
    """steps between evaluations; 0 = at the end only"""
    ckpt_every: int = 0
    """steps between checkpoints; 0 = at the end only (and at SIGTERM/SIGINT)"""
    stop_at: int = 0
    """> 0: checkpoint and stop at this step, the schedule unchanged (resume later)"""
    out_dir: str = ""
    """root of the run directories; "" = <repo>/runs/<paper>"""
    threads: int = 0
    """torch CPU threads per process; 0 = torch's default"""
    amp: Optional[bool] = None
    """bf16 autocast: None = on for CUDA, off on CPU; --amp forces it on (CPU autocast too)"""
    tensorboard: bool = False
    """also write TensorBoard event files beside metrics.jsonl"""
    quiet: bool = False
    """no progress bar"""
    debug: bool = False
    """show the traceback of a bad-input error instead of one line"""

    # fields that may always change on resume (where to stop, how to report, how to run)
    RUNTIME_FIELDS: ClassVar[tuple[str, ...]] = (
        "preset", "mode", "run", "resume", "device", "timeout", "steps", "log_every", "eval_every",
        "ckpt_every", "stop_at", "out_dir", "threads", "amp", "tensorboard", "quiet", "debug")

    def validate(self) -> None:
        """Raise :class:`ConfigError` on a value that cannot work (one line, with the fix)."""
        if not self.mode:
            self.mode = self.MODES[0]
        if self.mode not in self.MODES:
            raise ConfigError(f"--mode {self.mode!r} is not a mode of this paper; "
                              f"choose one of: {', '.join(self.MODES)}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"--device {self.device!r}: choose auto, cpu or cuda")
        if self.schedule not in ("cosine", "linear", "constant", "poly"):
            raise ConfigError(f"--schedule {self.schedule!r}: choose cosine, linear, constant "
                              f"or poly")
        for name in ("steps", "batch_size", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name} must be at least 1; got {getattr(self, name)}")
        for name in ("warmup_steps", "eval_every", "ckpt_every", "stop_at", "threads",
                     "grad_clip", "weight_decay", "min_lr"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name} must be >= 0; got {getattr(self, name)} "
                                  f"(0 turns it off)")
        if self.poly_power <= 0:
            raise ConfigError(f"--poly_power must be positive; got {self.poly_power}")
        if self.lr <= 0:
            raise ConfigError(f"--lr must be positive; got {self.lr}")
        if self.timeout <= 0:
            raise ConfigError(f"--timeout must be a positive number of seconds; got {self.timeout}")
        if self.warmup_steps >= self.steps and self.steps > 1:
            raise ConfigError(f"--warmup_steps {self.warmup_steps} must be below --steps "
                              f"{self.steps}")


@dataclass
class EvalConfig:
    """Flags shared by every paper's ``eval.py`` (a paper subclasses it to add its own, sets
    ``MODES`` to its modes and extends :meth:`validate`)."""
    MODES: ClassVar[tuple[str, ...]] = ()
    """the paper's modes; () = the paper has none and ``--mode`` is refused"""
    run: str = ""
    """run directory, or a run name under ``--out_dir``; "" = the newest run with a checkpoint
    (of ``--mode``, when given)"""
    out_dir: str = ""
    """root of the run directories; "" = <repo>/runs/<paper>"""
    mode: str = ""
    """without --run: the newest run of this mode; with --run: the run must be of this mode"""
    data: str = ""
    """dataset path; "" = the one the run was trained on"""
    batch_size: int = 0
    """evaluation batch; 0 = the run's"""
    device: str = "auto"
    """auto (CUDA when present) | cpu | cuda"""
    threads: int = 0
    """CPU threads; 0 = torch's default"""
    debug: bool = False

    def validate(self) -> None:
        """Raise :class:`ConfigError` on a value that cannot work (one line, with the fix)."""
        if self.mode and self.mode not in self.MODES:
            paper = type(self).__module__.split(".")[0]
            paper = "this paper" if paper in ("shared", "__main__") else paper
            choose = (f"choose one of: {', '.join(self.MODES)}" if self.MODES
                      else f"{paper} has no modes; drop --mode")
            raise ConfigError(f"--mode {self.mode!r} is not a mode of {paper}; {choose}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"--device {self.device!r}: choose auto, cpu or cuda")
        for name in ("batch_size", "threads"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name} must be >= 0 (0 = the default); got "
                                  f"{getattr(self, name)}")

    def torch_device(self):
        """The evaluation device (``auto``: CUDA when present), after setting ``--threads``; a
        clear error for ``--device cuda`` without CUDA."""
        import torch

        if self.threads > 0:
            torch.set_num_threads(self.threads)
        require_device(self.device)
        return torch.device("cuda" if self.device != "cpu" and torch.cuda.is_available() else "cpu")


def require_device(device: str) -> None:
    """One line for ``--device cuda`` on a machine without CUDA (train and eval alike)."""
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda, but CUDA is not available on this machine; use "
                         "--device cpu or auto")


def with_defaults(base, **defaults):
    """``base`` (a config dataclass) with other default values for some of its fields.

    How a paper states its own defaults for glossary fields in one line instead of declaring them
    again: ``class Config(with_defaults(TrainConfig, steps=800, lr=3e-3)): ...``.
    """
    hints = typing.get_type_hints(base)
    unknown = sorted(set(defaults) - set(hints))
    if unknown:
        raise TypeError(f"{base.__name__} has no fields {unknown}")
    namespace = {"__annotations__": {k: hints[k] for k in defaults}, **defaults,
                 "__module__": base.__module__, "__qualname__": base.__qualname__,
                 "__doc__": base.__doc__}
    return dataclass(type(base.__name__, (base,), namespace))
