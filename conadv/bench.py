"""Step time of vanilla, DisAdv and ConAdv, with ConAdv's attack concurrent and serialised, in one
process on the same resources (``make bench-conadv``); writes conadv/results/bench_step_time.

The critical path of a step, in dependent forward+backward passes over a batch of B images:

* vanilla: 1 (the weight gradient on B);
* DisAdv: 2 (the input gradient on B, then the weight gradient on 2B, which needs its result);
* ConAdv: 1 (the weight gradient on 2B, with the input gradient on B for step t + tau beside it).

DisAdv and ConAdv do the same arithmetic (3 passes-on-B per step against vanilla's 1); ConAdv
shortens the critical path, so its step time falls towards the weight-gradient pass alone when
the attack has its own resources (here: a worker thread on a second core; on GPU: a second CUDA
stream, which overlaps only when the GPU is not already full). Each mode runs ``--steps`` steps
(the step's passes and the optimizer update, no data loading or logging), ``--repeat`` times;
the table gives the median per step.
"""
from __future__ import annotations

import os
import statistics
from dataclasses import dataclass
from pathlib import Path

import torch

from shared.bench import ResultsConfig, Timer, publish, begin, write_table
from shared.parallel.dist import DistEnv
from shared.train import entry_point, parse_config
from shared.train.config import ConfigError

from .config import PRESETS, Config

RESULTS = Path(__file__).resolve().parent / "results"

# (label, mode, concurrent, dependent passes on the critical path, passes of arithmetic)
MODES = [
    ("vanilla", "vanilla", False, "1: fwd+bwd(B)", 1),
    ("DisAdv", "disadv", False, "2: fwd+bwd(B) -> fwd+bwd(2B)", 3),
    ("ConAdv, attack serialised", "conadv", False, "2: fwd+bwd(B) -> fwd+bwd(2B)", 3),
    ("ConAdv, attack concurrent", "conadv", True, "1: fwd+bwd(2B) ∥ fwd+bwd(B)", 3),
]


@dataclass
class BenchConfig(ResultsConfig):
    models: tuple[str, ...] = ("resnet_tiny", "resnet_small")
    img_sizes: tuple[int, ...] = (16, 16)
    """one per model"""
    batch_sizes: tuple[int, ...] = (256, 128)
    """one per model"""
    steps: int = 4
    repeat: int = 3
    threads: int = 1
    """torch threads of the training thread (ConAdv's worker adds one thread)"""
    device: str = "auto"


def _task(model: str, img_size: int, mode: str, concurrent: bool, batch: int, device):
    from .train import ConAdvTask

    cfg = Config(**dict(PRESETS["tiny"], model=model, img_size=img_size, mode=mode,
                        concurrent=concurrent, batch_size=batch, micro_batch=0,
                        train_size=max(batch, 64),
                        val_size=16, steps=10 ** 6, warmup_steps=0, epochs=0))
    cfg.validate()
    return ConAdvTask(cfg, DistEnv(device=torch.device(device)))


def time_mode(model, img_size, mode, concurrent, batch: int, cfg: BenchConfig,
              device) -> float:
    """Median seconds per step of ``mode`` (step + optimizer update, data pre-loaded), over
    blocks of consecutive steps: ConAdv's attack launched in a block's last step runs on into
    the next block, as it runs on into the next step (the steady state)."""
    task = _task(model, img_size, mode, concurrent, batch, device)
    batches = task.batches(0)
    bundles = [next(batches) for _ in range(cfg.steps * (cfg.repeat + 1))]
    times, step = [], 0
    for r in range(cfg.repeat + 1):                      # the first block warms up
        with Timer(device) as t:
            for _ in range(cfg.steps):
                task.optimizer.zero_grad(set_to_none=True)
                task.step(bundles[step], step)
                task.optimizer.step()
                step += 1
        if r:
            times.append(t.seconds / cfg.steps)
    task.collect()
    task.close()
    return statistics.median(times)


@entry_point
def main(argv=None):
    cfg = parse_config(BenchConfig, None, argv, default_preset=None)
    if cfg.smoke:
        cfg.models, cfg.img_sizes, cfg.batch_sizes = ("resnet_tiny",), (8,), (16,)
        cfg.steps, cfg.repeat = 2, 1
    if not len(cfg.models) == len(cfg.img_sizes) == len(cfg.batch_sizes):
        raise ConfigError("--models, --img_sizes and --batch_sizes need one value per model")
    device = "cuda" if cfg.device != "cpu" and torch.cuda.is_available() else "cpu"
    out = begin(cfg, RESULTS)
    load = os.getloadavg()
    rows = []
    for model, size, batch in zip(cfg.models, cfg.img_sizes, cfg.batch_sizes):
        base = None
        measured = {}
        for label, mode, concurrent, path, flops in MODES:
            sec = time_mode(model, size, mode, concurrent, batch, cfg, device)
            measured[label] = sec
            base = base or sec
            rows.append({"model": model, "image": f"{size}px", "batch": batch,
                         "mode": label, "critical path (dependent passes)": path,
                         "arithmetic (passes on B)": flops, "ms / step": 1000 * sec,
                         "vs vanilla": f"{sec / base:.2f}x"})
            print(f"  {model} {label:<28} {1000 * sec:8.1f} ms/step  {sec / base:.2f}x",
                  flush=True)
        gain = measured["ConAdv, attack serialised"] / measured["ConAdv, attack concurrent"]
        print(f"  {model}: concurrent attack {gain:.2f}x faster than serialised", flush=True)
    notes = [f"{'GPU' if device == 'cuda' else 'CPU'}: torch threads {cfg.threads} for the "
             f"training thread; ConAdv concurrent adds one worker thread "
             f"({'a second CUDA stream' if device == 'cuda' else 'one more core'})",
             f"one micro-batch per step, median over {cfg.repeat} blocks of "
             f"{cfg.steps} steps (step + LARS update; data pre-loaded)",
             f"load average at start {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} on "
             f"{os.cpu_count()} cores (others' jobs slow every mode alike only if the load "
             f"is steady)",
             "paper: the throughput comparison of vanilla / DisAdv / ConAdv on TPU v3 could not "
             "be retrieved (brief Sec. 5, 7); the critical-path column is the paper's argument"]
    if cfg.smoke:
        notes.insert(0, "SMOKE run: tiny sizes, not a result")
    paths = write_table(out / "bench_step_time", rows,
                        "Step time: vanilla vs DisAdv vs ConAdv (attack concurrent / serialised)",
                        notes=notes)
    publish(cfg, RESULTS, paths)
    return rows


if __name__ == "__main__":
    main()
