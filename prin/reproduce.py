"""The paper's rotation-protocol table beside ours, scaled down (``make reproduce-prin``).

Trains SPRIN, PRIN and the PointNet baseline on the generated shapes with one recipe (the
``tiny`` presets' optimiser, schedule, batch and augmentation), ``--seeds`` seeds each, for part
segmentation and classification, once with the canonical pose (NR) and once with uniform random
rotations (AR) in training, and evaluates each run on the fixed test subsets unrotated (NR) and
under one fixed uniform rotation per shape (AR). Writes to prin/results/:

1. ``seg_protocols``: instance and class mIoU per protocol (mean ± std over seeds) beside the
   paper's ShapeNet-part numbers (TPAMI Table: NR/AR and NR/NR, ``figures/part.png`` of the SPRIN
   repository, as transcribed in ../shared/papers/prin.md §4).
2. ``cls_protocols``: classification accuracy per protocol (the paper's ModelNet40 numbers could
   not be retrieved from the sources: shown as n/a).
3. ``seg_per_category``: NR/AR mIoU per generated category.
4. ``parts_nr_ar.png``: predicted parts of each model (seed 0, trained NR) on a test chair,
   from the unrotated and from the rotated input.

Runs go through ``python -m prin.train`` in ``--workers`` processes (one torch thread each).
Ablations: ``--long_steps`` (seed 0 of the NR segmentation runs trained longer, built in),
``--lr X`` (one learning rate for every arm) and ``--points N``, each with ``--tag NAME`` so that
its tables get their own names. ``--runs_dir DIR`` rebuilds the tables from an earlier
reproduce's checkpoints (re-evaluated, nothing trained).
PRIN runs at bandwidth ``--bandwidth`` (8 by default: 16 does not fit the 30-minute CPU budget,
see README). ``--smoke``: 2 steps, one seed, NR only (a code check, never written to results/).
"""
from __future__ import annotations

import concurrent.futures as cf
import json
import multiprocessing as mp
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from shared.bench import ResultsConfig, publish, results_dir, write_table
from shared.pointcloud.render import render_grid
from shared.errors import UsageError
from shared.train import entry_point, parse_config, read_metrics
from shared.train.cli import REPO_ROOT
from shared.train.config import ConfigError

from . import metrics
from .models import MODELS, TASKS

RESULTS = Path(__file__).resolve().parent / "results"
LABEL = {"sprin": "SPRIN", "prin": "PRIN", "pointnet": "PointNet"}
# ShapeNet part, trained NR: (NR/AR inst, NR/AR cls, NR/NR inst, NR/NR cls); brief §4
PAPER_SEG = {"prin": (71.20, 66.75, 72.04, 68.39), "sprin": (81.92, 78.34, 81.88, 78.21),
             "pointnet": (31.30, 29.38, 83.15, 78.95)}
PAPER_SOURCE = ("paper: TPAMI PRIN/SPRIN (arXiv 2102.12093), ShapeNet part table (SPRIN repository "
                "figures/part.png, transcribed in shared/papers/prin.md §4): trained NR, tested AR "
                "and NR; AR/AR not in the sources consulted")


@dataclass
class ReproConfig(ResultsConfig):
    seeds: int = 3
    models: tuple[str, ...] = MODELS
    tasks: tuple[str, ...] = TASKS
    train_rotations: tuple[str, ...] = ("nr", "ar")
    steps: int = 300
    """optimizer steps per run (batch 8)"""
    points: int = 256
    """points per shape for every model (SPRIN levels: points/8, points/32)"""
    bandwidth: int = 8
    """PRIN's bandwidth in these runs"""
    workers: int = 2
    """training processes at once (one torch thread each)"""
    lr: float = 0.0
    """0 = each network's published learning rate (PRIN 0.01, SPRIN and PointNet 1e-3); else one
    learning rate for every arm (an ablation)"""
    tag: str = ""
    """suffix of the table and picture names (ablations: ``--tag points512``)"""
    runs_dir: str = ""
    """rebuild the tables from the runs of an earlier reproduce (its run directory under
    runs/prin/reproduce): the checkpoints are re-evaluated, nothing is trained"""
    long_steps: int = 900
    """ablation: seed 0 of each model's NR segmentation run again with this many steps (the
    budget check behind a result that contradicts the paper); 0 = skip"""

    def validate(self) -> None:
        bad = [m for m in self.models if m not in MODELS] + [t for t in self.tasks if t not in TASKS]
        bad += [r for r in self.train_rotations if r not in ("nr", "ar")]
        if bad:
            raise ConfigError(f"unknown entries {bad}: --models from {MODELS}, --tasks from "
                              f"{TASKS}, --train_rotations from nr, ar")
        if self.tag and not all(c.isalnum() or c in "-_." for c in self.tag):
            raise ConfigError(f"--tag {self.tag!r}: use letters, digits, '-', '_' or '.'")
        if self.lr < 0:
            raise ConfigError(f"--lr must be >= 0 (0 = each network's published rate); got {self.lr}")
        if min(self.seeds, self.steps, self.points, self.workers, self.bandwidth) < 1:
            raise ConfigError("--seeds, --steps, --points, --workers and --bandwidth must be >= 1")
        if self.points < 32:
            raise ConfigError(f"--points must be at least 32 (SPRIN keeps points/32); got {self.points}")


def _train(argv: list[str]) -> dict:
    """One training run in a worker process; returns its summary (final metrics and lists) and
    records its CPU time in the run directory (``reproduce.json``)."""
    from .train import main
    t0 = time.process_time()
    s = main(argv)
    s["cpu_seconds"] = time.process_time() - t0
    Path(s["run_dir"], "reproduce.json").write_text(json.dumps({"cpu_seconds": s["cpu_seconds"]}))
    return s


def _rebuild(run: Path) -> dict:
    """The summary of a finished run, from its checkpoint (re-evaluated) and its files."""
    from .eval import load_run
    from .train import evaluate
    if not (run / "checkpoint.pt").is_file():
        raise UsageError(f"--runs_dir: {run} has no checkpoint.pt; was the reproduce complete?")
    cfg, model, test, _ = load_run(run)
    s = evaluate(model, test, cfg, torch.device("cpu"))
    extra = run / "reproduce.json"
    s["cpu_seconds"] = json.loads(extra.read_text())["cpu_seconds"] if extra.is_file() else float("nan")
    s["wall_seconds"] = [r for r in read_metrics(run / "metrics.jsonl") if "loss" in r][-1]["time"]
    return s


def run_grid(cfg: ReproConfig, runs: Path) -> dict:
    """Train every (task, train rotation, model, seed); returns ``{key: summary}``."""
    jobs = {}
    for task in cfg.tasks:
        for rot in cfg.train_rotations:
            for model in cfg.models:
                for seed in range(cfg.seeds):
                    name = f"{task}-{rot}-{model}-s{seed}"
                    argv = ["--preset", "tiny", "--model", model, "--task", task,
                            "--train_rotation", rot, "--seed", str(seed), "--steps", str(cfg.steps),
                            "--points", str(cfg.points), "--bandwidth", str(cfg.bandwidth),
                            "--sprin_levels", f"{cfg.points // 8},{cfg.points // 32}",
                            "--eval_every", "0", "--quiet", "--run", name, "--out_dir", str(runs),
                            "--lr", str(cfg.lr)]
                    if cfg.smoke:
                        argv += ["--steps", "2", "--warmup_steps", "0", "--per_category", "2",
                                 "--test_per_category", "1", "--eval_batch_size", "11"]
                    jobs[(task, rot, model, seed)] = argv
    if cfg.long_steps and "seg" in cfg.tasks and not cfg.smoke:
        for model in cfg.models:
            argv = list(jobs[("seg", cfg.train_rotations[0], model, 0)])
            argv[argv.index("--steps") + 1] = str(cfg.long_steps)
            argv[argv.index("--run") + 1] += f"-long{cfg.long_steps}"
            jobs[("seg-long", cfg.train_rotations[0], model, 0)] = argv
    out = {}
    if cfg.runs_dir:
        for key, argv in jobs.items():
            out[key] = _rebuild(Path(cfg.runs_dir) / argv[argv.index("--run") + 1])
        return out
    if cfg.workers == 1:
        for key, argv in jobs.items():
            out[key] = _train(argv)
        return out
    # build the shared dataset cache once, then the longest jobs first
    from .data import generated
    per, test = (2, 1) if cfg.smoke else (40, 10)
    generated("train", per, runs / "cache"), generated("test", test, runs / "cache")
    cost = {"sprin": 3.0, "prin": 1.5, "pointnet": 1.0}
    order = sorted(jobs, key=lambda k: -int(jobs[k][jobs[k].index("--steps") + 1]) * cost[k[2]]
                   * (0.6 if k[0] == "cls" else 1.0))
    with cf.ProcessPoolExecutor(cfg.workers, mp_context=mp.get_context("spawn")) as pool:
        futures = {pool.submit(_train, jobs[key]): key for key in order}
        for fut in cf.as_completed(futures):
            key = futures[fut]
            out[key] = fut.result()
            print(f"  done {key}: {time.strftime('%H:%M:%S')}", flush=True)
    return out


def _pm(values) -> str:
    v = [100 * x for x in values]
    if not v:
        return "-"
    return f"{statistics.fmean(v):.2f} ± {statistics.stdev(v):.2f}" if len(v) > 1 else f"{v[0]:.2f}"


def _collect(results: dict, task: str, rot: str, model: str, key: str) -> list[float]:
    return [s[key] for (t, r, m, _), s in sorted(results.items()) if (t, r, m) == (task, rot, model)
            and key in s]


def seg_rows(cfg, results) -> list[dict]:
    rows = []
    for model in cfg.models:
        p = PAPER_SEG[model]
        row = {"model": LABEL[model], "paper NR/AR inst": p[0], "paper NR/AR cls": p[1],
               "paper NR/NR inst": p[2], "paper NR/NR cls": p[3]}
        for rot in ("nr", "ar"):
            for test in ("nr", "ar"):
                for kind in ("inst", "cls"):
                    vals = _collect(results, "seg", rot, model, f"{test}_{kind}_miou")
                    row[f"ours {rot.upper()}/{test.upper()} {kind}"] = _pm(vals) if vals else "not run"
        rows.append(row)
    return rows


def cls_rows(cfg, results) -> list[dict]:
    rows = []
    for model in cfg.models:
        row = {"model": LABEL[model], "paper (ModelNet40)": "n/a (not in the sources)"}
        for rot in ("nr", "ar"):
            for test in ("nr", "ar"):
                vals = _collect(results, "cls", rot, model, f"{test}_acc")
                row[f"ours {rot.upper()}/{test.upper()} acc"] = _pm(vals) if vals else "not run"
        rows.append(row)
    return rows


def longer_budget_rows(cfg, results) -> list[dict]:
    rows = []
    for model in cfg.models:
        for task, steps in (("seg", cfg.steps), ("seg-long", cfg.long_steps)):
            s = results.get((task, cfg.train_rotations[0], model, 0))
            if s is None:
                continue
            tr = cfg.train_rotations[0].upper()
            rows.append({"model": LABEL[model], "steps": steps, "seed": 0,
                         f"{tr}/NR inst": f"{100 * s['nr_inst_miou']:.2f}",
                         f"{tr}/AR inst": f"{100 * s['ar_inst_miou']:.2f}",
                         "train CPU s": "n/a" if s["cpu_seconds"] != s["cpu_seconds"]
                         else f"{s['cpu_seconds']:.0f}"})
    return rows


def per_category_rows(cfg, results, names) -> list[dict]:
    rows = []
    for model in cfg.models:
        runs = [s for (t, r, m, _), s in sorted(results.items()) if (t, r, m) == ("seg", "nr", model)]
        if not runs or not runs[0].get("lists"):
            continue
        per = []
        for s in runs:
            lst = s["lists"]["ar"]
            per.append(metrics.miou(lst["score"], lst["label"], len(names))[2])
        mean = np.nanmean(np.array(per), 0)
        rows.append({"model (trained NR, tested AR)": LABEL[model],
                     **{n: f"{100 * v:.1f}" for n, v in zip(names, mean)}})
    return rows


def pictures(cfg, runs: Path, path: Path) -> Path | None:
    """Predicted parts of each model's seed-0 NR segmentation run on a rotated test chair."""
    from .eval import load_run, prediction_items
    items = []
    for model in cfg.models:
        run = runs / f"seg-nr-{model}-s0"
        if not (run / "checkpoint.pt").is_file():
            continue
        rcfg, net, test, _ = load_run(run)
        chair = test.names.index("chair") * rcfg.test_per_category
        items += prediction_items(net, test, rcfg, [chair], label=LABEL[model])
    return render_grid(items, path, cols=3, cell=(330, 300)) if items else None


@entry_point
def main(argv=None):
    cfg = parse_config(ReproConfig, None, argv, default_preset=None)
    if cfg.smoke:
        cfg.seeds, cfg.train_rotations, cfg.workers = 1, ("nr",), 1
    out = results_dir(RESULTS, cfg.out, cfg.smoke)
    sfx = f"_{cfg.tag}" if cfg.tag else ""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    runs = Path(cfg.runs_dir) if cfg.runs_dir else \
        (out / "runs" if cfg.out else REPO_ROOT / "runs" / "prin" / "reproduce") / stamp
    t0 = time.time()
    results = run_grid(cfg, runs)
    wall = time.time() - t0
    cpu = sum(s["cpu_seconds"] for s in results.values())
    lr_text = (f"lr {cfg.lr:g} for every model" if cfg.lr else
               "each network's published lr: PRIN 0.01, SPRIN and PointNet 1e-3")
    setting = ("SMOKE run: 2 steps, 1 seed (a code check, not a result)" if cfg.smoke else
               f"SCALED DOWN: generated shapes (11 categories, 31 parts; 440 train / 110 test), "
               f"{cfg.points} points, {cfg.steps} steps of batch 8 (Adam, {lr_text}, cosine, 20 "
               f"warm-up steps, jitter 0.01), {cfg.seeds} seed(s), mean ± std; PRIN at "
               f"bandwidth {cfg.bandwidth} (paper "
               f"32), SPRIN at half width and half neighbourhoods, levels {cfg.points}->"
               f"{cfg.points // 8}->{cfg.points // 32} (paper 1024->128->32); PointNet without "
               f"T-Nets at quarter width")
    if cfg.runs_dir:
        train_wall = sum(s["wall_seconds"] for s in results.values())
        timing = (f"tables rebuilt from the checkpoints of {Path(cfg.runs_dir).name} (re-evaluated); "
                  f"its {len(results)} runs took {train_wall / 60:.1f} min of training wall time "
                  f"in all, on {cfg.workers} worker(s) of a CPU shared with other jobs"
                  + ("" if cpu != cpu else f" ({cpu / 60:.1f} CPU-min)"))
    else:
        timing = (f"{len(results)} runs in {wall / 60:.1f} min wall with {cfg.workers} worker(s) "
                  f"({cpu / 60:.1f} CPU-min)")
    notes = [PAPER_SOURCE, f"ours: {setting}", timing,
             "on the generated test set every category has the same number of shapes, so class "
             "mIoU equals instance mIoU"]
    paths = []
    if "seg" in cfg.tasks:
        paths += write_table(out / f"seg_protocols{sfx}", seg_rows(cfg, results),
                             "Part segmentation under rotation protocols (train/test), mIoU %",
                             notes=notes)
        from shared.pointcloud.shapes import CATEGORIES
        rows = per_category_rows(cfg, results, CATEGORIES)
        if rows:
            paths += write_table(out / f"seg_per_category{sfx}", rows,
                                 "Part segmentation per category, trained NR and tested AR (mIoU %, "
                                 "mean over seeds)", notes=[f"ours: {setting}"])
        rows = longer_budget_rows(cfg, results)
        if any(r["steps"] != cfg.steps for r in rows):
            paths += write_table(out / f"seg_longer_budget{sfx}", rows,
                                 f"Ablation: a {cfg.long_steps / cfg.steps:g}x longer budget "
                                 f"(segmentation, seed 0)", notes=[f"ours: {setting}",
                                 "the main table's 300-step seed-0 runs beside the same runs "
                                 "trained longer with the same recipe"])
        png = pictures(cfg, runs, out / f"parts_nr_ar{sfx}.png")
        if png:
            paths.append(png)
    if "cls" in cfg.tasks:
        paths += write_table(out / f"cls_protocols{sfx}", cls_rows(cfg, results),
                             "Classification under rotation protocols (train/test), accuracy %",
                             notes=notes)
    for row in seg_rows(cfg, results) if "seg" in cfg.tasks else []:
        print(f"  {row['model']:<9} NR/AR inst: paper {row['paper NR/AR inst']}, ours "
              f"{row['ours NR/AR inst']} (NR/NR {row['ours NR/NR inst']})")
    print(timing)
    publish(cfg, RESULTS, paths)
    return results


if __name__ == "__main__":
    main()
