"""Speed of the spherical convolutions and of the three networks, measured in one run
(``make bench-prin``), written to prin/results/:

1. ``bench_so3``: an SO(3) convolution (equatorial kernel, C -> C channels, batch B) at bandwidth
   8/16/32: the whole layer, its FFTs, and its spectral channel mixing with the equatorial
   factorisation against the general ``M^l = Σ_k w_k D^l(g_k)`` product it replaces (s2cnn's
   route); at small bandwidth also a direct evaluation of ``h(R) = Σ_k w_k f(R g_k)`` at every grid
   rotation from the Wigner-D series (no FFT) on one channel, with the largest difference.
2. ``bench_models``: forward throughput (eval mode) and training steps (forward, backward, Adam) of
   SPRIN, PRIN and PointNet on the same clouds, in the CPU presets' sizes and in the paper's;
   the ratio column is against PointNet of the same size, measured in the same process.

Times are medians of ``--repeat`` runs after a warm-up, one torch thread unless ``--threads``.
``--smoke`` runs tiny sizes in seconds (tests), never into results/.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from shared.bench import ResultsConfig, publish, begin, time_fn, write_table
from shared.train import entry_point, parse_config
from shared.train.config import ConfigError

from .models import create_model
from .models import so3

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class BenchConfig(ResultsConfig):
    bandwidths: tuple[int, ...] = (8, 16, 32)
    direct_bandwidths: tuple[int, ...] = (4, 8)
    """bandwidths at which the direct (Wigner series) evaluation also runs"""
    channels: int = 40
    """PRIN's width"""
    batch: int = 8
    """at b = 32: batch / 8 (the grid has 8x the voxels)"""
    repeat: int = 3
    threads: int = 1
    seed: int = 0

    def validate(self) -> None:
        if min(self.channels, self.batch, self.repeat, self.threads) < 1:
            raise ConfigError("--channels, --batch, --repeat and --threads must be >= 1")
        if any(b < 2 or b > 64 for b in self.bandwidths + self.direct_bandwidths):
            raise ConfigError("bandwidths must lie in 2..64")


def _ms(stats) -> float:
    return 1000 * stats["median"]


def bench_so3(cfg: BenchConfig) -> list[dict]:
    rows = []
    gen = torch.Generator().manual_seed(cfg.seed)
    for b in sorted(set(cfg.bandwidths) | set(cfg.direct_bandwidths)):
        row = {"bandwidth": b, "grid": f"{2 * b}^3", "coefficients": so3.layout(b).size}
        if b in cfg.bandwidths:
            C = cfg.channels
            B = cfg.batch if b <= 16 else max(1, cfg.batch // 8)      # b = 32: 8x the voxels
            layer = so3.SO3Convolution(C, C, b)
            x = torch.randn(2 * b, 2 * b, 2 * b, B, C, generator=gen)
            table = so3.kernel_wigner(so3.equatorial_rotations(b), b, torch.complex64)

            def general_mix(spec):
                return so3.so3_correlate(spec, so3.kernel_matrices(layer._weights(torch.float32),
                                                                   table, b), b)
            with torch.no_grad():
                fwd = time_fn(lambda: layer(x), warmup=1, repeat=cfg.repeat)
                spec = so3.so3_rfft(x)
                t_rfft = time_fn(lambda: so3.so3_rfft(x), warmup=1, repeat=cfg.repeat)
                t_rifft = time_fn(lambda: so3.so3_rifft(spec, b), warmup=1, repeat=cfg.repeat)
                t_fact = time_fn(lambda: layer.mix(spec), warmup=1, repeat=cfg.repeat)
                t_gen = time_fn(lambda: general_mix(spec), warmup=1, repeat=cfg.repeat)
                diff = (layer.mix(spec) - general_mix(spec)).abs().max().item()
            xg = x.clone().requires_grad_(True)
            train = time_fn(lambda: layer(xg).square().mean().backward(), warmup=1, repeat=cfg.repeat)
            row.update({"C": C, "B": B, "conv fwd (ms)": _ms(fwd), "conv fwd+bwd (ms)": _ms(train),
                        "forward FFT (ms)": _ms(t_rfft), "inverse FFT (ms)": _ms(t_rifft),
                        "mixing, equatorial factorisation (ms)": _ms(t_fact),
                        "mixing, general M^l (ms)": _ms(t_gen),
                        "general / factorised mixing": t_gen["median"] / t_fact["median"],
                        "max |factorised - general|": diff})
        if b in cfg.direct_bandwidths:
            one = so3.SO3Convolution(1, 1, b).double()
            x1 = torch.randn(2 * b, 2 * b, 2 * b, 1, 1, dtype=torch.float64, generator=gen)
            grid = so3.so3_grid_rotations(b).reshape(-1, 3, 3)
            kern = so3.equatorial_rotations(b)
            w = one._weights(torch.float64)[0, 0].detach().numpy()

            def direct():
                spec = so3.so3_rfft(x1)[:, 0, 0]
                return sum(w[k] * so3.so3_evaluate(spec, grid @ kern[k]) for k in range(2 * b))
            with torch.no_grad():
                d_t = time_fn(direct, warmup=0, repeat=1)
                f_t = time_fn(lambda: one(x1), warmup=1, repeat=cfg.repeat)
                err = np.abs(direct() - (one(x1) - one.bias).reshape(-1).numpy()).max()
            row.update({"direct, 1 channel (ms)": _ms(d_t), "FFT, 1 channel (ms)": _ms(f_t),
                        "direct / FFT": d_t["median"] / f_t["median"], "max |direct - FFT|": err})
        rows.append(row)
        print(f"  b={b}: " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                       for k, v in row.items() if k != "bandwidth"), flush=True)
    return rows


MODEL_SIZES = {
    # label: (points, batch, create_model kwargs)
    "CPU preset": (512, 8, dict(bandwidth=16, sprin_levels=(64, 16), sprin_width=0.5,
                                sprin_k_scale=0.5, pointnet_widths=(32, 64, 64, 128, 256))),
    "paper": (1024, 2, dict(bandwidth=32, sprin_levels=(128, 32))),
}


def bench_models(cfg: BenchConfig) -> list[dict]:
    sizes = ({"smoke": (64, 2, dict(bandwidth=4, sprin_levels=(16, 4), sprin_width=0.25,
                                   sprin_k_scale=0.25, prin_channels=(4, 4, 4),
                                   pointnet_widths=(8, 8, 8, 16, 16)))}
             if cfg.smoke else MODEL_SIZES)
    rows = []
    for size, (n, B, kw) in sizes.items():
        gen = torch.Generator().manual_seed(cfg.seed)
        pts = torch.randn(B, n, 3, generator=gen) * 0.4
        cat = torch.nn.functional.one_hot(torch.arange(B) % 16, 16).float()
        base = {}
        for name in ("pointnet", "sprin", "prin"):
            for task in ("seg", "cls"):
                torch.manual_seed(cfg.seed)
                model = create_model(name, task, num_categories=16, num_parts=50, num_classes=40, **kw)
                opt = torch.optim.Adam(model.parameters(), 1e-3)

                def fwd():
                    with torch.no_grad():
                        return model.eval()(pts, cat)

                def step():
                    model.train()
                    opt.zero_grad()
                    model(pts, cat).float().square().mean().backward()
                    opt.step()
                f = time_fn(fwd, warmup=1, repeat=cfg.repeat)
                t = time_fn(step, warmup=1, repeat=cfg.repeat)
                shapes_s, steps_s = B / f["median"], B / t["median"]
                if name == "pointnet":
                    base[task] = steps_s
                rows.append({"size": size, "model": name, "task": task, "points": n, "batch": B,
                             "fwd shapes/s": shapes_s, "train shapes/s": steps_s,
                             "train speed / PointNet": steps_s / base[task],
                             "bandwidth": kw["bandwidth"] if name == "prin" else "-"})
                print(f"  {size} {name} {task}: {shapes_s:.3g} fwd shapes/s, {steps_s:.3g} "
                      f"train shapes/s", flush=True)
    return rows


@entry_point
def main(argv=None):
    cfg = parse_config(BenchConfig, None, argv, default_preset=None)
    if cfg.smoke:
        cfg.bandwidths, cfg.direct_bandwidths, cfg.channels, cfg.batch, cfg.repeat = (4,), (3,), 2, 1, 1
    out = begin(cfg, RESULTS)
    note = [f"one process, {cfg.threads} torch thread(s), median of {cfg.repeat}; a CPU shared "
            f"with other jobs, so ratios are more telling than absolute times"]
    rows = bench_so3(cfg)
    paths = write_table(out / "bench_so3", rows, "SO(3) convolution: FFT layer, factorised vs "
                        "general spectral mixing, direct evaluation", seed=cfg.seed,
                        notes=note + ["general M^l: per-degree products with M^l = Σ_k w_k "
                                      "D^l(g_k), the D table precomputed (s2cnn's route); "
                                      "direct: the Wigner-D series at R g_k for every grid R "
                                      "(float64)"])
    mrows = bench_models(cfg)
    paths += write_table(out / "bench_models", mrows, "Throughput of SPRIN, PRIN and PointNet",
                         seed=cfg.seed, notes=note + [
                             "CPU preset: SPRIN half width, levels 512->64->16, PRIN b=16, "
                             "PointNet quarter width; paper: SPRIN 1024->128->32 full width, "
                             "PRIN b=32, PointNet full width"])
    publish(cfg, RESULTS, paths)
    return rows, mrows


if __name__ == "__main__":
    main()
