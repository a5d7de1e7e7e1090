"""Benchmark of the point operations in :mod:`shared.pointcloud.points` (``make bench-points``).

For clouds of 2K, 16K and 100K points (procedural rooms from :mod:`shared.pointcloud.scenes`, metres) it
times, in one process:

* farthest point sampling of N/4 points;
* ball query (radius 0.2 m, 32 samples) and kNN (k = 16) around S = min(N/4, 4096) centres;

each against (a) the slow loop references ``reference_*`` of :mod:`shared.pointcloud.points` (the ones the
tests compare with; when a full reference run would take minutes it is timed on the first few
samples/centres and scaled linearly, which the ``reference`` column says), (b) the dense
single-block PyTorch formulation of the papers' reference code (full (S, N) distance matrix, then
sort for the ball query / topk for kNN), and (c) scipy's cKDTree for kNN (build + query).
It also checks that our output equals the reference on the part the reference ran, and reports
the peak resident memory above the start of each call (CPU; CUDA allocator peak on a GPU).
torch runs on one CPU thread by default (``--threads``), like the references and cKDTree.

    python -m shared.pointcloud.bench_points            # full sizes, writes shared/results/bench_points.{csv,md}
    python -m shared.pointcloud.bench_points --smoke    # tiny sizes, seconds (used by the tests)
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from ..bench import PeakMemory, write_table
from .points import (ball_query, farthest_point_sample, knn, reference_ball_query,
                     reference_farthest_point_sample, reference_knn, square_distance)
from .scenes import make_scene

RESULTS = Path(__file__).resolve().parent / "results"


def dense_ball_query(xyz, new_xyz, radius, nsample):
    """The papers' reference formulation (pure-PyTorch PointNet++ port): one (B, S, N) block,
    out-of-ball indices set to N, full sort, first ``nsample``, pad with the first."""
    B, N, _ = xyz.shape
    d = square_distance(new_xyz, xyz)
    idx = torch.arange(N).expand_as(d).clone()
    idx[d > radius ** 2] = N
    idx = idx.sort(dim=-1).values[..., :nsample]
    first = idx[..., :1].expand_as(idx)
    return torch.where(idx == N, first, idx)


def dense_knn(query, ref, k):
    """One (B, S, N) block and ``topk`` (no chunking, ties in topk's order)."""
    return square_distance(query, ref).topk(k, dim=-1, largest=False).indices


def _time_once(fn):
    t0 = time.perf_counter()
    res = fn()
    return res, time.perf_counter() - t0


def bench_size(n: int, seed: int, ref_budget_s: float, repeat: int, dense_limit: int) -> list[dict]:
    scene = make_scene(seed, n_points=n)
    xyz = torch.from_numpy(scene.points)[None]                               # (1, N, 3)
    npoint = max(1, n // 4)
    S = min(n // 4, 4096)
    g = torch.Generator().manual_seed(seed)
    centres_idx = torch.randperm(n, generator=g)[:S]
    centres = xyz[:, centres_idx]                                            # (1, S, 3)
    radius, nsample, k = 0.2, 32, 16
    xyz_np, centres_np = xyz.numpy(), centres.numpy()
    rows = []

    def measure(fn):
        with PeakMemory() as mem:
            res, first = _time_once(fn)
        times = [first] + [_time_once(fn)[1] for _ in range(repeat - 1)]
        return res, float(np.median(times)), mem.delta_bytes / 2 ** 20

    def reference(run_part, total: int):
        """Run the reference on growing prefixes until ref_budget_s is used; scale to total."""
        m = min(total, 8)
        while True:
            res, t = _time_once(lambda: run_part(m))
            if m == total or t > ref_budget_s / 4:
                break
            m = min(total, m * 4)
        note = "measured" if m == total else f"extrapolated from {m}/{total}"
        return res, m, t * total / m, note

    # farthest point sampling
    ours, t_ours, mem_ours = measure(lambda: farthest_point_sample(xyz, npoint, start=0))
    ref, m, t_ref, note = reference(
        lambda m: reference_farthest_point_sample(xyz_np, m, start=[0]), npoint)
    rows.append(dict(op="farthest point sampling", points=n, samples_or_queries=npoint,
                     ours_s=t_ours, dense_torch_s=float("nan"), reference_s=t_ref, reference=note,
                     ckdtree_s=float("nan"), speedup_vs_reference=t_ref / t_ours,
                     ours_peak_mib=mem_ours, dense_peak_mib=float("nan"),
                     equals_reference=bool((ours[0, :m].numpy() == ref[0]).all())))

    # ball query
    ours, t_ours, mem_ours = measure(lambda: ball_query(xyz, centres, radius, nsample))
    if S * n <= dense_limit:
        _, t_dense, mem_dense = measure(lambda: dense_ball_query(xyz, centres, radius, nsample))
    else:
        t_dense = mem_dense = float("nan")
    ref, m, t_ref, note = reference(
        lambda m: reference_ball_query(xyz_np, centres_np[:, :m], radius, nsample), S)
    rows.append(dict(op=f"ball query r={radius} k={nsample}", points=n, samples_or_queries=S,
                     ours_s=t_ours, dense_torch_s=t_dense, reference_s=t_ref, reference=note,
                     ckdtree_s=float("nan"), speedup_vs_reference=t_ref / t_ours,
                     ours_peak_mib=mem_ours, dense_peak_mib=mem_dense,
                     equals_reference=bool((ours[0, :m].numpy() == ref[0]).all())))

    # k nearest neighbours
    ours, t_ours, mem_ours = measure(lambda: knn(centres, xyz, k))
    if S * n <= dense_limit:
        _, t_dense, mem_dense = measure(lambda: dense_knn(centres, xyz, k))
    else:
        t_dense = mem_dense = float("nan")
    ref, m, t_ref, note = reference(lambda m: reference_knn(centres_np[:, :m], xyz_np, k)[0], S)
    from scipy.spatial import cKDTree

    def kdtree():
        return cKDTree(xyz_np[0]).query(centres_np[0], k=k)[1]
    _, t_kd, _ = measure(kdtree)
    rows.append(dict(op=f"kNN k={k}", points=n, samples_or_queries=S, ours_s=t_ours,
                     dense_torch_s=t_dense, reference_s=t_ref, reference=note, ckdtree_s=t_kd,
                     speedup_vs_reference=t_ref / t_ours, ours_peak_mib=mem_ours,
                     dense_peak_mib=mem_dense,
                     equals_reference=bool((ours[0, :m].numpy() == ref[0]).all())))
    return rows


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, seconds; writes to --out")
    ap.add_argument("--sizes", type=int, nargs="*", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per measurement (median)")
    ap.add_argument("--reference-budget", type=float, default=4.0,
                    help="seconds a reference may take before it is timed on a prefix and scaled")
    ap.add_argument("--dense-limit", type=float, default=1.1e8,
                    help="largest S*N for which the dense single-block baselines run")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (default 1: the references and cKDTree use one core, "
                         "and on a shared machine multi-threaded small ops stall at barriers)")
    ap.add_argument("--out", default=None, help="output stem (default shared/results/bench_points, "
                                                "or bench_points_smoke under --smoke)")
    args = ap.parse_args(argv)
    threads_before = torch.get_num_threads()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    try:
        return _run(args)
    finally:
        torch.set_num_threads(threads_before)


def _run(args) -> list[dict]:
    sizes = args.sizes or ([256, 1024] if args.smoke else [2048, 16384, 100000])
    budget = 0.2 if args.smoke else args.reference_budget
    repeat = 1 if args.smoke else args.repeat
    rows = []
    for n in sizes:
        t0 = time.perf_counter()
        rows += bench_size(n, args.seed, budget, repeat if n <= 20000 else 1, int(args.dense_limit))
        print(f"N={n}: {time.perf_counter() - t0:.1f}s", flush=True)
    stem = Path(args.out) if args.out else RESULTS / ("bench_points_smoke" if args.smoke
                                                      else "bench_points")
    notes = ["clouds: procedural rooms (shared.pointcloud.scenes.make_scene, metres), batch 1, float32, "
             f"torch CPU threads = {torch.get_num_threads()}",
             "ours: shared.pointcloud.points with method='auto' (dense chunks when S*N <= 2^22, else the "
             "cell grid); FPS draws N/4 samples, ball query and kNN use S = min(N/4, 4096) "
             "centres drawn from the cloud",
             "dense_torch: one (S, N) block as in the "
             "papers' pure-PyTorch PointNet++ code; reference: the loop references of "
             "shared.pointcloud.points (extrapolated = timed on a prefix of samples/centres, scaled "
             "linearly); ckdtree: scipy cKDTree build + query",
             "peak_mib: peak resident memory above the start of the call (process RSS on CPU; "
             "0 or small when the allocator reuses memory the process already held)",
             "dense_torch n/a: not run when S*N exceeds --dense-limit (its (S, N) distance, "
             "index and sort buffers would need several GB)",
             "equals_reference: our indices equal the reference's on the part it ran",
             "times in seconds (median of --repeat runs; one run at 100K points)"]
    csv_path, md_path = write_table(stem, rows, "Point operations: ours vs references",
                                    seed=args.seed, notes=notes)
    for r in rows:
        print(f"{r['op']:<28} N={r['points']:>6}  ours {r['ours_s']:.4f}s  "
              f"ref {r['reference_s']:.3g}s ({r['reference']})  dense {r['dense_torch_s']:.4g}s  "
              f"cKDTree {r['ckdtree_s']:.4g}s  equal={r['equals_reference']}")
    print(f"wrote {csv_path} and {md_path}")
    return rows


if __name__ == "__main__":
    main()
