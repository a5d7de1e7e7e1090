"""A toy paper on the shared training core, for its tests: a linear model on a fixed regression
set, data parallel over however many processes run it.

    python -m tests.test_shared.toy_paper --steps 20 --out_dir /tmp/runs
    torchrun --nproc-per-node 2 -m tests.test_shared.toy_paper ...
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from shared.data import EpochSampler
from shared.parallel import build_topology, seed_everything
from shared.train import (StepOutput, Task, TrainConfig, entry_point, fit, parse_args,
                          start)


@dataclass
class Config(TrainConfig):
    MODES = ("data",)
    FIXED_ON_RESUME = ("width",)
    width: int = 5
    steps: int = 30
    batch_size: int = 8
    lr: float = 0.05
    log_every: int = 1
    sleep: float = 0.0
    """seconds to sleep per step (lets a test signal a run mid-way)"""
    dropout: float = 0.1


PRESETS = {"tiny": {}}


class ToyTask(Task):
    paper = "toy"
    unit = "rows"
    best = {"max_val_loss": "val_loss"}     # the core's best-so-far, here of a falling metric

    def __init__(self, cfg: Config, env):
        self.cfg, self.env = cfg, env
        self.topo = build_topology("data")
        self.data_group = self.topo["data"]
        seed_everything(cfg.seed)
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(64, cfg.width, generator=g)
        self.y = self.x @ torch.arange(1.0, cfg.width + 1) + 0.1 * torch.randn(64, generator=g)
        self.model = torch.nn.Sequential(torch.nn.Dropout(cfg.dropout), torch.nn.Linear(cfg.width, 1))
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr,
                                           weight_decay=cfg.weight_decay)
        seed_everything(cfg.seed + 1000 * env.rank)

    def batches(self, start_step):
        sampler = EpochSampler(len(self.x), self.cfg.batch_size, seed=self.cfg.seed,
                               rank=self.data_group.rank, world=self.data_group.size)
        sampler.seek(start_step)
        for idx in sampler:
            yield self.x[idx], self.y[idx]

    def step(self, batch, step):
        if self.cfg.sleep:
            time.sleep(self.cfg.sleep)
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.model(x).squeeze(-1), y)
        return StepOutput(loss, {"loss": loss.detach()}, items=self.cfg.batch_size)

    def evaluate(self):
        self.model.eval()
        with torch.no_grad():
            loss = torch.nn.functional.mse_loss(self.model(self.x).squeeze(-1), self.y)
        return {"val_loss": loss.item()}


@entry_point
def main(argv=None):
    cfg = parse_args(Config, PRESETS, argv, paper="toy")
    env = start(cfg)
    summary = fit(cfg, ToyTask(cfg, env))
    if env.rank == 0:
        print(f"toy done: step {summary['step']}, val_loss {summary.get('val_loss', float('nan')):.6f}, "
              f"run {summary['run_dir']}", flush=True)
    return summary


if __name__ == "__main__":
    main()
