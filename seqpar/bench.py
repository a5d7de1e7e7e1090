"""Ring attention speed and memory: overlap on/off, memory-lean mode vs the paper's RSA.

    python -m seqpar.bench            # full run (a few minutes on 2 CPU cores)
    python -m seqpar.bench --smoke    # tiny sizes, seconds (the tests run this)

For N = 2 and 4 gloo processes, one forward + backward of ring attention alone (q, k, v of
``[B, Z, L/N, A]`` per rank, a padding mask) is timed for RSA and the lean mode, each with the
next block's transfer posted before the current block's matmul (overlap) and after it (the
reference's order). Memory: the exact bytes saved for backward and the peak RSS growth per rank.
Everything is measured in this one run, so the ratios compare like with like; the absolute
times are those of a shared 2-core CPU (gloo over loopback), where compute and communication
compete for the same cores, so the overlap gain is small here and larger on GPUs with NCCL.
Written to ``seqpar/results/bench.{csv,md}``.
"""
from __future__ import annotations

import statistics
import sys
from pathlib import Path

import torch

from shared.bench import (PeakMemory, ResultsConfig, SavedTensorBytes, Timer, copy_tables_to_readme,
                          results_dir, write_table)
from shared.train import entry_point, parse_config
from shared.parallel.comm import CommMeter
from shared.parallel.dist import barrier, spawn
from shared.parallel.topology import build_topology

from .parallel_rsa import ring_self_attention

RESULTS = Path(__file__).resolve().parent / "results"
FULL = dict(batch=2, heads=4, head_dim=32, length=2048, repeat=9, sizes=(2, 4))
SMOKE = dict(batch=1, heads=2, head_dim=8, length=32, repeat=2, sizes=(2,))
VARIANTS = [("rsa", False, True), ("rsa", False, False),        # (name, lean, overlap)
            ("lean", True, True), ("lean", True, False)]


def bench_worker(env, p: dict) -> dict:
    group = build_topology("seq")["seq"]
    c = p["length"] // group.size
    gen = torch.Generator().manual_seed(group.rank)
    q, k, v, d_out = (torch.randn(p["batch"], p["heads"], c, p["head_dim"], generator=gen)
                      for _ in range(4))
    mask = torch.ones(p["batch"], p["length"], dtype=torch.bool)
    mask[:, -p["length"] // 8:] = False                               # some padding
    q, k, v = (t.requires_grad_() for t in (q, k, v))

    def step(lean, overlap):
        o = ring_self_attention(q, k, v, group, mask, lean=lean, overlap=overlap)
        o.backward(d_out)

    out, times = {}, {(name, overlap): [] for name, _, overlap in VARIANTS}
    for name, lean, overlap in VARIANTS:                              # warm-up and memory
        step(lean, overlap)
        with SavedTensorBytes() as saved, PeakMemory() as peak, CommMeter() as comm:
            o = ring_self_attention(q, k, v, group, mask, lean=lean, overlap=overlap)
            o.backward(d_out)
        out[(name, overlap)] = {"saved": saved.bytes, "peak": peak.delta_bytes,
                                "sent": comm.sent_bytes}
    for _ in range(p["repeat"]):                      # variants interleaved: drift hits all alike
        for name, lean, overlap in VARIANTS:
            barrier()
            with Timer() as t:
                step(lean, overlap)
            times[(name, overlap)].append(t.seconds)
    for key, ts in times.items():
        out[key]["seconds"] = statistics.median(ts)
    return out


@entry_point
def main(argv=None) -> list[dict]:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_config(ResultsConfig, None, argv, default_preset=None)
    args.out = str(results_dir(RESULTS, args.out, args.smoke))
    p = SMOKE if args.smoke else FULL
    rows = []
    for n in p["sizes"]:
        per_rank = spawn(bench_worker, n, p, timeout_s=600)
        worst = {key: {f: max(r[key][f] for r in per_rank) for f in per_rank[0][key]}
                 for key in per_rank[0]}
        base = worst[("rsa", True)]
        for name, _, overlap in VARIANTS:
            w = worst[(name, overlap)]
            no = worst[(name, False)]
            rows.append({"N": n, "attention": name, "overlap": "yes" if overlap else "no",
                         "fwd+bwd ms": 1e3 * w["seconds"],
                         "speedup from overlap": no["seconds"] / w["seconds"] if overlap else "",
                         "time vs RSA (overlap)": w["seconds"] / base["seconds"],
                         "saved MB/rank": w["saved"] / 2 ** 20,
                         "saved vs RSA": w["saved"] / base["saved"],
                         "peak MB/rank (RSS growth)": w["peak"] / 2 ** 20,
                         "sent MB/rank": w["sent"] / 2 ** 20})
        print(f"  benchmarked N={n}", flush=True)
    stem = Path(args.out) / ("smoke_bench" if args.smoke else "bench")
    _, md = write_table(
        stem, rows, "Ring attention: overlap and the memory-lean mode (one forward + backward)",
        seed=0, notes=[f"per rank: q, k, v [B={p['batch']}, Z={p['heads']}, L/N, "
                       f"A={p['head_dim']}] "
                       f"with L={p['length']}, 1/8 of the keys padded; median of {p['repeat']} "
                       f"runs (the four variants interleaved), max over ranks",
                       "overlap = next block's send/receive posted before the current block's "
                       "matmul; no = posted after it (the reference's order)",
                       "saved MB: bytes autograd keeps for backward (exact); peak: growth of the "
                       "process's peak RSS (CPU, approximate); sent: bytes each rank sends "
                       "(shared.parallel.comm counters; a reduce-scatter counted as NCCL's ring "
                       "sends it)",
                       "gloo on a shared 2-core CPU: compute and communication share the cores"])
    if not args.smoke and Path(args.out).resolve() == RESULTS:
        copy_tables_to_readme(RESULTS.parent / "README.md", RESULTS)
    print(md.read_text())
    return rows


if __name__ == "__main__":
    main()
