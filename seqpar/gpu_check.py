"""GPU check: causal ring attention over NCCL against serial causal attention, bf16 and fp32.

    torchrun --standalone --nproc-per-node 2 -m seqpar.gpu_check      # 2+ CUDA devices

On every rank: q, k, v (the same seeded full tensors everywhere), this rank's zigzag chunk; RSA
and the lean ring, causal, in float32 and bfloat16, forward and backward; compared with dense
causal attention in float64 on the same (rounded) inputs. Writes ``results/gpu_check.{csv,md}``
naming the GPU (max over ranks of the relative errors). Not run by the CPU tests (it needs
NCCL and CUDA devices); ``tests/test_seqpar/test_causal.py`` runs the same comparison on gloo.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from shared.bench import write_table
from shared.errors import UsageError
from shared.parallel.comm import raw_all_gather_object
from shared.parallel.topology import build_topology
from shared.train import entry_point, parse_config, start

from .models.bert import dense_attention
from .parallel_rsa import layout_positions, ring_self_attention, to_layout

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class CheckConfig:
    batch: int = 2
    heads: int = 8
    head_dim: int = 64
    length: int = 4096
    device: str = "cuda"
    timeout: float = 600.0
    out: str = ""
    """output directory; "" = seqpar/results"""

    def validate(self) -> None:
        if self.device != "cuda":
            raise UsageError("the GPU check runs on CUDA devices (--device cuda)")


def rel(a, b) -> float:
    return ((a.double() - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


@entry_point
def main(argv=None) -> list[dict]:
    argv = sys.argv[1:] if argv is None else list(argv)
    cfg = parse_config(CheckConfig, None, argv, default_preset=None)
    env = start(cfg)
    group = build_topology("seq")["seq"]
    n, r = group.size, group.rank
    if n < 2:
        raise UsageError("the GPU check needs at least 2 processes (torchrun --nproc-per-node 2)")
    dev = env.device
    gen = torch.Generator(device="cpu").manual_seed(0)
    full = [torch.randn(cfg.batch, cfg.heads, cfg.length, cfg.head_dim, generator=gen)
            for _ in range(4)]
    pos = layout_positions(cfg.length, n, "zigzag")
    c = cfg.length // n
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        q, k, v, d_out = (t.to(dtype).to(dev) for t in full)
        ref_in = [t.double().requires_grad_() for t in (q, k, v)]
        ref = dense_attention(*ref_in, causal=True)
        (ref * d_out.double()).sum().backward()
        lay = lambda t: to_layout(t, pos.to(dev), dim=2)[:, :, r * c:(r + 1) * c]  # noqa: E731
        for name in ("rsa", "lean"):
            loc = [lay(t).detach().clone().requires_grad_() for t in (q, k, v)]
            out = ring_self_attention(*loc, group, lean=name == "lean", causal=True,
                                      positions=pos.to(dev))
            (out * lay(d_out)).sum().backward()
            torch.cuda.synchronize()
            errs = {"out": rel(out, lay(ref)),
                    **{f"d{x}": rel(lo.grad, lay(f.grad)) for x, lo, f in zip("qkv", loc, ref_in)}}
            rows.append({"dtype": str(dtype).replace("torch.", ""), "attention": name, **errs})
    gathered = raw_all_gather_object(rows, group)
    worst = [{**row, **{k: max(g[i][k] for g in gathered) for k in ("out", "dq", "dk", "dv")}}
             for i, row in enumerate(rows)]
    if r == 0:
        gpu = torch.cuda.get_device_name(dev)
        write_table(Path(cfg.out or RESULTS) / "gpu_check", worst,
                    f"Causal ring attention on {n} x {gpu} (NCCL) vs serial float64", seed=0,
                    notes=[f"GPU: {gpu}; {n} ranks, NCCL, zigzag placement, causal",
                           f"q, k, v [B={cfg.batch}, Z={cfg.heads}, L={cfg.length}, "
                           f"A={cfg.head_dim}]; relative error max|ours - ref| / max|ref|, max "
                           "over ranks; the reference is float64 attention of the same rounded "
                           "inputs"])
        for row in worst:
            print(row, flush=True)
    return worst


if __name__ == "__main__":
    main()
