"""Canonical Voting config: one dataclass on the shared glossary; presets named after the paper's
rows (ScanNet + Scan2CAD, joint / separate models and the regression baseline) plus ``tiny``.

Paper recipe (``config/config.yaml`` of the reference, brief Sec. 2): Adam lr 1e-3, no weight
decay, lr x0.1 at epochs 80 and 120 of 160, batch 3 scenes, BN momentum 0.5 * 0.5^floor(epoch /
20) (at least 0.001), 3 cm voxels, log-scale targets, yaw augmentation k * 90 + U(-20, 20)
degrees, evaluation every 10 epochs. Inference (brief Sec. 1): 120 yaws, 60 votes, 10 points,
20 % active points at weight 0.3, LCC error 0.3, NMS IoU 0.3, suppression radius 2 cells. In
steps: ScanNet's 1,201 training scans at batch 3 give 400 steps per epoch, 64,000 in all.

``tiny`` is the CPU preset: the small U-Net on procedural rooms at 5 cm voxels, the paper's
recipe otherwise (its lr drops and BN-momentum decay at the same fractions of training). The
vote threshold, a sum of vote weights, counts points, so by default it follows the point density:
``60 * (0.03 / voxel_size)**2`` (the paper's 60 at 3 cm).
"""
from __future__ import annotations

from dataclasses import dataclass

from shared.train.config import ConfigError, TrainConfig

from .detect import DetectConfig
from .models.minkunet import SPECS

METHODS = ("canonical", "regression")


@dataclass
class Config(TrainConfig):
    MODES = ("data",)
    FIXED_ON_RESUME = ("method", "head", "category", "backbone", "heading_bins", "dataset",
                       "voxel_size", "train_scenes", "val_scenes", "scene_points", "data_seed",
                       "object_yaw", "yaw_jitter")

    # ---- glossary fields with the paper's recipe
    steps: int = 800
    schedule: str = "constant"
    """constant lr with the paper's step drops (--lr_drops)"""
    lr: float = 1e-3
    weight_decay: float = 0.0
    grad_clip: float = 0.0
    """the paper does not clip"""
    batch_size: int = 3
    log_every: int = 10
    lr_drops: tuple[float, ...] = (0.5, 0.75)
    """fractions of --steps after which the lr is multiplied by 0.1 (paper: epochs 80, 120 of 160)"""
    bn_momentum: float = 0.5
    """BatchNorm momentum at the start (PyTorch semantics), halved every --bn_decay_every"""
    bn_decay_every: float = 0.125
    """fraction of --steps between halvings of the BN momentum (paper: 20 of 160 epochs)"""
    bn_momentum_min: float = 0.001

    # ---- method and model
    method: str = "canonical"
    """canonical (LCC + canonical voting, the paper) | regression (direct centre offset and
    heading, the VoteNet-style baseline)"""
    head: str = "joint"
    """joint (one model, all classes) | separate (one model for --category)"""
    category: str = ""
    """--head separate: the class this model detects"""
    backbone: str = "minkunet_small"
    """minkunet_small (CPU) | minkunet14 | minkunet34c (the paper's)"""
    heading_bins: int = 12
    """regression baseline: heading bins (VoteNet: 12)"""
    sym_loss: bool = True
    """symmetry-aware LCC (and heading) loss: per object, the minimum over its symmetric frames"""

    # ---- data
    dataset: str = "auto"
    """auto (procedural, or scannet when --data is given) | procedural | scannet"""
    voxel_size: float = 0.05
    train_scenes: int = 64
    """procedural data: training rooms"""
    val_scenes: int = 16
    """procedural data: validation rooms"""
    scene_points: int = 10000
    """procedural data: points sampled per room"""
    data_seed: int = 0
    """procedural data: which rooms (the same for every --seed and --method)"""
    object_yaw: str = "aligned"
    """procedural data: aligned (each object parallel to a wall up to --yaw_jitter degrees, as
    furniture in scanned rooms) | uniform (any yaw)"""
    yaw_jitter: float = 15.0
    augment: bool = True
    """yaw augmentation k * 90 + U(-20, 20) degrees (paper)"""

    # ---- inference (canonical voting and back-projection checking; defaults: DetectConfig's)
    n_rot: int = DetectConfig.n_rot
    vote_voxel: float = 0.0
    """vote-map cell size in metres; 0 = --voxel_size"""
    max_vote_cells: int = DetectConfig.max_vote_cells
    """largest vote grid (cells) a scene may need; a larger scene is refused, naming the voxel
    size that fits"""
    vote_threshold: float = 0.0
    """smallest peak (sum of vote weights) to consider; 0 = 60 * (0.03 / voxel_size)**2"""
    suppress_radius: int = DetectConfig.suppress_radius
    min_points: int = DetectConfig.min_points
    active_weight: float = DetectConfig.active_weight
    active_fraction: float = DetectConfig.active_fraction
    lcc_error: float = DetectConfig.lcc_error
    lcc_check: bool = DetectConfig.lcc_check
    """the LCC back-projection check (canonical voting only)"""
    nms_iou: float = DetectConfig.nms_iou
    eval_scenes: int = 0
    """validation scenes evaluated; 0 = all"""
    calibrate_scenes: int = 8
    """after training, also choose the inference thresholds on this many training scenes and
    report the mAP with them (0 = off; the ScanNet presets use the paper's thresholds)"""
    picture: bool = True
    """end the run with detections.png of one validation scene"""

    def validate(self) -> None:
        super().validate()
        if self.method not in METHODS:
            raise ConfigError(f"--method {self.method!r}: choose one of {', '.join(METHODS)}")
        if self.head not in ("joint", "separate"):
            raise ConfigError(f"--head {self.head!r}: choose joint or separate")
        if self.method == "regression" and self.head != "joint":
            raise ConfigError("the regression baseline is a joint model; use --head joint")
        if self.head == "separate" and not self.category:
            raise ConfigError("--head separate trains one model per class: name it with "
                              "--category (e.g. --category chair)")
        if self.head == "joint" and self.category:
            raise ConfigError(f"--category {self.category} needs --head separate")
        if self.backbone not in SPECS:
            raise ConfigError(f"--backbone {self.backbone!r}: choose one of "
                              f"{', '.join(sorted(SPECS))}")
        if self.object_yaw not in ("aligned", "uniform"):
            raise ConfigError(f"--object_yaw {self.object_yaw!r}: choose aligned or uniform")
        if self.dataset not in ("auto", "procedural", "scannet"):
            raise ConfigError(f"--dataset {self.dataset!r}: choose auto, procedural or scannet")
        for name in ("voxel_size", "lr"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"--{name} must be positive; got {getattr(self, name)}")
        for name in ("train_scenes", "val_scenes", "scene_points", "n_rot", "heading_bins",
                     "max_vote_cells"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name} must be at least 1; got {getattr(self, name)}")
        for name in ("vote_voxel", "vote_threshold", "suppress_radius", "min_points",
                     "eval_scenes", "bn_decay_every", "calibrate_scenes"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name} must be >= 0; got {getattr(self, name)}")
        for name in ("active_weight", "active_fraction", "bn_momentum", "bn_momentum_min"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"--{name} must be in [0, 1]; got {getattr(self, name)}")
        if any(not 0 < f < 1 for f in self.lr_drops):
            raise ConfigError(f"--lr_drops are fractions of --steps in (0, 1); got {self.lr_drops}")
        if self.batch_size > self.train_scenes and self.dataset != "scannet" and not self.data:
            raise ConfigError(f"--batch_size {self.batch_size} is larger than the "
                              f"{self.train_scenes} training rooms; lower it or raise "
                              f"--train_scenes")

    # ---- derived settings
    def detect_config(self) -> DetectConfig:
        voxel = self.vote_voxel or self.voxel_size
        threshold = self.vote_threshold or 60.0 * (0.03 / self.voxel_size) ** 2
        return DetectConfig(n_rot=self.n_rot, vote_voxel=voxel, max_vote_cells=self.max_vote_cells,
                            vote_threshold=threshold, suppress_radius=self.suppress_radius,
                            min_points=self.min_points, active_weight=self.active_weight,
                            active_fraction=self.active_fraction, lcc_error=self.lcc_error,
                            lcc_check=self.lcc_check, nms_iou=self.nms_iou)

    def head_name(self) -> str:
        return "regression" if self.method == "regression" else self.head


_TINY = dict(threads=1)

# the paper's ScanNet + Scan2CAD rows: 1,201 scans, batch 3 -> 400 steps/epoch, 160 epochs
_SCANNET = dict(dataset="scannet", backbone="minkunet34c", voxel_size=0.03, batch_size=3,
                steps=64_000, eval_every=4_000, ckpt_every=4_000, lr=1e-3, lr_drops=(0.5, 0.75),
                bn_momentum=0.5, bn_decay_every=0.125, log_every=50, calibrate_scenes=0)

PRESETS = {
    "tiny": dict(_TINY),
    "tiny_regression": dict(_TINY, method="regression"),
    # the paper's joint model (the reference's joint script: plain MSE on the LCC)
    "scannet_joint": dict(_SCANNET, head="joint", sym_loss=False),
    # one per-class model (the reference's separate script: symmetry-aware LCC loss)
    "scannet_separate": dict(_SCANNET, head="separate", category="chair", sym_loss=True),
    # the baseline on the paper's data and recipe
    "scannet_regression": dict(_SCANNET, method="regression", sym_loss=False),
}
