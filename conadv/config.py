"""ConAdv training config: one dataclass on the shared glossary, presets named after the paper's
rows plus ``tiny``.

``--mode`` is the training algorithm, all three under one recipe (brief Sec. 4):

* ``conadv``  (default): the adversarial images of step t were made at step t - tau from the
  weights of that step, on a worker (CPU thread / CUDA stream) running beside the weight gradient;
* ``disadv``: the adversarial images of step t are made from the weights of step t, before the
  weight gradient (two dependent passes per step);
* ``vanilla``: clean images only.

The paper does not state its attack, epsilon, tau or recipe (brief Sec. 4 and 6): the values
below are our choices, listed in the README. Recipe: LARS (ResNets) or LAMB (EfficientNets) from
timm, no weight decay and no trust ratio on biases and BatchNorm parameters, linear warm-up then
polynomial decay of power 2 to 0, learning rate scaled with the batch (``--lr`` is the peak at
``--base_batch``), label smoothing 0.1.
"""
from __future__ import annotations

from dataclasses import dataclass

from shared.train.config import ConfigError, TrainConfig

from .data import AUGMENTS
from .models import list_models


@dataclass
class Config(TrainConfig):
    MODES = ("conadv", "disadv", "vanilla")
    FIXED_ON_RESUME = ("mode", "model", "dataset", "img_size", "num_classes", "train_size",
                       "val_size", "augment", "tau", "epsilon", "micro_batch", "optimizer",
                       "lr_scaling", "base_batch")

    # ---- glossary fields with this paper's defaults
    steps: int = 320
    warmup_steps: int = 32
    schedule: str = "poly"
    """linear warm-up from min_lr, then (1 - progress)^poly_power decay to min_lr"""
    lr: float = 4.0
    """peak learning rate at --base_batch; the run uses it scaled by --lr_scaling"""
    weight_decay: float = 5e-5
    """on conv and linear weights only (not on biases and BatchNorm parameters)"""
    grad_clip: float = 0.0
    batch_size: int = 128
    """global batch of clean images over all ranks (each also has its adversarial copy)"""
    # ---- schedule
    poly_power: float = 2.0
    epochs: float = 0.0
    """> 0: set --steps to this many epochs of the training data (overrides --steps)"""
    warmup_epochs: float = 0.0
    """> 0 (with --epochs): set --warmup_steps to this many epochs"""
    # ---- optimizer
    optimizer: str = "auto"
    """auto (LARS for ResNets, LAMB for EfficientNets) | lars | lamb (timm)"""
    momentum: float = 0.9
    trust_coeff: float = 1e-3
    """LARS trust coefficient (eta)"""
    lr_scaling: str = "sqrt"
    """how the peak lr grows with --batch_size: sqrt | linear | none (relative to --base_batch)"""
    base_batch: int = 128
    label_smoothing: float = 0.1
    micro_batch: int = 0
    """per-rank micro-batch: the step accumulates gradients over batch/(ranks*micro_batch)
    micro-batches, each with its own BatchNorm statistics (ghost BN); 0 = the per-rank batch"""
    # ---- adversarial branch
    tau: int = 1
    """ConAdv staleness: the adversarial images of step t come from the weights of step t - tau"""
    epsilon: float = 2 / 255
    """L-inf radius of the one-step sign attack, in [0,1] pixel units (1/255 = 0.0039)"""
    concurrent: bool = True
    """ConAdv: run the attack on a worker thread (CPU) / second stream (CUDA); false runs it
    in line, with the same numbers"""
    # ---- model and data
    model: str = "resnet_tiny"
    """one of conadv.models.list_models()"""
    dataset: str = "auto"
    """auto | generated | cifar10 | imagenet (--data: ImageNet root with train/ and val/, or a
    CIFAR-10 root; "" = generated)"""
    img_size: int = 16
    num_classes: int = 10
    """generated data only (CIFAR-10 and ImageNet take theirs from the data)"""
    train_size: int = 2048
    """generated data only"""
    val_size: int = 2000
    """generated data only"""
    augment: str = "none"
    """the "+ data augmentation" rows: none | autoaugment | randaugment (torchvision), after
    the random crop and flip that every run has"""
    workers: int = 0
    """DataLoader workers (ImageNet)"""

    def validate(self) -> None:
        super().validate()
        if self.tau < 1:
            raise ConfigError(f"--tau must be at least 1 (the adversarial batch of step t + tau "
                              f"is made at step t); got {self.tau}")
        if not 0 < self.epsilon <= 1:
            raise ConfigError(f"--epsilon {self.epsilon} is outside (0, 1]: it is an L-inf "
                              f"radius in [0,1] pixel units (1/255 = 0.0039)")
        if self.model not in list_models():
            raise ConfigError(f"--model {self.model!r}: choose one of {', '.join(list_models())}")
        if self.optimizer not in ("auto", "lars", "lamb"):
            raise ConfigError(f"--optimizer {self.optimizer!r}: choose auto, lars or lamb")
        if self.lr_scaling not in ("sqrt", "linear", "none"):
            raise ConfigError(f"--lr_scaling {self.lr_scaling!r}: choose sqrt, linear or none")
        if self.augment not in AUGMENTS:
            raise ConfigError(f"--augment {self.augment!r}: choose one of {', '.join(AUGMENTS)}")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"--label_smoothing must be in [0, 1); got {self.label_smoothing}")
        for name in ("micro_batch", "epochs", "warmup_epochs", "workers", "momentum",
                     "trust_coeff"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name} must be >= 0; got {getattr(self, name)}")
        if self.base_batch < 1 or self.poly_power <= 0:
            raise ConfigError(f"--base_batch must be >= 1 and --poly_power > 0; got "
                              f"{self.base_batch} and {self.poly_power}")
        if self.micro_batch and self.batch_size % self.micro_batch:
            raise ConfigError(f"--micro_batch {self.micro_batch} does not divide --batch_size "
                              f"{self.batch_size}: gradient accumulation needs a whole number of "
                              f"micro-batches; use a divisor of {self.batch_size}")
        if self.img_size < 4 or self.num_classes < 2 or self.train_size < 1 or self.val_size < 1:
            raise ConfigError(f"--img_size must be >= 4, --num_classes >= 2 and --train_size, "
                              f"--val_size >= 1; got {self.img_size}, {self.num_classes}, "
                              f"{self.train_size}, {self.val_size}")


# The CPU preset (scaled down, see README): resnet_tiny on 2048 generated 16x16 images, batch
# 128 in ghost-BN micro-batches of 32, 10 epochs with 1 of warm-up, one torch thread per process
# (ConAdv's worker thread takes the second core). LARS lr 2 at batch 128 with trust coefficient
# 0.02: the best of five (lr, eta) pairs for *vanilla* at batch 128 (4/1e-3, 32/1e-3, 1/0.01,
# 2/0.02, 8/0.005), then used for every mode and batch size.
_TINY = dict(threads=1, model="resnet_tiny", img_size=16, train_size=2048, val_size=2000,
             batch_size=128, micro_batch=32, lr=2.0, base_batch=128, trust_coeff=0.02,
             epochs=10, warmup_epochs=1, eval_every=40)

# The paper's ImageNet rows (brief Sec. 2, 6): ResNet-50, 90 epochs, LARS, label smoothing 0.1,
# 224 px. Peak lr 2^2 at 512 scaled by sqrt(B/512) as in the lab's LARS reference (brief), with
# warm-up growing with the batch; the ConAdv paper's own lr, warm-up and epsilon are not known.
_IMAGENET = dict(model="resnet50", dataset="imagenet", img_size=224, epochs=90, lr=4.0,
                 base_batch=512, lr_scaling="sqrt", weight_decay=1e-4, label_smoothing=0.1,
                 trust_coeff=1e-3, micro_batch=128, epsilon=1 / 255, workers=8, eval_every=0)


def _imagenet(batch: int, warmup_epochs: float, **kw) -> dict:
    return dict(_IMAGENET, batch_size=batch, warmup_epochs=warmup_epochs, **kw)


PRESETS = {
    "tiny": dict(_TINY),
    "tiny_efficientnet": dict(_TINY, model="efficientnet_tiny", img_size=32, lr=0.01,
                              weight_decay=1e-2),
    # ResNet-50 on ImageNet at the batch sizes of the paper's table (brief Sec. 7)
    "resnet50_b4k": _imagenet(4096, 5),
    "resnet50_b8k": _imagenet(8192, 10),
    "resnet50_b16k": _imagenet(16384, 15),
    "resnet50_b32k": _imagenet(32768, 20),
    "resnet50_b64k": _imagenet(65536, 25),
    "resnet50_b96k": _imagenet(98304, 30),
    "resnet50_b96k_aa": _imagenet(98304, 30, augment="autoaugment"),
    # EfficientNet-B0 (the paper's v1): LAMB, lr scaled from 1e-2 at 4K, weight decay 0.05
    "efficientnet_b0_b16k": dict(_IMAGENET, model="efficientnet_b0", optimizer="lamb",
                                 batch_size=16384, lr=1e-2, base_batch=4096, weight_decay=0.05,
                                 warmup_epochs=15),
}
