"""Speed of the parallel layers, measured in one run (make bench-tensor_parallel).

1. Overhead: the parallel transformer layer of each mode on a grid of ONE rank (every collective
   a no-op) against the plain serial layer, forward + backward: what our layer code costs when
   there is nothing to parallelise (ratio 1.00 = no overhead).
2. Per-mode training-step time (minimum over repeats) (forward, backward, AdamW) of the tiny GPT on gloo with 4 and 8
   processes on this machine, beside the serial model in one process. With 2 CPU cores, 4 or 8
   processes share 2 cores, so these times measure CPU contention and gloo latency, not the
   scaling the papers report on GPUs; they are here so that regressions show.

    python -m tensor_parallel.bench            # writes tensor_parallel/results/bench_*.{csv,md}
    python -m tensor_parallel.bench --smoke  # seconds; writes runs/tensor_parallel/smoke_results
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch

from shared.bench import ResultsConfig, Timer, copy_tables_to_readme, print_rows, results_dir, time_fn, write_table
from shared.parallel import build_topology, spawn
from shared.train import entry_point, parse_config

from .models import GPT, GPTConfig
from .parallel import parallelize

RESULTS = Path(__file__).resolve().parent / "results"
FULL = dict(layer=dict(batch=8, seq=128, hidden=256, heads=8, repeat=15),
            model=dict(batch=16, seq=64, hidden=96, heads=8, layers=2, repeat=5))
SMOKE = dict(layer=dict(batch=2, seq=8, hidden=24, heads=4, repeat=1),
             model=dict(batch=8, seq=8, hidden=24, heads=8, layers=1, repeat=1))
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


@entry_point
def main(argv=None):
    args = parse_config(ResultsConfig, None, argv, default_preset=None)
    sizes = SMOKE if args.smoke else FULL
    torch.set_num_threads(1)            # like every spawned rank: one thread per process
    out = results_dir(RESULTS, args.out, args.smoke)
    lay, mod = sizes["layer"], sizes["model"]
    overhead = layer_overhead(lay)
    steps = step_times(mod, SMOKE_STEP_CASES if args.smoke else STEP_CASES)
    write_table(out / "bench_layer_overhead", overhead,
                "Parallel transformer layer on a grid of one rank vs the serial layer", seed=0,
                notes=[f"one layer, batch {lay['batch']}, seq {lay['seq']}, hidden "
                       f"{lay['hidden']}, heads {lay['heads']}, fp32 CPU, one thread; minimum of "
                       f"{lay['repeat']} round-robin rounds"])
    write_table(out / "bench_step_times", steps,
                "Training-step time per mode, gloo processes on this machine", seed=0,
                notes=[f"tiny GPT: {mod['layers']} layers, hidden {mod['hidden']}, heads "
                       f"{mod['heads']}, batch {mod['batch']}, seq {mod['seq']}; time of the "
                       f"slowest rank, minimum of {mod['repeat']}; one thread per process",
                       "all processes share this machine's cores: times show contention and "
                       "gloo latency, not GPU scaling"])
    for name, t in (("layer overhead", overhead), ("step times", steps)):
        print_rows(name, t)
    print(f"\ntables written to {out}")
    if not args.smoke and out == RESULTS:
        copy_tables_to_readme(RESULTS.parent / "README.md", RESULTS)
    return overhead, steps


if __name__ == "__main__":
    main()
