"""F2C training config: one dataclass on the shared glossary, presets named after the runs of
the paper's setting (MS1MV2 / Glint360K, IResNet-50, 8 GPUs) for each method, plus ``tiny``.

Official recipe (github.com/tiandunx/FFC, ``train_ffc.sh``, ``config/optim_config``, argparse;
../shared/papers/f2c.md Sec. 2): 8 GPUs, per GPU 64 identities x 2 images from the identity
loader and 64 instances, so 96 images per view and 192 per GPU per step (``batch_size`` 1536 over
8 GPUs); SGD lr 0.1, momentum 0.9, Nesterov, weight decay 1e-4; 19 passes of the instance loader
with the lr x0.1 at 8, 14 and 17; EMA 0.99; scale 32; AM (CosFace) margin 0.5 (the script's
argparse default); pool 1% of the identities.

``batch_size`` is the number of images the probe net trains on per step, over all ranks, for
every method: F2C's two views of ``batch_size / 2`` images each (``id_fraction`` of a view from
the identity loader), the baselines' ``batch_size`` instances. So every arm of a comparison sees
the same number of images per step.
"""
from __future__ import annotations

from dataclasses import dataclass

from shared.train.config import ConfigError, TrainConfig, with_defaults

from .models import MARGINS, backbone_defaults, list_backbones

METHODS = ("f2c", "fc", "pfc")


# this paper's defaults for fields of the shared glossary
_Base = with_defaults(
    TrainConfig, steps=600, schedule="cosine", lr=0.1, weight_decay=5e-4, grad_clip=0.0, batch_size=96,
    log_every=20, eval_every=200)


@dataclass
class Config(_Base):
    MODES = ("data",)
    """the backbone is data parallel; F2C's pool is replicated, FC / Partial FC's class centres
    are sharded over the same ranks (f2c.parallel)"""
    FIXED_ON_RESUME = ("method", "backbone", "img_size", "embedding_size", "pool_size",
                       "num_ids", "images_per_id", "nuisance", "id_fraction", "margin_type",
                       "sample_rate")

    # ---- method
    method: str = "f2c"
    """f2c | fc (full FC, centres sharded over ranks) | pfc (Partial FC)"""
    momentum: float = 0.9
    nesterov: bool = True
    margin_type: str = "cosface"
    """cosface | arcface | sv (sv: F2C only)"""
    margin: float = 0.4
    scale: float = 32.0
    arc_guard: bool = False
    """arcface: insightface's fallback beyond theta + m > pi (off in the official F2C code)"""
    # ---- F2C
    pool_size: int = 256
    """Q, columns of the Dynamic Class Pool; must exceed the batch_size / 2 gallery features
    gathered per pass"""
    ema: float = 0.99
    """gallery = ema * gallery + (1 - ema) * probe, once per step"""
    id_fraction: float = 0.6667
    """share of a view drawn by the identity loader (official: 64 of 96)"""
    mask_empty: bool = False
    """leave never-used pool columns out of the loss (off: the official code lets the random
    initial columns act as negatives)"""
    # ---- Partial FC
    sample_rate: float = 0.1
    # ---- model and data
    backbone: str = "ir_tiny"
    img_size: int = 0
    """0 = the backbone's default (ir_tiny 32, ir50 112)"""
    embedding_size: int = 0
    """0 = the backbone's default (ir_tiny 128, ir50 512)"""
    num_ids: int = 2000
    """generated data: training identities"""
    images_per_id: int = 12
    """generated data: images per training identity"""
    nuisance: float = 1.0
    """generated data: strength of pose, expression, light and noise"""
    val_ids: int = 300
    val_images_per_id: int = 4
    val_pairs: int = 3000
    """generated verification: held-out identities, their images, and the pairs of the 10-fold
    accuracy (TAR@FAR uses every pair of their images)"""
    val_targets: str = ""
    """real data: names of DIR/<name>.bin verification sets, comma separated; "" = every .bin"""
    eval_batch_size: int = 256
    workers: int = 0
    """data-loading processes (real data); 0 = in the training process"""

    def views(self) -> tuple[int, int]:
        """(identities per step, instances per step), global: a view is ``batch_size / 2``."""
        view = self.batch_size // 2
        n_id = int(round(self.id_fraction * view))
        return n_id, self.batch_size - 2 * n_id

    def validate(self) -> None:
        super().validate()
        if self.method not in METHODS:
            raise ConfigError(f"--method {self.method!r}: choose one of {', '.join(METHODS)}")
        if self.backbone not in list_backbones():
            raise ConfigError(f"--backbone {self.backbone!r}: choose one of "
                              f"{', '.join(list_backbones())}")
        if self.margin_type not in MARGINS:
            raise ConfigError(f"--margin_type {self.margin_type!r}: choose one of "
                              f"{', '.join(MARGINS)}")
        if self.margin_type == "sv" and self.method != "f2c":
            raise ConfigError("--margin_type sv is the official F2C code's pool loss; the "
                              "sharded FC heads support cosface and arcface")
        if self.scale <= 0 or self.margin < 0:
            raise ConfigError(f"--scale must be > 0 and --margin >= 0; got {self.scale} and "
                              f"{self.margin}")
        if not 0 < self.ema < 1:
            raise ConfigError(f"--ema must be in (0, 1) (the paper uses 0.99); got {self.ema}")
        if not 0 < self.sample_rate <= 1:
            raise ConfigError(f"--sample_rate must be in (0, 1]; got {self.sample_rate}")
        if not 0 < self.id_fraction <= 1:
            raise ConfigError(f"--id_fraction must be in (0, 1]; got {self.id_fraction}")
        if self.img_size < 0 or self.img_size % 16:
            raise ConfigError(f"--img_size must be a multiple of 16 (IResNet halves it 4 "
                              f"times), or 0 for the backbone's default; got {self.img_size}")
        if self.embedding_size < 0:
            raise ConfigError(f"--embedding_size must be >= 0 (0 = the backbone's default); "
                              f"got {self.embedding_size}")
        size, dim = backbone_defaults(self.backbone)
        self.img_size, self.embedding_size = self.img_size or size, self.embedding_size or dim
        for name in ("num_ids", "images_per_id", "val_ids", "val_images_per_id", "val_pairs",
                     "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name} must be at least 1; got {getattr(self, name)}")
        if self.batch_size % 2:
            raise ConfigError(f"--batch_size {self.batch_size} must be even (F2C's two views "
                              f"of batch_size / 2 images)")
        if self.method == "f2c":
            n_id, n_inst = self.views()
            if n_id < 1 or n_inst % 2:
                raise ConfigError(f"--batch_size {self.batch_size} with --id_fraction "
                                  f"{self.id_fraction} gives {n_id} identities and {n_inst} "
                                  f"instances per step; need at least one identity and an even "
                                  f"number of instances")
            if self.pool_size <= self.batch_size // 2:
                raise ConfigError(
                    f"--pool_size {self.pool_size} must be larger than the "
                    f"{self.batch_size // 2} gallery features gathered per pass (batch_size / "
                    f"2): otherwise the batch's own identities are evicted within the pass and "
                    f"their probes silently become outliers; use --pool_size "
                    f"{self.batch_size // 2 + 1} or more")


# The tiny recipe, one for all three methods (scaled-down reproduction, CPU): ir_tiny at 32x32
# on 2000 generated identities x 12 images, batch 96 (32 identity pairs + 32 instances for
# F2C), 600 steps (about 2.4 passes over the images), SGD lr 0.1 Nesterov, cosine decay,
# CosFace m 0.4 s 32, pool 256 = 12.8% of the identities (the official ratio, 1%, would be 20
# columns, fewer than the 48 features gathered per pass), one torch thread.
_TINY = dict(threads=1)

# The paper's setting: IResNet-50, 112x112, 8 GPUs x 192 images; steps = 19 passes of the
# instance loader at 512 instances per step (MS1MV2: 5,822,653 images -> 11,373 steps per pass;
# Glint360K: 17,091,657 -> 33,383).
_PAPER = dict(backbone="ir50", img_size=112, embedding_size=512, batch_size=1536, lr=0.1,
              weight_decay=1e-4, momentum=0.9, nesterov=True, ema=0.99, id_fraction=0.6667,
              margin_type="cosface", margin=0.5, scale=32.0, grad_clip=0.0, log_every=100,
              eval_every=2000, ckpt_every=2000, workers=8)
_MS1MV2 = dict(_PAPER, steps=216087, pool_size=857, val_targets="lfw,cfp_fp,agedb_30")
_GLINT = dict(_PAPER, steps=634277, pool_size=3602, val_targets="lfw,cfp_fp,agedb_30")
# Baselines at the paper's scale: insightface's heads (ArcFace s 64 m 0.5; Partial FC r 0.1),
# the same backbone, batch, steps and optimizer.
_FC = dict(method="fc", margin_type="arcface", margin=0.5, scale=64.0)
_PFC = dict(_FC, method="pfc", sample_rate=0.1)

PRESETS = {
    "tiny": dict(_TINY),
    "tiny_fc": dict(_TINY, method="fc"),
    "tiny_pfc": dict(_TINY, method="pfc"),
    "ms1mv2_f2c": dict(_MS1MV2),
    "ms1mv2_fc": dict(_MS1MV2, **_FC),
    "ms1mv2_pfc": dict(_MS1MV2, **_PFC),
    "glint360k_f2c": dict(_GLINT),
    "glint360k_fc": dict(_GLINT, **_FC),
    "glint360k_pfc": dict(_GLINT, **_PFC),
}
