"""Communication and memory of one transformer layer per mode, measured, beside the closed form;
then the papers' headline claims beside ours from the alpha-beta projection
(:mod:`tensor_parallel.projection`, whose table ``make bench-tensor_parallel`` writes).

    python -m tensor_parallel.reproduce            # make reproduce-tensor_parallel (a few minutes)
    python -m tensor_parallel.reproduce --smoke  # seconds; runs/tensor_parallel/smoke_results

For each mode and world size (gloo processes on this machine) one transformer layer runs a
forward and backward pass on its shard of a global batch; per rank we record

* the bytes it sends, from shared.parallel.comm's counters (ring algorithm), and the number of
  collectives, beside the closed form of :mod:`tensor_parallel.cost_model`;
* the bytes of its parameters;
* the bytes of the tensors autograd saves for backward, counted exactly with
  ``torch.autograd.graph.saved_tensors_hooks`` (distinct storages, parameters excluded);
* its FLOPs (``torch.utils.flop_counter.FlopCounterMode``);

each as a ratio to the serial layer (serial = 1.00). Tables go to tensor_parallel/results/.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from shared.bench import (ResultsConfig, SavedTensorBytes, begin, print_rows, publish,
                          write_table)
from shared.parallel import CommMeter, build_topology, spawn
from shared.train import entry_point, parse_config

from .cost_model import Cluster, layer_calls, layer_flops, layer_sent_bytes
from .models import GPT, GPTConfig
from .parallel import batch_shards, check_shapes, parallelize
from .projection import (NICS, NetworkFlags, cluster_note, projection_table,
                         weak_scaling_efficiency)

RESULTS = Path(__file__).resolve().parent / "results"

# (world size, [(mode, depth[, grid size]), ...]) measured in one spawn each; a grid smaller
# than the world runs as data-parallel replicas (the smoke run: one spawn)
SMOKE_CASES = [(8, [("1d", 1, 4), ("2d", 1, 4), ("2p5d", 2), ("3d", 1)])]
CASES = [(2, [("1d", 1)]),
         (4, [("1d", 1), ("2d", 1), ("2p5d", 1)]),
         (8, [("1d", 1), ("2p5d", 2), ("3d", 1)])]
FULL = dict(batch=8, seq=32, hidden=96, heads=8)
SMOKE = dict(batch=4, seq=4, hidden=24, heads=8)

PAPER_CLAIMS = [
    # (claim, paper value, source) — quoted from the brief (abstracts); compared in main()
    ("3D vs 1D, training step, 64 GPUs", 2.32, "3D paper arXiv 2105.14450, abstract (64 V100)"),
    ("3D vs 2D, training step, 64 GPUs", 1.57, "3D paper arXiv 2105.14450, abstract (64 V100)"),
    ("2.5D [4,4,4] vs 2D [8,8,1], 64 GPUs", 1.45, "2.5D paper arXiv 2105.14500 v1, abstract"),
    ("2D (Optimus) vs 1D (Megatron), training, 64 GPUs", 1.48, "Optimus arXiv 2104.05343, abstract"),
    ("2D (Optimus) vs 1D (Megatron), inference, 64 GPUs", 1.78, "Optimus arXiv 2104.05343, abstract"),
    ("2D (Optimus) vs 1D (Megatron), max batch, 64 GPUs", 8.0, "Optimus arXiv 2104.05343, abstract"),
]


def _gpt_config(sizes) -> GPTConfig:
    return GPTConfig(vocab_size=64, seq_len=sizes["seq"], hidden=sizes["hidden"],
                     heads=sizes["heads"], layers=1)


def _inputs(sizes):
    g = torch.Generator().manual_seed(0)
    shape = (sizes["batch"], sizes["seq"], sizes["hidden"])
    return torch.randn(shape, generator=g), torch.randn(shape, generator=g)


def measure_block(block, x, dy) -> dict:
    """One forward + backward of ``block`` on ``x``: sent bytes, calls, saved bytes, FLOPs."""
    x = x.clone().requires_grad_()
    with CommMeter() as comm, FlopCounterMode(display=False) as flops:
        with SavedTensorBytes(block.parameters()) as saved:
            y = block(x)
        (y * dy).sum().backward()    # = y.backward(dy) (elementwise ops are not counted)
    return {"sent_bytes": comm.sent_bytes,
            "calls": int(sum(v["calls"] for v in comm.stats.values())),
            "saved_bytes": saved.bytes,
            "param_bytes": sum(p.numel() * p.element_size() for p in block.parameters()),
            "flops": flops.get_total_flops()}


def _measure_worker(env, cases, sizes):
    out = []
    for mode, depth, *grid in cases:
        topo = build_topology(mode, depth=depth, grid_size=grid[0] if grid else None)
        torch.manual_seed(0)
        serial = GPT(_gpt_config(sizes))
        pmodel = parallelize(serial, topo)
        check_shapes(serial.cfg, topo, sizes["batch"])
        x, dy = _inputs(sizes)
        shard = pmodel.layout.shard_activation
        m = measure_block(pmodel.gpt.blocks[0], shard(x), shard(dy))
        m.update(mode=mode, depth=depth, world=topo.grid_size,
                 grid=", ".join(f"{k}={v}" for k, v in topo.shape.items()),
                 shards=batch_shards(topo))
        out.append(m)
    return out


def measure_all(sizes, cases=CASES) -> tuple[dict, list[dict]]:
    torch.manual_seed(0)
    serial = GPT(_gpt_config(sizes))
    x, dy = _inputs(sizes)
    base = measure_block(serial.blocks[0], x, dy)
    rows = []
    for world, group in cases:
        per_rank = spawn(_measure_worker, world, group, sizes, timeout_s=600)
        for i in range(len(group)):
            ranks = [r[i] for r in per_rank]
            row = dict(ranks[0])
            for key in ("sent_bytes", "saved_bytes", "param_bytes", "flops"):
                row[key] = max(r[key] for r in ranks)       # the busiest rank
                row[key + "_min"] = min(r[key] for r in ranks)
            rows.append(row)
    return base, rows


def max_batch(budget: float, param_bytes: float, act_per_seq: float, shards: int) -> int:
    """Largest global batch (multiple of ``shards``) whose per-rank bytes fit the budget:
    16 bytes per parameter element (fp32 weight, gradient, two AdamW moments) + activations."""
    free = budget - 4 * param_bytes
    if free <= 0:
        return 0
    return int(free // act_per_seq) // shards * shards


def comm_memory_table(sizes, base, rows) -> list[dict]:
    N = sizes["batch"] * sizes["seq"]
    h = sizes["hidden"]
    act_serial = base["saved_bytes"] / sizes["batch"]
    budget = 4 * base["param_bytes"] + 16 * act_serial       # the serial layer fits batch 16
    table = [{"mode": "serial", "ranks": 1, "grid": "", "sent B/rank (measured)": 0,
              "sent B/rank (closed form)": 0.0, "equal": "yes", "calls (measured)": 0,
              "calls (closed form)": 0, "param B/rank": base["param_bytes"], "param ratio": 1.0,
              "saved act B/rank": base["saved_bytes"], "act ratio": 1.0, "FLOP ratio": 1.0,
              "max batch (budget)": max_batch(budget, base["param_bytes"], act_serial, 1)}]
    for r in rows:
        closed = layer_sent_bytes(r["mode"], r["world"], N, h, r["depth"])
        calls = layer_calls(r["mode"], r["world"], N, h, r["depth"])
        same = (math.isclose(r["sent_bytes"], closed, rel_tol=1e-9)
                and math.isclose(r["sent_bytes_min"], closed, rel_tol=1e-9))
        table.append({
            "mode": r["mode"], "ranks": r["world"], "grid": r["grid"],
            "sent B/rank (measured)": r["sent_bytes"], "sent B/rank (closed form)": closed,
            "equal": "yes" if same and r["calls"] == calls else "NO",
            "calls (measured)": r["calls"], "calls (closed form)": calls,
            "param B/rank": r["param_bytes"], "param ratio": r["param_bytes"] / base["param_bytes"],
            "saved act B/rank": r["saved_bytes"], "act ratio": r["saved_bytes"] / base["saved_bytes"],
            "FLOP ratio": r["flops"] / base["flops"],
            "max batch (budget)": max_batch(budget, r["param_bytes"],
                                            r["saved_bytes"] / sizes["batch"], r["shards"])})
    return table


def _t(proj, P, mode, key, depth=None):
    for r in proj:
        if r["GPUs"] == P and r["mode"] == mode and (depth is None or r["grid"].endswith(f"d={depth}")):
            return r[key]
    raise KeyError((P, mode))


def claims_table(proj, cm, cluster: Cluster) -> list[dict]:
    """Each paper number beside ours computed the same way: step-time speedups as ratios of
    projected step times, the 2.5D weak-scaling claim as a ratio of weak-scaling efficiencies,
    under both NIC assumptions."""
    def batch_of(mode, world):
        return next(r["max batch (budget)"] for r in cm if r["mode"] == mode and r["ranks"] == world)

    # how ours is computed for each claim of PAPER_CLAIMS: (kind, slower mode, faster mode)
    how = [("train", "1d", "3d"), ("train", "2d", "3d"), ("weak", "2d", "2p5d"),
           ("train", "1d", "2d"), ("inference", "1d", "2d"), ("batch", "1d", "2d")]
    rows = []
    for (claim, value, source), (kind, slow, fast) in zip(PAPER_CLAIMS, how):
        row = {"claim": claim, "paper": value, "source": source}
        for label, nic in NICS.items():
            if kind == "batch":
                ours = batch_of(fast, 4) / max(1, batch_of(slow, 4))
            elif kind == "weak":
                c = dataclasses.replace(cluster, nic=nic)
                ours = (weak_scaling_efficiency(fast, 4, 64, c)
                        / weak_scaling_efficiency(slow, 1, 64, c))
            else:
                key = f"{kind} s, {label}"
                ours = _t(proj, 64, slow, key) / _t(proj, 64, fast, key)
            row[f"ours, {label}"] = ours
        row["ours is"] = {
            "train": "ratio of projected step times (model)",
            "inference": "ratio of projected forward times (model)",
            "weak": "ratio of projected weak-scaling efficiencies, batch ∝ GPUs from 4 (model)",
            "batch": "measured bytes, 4 ranks (not 64), tiny layer, fixed per-rank budget "
                     "(no network: same in both columns)"}[kind]
        rows.append(row)
    return rows


@dataclass
class ReproduceConfig(NetworkFlags, ResultsConfig):
    """The claims' network assumptions (:class:`tensor_parallel.projection.NetworkFlags`)."""


@entry_point
def main(argv=None):
    args = parse_config(ReproduceConfig, None, argv, default_preset=None)
    cluster = args.cluster()
    sizes = SMOKE if args.smoke else FULL
    out = begin(args, RESULTS)
    base, rows = measure_all(sizes, SMOKE_CASES if args.smoke else CASES)
    cm = comm_memory_table(sizes, base, rows)
    proj = projection_table(cluster)
    claims = claims_table(proj, cm, cluster)
    N = sizes["batch"] * sizes["seq"]
    linear_flops = layer_flops(N, sizes["seq"], sizes["hidden"], attention=False)
    flops_note = (f"serial FLOPs measured by torch's FLOP counter: {base['flops']:.6g}; closed "
                  f"form of the four Linears (fwd+bwd) 72·N·h² = {linear_flops:.6g} (torch does "
                  f"not count the CPU attention kernel; the projection adds 12·N·s·h for it)")
    scale = (f"scaled-down measurement: one layer, batch {sizes['batch']}, seq {sizes['seq']}, "
             f"hidden {sizes['hidden']}, heads {sizes['heads']}, fp32, gloo on CPU")
    paths = write_table(out / "comm_memory", cm, "Per-rank communication and memory of one transformer "
                        "layer (forward + backward)", seed=0, notes=[
                            scale, "sent bytes: shared.parallel.comm counters (ring algorithm), busiest rank; "
                            "closed form: tensor_parallel/cost_model.py; 'equal' = every rank's measured "
                            "bytes and the call count match it",
                            "saved act: distinct storages saved for backward (saved_tensors_hooks), "
                            "parameters excluded; ratios are to the serial layer",
                            flops_note,
                            "max batch: largest global batch whose per-rank bytes (16 B per parameter "
                            "element + saved activations) fit the bytes the serial layer needs at batch 16"])
    paths += write_table(out / "claims", claims, "Papers' headline claims beside our model projection",
                         notes=["paper: quoted from the abstracts (sources in the table); our numbers "
                                "are an alpha-beta MODEL PROJECTION for an assumed V100 cluster and "
                                "workload (the projection table of make bench-tensor_parallel), or "
                                "measured bytes of a tiny layer on 4 ranks, not measurements on 64 GPUs",
                                cluster_note(cluster),
                                "each paper number is compared with ours of the same kind: step-time "
                                "speedups with ratios of step times, the 2.5D weak-scaling efficiency "
                                "with a ratio of weak-scaling efficiencies (batch grown with the GPU "
                                "count from the 4-GPU grid; 2D and 2.5D share that base, so the ratio "
                                "equals their step-time ratio at 64 GPUs under that workload)"])
    for name, t in (("comm_memory", cm), ("claims", claims)):
        print_rows(name, t)
    publish(args, RESULTS, paths)
    bad = [r for r in cm if r["equal"] != "yes"]
    if bad:
        raise SystemExit(f"measured communication differs from the closed form for "
                         f"{[(r['mode'], r['ranks']) for r in bad]}")
    if base["flops"] != linear_flops:
        raise SystemExit(f"measured serial FLOPs {base['flops']} differ from the closed form "
                         f"{linear_flops}")
    return cm, proj, claims


if __name__ == "__main__":
    main()
