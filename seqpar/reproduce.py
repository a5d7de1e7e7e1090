"""Memory and scaling of sequence parallelism vs 1D tensor parallelism (arXiv 2105.13120 §4).

    python -m seqpar.reproduce            # full run (a few minutes on 2 CPU cores)
    python -m seqpar.reproduce --smoke    # tiny sizes, seconds (the tests run this)

For N = 1, 2, 4 gloo processes and each method (RSA, the memory-lean mode, Megatron 1D tensor
parallelism of the same BERT, from ``shared.parallel.tp1d``), one training step is measured per rank:
the exact bytes autograd saves for backward (``saved_tensors_hooks``), the growth of peak memory
and the step time. A scaled-down BERT with **2 heads** stands in for BERT-Base's 12, so tensor
parallelism is capped at N = 2 here as it is at 12 GPUs in the paper.

From the measurements, for a fixed per-rank budget (what one rank needs for batch B0 at
length L0), the maximum batch and sequence length per method follow: memory(B, L) = 4 × the
parameter bytes of the rank (weights, gradients, two Adam moments: the paper's count) + the
saved bytes, which are exactly linear in B and quadratic in L; the fit is checked at a
held-out point and its error printed. Written to ``seqpar/results/``:

* ``memory.{csv,md}``: measured memory and the derived maximum batch / sequence length;
* ``weak_scaling.{csv,md}``: the analogue of the paper's Table 4, beside the paper's rows;
* ``formulas.{csv,md}``: the paper's memory formulas (Tables 1–3) evaluated at BERT-Base
  settings, with the maximum batch / length they project, beside the paper's claims.
"""
from __future__ import annotations

import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from shared.bench import ResultsConfig, begin, publish, write_table
from shared.train import entry_point, parse_config
from shared.parallel.dist import spawn
from shared.parallel.topology import build_topology

from .memory import build, measure_step
from .models.bert import BertConfig

RESULTS = Path(__file__).resolve().parent / "results"
SIZES = (1, 2, 4)
PAPER_SRC = "paper: arXiv 2105.13120 (ACL 2023), via shared/papers/seqpar.md"

# The paper's Table 4 (weak scaling; memory = max allocated MB, tokens/s), quoted.
PAPER_TABLE4 = {
    "batch": {1: (64, 512, 8477.28, 9946.15, 8477.53, 9261.04),
              2: (128, 512, 9520.47, 15510.19, 8478.76, 13938.22),
              4: (256, 512, 12232.52, 20701.96, 8481.26, 21269.91)},
    "sequence": {1: (64, 256, 3707.39, 9752.61, 3707.01, 9340.13),
                 2: (64, 512, 4993.43, 14195.17, 4670.64, 13144.16),
                 4: (64, 1024, 8175.93, 19879.27, 6601.88, 18243.82)},
}
PAPER_CLAIMS = {"max_batch_ratio": 13.7, "max_seq_ratio": 3.0}   # SP@64 vs TP@12, BERT-Base


@dataclass
class Setting:
    bert: BertConfig
    b0: int                      # budget: one rank's memory at batch b0, length l0
    l0: int
    seq_fit: tuple               # lengths for the quadratic fit in L (at batch b0)
    seq_check: int               # held-out length
    weak_batch: int              # per-N batch in the batch-scaling rows (×N)
    weak_seq: int                # per-N length in the sequence-scaling rows (×N), batch 4
    repeat: int = 1              # steps per point; the fastest gives the time


FULL = Setting(BertConfig(vocab_size=260, hidden=64, heads=2, layers=2, ffn=256, max_len=4096,
                          dropout=0.1, attn_dropout=0.1),
               b0=16, l0=256, seq_fit=(128, 256, 384), seq_check=512, weak_batch=8, weak_seq=256,
               repeat=3)
SMOKE = Setting(BertConfig(vocab_size=260, hidden=16, heads=2, layers=1, ffn=32, max_len=256,
                           dropout=0.1, attn_dropout=0.1),
                b0=2, l0=16, seq_fit=(8, 16, 24), seq_check=32, weak_batch=2, weak_seq=8)


def points(s: Setting, n: int) -> list[tuple[int, int]]:
    pts = [(2, s.l0), (4, s.l0), (s.b0, s.l0)] + [(s.b0, L) for L in s.seq_fit + (s.seq_check,)]
    pts += [(s.weak_batch * n, s.l0), (4, s.weak_seq * n)]
    return list(dict.fromkeys(pts))


def measure_worker(env, method: str, bert: dict, pts: list, repeat: int = 1) -> dict:
    torch.manual_seed(0)
    topo = build_topology("1d" if method == "tp" else "seq")
    model, params = build(method, BertConfig(**bert), topo)
    out = {"params": params}
    measure_step(method, model, *pts[0], bert["vocab_size"])      # warm-up (allocator, threads)
    for b, length in pts:
        runs = [measure_step(method, model, b, length, bert["vocab_size"]) for _ in range(repeat)]
        out[(b, length)] = {**runs[0], "seconds": min(r["seconds"] for r in runs)}
    return out


def run_measurements(s: Setting) -> dict:
    """{(method, n): {"params", (B, L): {saved_bytes, peak_bytes, seconds} (max over ranks)}}"""
    res = {}
    for n in SIZES:
        for method in ("rsa", "lean", "tp"):
            if method == "tp" and s.bert.heads % n:
                continue
            pts = points(s, n)
            per_rank = spawn(measure_worker, n, method, asdict(s.bert), pts, s.repeat,
                             timeout_s=600)
            merged = {"params": per_rank[0]["params"]}
            for p in pts:
                merged[p] = {k: max(r[p][k] for r in per_rank) for k in per_rank[0][p]}
            res[(method, n)] = merged
            print(f"  measured {method} N={n}", flush=True)
    return res


def weight_bytes(params: int) -> int:
    return 4 * 4 * params          # fp32 weights, gradients and two Adam moments


def derive(s: Setting, m: dict, budget: float) -> dict:
    """Maximum batch (at l0) and length (at b0) within ``budget`` bytes, and the fit errors."""
    w = weight_bytes(m["params"])
    # (batch 1 is left out: a [1, L] view can keep its parent's storage alive, so it is not linear)
    s2, s4 = m[(2, s.l0)]["saved_bytes"], m[(4, s.l0)]["saved_bytes"]
    slope, icpt = (s4 - s2) / 2, 2 * s2 - s4
    at_b0 = m[(s.b0, s.l0)]["saved_bytes"]
    batch_err = abs(icpt + slope * s.b0 - at_b0) / at_b0
    max_batch = max(0, math.floor((budget - w - icpt) / slope))
    coef = np.polyfit(np.array(s.seq_fit, float),
                      [m[(s.b0, L)]["saved_bytes"] for L in s.seq_fit], 2)
    held = m[(s.b0, s.seq_check)]["saved_bytes"]
    seq_err = abs(np.polyval(coef, s.seq_check) - held) / held
    return {"max_batch": max_batch, "max_len": max_length(coef, budget - w),
            "fit_err": max(batch_err, seq_err)}


def _poly(coef, x: float) -> float:
    a, b, c = (float(v) for v in coef)
    return (a * x + b) * x + c


def max_length(coef, limit: float) -> int:
    """The largest integer L >= 0 with ``a·L² + b·L + c <= limit`` (``coef = (a, b, c)``, the
    quadratic fit of memory in L), 0 when even L = 0 does not fit. A fit that is not convex
    (``a <= 0``: memory linear in L, as in the lean mode, up to fitting noise) is read as the
    line ``b·L + c``.

    The root is taken in the numerically stable form (no subtraction of nearly equal numbers:
    ``q = −(b + sign(b)·√disc)/2``, roots ``q/a`` and ``c/q``; the textbook formula loses digits
    when ``b² ≫ |4ac|``), then corrected to the exact integer answer by evaluating the fit at
    its neighbours."""
    a, b, c = max(0.0, float(coef[0])), float(coef[1]), float(coef[2]) - limit
    fit = (a, b, float(coef[2]))
    if c > 0:
        return 0
    if a == 0.0:
        if b <= 0:
            raise ValueError(f"memory fit {tuple(coef)} does not grow with the length")
        root = -c / b
    else:
        q = -0.5 * (b + math.copysign(math.sqrt(b * b - 4 * a * c), b))   # disc >= b² here
        root = max(q / a, c / q if q else 0.0)
    n = max(0, int(math.floor(root)))
    for _ in range(4):                       # at most an ulp or two off: fix by evaluation
        if n > 0 and _poly(fit, n) > limit:
            n -= 1
        elif _poly(fit, n + 1) <= limit:
            n += 1
    return n


def memory_table(s: Setting, res: dict) -> list[dict]:
    budget = weight_bytes(res[("rsa", 1)]["params"]) + res[("rsa", 1)][(s.b0, s.l0)]["saved_bytes"]
    rows, derived = [], {}
    for n in SIZES:
        for method in ("tp", "rsa", "lean"):
            key = (method, n)
            if key not in res:
                rows.append({"method": method, "N": n, "note": f"impossible: {s.bert.heads} heads "
                             f"not divisible by {n} (TP is capped by the head count)"})
                continue
            m = res[key]
            d = derive(s, m, budget)
            # SP needs L divisible by N: round the maximum length down
            d["max_len"] -= d["max_len"] % n if method != "tp" else 0
            derived[key] = d
            rows.append({"method": method, "N": n, "params/rank": m["params"],
                         "peak MB/rank": m[(s.b0, s.l0)]["peak_bytes"] / 2 ** 20,
                         "saved MB": m[(s.b0, s.l0)]["saved_bytes"] / 2 ** 20,
                         "max batch": d["max_batch"], "max seq len": d["max_len"],
                         "fit error": d["fit_err"], "note": ""})
    tp_best = max((d for (meth, _), d in derived.items() if meth == "tp"),
                  key=lambda d: d["max_batch"])
    tp_best_len = max(d["max_len"] for (meth, _), d in derived.items() if meth == "tp")
    for row in rows:
        d = derived.get((row["method"], row["N"]))
        if d:
            row["batch vs best TP"] = d["max_batch"] / max(1, tp_best["max_batch"])
            row["seq vs best TP"] = d["max_len"] / max(1, tp_best_len)
    return rows


def weak_scaling_table(s: Setting, res: dict) -> list[dict]:
    rows = []
    for kind, pt in (("batch", lambda n: (s.weak_batch * n, s.l0)),
                     ("sequence", lambda n: (4, s.weak_seq * n))):
        for n in SIZES:
            b, length = pt(n)
            pb, pl, ptm, ptt, psm, pst = PAPER_TABLE4[kind][n]
            row = {"scaling": kind, "N": n, "batch": b, "seq": length}
            for method, label in (("tp", "TP"), ("rsa", "RSA"), ("lean", "lean")):
                m = res.get((method, n))
                if m is None:
                    row[f"{label} saved MB"] = "n/a (heads)"
                    row[f"{label} tok/s"] = "n/a"
                    continue
                row[f"{label} saved MB"] = m[(b, length)]["saved_bytes"] / 2 ** 20
                row[f"{label} tok/s"] = b * length / m[(b, length)]["seconds"]
            row.update({"paper batch x seq": f"{pb} x {pl}", "paper TP MB": ptm,
                        "paper TP tok/s": ptt, "paper SP MB": psm, "paper SP tok/s": pst})
            rows.append(row)
    return rows


def formula_memory(method: str, b: int, length: int, n: int, h=768, z=12) -> float:
    """Elements per layer, MLP + attention, the paper's Tables 1 and 2."""
    a = h // z
    if method == "tp":
        mlp = 32 * h * h / n + 4 * b * length * h / n + b * length * h
        attn = (16 * a * z * h / n + 4 * b * length * z * a / n + b * z * length ** 2 / n
                + b * length * h)
    else:
        mlp = 32 * h * h + 5 * b * length * h / n
        attn = (16 * a * z * h + 4 * b * z * length * a / n + b * z * length ** 2 / n
                + b * length * h / n)
    return mlp + attn


def formula_table() -> list[dict]:
    """BERT-Base (H 768, 12 heads, 12 layers); budget 16 GB of 2-byte elements (P100, fp16)."""
    budget = 16 * 2 ** 30 / 2 / 12
    rows = []
    for n in (1, 2, 4, 8, 12, 16, 32, 64):
        row = {"N": n}
        for method, label in (("tp", "TP"), ("sp", "SP")):
            if method == "tp" and 12 % n:
                row.update({f"{label} M elements/layer": "n/a", f"{label} max batch": "n/a",
                            f"{label} max seq": "n/a"})
                continue
            row[f"{label} M elements/layer"] = formula_memory(method, 64, 512, n) / 1e6
            b = 0
            while formula_memory(method, b + 1, 512, n) <= budget:
                b += 1
            length = 0
            while formula_memory(method, 64, length + n, n) <= budget:
                length += n
            row[f"{label} max batch"], row[f"{label} max seq"] = b, length
        rows.append(row)
    sp64, tp12 = rows[-1], rows[4]
    rows.append({"N": "SP@64 / TP@12 (projection)",
                 "SP max batch": sp64["SP max batch"] / tp12["TP max batch"],
                 "SP max seq": sp64["SP max seq"] / tp12["TP max seq"]})
    rows.append({"N": "paper (measured on P100s)", "SP max batch": PAPER_CLAIMS["max_batch_ratio"],
                 "SP max seq": PAPER_CLAIMS["max_seq_ratio"]})
    return rows


@entry_point
def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_config(ResultsConfig, None, argv, default_preset=None)
    out = begin(args, RESULTS)
    s = SMOKE if args.smoke else FULL
    stem = "smoke_" if args.smoke else ""
    print(f"seqpar reproduce: BERT {asdict(s.bert)}; N = {SIZES}", flush=True)
    res = run_measurements(s)
    scaled = (f"ours: scaled-down BERT ({s.bert.layers} layers, H {s.bert.hidden}, {s.bert.heads} "
              f"heads, FFN {s.bert.ffn}, vocab {s.bert.vocab_size}, dropout {s.bert.dropout}) on "
              f"N gloo CPU processes; the paper: BERT-Base (12 layers, H 768, 12 heads) on P100s")
    mem_rows = memory_table(s, res)
    paths = {}
    paths["memory"] = write_table(
        out / f"{stem}memory", mem_rows,
        "Per-rank memory and the largest batch / sequence per method",
        seed=0, notes=[scaled,
                       f"saved MB: bytes autograd keeps for backward (exact, saved_tensors_hooks), "
                       f"batch {s.b0}, length {s.l0}, max over ranks; peak MB: growth of the "
                       f"process's peak RSS over the step (CPU, approximate)",
                       f"budget per rank = what N=1 needs at batch {s.b0}, length {s.l0} "
                       f"(4 x parameter bytes + saved bytes); max batch at length {s.l0}, max seq "
                       f"len at batch {s.b0}, derived from the measured saved bytes (exactly "
                       f"linear in B, quadratic in L; 'fit error' = relative error at a "
                       f"held-out point)",
                       "TP = Megatron 1D (shared/parallel/tp1d.py) of the same BERT; RSA = the "
                       "paper's ring self-attention; lean = our log-sum-exp mode (no [c, L] score block)",
                       f"paper (BERT-Base, 64 P100s vs TP at 12): "
                       f"{PAPER_CLAIMS['max_batch_ratio']}x max batch, about "
                       f"{PAPER_CLAIMS['max_seq_ratio']}x max sequence length"])
    paths["weak"] = write_table(
        out / f"{stem}weak_scaling", weak_scaling_table(s, res),
        "Weak scaling (analogue of the paper's Table 4)", seed=0,
        notes=[scaled, f"ours: batch scaling = batch {s.weak_batch}N at length {s.l0}; sequence "
               f"scaling = batch 4 at length {s.weak_seq}N; saved MB per rank (exact), tok/s of "
               f"the fastest of {s.repeat} CPU steps (a shared 2-core machine: indicative only)",
               "paper columns: Table 4 of arXiv 2105.13120 (memory = max allocated MB on a P100, "
               "BERT-Base, PP 8): batch 64N at 512, batch 64 at 256N; quoted, not measured here"])
    paths["formulas"] = write_table(
        out / f"{stem}formulas", formula_table(),
        "The paper's memory formulas at BERT-Base settings (projection)", seed=None,
        notes=["projection, not a measurement: Tables 1-2 of the paper (MLP + attention elements "
               "per layer; weights counted 4x), batch 64, length 512; max batch at length 512 and "
               "max seq at batch 64 within 16 GB of 2-byte elements over 12 layers",
               "TP needs the 12 heads divisible by N; SP needs L divisible by N",
               "last row: the paper's measured ratios (13.7x batch, about 3x sequence)"])
    for _, md in paths.values():
        print(md.read_text())
    publish(args, RESULTS, [p for pair in paths.values() for p in pair])
    return {"memory": mem_rows, "paths": paths}


if __name__ == "__main__":
    main()
