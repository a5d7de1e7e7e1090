"""Speed of Skeleton Merger, measured in one run (``make bench-skeleton_merger``).

1. ``bench``: training step (forward, CCD + regulariser, backward, Adadelta) and inference
   throughput in shapes per second, for the CPU preset (``tiny``: 256 points, half widths) and
   the paper's size (2048 points, full encoder), batch 8 each, and where the time goes: the
   point operations of the encoder (farthest point sampling, ball query, 3-NN interpolation:
   ``shared.pointcloud.points``), the CCD's nearest-neighbour search, and the rest (the dense
   layers, their backward, the optimizer).
2. ``bench_ccd``: our vectorised CCD (one blocked nearest-neighbour search for both directions,
   exact distances of the chosen pairs, closed-form masking budget) against the authors'
   formulation (per edge, a ``B x N x c x 3`` difference tensor and two ``min``s; then a stack,
   a sort and a loop over the edges for the budget) on the same inputs, forward + backward, and
   a check that both give the same value.

The paper reports no speed numbers; these are ratios on this machine (see the tables' hardware
line). ``--smoke`` runs tiny sizes with one repeat so the tests can exercise the code.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from shared.bench import ResultsConfig, publish, begin, time_fn, write_table
from shared.train import entry_point, parse_config

from . import loss as loss_module
from .config import PRESETS, Config, PAPER_NPOINTS
from .loss import composite_chamfer, offset_regularizer
from .models import pointnet2
from .train import build_model, build_optimizer

RESULTS = Path(__file__).resolve().parent / "results"
POINT_OPS = ("farthest_point_sample", "ball_query", "three_interpolate")


@dataclass
class BenchConfig(ResultsConfig):
    repeat: int = 3
    batch_size: int = 8
    seed: int = 0
    threads: int = 1
    """torch CPU threads (1: stable on a shared machine); 0 = torch's default"""


class OpTimer:
    """Accumulated wall time of the encoder's point operations and of the CCD's search, by
    wrapping the functions the modules call (restored on exit)."""

    def __init__(self):
        self.seconds = {name: 0.0 for name in POINT_OPS + ("ccd_search",)}

    def _wrap(self, module, name, key):
        fn = getattr(module, name)

        def timed(*a, **kw):
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                self.seconds[key] += time.perf_counter() - t
        return fn, timed

    @contextlib.contextmanager
    def active(self):
        patched = [(pointnet2, n, n) for n in POINT_OPS] + [(loss_module, "nearest_pairs",
                                                            "ccd_search")]
        originals = []
        for module, name, key in patched:
            fn, timed = self._wrap(module, name, key)
            originals.append((module, name, fn))
            setattr(module, name, timed)
        try:
            yield self
        finally:
            for module, name, fn in originals:
                setattr(module, name, fn)


def _configs(cfg: BenchConfig) -> list[tuple[str, Config]]:
    if cfg.smoke:
        return [("smoke", Config(num_points=128, npoints=(64, 16, 8, 4), radius_scale=4.0,
                                 width=0.25))]
    return [("tiny (CPU preset)", Config(**PRESETS["tiny"])),
            ("paper size", Config(num_points=2048, npoints=PAPER_NPOINTS, width=1.0))]


def bench_model(cfg: BenchConfig) -> list[dict]:
    rows = []
    for label, mcfg in _configs(cfg):
        torch.manual_seed(cfg.seed)
        model = build_model(mcfg)
        opt = build_optimizer(model, mcfg)
        x = torch.rand(cfg.batch_size, mcfg.num_points, 3) * 2 - 1

        def train_step():
            model.train()
            out = model(x)
            loss = composite_chamfer(x, out.samples, out.counts, out.strengths) + \
                offset_regularizer(out.offsets)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        @torch.no_grad()
        def infer():
            model.eval()
            model(x)

        for _ in range(2 if not cfg.smoke else 1):            # warm-up, keypoints spread out
            train_step()
        ops = OpTimer()
        with ops.active():
            t_train = time_fn(train_step, warmup=0, repeat=cfg.repeat)["mean"]
        train_ops = dict(ops.seconds)
        ops = OpTimer()
        with ops.active():
            t_infer = time_fn(infer, warmup=1 if not cfg.smoke else 0, repeat=cfg.repeat)["mean"]
        n = cfg.repeat
        point_train = sum(train_ops[k] for k in POINT_OPS) / n
        point_infer = sum(ops.seconds[k] for k in POINT_OPS) / (n + (0 if cfg.smoke else 1))
        rows.append({
            "config": label, "points": mcfg.num_points, "batch": cfg.batch_size,
            "params (M)": round(sum(p.numel() for p in model.parameters()) / 1e6, 3),
            "train step ms": 1e3 * t_train, "train shapes/s": cfg.batch_size / t_train,
            "inference ms": 1e3 * t_infer, "inference shapes/s": cfg.batch_size / t_infer,
            "FPS ms": 1e3 * train_ops["farthest_point_sample"] / n,
            "ball query ms": 1e3 * train_ops["ball_query"] / n,
            "3-NN interpolation ms": 1e3 * train_ops["three_interpolate"] / n,
            "point ops share": point_train / t_train,
            "CCD search share": train_ops["ccd_search"] / n / t_train,
            "rest share": 1 - (point_train + train_ops["ccd_search"] / n) / t_train,
            "point ops share of inference": point_infer / t_infer})
    return rows


def authors_ccd(cloud, sub_clouds, strengths, penalty: float = 20.0):
    """The authors' formulation of the CCD (per-edge dense tensors, then a loop over the sorted
    edges), written here as the speed baseline; it computes the same value as ours."""
    total = cloud.new_zeros(())
    nearest = []
    for e, y in enumerate(sub_clouds):
        d = torch.sqrt(1e-4 + (y[:, None, :, :] - cloud[:, :, None, :]).square().sum(-1))
        total = total + (d.min(1)[0].mean(-1) * strengths[:, e]).mean() / len(sub_clouds)
        nearest.append(d.min(-1)[0])                                        # (B, N)
    ordered, order = torch.sort(torch.stack(nearest), dim=0)
    budget = torch.ones_like(ordered[0])
    for m in range(len(sub_clouds)):
        w = torch.minimum(budget, torch.gather(strengths, 1, order[m]))
        total = total + (ordered[m] * w).mean()
        budget = budget - w
    return total + penalty * budget.mean()


def bench_ccd(cfg: BenchConfig) -> list[dict]:
    rows = []
    for label, mcfg in _configs(cfg):
        torch.manual_seed(cfg.seed)
        model = build_model(mcfg)
        x = torch.rand(cfg.batch_size, mcfg.num_points, 3) * 2 - 1
        for _ in range(2):                                  # keypoints spread a little
            out = model(x)
            (composite_chamfer(x, out.samples, out.counts, out.strengths)).backward()
            with torch.no_grad():
                for p in model.parameters():
                    if p.grad is not None:
                        p -= 0.5 * p.grad
                        p.grad = None
        with torch.no_grad():
            out = model(x)
        samples = out.samples.detach().requires_grad_()
        strengths = out.strengths.detach().requires_grad_()
        subs = lambda: [samples[:, e, :c] for e, c in enumerate(out.counts.tolist())]  # noqa

        def ours():
            composite_chamfer(x, samples, out.counts, strengths).backward()

        def theirs():
            authors_ccd(x, subs(), strengths).backward()

        a = composite_chamfer(x, samples, out.counts, strengths).item()
        b = authors_ccd(x, subs(), strengths).item()
        t_ours = time_fn(ours, warmup=1, repeat=cfg.repeat)["mean"]
        t_theirs = time_fn(theirs, warmup=1, repeat=cfg.repeat)["mean"]
        rows.append({"config": label, "points": mcfg.num_points, "batch": cfg.batch_size,
                     "edges": out.counts.numel(), "samples (mean per edge)":
                         round(float(out.counts.float().mean()), 1),
                     "ours fwd+bwd ms": 1e3 * t_ours, "authors' formulation fwd+bwd ms":
                         1e3 * t_theirs, "speed-up": t_theirs / t_ours,
                     "value difference (abs)": abs(a - b)})
    return rows


@entry_point
def main(argv=None):
    cfg = parse_config(BenchConfig, None, argv, default_preset=None)
    out = begin(cfg, RESULTS)
    label = "smoke sizes (code check only)" if cfg.smoke else "full sizes"
    notes = ["the paper reports no speed numbers: all columns are measured here",
             f"{label}; mean of {cfg.repeat} timed repeats after warm-up",
             f"torch threads: {torch.get_num_threads()}; a CPU shared with other jobs gives "
             f"noisy absolute times, compare the shares and ratios",
             "point ops: farthest point sampling, ball query and 3-NN interpolation "
             "(shared.pointcloud.points, backend auto) in the forward pass; CCD search: the "
             "loss's nearest-neighbour search; rest: dense layers forward and backward, the "
             "loss's exact distances, Adadelta"]
    rows = bench_model(cfg)
    paths = write_table(out / "bench", rows, "Training and inference throughput, and where the "
                        "time goes", seed=cfg.seed, notes=notes)
    ccd_rows = bench_ccd(cfg)
    paths += write_table(out / "bench_ccd", ccd_rows, "Composite Chamfer Distance: vectorised "
                         "(ours) vs the authors' per-edge formulation, forward + backward",
                         seed=cfg.seed, notes=notes[:3])
    for row in rows + ccd_rows:
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()})
    publish(cfg, RESULTS, paths)
    return rows + ccd_rows


if __name__ == "__main__":
    main()
