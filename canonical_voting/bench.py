"""Speed and memory of the two hand-written kernels, against their baselines, in one run
(``make bench-canonical_voting``); writes canonical_voting/results/bench_voting.md and
bench_sparse_conv.md.

1. Canonical voting of a 50K-point scene at 120 yaws: the vectorised, chunked tensor code
   (several chunk sizes: time and peak memory) against the straightforward per-point loop
   (:func:`canonical_voting.voting.canonical_vote_loop`), with the largest difference of their
   maps.
2. Sparse convolution (3x3x3 submanifold, 32 -> 32 channels, forward + backward, neighbour
   search included and alone) against dense ``conv3d`` on the zero-filled grid, at several
   occupancies of a 64^3 grid and on a procedural room at 5 cm (a surface: the case that
   matters).

Ratios are measured in the same process; one torch thread (``--threads``). ``--smoke`` uses
tiny sizes.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from shared.bench import PeakMemory, ResultsConfig, publish, begin, time_fn, write_table
from shared.train import entry_point, parse_config

from .models.sparse import SparseConv3d, SparseTensor
from .voting import canonical_vote, canonical_vote_loop, make_grid

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class BenchConfig(ResultsConfig):
    points: int = 50_000
    n_rot: int = 120
    grid: int = 64
    channels: int = 32
    vote_voxel: float = 0.03
    room_points: int = 20_000
    """points of the procedural room of the sparse-convolution case (voxelized at 5 cm)"""
    threads: int = 1
    repeat: int = 3


def voting_inputs(n: int, seed: int = 0):
    """A procedural room of ``n`` points with ground-truth LCC, half extents and weights (1 on
    objects, 0.05 elsewhere): the votes a perfect network would cast."""
    from .data import Batch, make_targets, procedural_scenes
    raw = procedural_scenes([900_000 + seed], n_points=n, cache=False)[0]
    positions = torch.from_numpy(raw.points)
    inst = torch.from_numpy(raw.instance)
    batch = Batch(torch.zeros(n, 4, dtype=torch.long), torch.zeros(n, 3), positions, inst,
                  torch.from_numpy(raw.boxes), torch.from_numpy(raw.box_labels),
                  torch.from_numpy(raw.box_sym), [n], [raw.name])
    t = make_targets(batch, 6)
    weight = torch.where(t.obj, 1.0, 0.05)
    return positions, t.lcc, torch.exp(t.log_half), weight


def bench_voting(cfg: BenchConfig) -> list[dict]:
    positions, lcc, half, weight = voting_inputs(cfg.points)
    grid = make_grid(positions, cfg.vote_voxel, 1 << 26)
    rows = []
    loop_s = None
    with PeakMemory() as mem:
        t0 = time.perf_counter()
        ref = canonical_vote_loop(positions, lcc, half, weight, grid, cfg.n_rot)
        loop_s = time.perf_counter() - t0
    rows.append({"implementation": "per-point loop (numpy, one point at a time)",
                 "chunk (point-yaw pairs)": "-", "seconds": loop_s, "speed-up": 1.0,
                 "peak RSS increase (MiB)": mem.delta_bytes / 2 ** 20, "max abs difference": 0.0})
    for chunk in (1 << 16, 1 << 18, 1 << 20):
        fn = lambda: canonical_vote(positions.double(), lcc.double(), half.double(),
                                    weight.double(), grid, cfg.n_rot, chunk)
        with PeakMemory() as mem:
            maps = fn()
        t = time_fn(fn, warmup=0, repeat=cfg.repeat)["median"]
        held = ref.obj[..., None] > 1e-3
        diff = max(float((maps.obj - ref.obj).abs().max()),
                   float(((maps.rot - ref.rot).abs() * held).max()),
                   float(((maps.scale - ref.scale).abs() * held).max()))
        rows.append({"implementation": "vectorised, chunked (torch, float64)",
                     "chunk (point-yaw pairs)": chunk, "seconds": t, "speed-up": loop_s / t,
                     "peak RSS increase (MiB)": mem.delta_bytes / 2 ** 20,
                     "max abs difference": diff})
    fn = lambda: canonical_vote(positions, lcc, half, weight, grid, cfg.n_rot, 1 << 18)
    t = time_fn(fn, warmup=1, repeat=cfg.repeat)["median"]
    rows.append({"implementation": "vectorised, chunked (torch, float32)",
                 "chunk (point-yaw pairs)": 1 << 18, "seconds": t, "speed-up": loop_s / t,
                 "peak RSS increase (MiB)": float("nan"),
                 "max abs difference": float((fn().obj.double() - ref.obj).abs().max())})
    for r in rows:
        print(f"  {r['implementation']:<45} chunk {r['chunk (point-yaw pairs)']!s:>8}: "
              f"{r['seconds']:.3f} s ({r['speed-up']:.1f}x)", flush=True)
    return rows


def _occupied(shape, fraction: float, gen) -> torch.Tensor:
    total = shape[0] * shape[1] * shape[2]
    flat = torch.randperm(total, generator=gen)[:max(1, int(total * fraction))]
    x, r = flat // (shape[1] * shape[2]), flat % (shape[1] * shape[2])
    return torch.stack([torch.zeros_like(x), x, r // shape[2], r % shape[2]], 1)


def _room_sites(points: int, voxel: float = 0.05) -> tuple[torch.Tensor, tuple]:
    from .data import procedural_scenes, voxelize
    s = voxelize(procedural_scenes([900_001], n_points=points, cache=False)[0], voxel)
    coords = torch.cat([torch.zeros(len(s.coords), 1, dtype=torch.long), s.coords], 1)
    return coords, tuple((s.coords.max(0).values + 1).tolist())


def bench_sparse(cfg: BenchConfig) -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    C = cfg.channels
    cases = [(f"random {f:g} % of {cfg.grid}^3", _occupied((cfg.grid,) * 3, f / 100, gen),
              (cfg.grid,) * 3) for f in (0.5, 2, 10, 30)]
    room, shape = _room_sites(cfg.room_points)
    cases.append((f"procedural room, 5 cm ({'x'.join(map(str, shape))} grid)", room, shape))
    conv = SparseConv3d(C, C, 3)
    w_dense = conv.weight.detach().reshape(3, 3, 3, C, C).permute(4, 3, 0, 1, 2).contiguous()
    w_dense.requires_grad_()
    rows = []
    for name, coords, shape in cases:
        feats = torch.randn(len(coords), C, generator=gen, requires_grad=True)

        def sparse_step():
            out = conv(SparseTensor(feats, coords))       # a new manager: the search included
            out.feats.sum().backward()

        def search():
            SparseTensor(feats, coords).manager.submanifold_map(1, 3)

        dense_in = torch.zeros(1, C, *shape)
        dense_in[0, :, coords[:, 1], coords[:, 2], coords[:, 3]] = feats.detach().T
        dense_in.requires_grad_()

        def dense_step():
            F.conv3d(dense_in, w_dense, padding=1).sum().backward()

        ts = time_fn(sparse_step, warmup=1, repeat=cfg.repeat)["median"]
        tsearch = time_fn(search, warmup=1, repeat=cfg.repeat)["median"]
        td = time_fn(dense_step, warmup=1, repeat=cfg.repeat)["median"]
        cells = shape[0] * shape[1] * shape[2]
        rows.append({"sites": name, "occupied": len(coords),
                     "occupancy (%)": 100 * len(coords) / cells,
                     "sparse fwd+bwd (s)": ts, "of which neighbour search (s)": tsearch,
                     "dense conv3d fwd+bwd (s)": td, "dense / sparse": td / ts})
        print(f"  {name:<40} sparse {ts:.4f} s (search {tsearch:.4f}), dense {td:.4f} s: "
              f"{td / ts:.1f}x", flush=True)
    return rows


@entry_point
def main(argv=None):
    cfg = parse_config(BenchConfig, None, argv, default_preset=None)
    if cfg.smoke:
        cfg.points, cfg.n_rot, cfg.grid, cfg.channels, cfg.repeat = 1000, 12, 16, 8, 1
        cfg.vote_voxel, cfg.room_points = 0.1, 3000
    out = begin(cfg, RESULTS)
    note = ("SMOKE run: tiny sizes (a code check, not a result)" if cfg.smoke else
            f"{cfg.threads} torch thread(s), median of {cfg.repeat}; a shared machine: compare "
            f"ratios, not absolute times")
    print(f"canonical voting, {cfg.points} points x {cfg.n_rot} yaws:")
    paths = write_table(out / "bench_voting", bench_voting(cfg),
                        f"Canonical voting: {cfg.points} points x {cfg.n_rot} yaws, "
                        f"{cfg.vote_voxel * 100:g} cm vote grid",
                        notes=[note, "the loop is the reference kernel's arithmetic one point at a "
                               "time; max abs difference: obj map, and rot/scale maps where a cell "
                               "holds votes (> 1e-3)"])
    print(f"sparse 3x3x3 convolution, {cfg.channels} -> {cfg.channels} channels:")
    paths += write_table(out / "bench_sparse_conv", bench_sparse(cfg),
                         f"Sparse 3x3x3 convolution vs dense conv3d ({cfg.channels} -> "
                         f"{cfg.channels} channels, forward + backward)",
                         notes=[note, "sparse: plain-PyTorch submanifold convolution "
                                "(canonical_voting.models.sparse), neighbour search included; "
                                "dense: torch conv3d on the zero-filled grid"])
    publish(cfg, RESULTS, paths)


if __name__ == "__main__":
    main()
