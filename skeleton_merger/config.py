"""Skeleton Merger training config: the shared glossary plus the paper's fields; presets named
after the paper's KeypointNet rows (one model per category) plus ``tiny``.

Paper recipe (the authors' ``train.py`` defaults, ../shared/papers/skeleton_merger.md Sec. 3):
Adadelta (lr 1.0, rho 0.9, eps 1e-2), no schedule, no weight decay, no clipping, batch 8,
80 epochs, N = 2048 points (all points of the HDF5 clouds), k = 10 keypoints, one model per
category, no augmentation. Loss = CCD (penalty 20) + 0.01 sum(offsets^2).

``tiny`` is the CPU preset (scaled down, see README "Deviations"): 256 points per cloud, the
encoder's sample counts scaled by 256/2048 and its radii by sqrt(2048/256) (the same expected
number of neighbours per ball on a surface of 8x fewer points), channel widths halved, 1000
procedural shapes, 1200 steps (~10 epochs; the paper: 80 epochs of ~4000 shapes); the recipe
(optimizer, batch, k, loss) is the paper's. About 0.2 s of one CPU core per step.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from shared.train.config import ConfigError, TrainConfig

PAPER_NPOINTS = (1024, 256, 64, 16)


@dataclass
class Config(TrainConfig):
    MODES = ("data",)
    FIXED_ON_RESUME = ("category", "num_points", "k", "npoints", "radius_scale", "width",
                       "dropout", "train_shapes", "val_shapes", "max_samples")

    # ---- glossary fields with the paper's values
    steps: int = 600
    schedule: str = "constant"
    """the paper has no schedule"""
    lr: float = 1.0
    """Adadelta's lr (torch default 1.0, as the authors)"""
    grad_clip: float = 0.0
    """the paper does not clip"""
    batch_size: int = 8
    log_every: int = 10
    # ---- data
    category: str = "chair"
    """one model per category: a procedural category (airplane, chair, car, ...) or, with
    --data, a ShapeNetCore name (the error lists the valid ones)"""
    keypointnet: str = ""
    """KeypointNet root (annotations/, pcds/) to evaluate a ShapeNetCore-trained model on"""
    num_points: int = 2048
    """points per cloud (paper: 2048)"""
    train_shapes: int = 1000
    """procedural data only: training shapes"""
    val_shapes: int = 100
    """procedural data only: evaluation shapes (disjoint seeds)"""
    epochs: float = 0.0
    """> 0: set --steps to this many epochs of the training set (overrides --steps)"""
    # ---- model
    k: int = 10
    """keypoints"""
    npoints: tuple[int, ...] = PAPER_NPOINTS
    """centres sampled by the four set-abstraction levels"""
    radius_scale: float = 1.0
    """multiplies every ball-query radius of the encoder (paper: 1)"""
    width: float = 1.0
    """multiplies every channel count of the encoder and the strength MLP (paper: 1)"""
    dropout: float = 0.5
    max_samples: int = 200
    """rows of each edge's offset table, the most samples an edge can have (paper: 200)"""
    # ---- optimisation and loss
    rho: float = 0.9
    adadelta_eps: float = 1e-2
    """the authors' Adadelta eps (torch default 1e-6)"""
    penalty: float = 20.0
    """weight of the unexplained mass in the CCD"""
    offset_weight: float = 0.01
    # ---- evaluation
    pictures: int = 6
    """evaluation shapes drawn in keypoints.png at the end of training"""

    def validate(self) -> None:
        super().validate()
        if self.k < 2:
            raise ConfigError(f"--k must be at least 2 (a skeleton needs an edge); got {self.k}")
        if len(self.npoints) != 4 or any(n < 1 for n in self.npoints):
            raise ConfigError(f"--npoints needs 4 positive sample counts (paper: 1024,256,64,16);"
                              f" got {','.join(map(str, self.npoints))}")
        if self.num_points < self.npoints[0]:
            raise ConfigError(f"--num_points {self.num_points} is fewer than the "
                              f"{self.npoints[0]} centres the encoder samples at its first level "
                              f"(--npoints {','.join(map(str, self.npoints))}); raise "
                              f"--num_points or lower --npoints")
        if list(self.npoints) != sorted(self.npoints, reverse=True):
            raise ConfigError(f"--npoints must not increase from level to level; got "
                              f"{','.join(map(str, self.npoints))}")
        for name in ("radius_scale", "width", "adadelta_eps"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"--{name} must be positive; got {getattr(self, name)}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"--dropout must be in [0, 1); got {self.dropout}")
        if not 0 <= self.rho <= 1:
            raise ConfigError(f"--rho must be in [0, 1]; got {self.rho}")
        if self.batch_size < 2:
            raise ConfigError(f"--batch_size {self.batch_size}: BatchNorm needs at least 2 shapes "
                              f"per step (paper: 8)")
        if self.max_samples < 15:
            raise ConfigError(f"--max_samples must be at least 15 (the fewest samples an edge "
                              f"gets); got {self.max_samples}")
        for name in ("train_shapes", "val_shapes"):
            if getattr(self, name) < 2:
                raise ConfigError(f"--{name} must be at least 2; got {getattr(self, name)}")
        for name in ("epochs", "penalty", "offset_weight", "pictures"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name} must be >= 0; got {getattr(self, name)}")


def scaled_encoder(num_points: int) -> dict:
    """The encoder scaled to ``num_points`` input points: sample counts x N/2048, radii x
    sqrt(2048/N) (as many neighbours per ball on a surface sampled N/2048 as densely)."""
    f = num_points / 2048
    return dict(num_points=num_points, npoints=tuple(max(1, round(n * f)) for n in PAPER_NPOINTS),
                radius_scale=math.sqrt(1 / f))


_PAPER = dict(num_points=2048, npoints=PAPER_NPOINTS, radius_scale=1.0, width=1.0,
              batch_size=8, lr=1.0, schedule="constant", grad_clip=0.0, epochs=80, k=10)

# the CPU preset: see the module docstring and README "Deviations"
_TINY = dict(scaled_encoder(256), width=0.5, train_shapes=1000, val_shapes=100, steps=1200,
             eval_every=400, threads=1)

PRESETS = {
    "tiny": dict(_TINY),
    # the paper's KeypointNet rows: one model per category, 80 epochs of ShapeNetCore v2
    # (--data ROOT [--keypointnet ROOT]); without --data they train on procedural shapes
    "airplane": dict(_PAPER, category="airplane"),
    "chair": dict(_PAPER, category="chair"),
    "car": dict(_PAPER, category="car"),
}
