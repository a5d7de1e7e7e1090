"""The command line of every paper script: one entry point, one error path, one config parse.

* :func:`entry_point` wraps ``main(argv)``: a bad-input error (:class:`shared.errors.UsageError`:
  a bad flag, value, mode, size, path, file or checkpoint, a NaN loss) prints one line
  ``error: …`` and exits with status 2; ``--debug`` shows the traceback instead. On a distributed
  job, a collective that times out names the rank that stopped answering. Ctrl-C exits 130.
* :func:`parse_args` builds the config from defaults, a preset and ``--key value`` flags; with
  ``--resume RUN`` it starts from the run's saved ``config.json`` instead, applies the flags given
  on top, and refuses one that would change the model or the data split.
* :func:`start` joins the job (torchrun or one process) with the config's ``--timeout`` and
  ``--device``, and sets the CPU threads.
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import torch

from ..errors import UsageError
from ..parallel.dist import describe_failure, end_process_group, init_distributed
from .config import ConfigError, load_config, parse_config, require_device
from .run import resolve_run

REPO_ROOT = Path(__file__).resolve().parents[2]

# fields that would change the model or the data split if changed on resume, in every paper
_FIXED_ALWAYS = ("seed", "batch_size", "data")


def runs_root(cfg, paper: str) -> Path:
    """Where a paper's runs live: ``--out_dir``, or ``<repo>/runs/<paper>``."""
    out = getattr(cfg, "out_dir", "")
    return Path(out) if out else REPO_ROOT / "runs" / paper


def _given_keys(argv: list[str]) -> list[str]:
    keys = []
    for word in argv:
        if word.startswith("--"):
            keys.append(word[2:].split("=", 1)[0].replace("-", "_"))
    return keys


def _strip(argv: list[str], drop: set[str]) -> list[str]:
    """argv without the ``--key [value]`` pairs whose key is in ``drop``."""
    out, i = [], 0
    while i < len(argv):
        word = argv[i]
        key = word[2:].split("=", 1)[0].replace("-", "_") if word.startswith("--") else None
        if key in drop:
            has_value = "=" not in word and i + 1 < len(argv) and not argv[i + 1].startswith("--")
            i += 2 if has_value else 1
            continue
        out.append(word)
        i += 1
    return out


def parse_args(cls, presets: dict, argv, paper: str):
    """The run's config (see the module docstring). ``argv`` None = ``sys.argv[1:]``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "resume" not in _given_keys(argv):
        return parse_config(cls, presets, argv)
    # with --resume the flags change the run's saved config, not a preset's: check them there
    cfg = parse_config(cls, presets, argv, check=False)
    if not getattr(cfg, "resume", ""):
        return parse_config(cls, presets, argv)
    run_path = resolve_run(runs_root(cfg, paper), cfg.resume)
    saved = load_config(cls, run_path / "config.json")
    given = set(_given_keys(argv)) - {"preset", "resume"}
    rest = _strip(argv, {"preset", "resume"})
    base = dataclasses.asdict(saved)
    base.update(resume=str(run_path), stop_at=0, run="")   # an interrupted run goes on to its end
    resumed = parse_config(cls, None, rest, default_preset=None, extra=base)
    fixed = set(_FIXED_ALWAYS) | set(getattr(cls, "FIXED_ON_RESUME", ()))
    for key in sorted(given & fixed):
        if getattr(resumed, key) != getattr(saved, key):
            raise ConfigError(
                f"--{key} {getattr(resumed, key)!r} differs from the run's {getattr(saved, key)!r}; "
                f"{key} cannot change on resume (it changes the model or the data split): drop "
                f"--{key}, or start a new run")
    return resumed


def start(cfg):
    """Join the job with the config's timeout and device; set CPU threads. Returns the DistEnv."""
    threads = getattr(cfg, "threads", 0)
    if threads and threads > 0:
        torch.set_num_threads(threads)
    device = getattr(cfg, "device", "auto")
    require_device(device)
    return init_distributed(timeout_s=getattr(cfg, "timeout", 600.0),
                            device=None if device == "auto" else device)


def entry_point(main):
    """Decorator for ``main(argv=None)`` of every paper script (see the module docstring)."""
    import torch.distributed as dist

    def wrapped(argv=None):
        words = list(sys.argv[1:] if argv is None else argv)
        debug = "--debug" in words or "--debug=true" in words
        try:
            return main(argv)
        except UsageError as exc:
            if debug:
                raise
            distributed = dist.is_available() and dist.is_initialized()
            prefix = f"[rank {dist.get_rank()}] " if distributed else ""
            message = " ".join(str(exc).split())
            print(f"{prefix}error: {message}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
        except KeyboardInterrupt:
            if debug:
                raise
            print("interrupted", file=sys.stderr, flush=True)
            raise SystemExit(130) from None
        except Exception as exc:
            if dist.is_available() and dist.is_initialized():
                line, explained = describe_failure(exc)
                print(line, file=sys.stderr, flush=True)
                if explained and not debug:
                    raise SystemExit(1) from None
            raise
        finally:
            end_process_group()

    wrapped.__name__ = getattr(main, "__name__", "main")
    wrapped.__doc__ = getattr(main, "__doc__", None)
    wrapped.__wrapped__ = main
    return wrapped
