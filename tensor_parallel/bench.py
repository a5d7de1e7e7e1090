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
4. Memory per rank against the serial run / p: construction, a training step and a sharded
   checkpoint save, every mode at 4 and 8 ranks (and 3D with ``--regather``).
5. Overlap of the collectives with the matmuls, on and off (2D, 2.5D, 3D).
6. The alpha-beta projection to 8, 16 and 64 GPUs under both network assumptions (a model:
   :mod:`tensor_parallel.projection`; its assumptions are this command's flags).

    python -m tensor_parallel.bench            # writes tensor_parallel/results/bench_*.{csv,md}
    python -m tensor_parallel.bench --only torch_tp   # one section (here: the torch-TP table)
    python -m tensor_parallel.bench --smoke  # seconds; writes runs/tensor_parallel/smoke_results
"""
from __future__ import annotations

import copy
import gc
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from shared.bench import (PeakMemory, ResultsConfig, Timer, begin, print_rows, publish,
                          rss_follows_tensors, time_fn, write_table)
from shared.parallel import build_topology, spawn
from shared.parallel.comm import raw_all_reduce
from shared.parallel.topology import world_group
from shared.train import ConfigError, entry_point, parse_config, save_sharded

from .models import GPT, GPTConfig
from .parallel import build_grid, build_parallel, parallelize, serial_state_dict
from .projection import NetworkFlags, projection_notes, projection_table

RESULTS = Path(__file__).resolve().parent / "results"
FULL = dict(layer=dict(batch=8, seq=128, hidden=256, heads=8, repeat=15),
            model=dict(batch=16, seq=64, hidden=96, heads=8, layers=2, repeat=5))
SMOKE = dict(layer=dict(batch=2, seq=8, hidden=24, heads=4, repeat=1),
             model=dict(batch=8, seq=8, hidden=24, heads=8, layers=1, repeat=1))
# torch-TP anchor: one block, 2 ranks, at the hidden sizes of issue 11's measurement
FULL_TORCH_TP = dict(batch=4, seq=64, hiddens=(512, 768), heads=8, repeat=10)
SMOKE_TORCH_TP = dict(batch=2, seq=8, hiddens=(32,), heads=4, repeat=1)
SECTIONS = ("overhead", "steps", "torch_tp", "memory", "overlap", "projection")
# memory per rank: one fresh process per case (peak RSS is per process)
FULL_MEMORY = dict(batch=16, seq=32, hidden=768, heads=8, layers=4, vocab=512)
SMOKE_MEMORY = dict(batch=8, seq=8, hidden=48, heads=4, layers=1, vocab=64)
# (ranks, mode, depth[, regather]): 3D as the papers (gathered blocks saved) and with --regather
MEMORY_CASES = [(4, "1d", 1), (4, "2d", 1), (4, "2p5d", 1),
                (8, "1d", 1), (8, "2p5d", 2), (8, "3d", 1), (8, "3d", 1, True)]
SMOKE_MEMORY_CASES = [(4, "1d", 1), (4, "2d", 1)]
# overlap on/off: one transformer layer, 2D q=2, 2.5D q=2 d=2 (SUMMA) and 3D q=2
FULL_OVERLAP = dict(batch=16, seq=64, hidden=256, heads=8, repeat=10,
                    cases=[(4, "2d", 1), (8, "2p5d", 2), (8, "3d", 1)])
SMOKE_OVERLAP = dict(batch=4, seq=8, hidden=24, heads=4, repeat=1, cases=[(4, "2d", 1)])
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


def _mib(nbytes: float) -> float:
    return nbytes / 2 ** 20


def _memory_worker(env, mode, depth, s, shards_dir, checkpointing=False, regather=False):
    """Peak resident memory of one rank above the process's own base (measured first: the
    interpreter, torch, gloo), during shard-only construction, one training step (forward,
    backward, AdamW) and a sharded checkpoint save; ``mode`` "serial" = the plain GPT in one
    process. Each phase's peak includes what is already resident (the model, its state)."""
    rss_follows_tensors()          # freed transients leave the RSS (glibc keeps them otherwise)
    torch.set_num_threads(1)
    topo = None if mode == "serial" else build_grid(mode, depth)
    sizes = dict(vocab_size=s["vocab"], heads=s["heads"])
    cfg = GPTConfig(seq_len=s["seq"], hidden=s["hidden"], layers=s["layers"], **sizes)
    warm = GPTConfig(seq_len=4, hidden=4 * s["heads"], layers=1, **sizes)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, cfg.vocab_size, (s["batch"], s["seq"]), generator=g)
    # a tiny model first, twice: code paths, imports and first-use buffers join the base, and
    # the second pass measures what each phase costs beyond the model (the fixed part)
    xw = x[:, :4].contiguous()
    for c, xs, tag in ((warm, xw, "warm-up"), (warm, xw, "fixed"), (cfg, x, "model")):
        gc.collect()
        base = PeakMemory().__enter__()._start
        torch.manual_seed(0)
        with PeakMemory() as built:
            model = GPT(c) if topo is None else build_parallel(c, topo)
            model.set_checkpointing(checkpointing)
            if topo is not None:
                model.set_regather(regather)
            opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        with PeakMemory() as stepped:
            model(xs, xs)[1].backward()
            opt.step()
        state = ({f"model.{k}": v for k, v in model.state_dict().items()} if topo is None
                 else model.sharded_state_dict(opt))
        if topo is None:
            state.update({f"optim.{k}.{n}": opt.state[p][k] for n, p in model.named_parameters()
                          for k in ("exp_avg", "exp_avg_sq")})
        with PeakMemory() as saved:
            save_sharded(state, shards_dir / tag, 1, world_group())
        peaks = dict(construct=built.bytes - base, step=stepped.bytes - base,
                     save=saved.bytes - base)
        if tag == "fixed":
            fixed = {f"fixed_{k}": v for k, v in peaks.items()}
        if tag != "model":
            del model, opt, state
    phases = dict(base=base, **peaks, **fixed)
    tensors = [t for p in model.parameters() for t in (p, opt.state[p]["exp_avg"],
                                                       opt.state[p]["exp_avg_sq"])]
    return dict(phases, state=sum(t.numel() * t.element_size() for t in tensors))


def memory_table(s, cases, shards_root: Path, with_checkpointing: bool = True) -> list[dict]:
    """Per-rank memory of every mode against the serial run / p (see :func:`_memory_worker`),
    and with ``with_checkpointing`` the step peak under --checkpoint_activations (one more
    spawn per case)."""
    serial = spawn(_memory_worker, 1, "serial", 1, s, shards_root / "serial", timeout_s=600)[0]
    phases = ("construct", "step", "save")
    rows = []
    for world, mode, depth, *regather in [(1, "serial", 1)] + list(cases):
        regather = bool(regather and regather[0])
        tag = f"{mode}-{world}" + ("-regather" if regather else "")
        per_rank = ([serial] if mode == "serial" else
                    spawn(_memory_worker, world, mode, depth, s, shards_root / tag, False,
                          regather, timeout_s=600))
        ckpt = (spawn(_memory_worker, world, mode, depth, s, shards_root / f"{tag}-ckpt",
                      True, regather, timeout_s=600) if with_checkpointing else None)
        top = {k: max(r[k] for r in per_rank) for k in per_rank[0]}
        label = f"{mode} (d={depth})" if mode == "2p5d" else mode
        row = {"mode": label + (", --regather" if regather else ""), "ranks": world,
               "base MiB": _mib(top["base"]),
               "tiny-model peaks MiB": "/".join(f"{_mib(top['fixed_' + k]):.1f}" for k in phases),
               "param+optim MiB": _mib(top["state"]),
               "vs serial/p": top["state"] / (serial["state"] / world)}
        for k in phases:
            row[f"{k} peak MiB"] = _mib(top[k])
        for k in phases:
            row[f"{k} vs serial/p"] = top[k] / (serial[k] / world)
        if ckpt:
            row["step peak MiB, checkpoint_activations"] = _mib(max(r["step"] for r in ckpt))
            row["checkpointed/plain step"] = max(r["step"] for r in ckpt) / top["step"]
        rows.append(row)
    return rows


def _overlap_worker(env, mode, depth, s):
    """One transformer layer, forward + backward, overlap on and off, round-robin."""
    from .parallel_2d import OVERLAP
    torch.set_num_threads(1)
    topo = build_grid(mode, depth)
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=64, seq_len=s["seq"], hidden=s["hidden"], heads=s["heads"],
                    layers=1)
    pmodel = build_parallel(cfg, topo)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(s["batch"], s["seq"], s["hidden"], generator=g)
    dy = torch.randn(x.shape, generator=g)
    shard = pmodel.layout.shard_activation
    step = _layer_step(pmodel.gpt.blocks[0], shard(x), shard(dy))
    best = {True: float("inf"), False: float("inf")}
    for on in (True, False):                             # warm-up
        OVERLAP.on = on
        step()
    for _ in range(s["repeat"]):
        for on in (True, False):
            OVERLAP.on = on
            raw_all_reduce(torch.zeros(1), topo["tensor"])   # start together
            with Timer() as t:
                step()
            best[on] = min(best[on], t.seconds)
    OVERLAP.on = True
    return best


def overlap_gain(s) -> list[dict]:
    rows = []
    for world, mode, depth in s["cases"]:
        per_rank = spawn(_overlap_worker, world, mode, depth, s, timeout_s=600)
        on, off = (max(r[k] for r in per_rank) for k in (True, False))
        rows.append({"mode": f"{mode} (d={depth})" if mode == "2p5d" else mode, "ranks": world,
                     "overlap ms": 1e3 * on, "no overlap ms": 1e3 * off, "off/on": off / on})
    return rows


@dataclass
class BenchConfig(NetworkFlags, ResultsConfig):
    """The sections to run, and the projection's network assumptions."""
    only: str = ""
    """run only these sections, comma-separated (overhead, steps, torch_tp, memory, overlap,
    projection); "" = all"""


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
    out = begin(args, RESULTS)
    lay, mod = sizes["layer"], sizes["model"]
    tps = SMOKE_TORCH_TP if args.smoke else FULL_TORCH_TP
    cluster = args.cluster()
    overhead = steps = anchor = memory = overlap = projection = None
    paths = []
    if "overhead" in only:
        overhead = layer_overhead(lay)
        paths += write_table(out / "bench_layer_overhead", overhead,
                             "Parallel transformer layer on a grid of one rank vs the serial layer",
                             seed=0,
                             notes=[f"one layer, batch {lay['batch']}, seq {lay['seq']}, hidden "
                                    f"{lay['hidden']}, heads {lay['heads']}, fp32 CPU, one thread; "
                                    f"minimum of {lay['repeat']} round-robin rounds"])
        print_rows("layer overhead", overhead)
    if "steps" in only:
        steps = step_times(mod, SMOKE_STEP_CASES if args.smoke else STEP_CASES)
        paths += write_table(out / "bench_step_times", steps,
                             "Training-step time per mode, gloo processes on this machine", seed=0,
                             notes=[f"tiny GPT: {mod['layers']} layers, hidden {mod['hidden']}, heads "
                                    f"{mod['heads']}, batch {mod['batch']}, seq {mod['seq']}; time of the "
                                    f"slowest rank, minimum of {mod['repeat']}; one thread per process",
                                    "all processes share this machine's cores: times show contention and "
                                    "gloo latency, not GPU scaling"])
        print_rows("step times", steps)
    if "torch_tp" in only:
        anchor = torch_tp_anchor(tps)
        paths += write_table(out / "bench_torch_tp", anchor,
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
    if "memory" in only:
        ms = SMOKE_MEMORY if args.smoke else FULL_MEMORY
        with tempfile.TemporaryDirectory(prefix="tp-bench-shards-") as shards:
            memory = memory_table(ms, SMOKE_MEMORY_CASES if args.smoke else MEMORY_CASES,
                                  Path(shards), with_checkpointing=not args.smoke)
        paths += write_table(out / "bench_memory", memory,
                             "Memory per rank against the serial run / p (shard-only construction, "
                             "sharded checkpoints)", seed=0,
                             notes=[f"GPT: {ms['layers']} layers, hidden {ms['hidden']}, heads "
                                    f"{ms['heads']}, vocab {ms['vocab']}, batch {ms['batch']}, seq "
                                    f"{ms['seq']}; fp32, AdamW; gloo CPU processes of one thread",
                                    "param+optim: bytes of the parameters and both AdamW moments on the "
                                    "busiest rank (exact); vs serial/p = that / (serial's / p)",
                                    "peaks: peak resident set (Linux VmHWM, reset through "
                                    "/proc/self/clear_refs before each phase) minus the process's base "
                                    "RSS measured before construction (the interpreter, torch and gloo: "
                                    "the fixed overhead, in 'base MiB', not counted in the peaks); busiest "
                                    "rank; each fresh process per case; glibc's mmap threshold fixed at "
                                    "128 KiB in every process (shared.bench.rss_follows_tensors), so "
                                    "freed tensors leave the RSS instead of staying in the heap",
                                    "tiny-model peaks: construct/step/save peaks of the same phases on a "
                                    "1-layer model of hidden 4·heads, run (after a warm-up pass of it) "
                                    "before the model in the same process: the part of each peak that does "
                                    "not shrink with the model or with p (gloo buffers, autograd and DCP "
                                    "planning); it is included in the peaks and ratios",
                                    "phases: construct = build_parallel (only this rank's pieces) + "
                                    "AdamW; step = forward, backward, AdamW step (the first, which "
                                    "allocates the moments); save = torch.distributed.checkpoint of the "
                                    "weights and moments, no gather",
                                    "checkpoint_activations: the step peak of the same case in another "
                                    "fresh process with --checkpoint_activations (each block keeps only "
                                    "its input; the first step's peak also holds the new AdamW moments)",
                                    "1D keeps activations whole on every rank (only weights are split), so "
                                    "its step peak is above serial/p by design",
                                    "3d saves the gathered input and weight blocks (q× its own) for "
                                    "backward, as the papers do; '3d, --regather' gathers them again in "
                                    "backward instead (4/3 of the communication)"])
        print_rows("memory per rank", memory)
    if "overlap" in only:
        os_ = SMOKE_OVERLAP if args.smoke else FULL_OVERLAP
        overlap = overlap_gain(os_)
        paths += write_table(out / "bench_overlap", overlap,
                             "2D/2.5D (SUMMA) and 3D with their collectives overlapped with the matmuls, "
                             "and without", seed=0,
                             notes=[f"one transformer layer, batch {os_['batch']}, seq {os_['seq']}, "
                                    f"hidden {os_['hidden']}, heads {os_['heads']}; forward + backward; "
                                    f"slowest rank, minimum of {os_['repeat']} round-robin rounds",
                                    "overlap: asynchronous broadcasts of step t+1 posted before step t's "
                                    "matmul (forward and backward), the backward's reductions waited for "
                                    "after the last step; 3D: the input and weight all-gathers posted "
                                    "together, and the backward's dX reduce-scatter run behind the dW "
                                    "matmul; off/on > 1 = overlap faster",
                                    f"gloo on CPU processes sharing this machine's cores (load average "
                                    f"{os.getloadavg()[0]:.1f} at the end): communication and compute "
                                    f"compete for the same cores, so the gain here is small; on GPUs "
                                    f"(NCCL) they run on separate engines"])
        print_rows("overlap", overlap)
    if "projection" in only:
        projection = projection_table(cluster)
        paths += write_table(out / "projection", projection, "Alpha-beta model projection of step time "
                             "(MODEL PROJECTION, not a measurement)", notes=projection_notes(cluster))
        print_rows("projection (model)", projection)
    publish(args, RESULTS, paths)
    return overhead, steps, anchor, memory, overlap, projection


if __name__ == "__main__":
    main()
