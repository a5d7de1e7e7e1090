"""The paper's point, measured in one run (``make bench-f2c``): the cost of the classifier as the
number of identities grows, for F2C, full FC and Partial FC.

For 10K, 100K, 1M and 10M identities (synthetic labels, uniform over the identities), each
method runs full training steps of the same small backbone (IResNet ``ir_tiny`` with a 512-d
embedding, as the paper's features; random 32x32 images; ``--batch`` images per step; SGD with
momentum): F2C its two passes (probe forward + backward, gallery forward, pool insertion, trial
undo), the baselines backbone + margin head over all (FC) or 10% (Partial FC) of the centres.

Columns:

* classifier memory, counted from the tensor sizes (fp32): FC / Partial FC: centres, their
  gradient and momentum (3 x C x d) plus the logits and their gradient (2 x B x C, Partial FC
  2 x B x rC); F2C: the pool (2 x Q x d) plus one pass's two logit sets and their gradients
  (4 x B/2 x Q). F2C's G-Net, an extra copy of the backbone without gradient or optimizer state,
  is listed apart (it does not grow with the identities);
* measured: peak memory increase over the run (CUDA allocator on a GPU, resident set on a CPU)
  and the median step time;
* rows whose classifier would need more than ``--max_gb`` are **projected**, not allocated:
  memory from the sizes, step time by a straight line through the two largest measured sizes
  of that method (the head's work is linear in C); they are labelled so.

F2C is run with a fixed pool (Q = 8192 columns, independent of C: flat by construction) and with
the official README's largest suggestion, Q = 1% of the identities.

The paper gives no table for this (its Fig. 1 is a plot); ``bench_paper_pfc`` quotes Partial FC's
published speed / memory table (insightface) for reference.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from shared.bench import PeakMemory, ResultsConfig, Timer, publish, begin, write_table
from shared.parallel.seeding import seed_everything
from shared.train import entry_point, parse_config
from shared.train.config import ConfigError

from .models import F2C, FaceClassifier, MarginFC, PartialFC, create_backbone

RESULTS = Path(__file__).resolve().parent / "results"
F4 = 4          # bytes of fp32
DIM = 512

# Partial FC's published table (insightface arcface_torch README / partial_fc README; brief
# Sec. 5): V100-32GB x 8, IResNet-50, AMP; samples/s and MB per GPU; None = out of memory.
PAPER_PFC = [
    # (identities, DataPar, ModelPar, PFC 0.1) as (samples/s, MB)
    ("125K", (4681, 7358), (4824, 5306), (5004, 4868)),
    ("1.4M", (1672, 32252), (3043, 11178), (4738, 6056)),
    ("5.5M", None, (1389, 32188), (3975, 9854)),
    ("8M", None, None, (3565, 12310)),
    ("16M", None, None, (2679, 19950)),
    ("29M", None, None, (1855, 32324)),
]


@dataclass
class BenchConfig(ResultsConfig):
    identities: str = "10000,100000,1000000,10000000"
    batch: int = 96
    """images per step (F2C: two views of batch / 2)"""
    repeat: int = 3
    max_gb: float = 4.0
    """classifiers needing more memory than this (GB) are projected, not allocated"""
    pool_size: int = 8192
    seed: int = 0
    threads: int = 1
    device: str = "auto"

    def validate(self) -> None:
        if self.batch < 6 or self.batch % 6:
            raise ConfigError(f"--batch must be a positive multiple of 6; got {self.batch}")
        if self.pool_size <= self.batch // 2:
            raise ConfigError(f"--pool_size must exceed the {self.batch // 2} features of a pass")


def classifier_bytes(method: str, C: int, B: int, Q: int = 0, r: float = 0.1) -> int:
    if method == "f2c":
        return 2 * Q * DIM * F4 + 4 * (B // 2) * Q * F4
    cols = C if method == "fc" else max(1, int(r * C))
    return 3 * C * DIM * F4 + 2 * B * cols * F4


def make_step(method: str, C: int, cfg: BenchConfig, device, Q: int = 0):
    """A full training step of ``method`` on synthetic data, and its model."""
    B = cfg.batch
    backbone = create_backbone("ir_tiny", embedding_size=DIM).to(device)
    g = torch.Generator().manual_seed(cfg.seed)
    x = torch.randn(B, 3, 32, 32, generator=g).to(device)
    labels = torch.randint(0, C, (B,), generator=g).to(device)
    if method == "f2c":
        model = F2C(backbone, Q, scale=32.0, margin=0.4)
        opt = torch.optim.SGD(model.backbone.parameters(), lr=0.01, momentum=0.9)
        n_id = B // 3                                 # 2/3 of a view from the identity loader
        xa, xb = x[:B // 2], x[B // 2:]
        la = labels[:B // 2].clone()
        lb = labels[B // 2:].clone()
        lb[:n_id] = la[:n_id]                         # identity pairs across the views

        def one_pass(p_img, p_lab, g_img, g_lab):
            p = model.probe_features(p_img)
            loss, _ = model.pass_loss(p, p_lab, model.gallery_features(g_img), g_lab.tolist())
            loss.backward()

        def step():
            opt.zero_grad(set_to_none=True)
            model.update_gallery()
            with model.pool.trial():
                one_pass(xa, la, xb, lb)
            one_pass(xb, lb, xa, la)
            opt.step()
        return step, model
    kw = dict(scale=32.0, margin=0.4, margin_type="cosface", seed=cfg.seed, device=device)
    head = PartialFC(C, DIM, 0.1, **kw) if method == "pfc" else MarginFC(C, DIM, **kw)
    model = FaceClassifier(backbone, head)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    it = [0]

    def step():
        opt.zero_grad(set_to_none=True)
        model.loss(x, labels, it[0]).backward()
        opt.step()
        it[0] += 1
    return step, model


def measure(method, C, cfg, device, Q=0) -> dict:
    """Median wall time of a step and, on a CPU, its median process CPU time (one thread: the
    work itself, what an idle machine's wall time would be; robust to other jobs on a shared
    machine), and the peak memory increase."""
    seed_everything(cfg.seed)
    with PeakMemory(device) as mem:
        step, model = make_step(method, C, cfg, device, Q)
        step()                                           # warm-up
        wall, cpu = [], []
        for _ in range(cfg.repeat):
            c0 = time.process_time()
            with Timer(device) as t:
                step()
            wall.append(t.seconds)
            cpu.append(time.process_time() - c0)
    del model, step
    return {"step ms (wall)": 1e3 * statistics.median(wall),
            "step ms (CPU)": 1e3 * statistics.median(cpu) if device.type == "cpu"
            else float("nan"),
            "peak MB (measured)": mem.delta_bytes / 2 ** 20}


def bench_scaling(cfg: BenchConfig, device) -> list[dict]:
    sizes = [int(s) for s in cfg.identities.split(",") if s.strip()]
    arms = [("fc", "full FC", 0), ("pfc", "Partial FC r=0.1", 0),
            ("f2c", f"F2C, Q={cfg.pool_size}", -1), ("f2c", "F2C, Q=1% of C", -2)]
    gnet_mb = sum(p.numel() for p in create_backbone("ir_tiny", embedding_size=DIM)
                  .parameters()) * F4 / 2 ** 20
    key = "step ms (CPU)" if device.type == "cpu" else "step ms (wall)"
    rows, fits = [], {}
    for method, label, q in arms:
        for C in sizes:
            Q = cfg.pool_size if q == -1 else (max(C // 100, cfg.batch // 2 + 1) if q == -2 else 0)
            mem = classifier_bytes(method, C, cfg.batch, Q)
            row = {"method": label, "identities": C, "pool Q": Q or "-",
                   "classifier MB (sizes)": mem / 2 ** 20,
                   "G-Net MB": gnet_mb if method == "f2c" else 0.0}
            if mem <= cfg.max_gb * 2 ** 30:
                row.update(measure(method, C, cfg, device, Q), how="measured")
                fits.setdefault(label, []).append((C, row[key]))
            else:
                pts = fits.get(label, [])
                t = float("nan")
                if len(pts) >= 2:
                    (c0, t0), (c1, t1) = pts[-2], pts[-1]
                    t = t1 + max(0.0, (t1 - t0) / (c1 - c0)) * (C - c1)
                row.update({"step ms (wall)": float("nan"), "step ms (CPU)": float("nan"),
                            "peak MB (measured)": float("nan"),
                            "how": f"PROJECTED: {mem / 2 ** 30:.1f} GB > --max_gb {cfg.max_gb:g}, "
                                   f"not allocated; time extrapolated linearly"})
                row[key] = t
            rows.append(row)
            print(f"  {label:<18} C={C:>9,}: {row['classifier MB (sizes)']:10.1f} MB, "
                  f"{row[key]:9.1f} {key} ({row['how'].split(':')[0]})", flush=True)
    base = {r["identities"]: r[key] for r in rows if r["method"] == "full FC"}
    small = min(sizes)
    for r in rows:
        first = next(x for x in rows if x["method"] == r["method"] and x["identities"] == small)
        r[f"{key} vs own smallest"] = r[key] / first[key]
        r[f"{key} vs full FC"] = r[key] / base[r["identities"]]
    return rows


def paper_rows() -> list[dict]:
    out = []
    for ids, dp, mp, pfc in PAPER_PFC:
        fmt = lambda v: "OOM" if v is None else f"{v[0]} / {v[1]}"   # noqa: E731
        out.append({"identities": ids, "DataPar (samples/s / MB)": fmt(dp),
                    "ModelPar": fmt(mp), "Partial FC r=0.1": fmt(pfc)})
    return out


@entry_point
def main(argv=None):
    cfg = parse_config(BenchConfig, None, argv, default_preset=None)
    if cfg.smoke:
        cfg.identities, cfg.repeat, cfg.batch, cfg.pool_size = "100,1000,100000", 1, 12, 64
        cfg.max_gb = 0.01
    device = torch.device("cuda" if cfg.device != "cpu" and torch.cuda.is_available() else "cpu")
    out = begin(cfg, RESULTS)
    rows = bench_scaling(cfg, device)
    notes = [f"{'SMOKE sizes (code check only)' if cfg.smoke else 'full sizes'}; backbone "
             f"ir_tiny with a {DIM}-d embedding on random 32x32 images, batch {cfg.batch} per "
             f"step, SGD; median of {cfg.repeat} timed steps after one warm-up (wall time, and "
             f"on a CPU the process CPU time of the step, which other jobs on a shared machine "
             f"do not inflate: ratios and projections use it); "
             f"torch threads {torch.get_num_threads()}, one process (centre shards of a "
             f"multi-GPU run divide the FC / Partial FC memory by the number of ranks)",
             "classifier MB (sizes): FC / Partial FC = centres + gradient + momentum (3 C d) + "
             "logits and their gradient (2 B C, Partial FC 2 B rC), fp32; F2C = pool (2 Q d) + "
             "two logit sets of a pass and their gradients (4 B/2 Q)",
             "G-Net MB: F2C's extra backbone copy (no gradient, no optimizer state); the "
             "paper's IResNet-50 G-Net is 166 MB",
             "peak MB (measured): CUDA allocator peak on a GPU, else the increase of the "
             "process's peak resident set (includes allocator caching; compare with the sizes)",
             "PROJECTED rows are not measured: memory from the sizes, time on a straight line "
             "through that method's two largest measured sizes",
             "paper: arXiv 2105.10375 Fig. 1 (a plot, no table): ResNet-50 forward time flat, FC "
             "time steep from 0.1M to 10M identities; a V100-32GB holds the FC weights of only "
             "about 6M identities at 512-d"]
    paths = write_table(out / "bench_scaling", rows,
                        "Classifier memory and step time vs number of identities",
                        seed=cfg.seed, notes=notes)
    paths += write_table(out / "bench_paper_pfc", paper_rows(),
                         "Published reference: Partial FC speed and memory (insightface)",
                         command="quoted, not run",
                         notes=["source: insightface arcface_torch / partial_fc README (brief "
                                "../shared/papers/f2c.md Sec. 5): V100-32GB x 8, IResNet-50, "
                                "AMP; samples/s / MB per GPU; OOM = out of memory",
                                "F2C's paper tables were not recovered; its abstract and Fig. 1 "
                                "claim flat cost in the number of identities"])
    publish(cfg, RESULTS, paths)
    return rows


if __name__ == "__main__":
    main()
