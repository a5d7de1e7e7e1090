"""A finished run's model weights, for every paper's ``eval.py``.

The training core saves a task's state as ``{"task": {"model": state_dict, ...}}``, in one
``checkpoint.pt`` or one ``checkpoint-rank<r>.pt`` per rank (expert or tensor shards, or
data-parallel replicas whose BatchNorm statistics differ). :func:`load_run_weights` merges them
back into one state dict; :func:`load_weights_into` loads it with one clear error when it does
not fit.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import UsageError
from .checkpoint import load_checkpoint
from .run import checkpoint_files

# entries that differ between data-parallel replicas and are averaged over them
AVERAGED = ("running_mean", "running_var")


def load_run_weights(run, paper: str, rank0_only: bool = False) -> tuple[dict, int, int]:
    """``(weights, step, world_size)`` of a run directory: the union of its checkpoint files' model
    states (an entry held by several files is a replica: the first copy is kept, except BatchNorm
    running statistics, which are averaged over the copies). ``rank0_only``: rank 0's file alone
    (a replicated model whose own evaluation runs on rank 0). ``world_size``: the processes the
    run trained on. Refuses another paper's checkpoint."""
    files = checkpoint_files(Path(run))
    count = len(files)
    if not files:
        raise UsageError(f"{run} has no checkpoint (checkpoint.pt or checkpoint-rank*.pt); train "
                         f"it further or --resume it")
    weights, copies, step, world = {}, {}, 0, count
    for path in files[:1] if rank0_only else files:
        state = load_checkpoint(path, map_location="cpu")
        if state.get("paper") != paper:
            raise UsageError(f"{path} is a checkpoint of {state.get('paper')!r}, not of {paper}")
        for name, value in state["task"]["model"].items():
            if name not in weights:
                weights[name], copies[name] = value, 1
            elif name.endswith(AVERAGED):
                weights[name], copies[name] = weights[name] + value, copies[name] + 1
        step, world = int(state["step"]), int(state.get("world_size", count))
        del state
    for name, n in copies.items():
        if n > 1:
            weights[name] = weights[name] / n
    return weights, step, world


def load_weights_into(model, weights: dict, run, what: str) -> None:
    """``model.load_state_dict(weights)``, or one line naming the run and what does not fit."""
    try:
        missing, unexpected = model.load_state_dict(weights, strict=False)
    except RuntimeError as exc:                                  # a shape that does not fit
        raise UsageError(f"the checkpoint of {run} does not fit {what} as its config.json "
                         f"describes it: {str(exc).splitlines()[-1].strip()}") from None
    if missing or unexpected:
        raise UsageError(f"the checkpoint of {run} does not fit {what} as its config.json "
                         f"describes it: missing {missing[:3]}, unexpected {unexpected[:3]} "
                         f"(is a rank's checkpoint file missing?)")
