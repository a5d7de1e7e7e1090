"""WideNet training config: one dataclass on the shared glossary, presets named after the paper's
ImageNet-1K rows plus ``tiny``.

Paper recipe (arXiv 2107.11817 Table 1 hyper-parameters and the official ``submit_tpu.sh``, see
../shared/papers/widenet.md Sec. 3): 300 epochs, 30 warmup, batch 4096, LAMB lr 0.01 (linear
warmup from 1e-5, linear decay to 1e-5), weight decay 0.1, dropout 0.1, label smoothing 0.1,
mixup Beta(0.5, 0.5) on every batch, RandAugment(2, 15), clip-norm 1.0, top-2 routing, cf 1.2,
4 experts, load-balance weight 0.01, seed 42, 224x224 images, 1001 classes. In steps: 313 steps
per epoch (1281167 // 4096 + 1, official), so 93900 steps with 9390 of warm-up.

``tiny`` is the CPU preset: widenet_tiny on the generated data, a few minutes on two cores,
scaled down (32x32 images, 8k of them, 310 steps = 5 epochs at batch 128) and with dropout 0 and
RandAugment off (see ``_TINY`` below and the README's deviations); the rest of the recipe is the
paper's.
"""
from __future__ import annotations

from dataclasses import dataclass

from shared.train.config import ConfigError, TrainConfig, with_defaults


# this paper's defaults for fields of the shared glossary
_Base = with_defaults(
    TrainConfig, seed=42, steps=310, warmup_steps=62, schedule="linear", lr=4e-3, min_lr=1e-5,
    weight_decay=0.1, grad_clip=1.0, batch_size=128)


@dataclass
class Config(_Base):
    MODES = ("data", "expert")
    FIXED_ON_RESUME = ("model", "pool", "dataset", "img_size", "patch_size", "num_classes",
                       "train_size", "val_size", "num_experts", "top_k", "capacity_factor",
                       "expert_ranks", "nlp_stage", "seq_len")

    # ---- model
    model: str = "widenet_tiny"
    """a name from widenet.models.list_models()"""
    patch_size: int = 0
    """0 = the model's default"""
    dropout: float = 0.1
    pool: str = ""
    """classifier input: "" = the model's own (ViT: cls, MoE models: gap) | gap | cls"""
    # ---- data
    dataset: str = "auto"
    """auto | generated | cifar10 | imagenet (--data: ImageNet root with train/ and val/, or a
    CIFAR-10 root; "" = generated)"""
    img_size: int = 32
    num_classes: int = 10
    """classes of the head (generated data: of the data too); ImageNet presets: 1001"""
    train_size: int = 8000
    """generated data only"""
    val_size: int = 2000
    """generated data only"""
    workers: int = -1
    """DataLoader workers per process; -1 = auto (8 on CUDA, with pinned memory; 0 on CPU)"""
    skip_bad_images: bool = False
    """an unreadable image file: false = stop with an error naming it; true = skip it (another
    image takes its place) and count the skips (logged as skipped_images)"""
    epochs: float = 0.0
    """> 0: set --steps to this many epochs of the training data (overrides --steps)"""
    warmup_epochs: float = 0.0
    """> 0: set --warmup_steps to this many epochs of the training data"""
    # ---- regularisation
    label_smoothing: float = 0.1
    mixup_alpha: float = 0.5
    """Beta(alpha, alpha) mixup on every batch; 0 = off"""
    randaug_ops: int = 2
    randaug_magnitude: int = 15
    """timm/TF scale (10 = the largest listed level; the official 15 extrapolates beyond it)"""
    # ---- MoE
    num_experts: int = 4
    top_k: int = 2
    capacity_factor: float = 1.2
    aux_weight: float = 0.01
    """lambda of the load-balancing loss"""
    # ---- NLP models (albert_*, widenet_nlp_*)
    nlp_stage: str = "both"
    """both (pre-train with MLM + sentence order, then fine-tune) | pretrain | finetune"""
    seq_len: int = 32
    """tokens per sequence (NLP)"""
    # ---- parallelism: --mode data (replicate the model) or expert (shard the experts)
    expert_ranks: int = 0
    """--mode expert: ranks per expert group; 0 = all ranks form one expert group"""

    def validate(self) -> None:
        super().validate()
        for name in ("dropout", "label_smoothing"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"--{name} must be in [0, 1); got {getattr(self, name)}")
        if self.workers < -1:
            raise ConfigError(f"--workers must be >= 0, or -1 for auto; got {self.workers}")
        for name in ("mixup_alpha", "aux_weight", "epochs", "warmup_epochs", "randaug_ops",
                     "randaug_magnitude", "expert_ranks", "patch_size"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name} must be >= 0; got {getattr(self, name)}")
        if self.img_size < 1 or self.num_classes < 2 or self.train_size < 1 or self.val_size < 1:
            raise ConfigError(f"--img_size, --train_size and --val_size must be positive and "
                              f"--num_classes at least 2; got {self.img_size}, "
                              f"{self.train_size}, {self.val_size} and {self.num_classes}")
        if self.num_experts < 1 or not 1 <= self.top_k <= self.num_experts:
            raise ConfigError(f"--top_k {self.top_k} must be between 1 and --num_experts "
                              f"{self.num_experts}")
        if not self.capacity_factor > 0:
            raise ConfigError(f"--capacity_factor must be > 0 (the paper uses 1.2); got "
                              f"{self.capacity_factor}")
        if self.pool not in ("", "gap", "cls"):
            raise ConfigError(f"--pool {self.pool!r}: choose gap or cls (or omit it)")
        if self.nlp_stage not in ("both", "pretrain", "finetune"):
            raise ConfigError(f"--nlp_stage {self.nlp_stage!r}: choose both, pretrain or finetune")
        if self.seq_len < 8:
            raise ConfigError(f"--seq_len must be >= 8; got {self.seq_len}")
        if self.mode != "expert" and self.expert_ranks:
            raise ConfigError(f"--expert_ranks {self.expert_ranks} needs --mode expert")


_IMAGENET = dict(img_size=224, num_classes=1001, steps=93900, warmup_steps=9390,
                 batch_size=4096, lr=0.01, weight_decay=0.1, dropout=0.1, label_smoothing=0.1,
                 mixup_alpha=0.5, randaug_ops=2, randaug_magnitude=15, dataset="imagenet",
                 eval_every=3130, seed=42)

# CPU presets (scaled down, see README "Deviations"): 310 steps (5 epochs of the 8000 generated
# images at batch 128, 1 epoch of warm-up), evaluation every epoch; one torch thread (the tiny
# matmuls gain little from a second one, and on a shared machine a spinning second thread makes
# each step several times slower); LAMB lr 0.01 as in the paper; no dropout and no RandAugment:
# with them a width-64 model stays at chance on the generated data for the few hundred steps a
# CPU run has (measured), while mixup 0.5, label smoothing 0.1, weight decay 0.1 and clipping
# are kept.
_TINY = dict(threads=1, lr=0.01, dropout=0.0, randaug_ops=0, steps=310, warmup_steps=62,
             eval_every=62)

PRESETS = {
    "tiny": dict(_TINY, model="widenet_tiny"),
    "vit_tiny": dict(_TINY, model="vit_tiny"),
    "vit_moe_tiny": dict(_TINY, model="vit_moe_tiny"),
    "widenet_tiny": dict(_TINY, model="widenet_tiny"),
    # the paper's ImageNet-1K rows (Table 1 / official configs)
    "vit_b16": dict(_IMAGENET, model="vit_b16"),
    "vit_l16": dict(_IMAGENET, model="vit_l16"),
    "vit_moe_b": dict(_IMAGENET, model="vit_moe_b"),
    "vit_moe_l": dict(_IMAGENET, model="vit_moe_l"),
    "widenet_b": dict(_IMAGENET, model="widenet_b"),
    "widenet_l": dict(_IMAGENET, model="widenet_l"),
    "widenet_h": dict(_IMAGENET, model="widenet_h"),
    # CIFAR-10 column of the paper's hyper-parameter table: 100 epochs of 50000 images at batch
    # 512 (97 steps each), no warm-up. The paper does not state the patch size at 32x32; patch 4
    # follows ColossalAI's CIFAR example (brief Sec. 5).
    "widenet_b_cifar10": dict(model="widenet_b", dataset="cifar10", img_size=32, patch_size=4,
                              num_classes=10, steps=9700, warmup_steps=0, batch_size=512,
                              lr=0.03, weight_decay=0.0, label_smoothing=0.0, mixup_alpha=0.5,
                              eval_every=970),
}
