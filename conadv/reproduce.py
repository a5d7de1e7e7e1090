"""The paper's batch-size table, scaled down (``make reproduce-conadv``).

Trains resnet_tiny on the generated data at several global batch sizes (default 32 ... 1024, 32x)
with vanilla, DisAdv, ConAdv and ConAdv + AutoAugment under one recipe and one epoch budget,
3 seeds per cell, and writes to conadv/results/:

* ``scaled_down``: test top-1 (mean +- std over the seeds) per batch size and mode, beside the
  paper's ResNet-50 ImageNet numbers: the two of its abstract (96K: ConAdv 75.3, ConAdv + data
  augmentation 76.2) and its vanilla LARS row as quoted by VRGD (arXiv 2309.13681, Tables 2-3,
  rows cited from the ConAdv paper); the paper's DisAdv and smaller-batch ConAdv numbers could
  not be retrieved (brief Sec. 7);
* ``scaled_down_runs.csv``: every run (seed, steps, accuracy, seconds);
* ``accuracy_vs_batch.png``: accuracy against batch size per mode.

Every run: ``python -m conadv.train --preset tiny`` with ``--epochs``, ``--micro_batch`` (BatchNorm
over micro-batches of the same size at every batch size, like per-core BatchNorm on TPUs: ghost
BN), the attack in line (``--concurrent false``: the same numbers as the worker thread, one core
per run) and ``--jobs`` runs in parallel. ``--smoke`` runs a 2 x 2 grid of a few steps.
"""
from __future__ import annotations

import contextlib
import functools
import multiprocessing as mp
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from shared.train.plot import pyplot, save_figure
from shared.bench import ResultsConfig, publish, results_dir, write_table
from shared.train import entry_point, parse_config
from shared.train.cli import REPO_ROOT
from shared.train.config import ConfigError

from .config import PRESETS, Config

RESULTS = Path(__file__).resolve().parent / "results"

# mode label -> train flags
MODES = {
    "vanilla": ["--mode", "vanilla"],
    "DisAdv": ["--mode", "disadv"],
    "ConAdv": ["--mode", "conadv"],
    "ConAdv + AA": ["--mode", "conadv", "--augment", "autoaugment"],
    "vanilla + AA": ["--mode", "vanilla", "--augment", "autoaugment"],
}
# The paper's ResNet-50 ImageNet top-1 (%), by batch size. [P]: the paper's abstract
# (arXiv 2106.00221); [2nd]: the paper's vanilla LARS rows quoted by VRGD (arXiv 2309.13681,
# Tables 2 and 3, "cited from [Liu et al., 2021]"). Not retrieved: DisAdv, ConAdv below 96K.
PAPER = [
    ("4K", {"vanilla": "76.9 [2nd]"}),
    ("8K", {"vanilla": "76.6 [2nd]"}),
    ("16K", {"vanilla": "76.6 [2nd]"}),
    ("32K", {"vanilla": "76.6 [2nd]"}),
    ("64K", {"vanilla": "75.3 [2nd]"}),
    ("96K", {"vanilla": "74.3 [2nd]", "ConAdv": "75.3 [P]", "ConAdv + AA": "76.2 [P]"}),
]


@dataclass
class ReproConfig(ResultsConfig):
    batch_sizes: tuple[int, ...] = (32, 128, 512, 1024)
    seeds: tuple[int, ...] = (0, 1, 2)
    modes: tuple[str, ...] = ("vanilla", "disadv", "conadv", "conadv_aa")
    """which of vanilla, disadv, conadv, conadv_aa (ConAdv + AutoAugment), vanilla_aa"""
    epochs: float = 10.0
    warmup_epochs: float = 1.0
    train_size: int = 2048
    micro_batch: int = 32
    """BatchNorm batch (ghost BN) at every batch size"""
    epsilon: float = 0.0
    """0 = the tiny preset's"""
    jobs: int = 2
    """training runs in parallel (one torch thread each)"""
    name: str = "scaled_down"
    """table name (results/<name>.md, <name>_runs.csv); another name for an ablation"""
    title: str = ""
    """table title; "" = the sweep's"""
    paper: bool = True
    """add the paper's rows to the table (off for ablations)"""
    from_csv: tuple[str, ...] = ()
    """rebuild the tables from earlier runs' <name>_runs.csv files (comma-separated) instead
    of training"""
    readme: bool = True
    """copy the tables into conadv/README.md (full runs into results/ only)"""

    def validate(self) -> None:
        keys = set(_LABEL)
        if not self.modes or set(self.modes) - keys:
            raise ConfigError(f"--modes {','.join(self.modes)}: choose from "
                              f"{', '.join(sorted(keys))}")
        if not self.batch_sizes or not self.seeds or self.jobs < 1:
            raise ConfigError("--batch_sizes and --seeds need at least one value and --jobs >= 1")
        if any(b > self.train_size for b in self.batch_sizes):
            raise ConfigError(f"--batch_sizes {max(self.batch_sizes)} exceeds --train_size "
                              f"{self.train_size}; lower it or raise --train_size")


_LABEL = {"vanilla": "vanilla", "disadv": "DisAdv", "conadv": "ConAdv",
          "conadv_aa": "ConAdv + AA", "vanilla_aa": "vanilla + AA"}


def _train(argv: list[str]) -> dict:
    import torch

    from .train import main as train_main

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    s = train_main(argv)
    return dict(val_acc=s["val_acc"], val_images=s["val_images"], steps=s["step"],
                train_acc=s.get("last_acc", float("nan")), seconds=time.perf_counter() - t0)


def run_grid(cfg: ReproConfig, runs: Path) -> list[dict]:
    """Every (batch, mode, seed) run, the most expensive first; returns one row per run."""
    jobs = []
    for batch in cfg.batch_sizes:
        for mode in cfg.modes:
            for seed in cfg.seeds:
                label = _LABEL[mode]
                argv = ["--preset", "tiny", *MODES[label], "--seed", str(seed),
                        "--batch_size", str(batch), "--quiet", "--concurrent", "false",
                        "--out_dir", str(runs), "--run", f"b{batch}-{mode}-s{seed}",
                        "--eval_every", "0", "--log_every", "10"]
                micro = min(cfg.micro_batch, batch)
                if cfg.smoke:
                    argv += ["--train_size", "64", "--val_size", "32", "--img_size", "8",
                             "--epochs", "0", "--steps", "2", "--warmup_steps", "0",
                             "--micro_batch", str(micro)]
                else:
                    argv += ["--epochs", str(cfg.epochs), "--warmup_epochs",
                             str(cfg.warmup_epochs), "--train_size", str(cfg.train_size),
                             "--micro_batch", str(micro)]
                if cfg.epsilon:
                    argv += ["--epsilon", str(cfg.epsilon)]
                cost = (1 if mode.startswith("vanilla") else 3) * (1 + 32 / micro) / batch ** 0.1
                jobs.append((cost, dict(batch=batch, mode=label, seed=seed), argv))
    jobs.sort(key=lambda j: -j[0])
    rows = []
    with contextlib.ExitStack() as stack:
        if cfg.jobs > 1:
            pool = stack.enter_context(ProcessPoolExecutor(cfg.jobs,
                                                           mp_context=mp.get_context("spawn")))
            results = [(meta, pool.submit(_train, argv).result) for _, meta, argv in jobs]
        else:                                           # in this process, one after another
            results = [(meta, functools.partial(_train, argv)) for _, meta, argv in jobs]
        for meta, result in results:
            out = result()
            rows.append(dict(meta, test_acc=100 * out["val_acc"],
                             last_step_train_acc=100 * out["train_acc"], steps=out["steps"],
                             seconds=out["seconds"], val_images=out["val_images"]))
            print(f"  batch {meta['batch']:>5} {meta['mode']:<12} seed {meta['seed']}: "
                  f"top-1 {100 * out['val_acc']:.2f}% ({out['steps']} steps, "
                  f"{out['seconds']:.0f} s)", flush=True)
    return sorted(rows, key=lambda r: (r["batch"], list(_LABEL.values()).index(r["mode"]),
                                       r["seed"]))


def _cell(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f}"


def summary_rows(runs: list[dict], modes: list[str], setting: str,
                 paper: bool = True) -> list[dict]:
    rows = []
    for batch in sorted({r["batch"] for r in runs}):
        here = [r for r in runs if r["batch"] == batch]
        row = {"setting": setting, "batch": batch, "steps": here[0]["steps"]}
        for mode in modes:
            row[mode] = _cell([r["test_acc"] for r in here if r["mode"] == mode])
        rows.append(row)
    for batch, values in PAPER if paper else ():
        row = {"setting": "paper: ResNet-50, ImageNet, 90 epochs", "batch": batch,
               "steps": round(90 * 1281167 / (int(batch[:-1]) * 1024))}
        for mode in modes:
            row[mode] = values.get(mode, "–")
        rows.append(row)
    return rows


def paired_rows(runs: list[dict], modes: list[str]) -> list[dict]:
    """Per batch size, the per-seed differences of test top-1 (same seed = same data and
    initial weights): each mode against vanilla, and ConAdv against DisAdv."""
    pairs = [(m, "vanilla") for m in modes if m != "vanilla" and "vanilla" in modes]
    if "ConAdv" in modes and "DisAdv" in modes:
        pairs.append(("ConAdv", "DisAdv"))
    if "ConAdv + AA" in modes and "vanilla + AA" in modes:
        pairs.append(("ConAdv + AA", "vanilla + AA"))
    rows = []
    for batch in sorted({r["batch"] for r in runs}):
        acc = {(r["mode"], r["seed"]): r["test_acc"] for r in runs if r["batch"] == batch}
        row = {"batch": batch}
        for a, b in pairs:
            d = [acc[a, s] - acc[b, s] for (m, s) in acc if m == a and (b, s) in acc]
            if d:
                row[f"{a} − {b}"] = (f"{_cell(d)} "
                                     f"({sum(x > 0 for x in d)}/{len(d)} seeds > 0)")
        rows.append(row)
    return rows


def read_runs(path) -> list[dict]:
    """The rows of a ``<name>_runs.csv``."""
    import csv

    kinds = {"batch": int, "seed": int, "steps": int, "val_images": int, "test_acc": float,
             "last_step_train_acc": float, "seconds": float}
    with open(path) as f:
        return [{k: kinds.get(k, str)(v) for k, v in row.items() if v != ""}
                for row in csv.DictReader(f)]


def plot(runs: list[dict], modes: list[str], path: Path, title: str) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    batches = sorted({r["batch"] for r in runs})
    for i, mode in enumerate(modes):
        means, stds = [], []
        for b in batches:
            vals = [r["test_acc"] for r in runs if r["batch"] == b and r["mode"] == mode]
            means.append(statistics.fmean(vals))
            stds.append(statistics.stdev(vals) if len(vals) > 1 else 0.0)
        shift = [b * (1 + 0.03 * (i - 1.5)) for b in batches]      # keep error bars apart
        ax.errorbar(shift, means, yerr=stds, marker="o", capsize=3, label=mode)
    ax.set_xscale("log", base=2)
    ax.set_xticks(batches, [str(b) for b in batches])
    ax.set_xlabel("global batch size")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path, dpi=120)


@entry_point
def main(argv=None):
    cfg = parse_config(ReproConfig, None, argv, default_preset=None)
    out = results_dir(RESULTS, cfg.out, cfg.smoke)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.smoke:                         # 2 batch sizes x 1 seed, 2 steps each, in-process
        cfg.batch_sizes, cfg.seeds, cfg.jobs = (16, 32), cfg.seeds[:1], 1
    stamp = time.strftime("%Y%m%d-%H%M%S")
    runs_dir = (out / "runs" if cfg.out else REPO_ROOT / "runs" / "conadv" / "reproduce") / stamp
    if cfg.from_csv:
        runs = [r for path in cfg.from_csv for r in read_runs(path)]
        modes = [m for m in _LABEL.values() if any(r["mode"] == m for r in runs)]
        cfg.seeds = tuple(sorted({r["seed"] for r in runs}))
        timing = (f"rebuilt from {', '.join(Path(p).name for p in cfg.from_csv)} (their runs "
                  f"took {sum(r['seconds'] for r in runs) / 60:.1f} min in all, {cfg.jobs} at a "
                  f"time)")
    else:
        t0 = time.perf_counter()
        runs = run_grid(cfg, runs_dir)
        modes = [_LABEL[m] for m in cfg.modes]
        timing = f"grid wall time {(time.perf_counter() - t0) / 60:.1f} min with {cfg.jobs} " \
                 f"parallel runs"
    tiny = Config(**PRESETS["tiny"])
    eps = cfg.epsilon or tiny.epsilon
    setting = ("SMOKE: 2 steps on 64 images, a code check, not a result" if cfg.smoke else
               f"SCALED DOWN: resnet_tiny, generated {tiny.img_size}px, "
               f"{cfg.train_size} images, {cfg.epochs:g} epochs")
    notes = [
        "paper: arXiv 2106.00221, ResNet-50 on ImageNet (1.28M images, 224 px, TPU v3); [P] = "
        "its abstract; [2nd] = its vanilla LARS rows as quoted by VRGD (arXiv 2309.13681, "
        "Tables 2-3); – = not retrievable (brief Sec. 7)",
        f"ours: {setting}; test top-1 (%) on {runs[0]['val_images']} generated test images, "
        f"mean ± std over seeds {', '.join(map(str, cfg.seeds))}; one recipe for every cell: LARS "
        f"(timm) lr {tiny.lr} at batch {tiny.base_batch} scaled by sqrt(batch/"
        f"{tiny.base_batch}), trust coefficient {tiny.trust_coeff}, momentum {tiny.momentum}, "
        f"weight decay {tiny.weight_decay}, {cfg.warmup_epochs:g} epoch(s) of linear warm-up "
        f"then poly-{tiny.poly_power:g} decay, label smoothing {tiny.label_smoothing}, random "
        f"crop + flip; BatchNorm over micro-batches of {cfg.micro_batch} (ghost BN, gradient "
        f"accumulation to the global batch); attack: one L-inf sign step, epsilon "
        f"{eps * 255:.3g}/255, through the adversarial BatchNorms; ConAdv tau 1; AA = "
        f"AutoAugment (CIFAR-10 policy)",
        f"the paper's setting and ours differ in data, model, image size and budget: the "
        f"table compares the modes with each other at each batch size, not with the paper's "
        f"numbers; {timing}",
    ]
    table = summary_rows(runs, modes, "ours, " + setting, cfg.paper)
    title = cfg.title or "Test top-1 vs global batch size: " + ", ".join(modes)
    paths = write_table(out / cfg.name, table, title, notes=notes)
    paths += write_table(out / f"{cfg.name}_paired", paired_rows(runs, modes),
                         f"Per-seed differences of test top-1 (same data and initial weights): "
                         f"{title}", notes=notes)
    if not cfg.from_csv:
        write_table(out / f"{cfg.name}_runs", runs, f"Every run of: {title}", notes=notes)
    png_name = "accuracy_vs_batch.png" if cfg.name == "scaled_down" else f"{cfg.name}.png"
    png = plot(runs, modes, out / png_name,
               "SCALED DOWN: resnet_tiny on generated 16px images"
               if not cfg.smoke else "SMOKE (not a result)")
    publish(cfg, RESULTS, (*paths, png), readme=cfg.readme)
    return table, runs


if __name__ == "__main__":
    main()
