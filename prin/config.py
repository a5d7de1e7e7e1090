"""PRIN / SPRIN / PointNet training config: one dataclass on the shared glossary, presets named
after the paper's rows plus the CPU presets.

Paper recipes (brief §1d, §2): SPRIN on ShapeNet part — RAdam lr 1e-3, batch 12, 250 epochs,
1024 points, FPS 128 then 32, jitter σ 0.01 clipped at 0.05, trained NR and tested AR. PRIN —
Adam lr 0.01 decayed in steps to 5e-5 (we use the core's cosine from 0.01 to 5e-5), batch 16,
100 epochs, bandwidth 32, 2048 points. Steps below are epochs x (14,007 // batch).

CPU presets (scaled down, README "Deviations"): ``tiny`` (SPRIN, the default of
``make train-prin``), ``prin_tiny`` (PRIN at bandwidth 16), ``pointnet_tiny``, each on the
generated shapes with 512 points, 8 shapes per step, Adam with each network's published
learning rate, cosine decay; SPRIN's neighbourhoods, ranks and widths halved and its levels
512 -> 64 -> 16 points; PointNet's widths quartered.
"""
from __future__ import annotations

from dataclasses import dataclass

from shared.train.config import ConfigError, TrainConfig

from .data import DATASETS, PROTOCOLS
from .models import MODELS, TASKS


@dataclass
class Config(TrainConfig):
    MODES = ("data",)
    FIXED_ON_RESUME = ("model", "task", "dataset", "points", "per_category", "test_per_category",
                       "train_rotation", "bandwidth", "prin_channels", "sprin_levels",
                       "sprin_width", "sprin_k_scale", "pointnet_widths")

    # ---- glossary fields with this paper's defaults
    steps: int = 600
    batch_size: int = 8
    lr: float = 0.0
    """0 = the paper's learning rate of the model: PRIN 0.01 (Adam), SPRIN 1e-3 (RAdam in the
    paper), PointNet 1e-3 (Adam)"""
    schedule: str = "cosine"
    grad_clip: float = 0.0
    """the reference trainings do not clip"""
    log_every: int = 20
    # ---- what to train
    model: str = "sprin"
    """sprin | prin | pointnet"""
    task: str = "seg"
    """seg (part segmentation) | cls (classification)"""
    dataset: str = "auto"
    """auto | generated | shapenet_part | modelnet40 (auto: generated without --data, else
    ShapeNet part for seg and ModelNet40 for cls)"""
    train_rotation: str = "nr"
    """nr: canonical pose | ar: a uniform SO(3) rotation per shape and step (protocols NR/*, AR/*)"""
    points: int = 1024
    """points per shape (a random subset each step; a fixed subset in evaluation)"""
    per_category: int = 40
    """generated data: training shapes per category"""
    test_per_category: int = 10
    """generated data: test shapes per category"""
    # ---- recipe
    optimizer: str = "adam"
    """adam | radam (torch.optim)"""
    jitter: float = 0.01
    """Gaussian jitter σ on training points (SPRIN's augmentation), 0 = off"""
    jitter_clip: float = 0.05
    # ---- models
    bandwidth: int = 32
    """PRIN: SOFT grid bandwidth b (2b x 2b x 2b voxels, degrees < b)"""
    prin_channels: tuple[int, ...] = ()
    """PRIN: conv widths; () = the paper's (seg 40, 40, 50; cls 50, 50, 50)"""
    sprin_levels: tuple[int, ...] = (128, 32)
    """SPRIN: points kept by the two FPS levels"""
    sprin_width: float = 1.0
    """SPRIN: scale of every rank, width and hidden size (1 = the paper's)"""
    sprin_k_scale: float = 1.0
    """SPRIN: scale of every neighbourhood size k (1 = the paper's)"""
    pointnet_widths: tuple[int, ...] = ()
    """PointNet: per-point MLP widths; () = the original's"""
    # ---- evaluation
    eval_batch_size: int = 16
    eval_shapes: int = 0
    """evaluate on the first N test shapes only; 0 = all"""

    def validate(self) -> None:
        if self.model not in MODELS:
            raise ConfigError(f"--model {self.model!r}: choose one of {', '.join(MODELS)}")
        if self.lr == 0:
            self.lr = PAPER_LR[self.model]
        super().validate()
        for name, valid in (("model", MODELS), ("task", TASKS), ("dataset", DATASETS),
                            ("train_rotation", PROTOCOLS), ("optimizer", ("adam", "radam"))):
            if getattr(self, name) not in valid:
                raise ConfigError(f"--{name} {getattr(self, name)!r}: choose one of "
                                  f"{', '.join(valid)}")
        for name in ("points", "per_category", "test_per_category", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name} must be at least 1; got {getattr(self, name)}")
        if self.bandwidth < 2 or self.bandwidth > 64:
            raise ConfigError(f"--bandwidth must be between 2 and 64 (the paper uses 32); got "
                              f"{self.bandwidth}")
        if len(self.sprin_levels) != 2 or not self.points >= self.sprin_levels[0] >= \
                self.sprin_levels[1] >= 1:
            raise ConfigError(f"--sprin_levels must be two sizes with --points {self.points} >= "
                              f"first >= second >= 1 (the paper: 1024 -> 128 -> 32); got "
                              f"{self.sprin_levels}")
        if not (self.sprin_width > 0 and self.sprin_k_scale > 0):
            raise ConfigError("--sprin_width and --sprin_k_scale must be positive")
        if self.jitter < 0 or self.jitter_clip < 0 or self.eval_shapes < 0:
            raise ConfigError("--jitter, --jitter_clip and --eval_shapes must be >= 0")


PAPER_LR = {"prin": 0.01, "sprin": 1e-3, "pointnet": 1e-3}

# ShapeNet part: 14,007 train+val shapes. ModelNet40: 9,840.
_SHAPENET, _MODELNET = 14007, 9840
_PAPER_SPRIN = dict(model="sprin", optimizer="radam", lr=1e-3, batch_size=12, points=1024,
                    sprin_levels=(128, 32), jitter=0.01, jitter_clip=0.05, schedule="constant",
                    eval_batch_size=12)
_PAPER_PRIN = dict(model="prin", optimizer="adam", lr=0.01, min_lr=5e-5, batch_size=16,
                   points=2048, bandwidth=32, jitter=0.0, schedule="cosine", eval_batch_size=16)
# PointNet under the SPRIN recipe (the paper quotes PointNet's published numbers)
_PAPER_POINTNET = dict(_PAPER_SPRIN, model="pointnet")

# CPU presets: one recipe for every model (the comparison's rule), sized for minutes on 2 cores
_TINY = dict(threads=1, points=512, per_category=40, test_per_category=10, batch_size=8,
             steps=300, warmup_steps=20, min_lr=1e-5, optimizer="adam", jitter=0.01,
             eval_every=100, bandwidth=16, sprin_levels=(64, 16), sprin_width=0.5,
             sprin_k_scale=0.5, pointnet_widths=(32, 64, 64, 128, 256))

PRESETS = {
    "tiny": dict(_TINY, model="sprin"),
    "sprin_tiny": dict(_TINY, model="sprin"),
    "prin_tiny": dict(_TINY, model="prin"),
    "pointnet_tiny": dict(_TINY, model="pointnet"),
    # the paper's rows (ShapeNet part segmentation, trained NR; ModelNet40 classification)
    "sprin_shapenet": dict(_PAPER_SPRIN, task="seg", dataset="shapenet_part",
                           steps=250 * (_SHAPENET // 12), eval_every=10 * (_SHAPENET // 12)),
    "prin_shapenet": dict(_PAPER_PRIN, task="seg", dataset="shapenet_part",
                          steps=100 * (_SHAPENET // 16), eval_every=10 * (_SHAPENET // 16)),
    "pointnet_shapenet": dict(_PAPER_POINTNET, task="seg", dataset="shapenet_part",
                              steps=250 * (_SHAPENET // 12), eval_every=10 * (_SHAPENET // 12)),
    "sprin_modelnet40": dict(_PAPER_SPRIN, task="cls", dataset="modelnet40",
                             steps=250 * (_MODELNET // 12), eval_every=10 * (_MODELNET // 12)),
    "prin_modelnet40": dict(_PAPER_PRIN, task="cls", dataset="modelnet40",
                            steps=100 * (_MODELNET // 16), eval_every=10 * (_MODELNET // 16)),
    "pointnet_modelnet40": dict(_PAPER_POINTNET, task="cls", dataset="modelnet40",
                                steps=250 * (_MODELNET // 12), eval_every=10 * (_MODELNET // 12)),
}
