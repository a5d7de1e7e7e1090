"""Convert a training checkpoint between layouts.

Training checkpoints are sharded (``torch.distributed.checkpoint``): every piece is recorded as
a piece of the serial tensor, so any mode or world size loads them, each rank reading only what
its own layout needs (``train --resume``, ``tensor_parallel.eval``): resharding happens at load
time. This tool:

* ``--out model.pt``: reads the shards in one process into the full tensors and writes the
  plain serial ``GPT`` state dict, a file that
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

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from shared.errors import UsageError
from shared.train import ConfigError, entry_point, parse_config, resolve_run, runs_root

from .models import GPT, GPTConfig
from .parallel import MODES, build_grid, check_shapes, parallelize
from .train import PAPER, load_weights, read_run


def serial_model(run_path) -> GPT:
    """The serial GPT of a run's sharded checkpoint, read in this one process (DCP reshards
    the pieces of whatever grid wrote it into the full tensors)."""
    _, gcfg, shards = read_run(run_path)
    with torch.device("meta"):
        model = GPT(gcfg)
    model = model.to_empty(device="cpu")
    load_weights(model, shards)
    return model


def shard_report(cfg: GPTConfig, mode: str, world: int, depth: int = 1) -> list[str]:
    """Shapes of grid rank 0's pieces under ``mode`` on ``world`` ranks (no processes started,
    nothing allocated: the model is built on the meta device for rank 0's groups)."""
    topo = build_grid(mode, depth, world_size=world, rank=0)
    check_shapes(cfg, topo)
    with torch.device("meta"):
        model = GPT(cfg)
    serial_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    pmodel = parallelize(model, topo)
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
    model = serial_model(run_path)
    if args.out:
        pt, cfg_file = write_serial(model, args.out)
        print(f"wrote the serial GPT ({sum(p.numel() for p in model.parameters())} parameters) "
              f"to {pt} (state dict) and {cfg_file} (GPTConfig)")
    if args.mode:
        for line in shard_report(model.cfg, args.mode, args.world, args.depth):
            print(line)
    return model


if __name__ == "__main__":
    main()
