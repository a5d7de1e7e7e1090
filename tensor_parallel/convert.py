"""Convert a training checkpoint between layouts.

Training checkpoints already hold the model (and the AdamW moments) in the *serial* layout, so
any mode or world size can load them (``--resume``, ``tensor_parallel.eval``). This tool:

* ``--out model.pt``: writes the plain serial ``GPT`` state dict plus its ``GPTConfig`` (for use
  without this package's training loop);
* ``--mode M --world W [--depth d]``: checks that the model splits on that grid and prints every
  rank-0 shard's shape and the parameter bytes per rank, without starting any process.

    python -m tensor_parallel.convert --ckpt runs/tensor_parallel/<run>/checkpoint.pt --out gpt.pt
    python -m tensor_parallel.convert --ckpt ... --mode 3d --world 8
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from shared.parallel import build_topology
from shared.train import ConfigError, load_checkpoint, parse_config, save_checkpoint

from .models import GPT, GPTConfig
from .parallelize import parallelize
from .train import CKPT_FORMAT


def serial_model(ckpt: dict) -> GPT:
    if ckpt.get("format") != CKPT_FORMAT:
        raise ValueError(f"not a tensor_parallel checkpoint (format {ckpt.get('format')!r})")
    model = GPT(GPTConfig(**ckpt["gpt_config"]))
    model.load_state_dict(ckpt["model"])
    return model


def shard_report(model: GPT, mode: str, world: int, depth: int = 1) -> list[str]:
    """Shapes of grid rank 0's shards under ``mode`` on ``world`` ranks (no processes started:
    the groups are built for rank 0 without a process group, so nothing is gathered)."""
    topo = build_topology(mode, world_size=world, rank=0, depth=depth)
    # a grid of one rank is what build_topology returns without torch.distributed; shard math
    # only needs the group ranks and sizes, which it has
    pmodel = parallelize(model, topo)
    lines = [f"{name}: {tuple(p.shape)}" for name, p in pmodel.named_parameters()]
    nbytes = sum(p.numel() * p.element_size() for p in pmodel.parameters())
    lines.append(f"parameter bytes on rank 0: {nbytes} "
                 f"(serial {sum(p.numel() * p.element_size() for p in model.parameters())})")
    return lines


@dataclass
class ConvertConfig:
    ckpt: str = ""
    """training checkpoint to read (required)"""
    out: str = ""
    """write the serial GPT state dict and config here"""
    mode: str = ""
    """report the shards of this mode (1d, 2d, 2p5d, 3d); needs --world"""
    world: int = 0
    depth: int = 1


def main(argv=None):
    args = parse_config(ConvertConfig, None, argv, default_preset=None)
    if not args.ckpt:
        raise ConfigError("--ckpt is required: the training checkpoint to convert")
    if args.mode and args.mode not in ("1d", "2d", "2p5d", "3d"):
        raise ConfigError(f"--mode must be one of 1d, 2d, 2p5d, 3d; got {args.mode!r}")
    ckpt = load_checkpoint(args.ckpt)
    model = serial_model(ckpt)
    if args.out:
        save_checkpoint({"gpt_config": dataclasses.asdict(model.cfg),
                         "state_dict": model.state_dict()}, args.out)
        print(f"wrote the serial GPT ({sum(p.numel() for p in model.parameters())} parameters) "
              f"to {args.out}")
    if args.mode:
        if not args.world:
            raise ConfigError("--mode needs --world (the number of ranks of the grid)")
        for line in shard_report(model, args.mode, args.world, args.depth):
            print(line)
    return model


if __name__ == "__main__":
    main()
