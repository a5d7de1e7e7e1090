"""Speed of the parallel layers, measured in one run (make bench-tensor_parallel).

1. Overhead: the parallel transformer layer of each mode on a grid of ONE rank (every collective
   a no-op) against the plain serial layer, forward + backward: what our layer code costs when
   there is nothing to parallelise (ratio 1.00 = no overhead).
2. Per-mode training-step time (minimum over repeats) (forward, backward, AdamW) of the tiny GPT on gloo with 4 and 8
   processes on this machine, beside the serial model in one process. With 2 CPU cores, 4 or 8
   processes share 2 cores, so these times measure CPU contention and gloo latency, not the
   scaling the papers report on GPUs; they are here so that regressions show.
3. Torch's own tensor parallelism as the anchor: one GPT block under our 1D layers
   (shared/parallel/tp1d.py) beside the same block under
   ``torch.distributed.tensor.parallel.parallelize_module`` with ColwiseParallel (qkv, fc1) and
   RowwiseParallel (proj, fc2), gloo CPU, 2 ranks, same weights and inputs: output and gradient
   parity between the two (and each against the serial block) and the forward+backward time
   ratio ours/torch.

    python -m tensor_parallel.bench            # writes tensor_parallel/results/bench_*.{csv,md}
    python -m tensor_parallel.bench --only torch_tp   # one section (here: the torch-TP table)
    python -m tensor_parallel.bench --smoke  # seconds; writes runs/tensor_parallel/smoke_results
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch

from shared.bench import ResultsConfig, Timer, copy_tables_to_readme, print_rows, results_dir, time_fn, write_table
from shared.parallel import build_topology, spawn
from shared.train import ConfigError, entry_point, parse_config

from .models import GPT, GPTConfig
from .parallel import parallelize, serial_state_dict

RESULTS = Path(__file__).resolve().parent / "results"
FULL = dict(layer=dict(batch=8, seq=128, hidden=256, heads=8, repeat=15),
            model=dict(batch=16, seq=64, hidden=96, heads=8, layers=2, repeat=5))
SMOKE = dict(layer=dict(batch=2, seq=8, hidden=24, heads=4, repeat=1),
             model=dict(batch=8, seq=8, hidden=24, heads=8, layers=1, repeat=1))
# torch-TP anchor: one block, 2 ranks, at the hidden sizes of issue 11's measurement
FULL_TORCH_TP = dict(batch=4, seq=64, hiddens=(512, 768), heads=8, repeat=10)
SMOKE_TORCH_TP = dict(batch=2, seq=8, hiddens=(32,), heads=4, repeat=1)
SECTIONS = ("overhead", "steps", "torch_tp")
SMOKE_STEP_CASES = [(4, [("1d", 1), ("2d", 1), ("2p5d", 1)])]
STEP_CASES = [(4, [("1d", 1), ("2d", 1), ("2p5d", 1)]),
              (8, [("1d", 1), ("2p5d", 2), ("3d", 1)])]


def _layer_step(block, x, dy):
    def run():
        xx = x.detach().requires_grad_()
        block(xx).backward(dy)
    return run


def layer_overhead(s) -> list[dict]:
    """Serial and the four modes' layers timed round-robin (so that load from other processes
    hits all alike); the minimum over rounds is reported."""
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=64, seq_len=s["seq"], hidden=s["hidden"], heads=s["heads"], layers=1)
    serial = GPT(cfg)
    x = torch.randn(s["batch"], s["seq"], s["hidden"])
    dy = torch.randn_like(x)
    variants = {"serial (nn.Linear, nn.LayerNorm)": serial.blocks[0]}
    for mode in ("1d", "2d", "2p5d", "3d"):
        pmodel = parallelize(copy.deepcopy(serial), build_topology(mode))
        variants[f"{mode} on a grid of 1"] = pmodel.gpt.blocks[0]
    steps = {name: _layer_step(block, x, dy) for name, block in variants.items()}
    for run in steps.values():                                           # warm-up
        run()
    best = {name: float("inf") for name in steps}
    for _ in range(s["repeat"]):
        for name, run in steps.items():
            with Timer() as t:
                run()
            best[name] = min(best[name], t.seconds)
    base = best["serial (nn.Linear, nn.LayerNorm)"]
    return [{"layer": name, "fwd+bwd ms": 1e3 * t, "ratio": t / base} for name, t in best.items()]


def _gpt(s) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=256, seq_len=s["seq"], hidden=s["hidden"], heads=s["heads"],
                         layers=s["layers"]))


def _train_step(model, s):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (s["batch"], s["seq"]), generator=g)
    y = torch.randint(0, 256, (s["batch"], s["seq"]), generator=g)

    def run():
        opt.zero_grad(set_to_none=True)
        model(x, y)[1].backward()
        opt.step()
    return run


def _step_worker(env, cases, s):
    torch.set_num_threads(1)
    out = []
    for mode, depth in cases:
        pmodel = parallelize(_gpt(s), build_topology(mode, depth=depth))
        out.append(time_fn(_train_step(pmodel, s), warmup=1, repeat=s["repeat"])["min"])
    return out


def step_times(s, cases=STEP_CASES) -> list[dict]:
    serial = time_fn(_train_step(_gpt(s), s), warmup=1, repeat=s["repeat"])["min"]
    rows = [{"mode": "serial", "processes": 1, "step ms": 1e3 * serial, "vs serial": 1.0}]
    for world, group in cases:
        per_rank = spawn(_step_worker, world, group, s, timeout_s=600)
        for i, (mode, depth) in enumerate(group):
            t = max(r[i] for r in per_rank)
            name = f"{mode} (d={depth})" if mode == "2p5d" else mode
            rows.append({"mode": name, "processes": world, "step ms": 1e3 * t,
                         "vs serial": t / serial})
    return rows


def _rel(got: torch.Tensor, want: torch.Tensor) -> float:
    """Max abs error relative to the largest magnitude of ``want``."""
    return ((got - want).abs().max() / want.abs().max().clamp_min(1e-30)).item()


def _torch_tp_worker(env, s):
    """On each of 2 ranks: the serial block, our 1D block and torch's parallelize_module block
    from the same weights; parity of the outputs and of every gradient, and fwd+bwd times."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import (ColwiseParallel, RowwiseParallel,
                                                   parallelize_module)
    torch.set_num_threads(1)
    topo = build_topology("1d")
    world = topo["tensor"].size
    mesh = init_device_mesh("cpu", (world,))
    out = []
    for hidden in s["hiddens"]:
        torch.manual_seed(0)                               # same weights and data on every rank
        cfg = GPTConfig(vocab_size=64, seq_len=s["seq"], hidden=hidden, heads=s["heads"],
                        layers=1)
        gpt = GPT(cfg)
        with torch.no_grad():                              # non-trivial biases and LayerNorms
            for p in gpt.parameters():
                p.add_(0.02 * torch.randn_like(p))
        serial = copy.deepcopy(gpt.blocks[0])
        theirs = copy.deepcopy(gpt.blocks[0])
        ours_model = parallelize(gpt, topo)
        ours = ours_model.gpt.blocks[0]
        theirs.attn.heads //= world                        # torch's Colwise leaves local heads
        parallelize_module(theirs, mesh, {"attn.qkv": ColwiseParallel(),
                                          "attn.proj": RowwiseParallel(),
                                          "mlp.fc1": ColwiseParallel(),
                                          "mlp.fc2": RowwiseParallel()})
        x = torch.randn(s["batch"], s["seq"], hidden)
        dy = torch.randn_like(x)

        def fwd_bwd(block):
            xx = x.clone().requires_grad_()
            y = block(xx)
            (y * dy).sum().backward()
            return y.detach(), xx.grad

        ys, dxs = fwd_bwd(serial)
        yo, dxo = fwd_bwd(ours)
        yt, dxt = fwd_bwd(theirs)
        grads_o = {k[len("blocks.0."):]: v for k, v in serial_state_dict(
            ours_model, pick=lambda p: p.grad if p.grad is not None else torch.zeros_like(p)
        ).items() if k.startswith("blocks.0.")}
        grads_t = {n: (p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad)
                   for n, p in theirs.named_parameters()}
        grads_s = {n: p.grad for n, p in serial.named_parameters()}
        assert set(grads_o) == set(grads_t) == set(grads_s)
        grad_ot = max([_rel(dxo, dxt)] + [_rel(grads_o[n], grads_t[n]) for n in grads_s])
        grad_os = max([_rel(dxo, dxs)] + [_rel(grads_o[n], grads_s[n]) for n in grads_s])
        grad_ts = max([_rel(dxt, dxs)] + [_rel(grads_t[n], grads_s[n]) for n in grads_s])
        for block in (ours, theirs):                       # warm-up, then round-robin minimum
            block.zero_grad(set_to_none=True)
            _layer_step(block, x, dy)()
        best = {"ours": float("inf"), "torch": float("inf")}
        for _ in range(s["repeat"]):
            for name, block in (("ours", ours), ("torch", theirs)):
                block.zero_grad(set_to_none=True)
                with Timer() as t:
                    _layer_step(block, x, dy)()
                best[name] = min(best[name], t.seconds)
        out.append(dict(hidden=hidden, out_ours_torch=_rel(yo, yt), out_ours_serial=_rel(yo, ys),
                        out_torch_serial=_rel(yt, ys), grad_ours_torch=grad_ot,
                        grad_ours_serial=grad_os, grad_torch_serial=grad_ts,
                        ours=best["ours"], torch=best["torch"]))
    return out


def torch_tp_anchor(s, world: int = 2) -> list[dict]:
    """Our 1D block beside torch's parallelize_module block (see the module docstring)."""
    per_rank = spawn(_torch_tp_worker, world, s, timeout_s=600)
    rows = []
    for i, hidden in enumerate(s["hiddens"]):
        r = [rank[i] for rank in per_rank]
        ours, theirs = max(x["ours"] for x in r), max(x["torch"] for x in r)
        rows.append({"hidden": hidden, "ranks": world,
                     "out err ours vs torch": max(x["out_ours_torch"] for x in r),
                     "grad err ours vs torch": max(x["grad_ours_torch"] for x in r),
                     "out err ours vs serial": max(x["out_ours_serial"] for x in r),
                     "out err torch vs serial": max(x["out_torch_serial"] for x in r),
                     "grad err ours vs serial": max(x["grad_ours_serial"] for x in r),
                     "grad err torch vs serial": max(x["grad_torch_serial"] for x in r),
                     "ours ms": 1e3 * ours, "torch ms": 1e3 * theirs,
                     "ours/torch": ours / theirs})
    return rows


@dataclass
class BenchConfig(ResultsConfig):
    only: str = ""
    """run only these sections, comma-separated (overhead, steps, torch_tp); "" = all"""


@entry_point
def main(argv=None):
    args = parse_config(BenchConfig, None, argv, default_preset=None)
    only = [w for w in args.only.split(",") if w] or list(SECTIONS)
    bad = [w for w in only if w not in SECTIONS]
    if bad:
        raise ConfigError(f"--only {args.only!r}: unknown section(s) {', '.join(bad)}; choose "
                          f"from {', '.join(SECTIONS)}")
    sizes = SMOKE if args.smoke else FULL
    torch.set_num_threads(1)            # like every spawned rank: one thread per process
    out = results_dir(RESULTS, args.out, args.smoke)
    lay, mod = sizes["layer"], sizes["model"]
    tps = SMOKE_TORCH_TP if args.smoke else FULL_TORCH_TP
    overhead = steps = anchor = None
    if "overhead" in only:
        overhead = layer_overhead(lay)
        write_table(out / "bench_layer_overhead", overhead,
                    "Parallel transformer layer on a grid of one rank vs the serial layer",
                    seed=0,
                    notes=[f"one layer, batch {lay['batch']}, seq {lay['seq']}, hidden "
                           f"{lay['hidden']}, heads {lay['heads']}, fp32 CPU, one thread; "
                           f"minimum of {lay['repeat']} round-robin rounds"])
        print_rows("layer overhead", overhead)
    if "steps" in only:
        steps = step_times(mod, SMOKE_STEP_CASES if args.smoke else STEP_CASES)
        write_table(out / "bench_step_times", steps,
                    "Training-step time per mode, gloo processes on this machine", seed=0,
                    notes=[f"tiny GPT: {mod['layers']} layers, hidden {mod['hidden']}, heads "
                           f"{mod['heads']}, batch {mod['batch']}, seq {mod['seq']}; time of the "
                           f"slowest rank, minimum of {mod['repeat']}; one thread per process",
                           "all processes share this machine's cores: times show contention and "
                           "gloo latency, not GPU scaling"])
        print_rows("step times", steps)
    if "torch_tp" in only:
        anchor = torch_tp_anchor(tps)
        write_table(out / "bench_torch_tp", anchor,
                    "Our 1D tensor parallelism vs torch's parallelize_module (Colwise/Rowwise), "
                    "one GPT block", seed=0,
                    notes=[f"one pre-LN block, batch {tps['batch']}, seq {tps['seq']}, heads "
                           f"{tps['heads']}, fp32, gloo CPU, 2 processes of one thread; same "
                           f"weights and inputs in both",
                           "errors: max abs difference relative to the largest magnitude of the "
                           "second tensor; grad = max over dX and every parameter gradient "
                           "(gathered to the full shape)",
                           f"time: forward + backward, slowest rank, minimum of {tps['repeat']} "
                           f"round-robin rounds; ours/torch < 1 = ours faster",
                           "the processes share this machine's cores with other work"])
        print_rows("ours vs torch TP", anchor)
    print(f"\ntables written to {out}")
    if not args.smoke and out == RESULTS:
        copy_tables_to_readme(RESULTS.parent / "README.md", RESULTS)
    return overhead, steps, anchor


if __name__ == "__main__":
    main()
