"""Convert a training checkpoint between layouts.

Training checkpoints already hold the model (and the AdamW moments) in the *serial* layout, so
any mode or world size can load them (``train --resume``, ``tensor_parallel.eval``). This tool:

* ``--out model.pt``: writes the plain serial ``GPT`` state dict, a file that
  ``torch.load(path, weights_only=True)`` reads and ``GPT.load_state_dict`` accepts, and its
  ``GPTConfig`` beside it as ``model.json`` (for use without this package's training loop)::

      cfg = GPTConfig(**json.load(open("model.json")))
      model = GPT(cfg)
      model.load_state_dict(torch.load("model.pt", weights_only=True))

* ``--mode M --world W [--depth d]``: checks that the model splits on that grid and prints every
  rank-0 piece's shape and the parameter bytes per rank, without starting any process.

    python -m tensor_parallel.convert --run RUN --out gpt.pt       # RUN: a run's path or name
    python -m tensor_parallel.convert --run RUN --mode 3d --world 8
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from shared.errors import UsageError
from shared.train import (ConfigError, checkpoint_files, entry_point, load_checkpoint,
                          parse_config, resolve_run, runs_root)

from .models import GPT, GPTConfig
from .parallel import MODES, build_grid, check_shapes, parallelize
from .train import PAPER, check_format


def serial_model(state: dict) -> GPT:
    """The serial GPT of a training checkpoint (the whole file's dict)."""
    if state.get("paper") != PAPER:
        raise UsageError(f"a checkpoint of {state.get('paper')!r}, not of {PAPER!r}")
    task = state["task"]
    check_format(task)
    model = GPT(GPTConfig(**task["gpt_config"]))
    model.load_state_dict(task["model"])
    return model


def shard_report(model: GPT, mode: str, world: int, depth: int = 1) -> list[str]:
    """Shapes of grid rank 0's pieces under ``mode`` on ``world`` ranks (no processes started:
    the groups are built for rank 0 without a process group, so nothing is gathered)."""
    topo = build_grid(mode, depth, world_size=world, rank=0)
    check_shapes(model.cfg, topo)
    serial_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    pmodel = parallelize(copy.deepcopy(model), topo)
    lines = [f"{name}: {tuple(p.shape)}" for name, p in pmodel.gpt.named_parameters()]
    nbytes = sum(p.numel() * p.element_size() for p in pmodel.parameters())
    lines.append(f"parameter bytes on rank 0: {nbytes} (serial {serial_bytes})")
    return lines


def write_serial(model: GPT, out) -> tuple[Path, Path]:
    """``out``: the plain state dict (``torch.save``, tensors only); ``out`` with suffix
    ``.json``: the ``GPTConfig``. Each written to a temporary file first, then renamed."""
    pt = Path(out)
    cfg_file = pt.with_suffix(".json")
    if cfg_file == pt:
        raise UsageError(f"--out {out}: give a .pt file name (the config goes to a .json "
                         f"beside it)")
    pt.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for path, write in ((pt, lambda f: torch.save(state, f)),
                        (cfg_file, lambda f: f.write(
                            json.dumps(dataclasses.asdict(model.cfg), indent=1).encode()))):
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    return pt, cfg_file


@dataclass
class ConvertConfig:
    run: str = ""
    """run directory or name (or its checkpoint file); "" = the newest run"""
    out: str = ""
    """write the serial GPT's plain state dict here (and its GPTConfig to the same name .json)"""
    mode: str = ""
    """report the pieces of this mode (1d, 2d, 2p5d, 3d); needs --world"""
    world: int = 0
    depth: int = 1
    out_dir: str = ""
    """root of the run directories; "" = <repo>/runs/tensor_parallel"""
    debug: bool = False


@entry_point
def main(argv=None) -> GPT:
    args = parse_config(ConvertConfig, None, argv, default_preset=None)
    if args.mode and args.mode not in MODES:
        raise ConfigError(f"--mode {args.mode!r} is not a tensor-parallel mode; choose one of: "
                          f"{', '.join(MODES)}")
    if args.mode and args.world < 1:
        raise ConfigError("--mode needs --world N (the number of ranks of the grid)")
    if not args.out and not args.mode:
        raise ConfigError("nothing to do: give --out FILE (the serial GPT) and/or --mode M "
                          "--world N (a shard report)")
    run_path = resolve_run(runs_root(args, PAPER), args.run)
    files = checkpoint_files(run_path)
    model = serial_model(load_checkpoint(files[0]))
    if args.out:
        pt, cfg_file = write_serial(model, args.out)
        print(f"wrote the serial GPT ({sum(p.numel() for p in model.parameters())} parameters) "
              f"to {pt} (state dict) and {cfg_file} (GPTConfig)")
    if args.mode:
        for line in shard_report(model, args.mode, args.world, args.depth):
            print(line)
    return model


if __name__ == "__main__":
    main()
