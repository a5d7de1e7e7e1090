"""Data: ImageNet (folder layout), CIFAR-10 (python-pickle layout) and a generated default.

* ImageNet: ``ROOT/train/<wnid>/*.JPEG`` and ``ROOT/val/<wnid>/*.JPEG`` (torchvision
  ``ImageFolder``; an unreadable file is named, or skipped and counted with
  ``--skip_bad_images true``). Train (``timm.data.create_transform``): Inception crop (area
  0.05-1) -> resize -> random flip -> RandAugment(2, 15); eval: resize to the model's size
  without a crop (official code).
* CIFAR-10: ``ROOT/cifar-10-batches-py/{data_batch_1..5, test_batch}`` (or those files directly
  in ROOT), each a pickle with ``data`` (N x 3072 uint8, RGB planes) and ``labels``. Read directly
  (torchvision's ``CIFAR10`` insists on the original archive's checksums). Train: random flip ->
  RandAugment(2, 15) (timm).
* generated (default, no path): 10 classes of left-right symmetric smooth patterns (symmetric so
  that the random flip keeps the class), drawn at a random shift, amplitude and colour (of
  random sign) over a random smooth background with pixel noise; deterministic for a seed,
  learnable well above chance in a few hundred steps, not linearly separable. Its low-contrast
  cue does not survive RandAugment at magnitude 15, so the tiny preset turns RandAugment off.

Every split yields ``(image, label)`` with images as float tensors in [-1, 1] (the official
scaling) of shape (3, S, S).
"""
from __future__ import annotations

import torch
from torch.utils.data import Dataset
from timm.data import create_transform, rand_augment_transform
from timm.data.transforms import str_to_pil_interp
from torchvision import transforms
from torchvision.transforms import v2

from shared.data.images import (CIFAR_TEST, CIFAR_TRAIN, generated_images, image_folders,
                                image_source, read_cifar_batches)
from shared.errors import DataError  # noqa: F401  (widenet.data.DataError: the data errors of this paper)

# the generated default at 32 px: patterns from a 5 x 5 field, shifted by up to 6 px
GENERATED = dict(shift=6, grid=5, x_first=True)

# ---------------------------------------------------------------------------------------------
# transforms

def to_signed(x: torch.Tensor) -> torch.Tensor:
    """uint8 image -> float in [-1, 1]."""
    return x.float().div(127.5).sub(1.0)


HALF = (0.5, 0.5, 0.5)   # Normalize(0.5, 0.5): [0, 1] -> [-1, 1], the official scaling


def randaug_name(ops: int, magnitude: int) -> str:
    """timm's RandAugment config string (``rand-m15-n2``: 2 ops at magnitude 15 of TF's 0-10
    level scale, as the official ``RandAugment(num_layers=2, magnitude=15)``)."""
    return f"rand-m{magnitude}-n{ops}"


def train_transform(img_size: int, randaug_ops: int, randaug_magnitude: int, crop: bool):
    """The official training augmentation, through timm.

    ``crop`` (ImageNet, PIL images): ``timm.data.create_transform``, which composes in the brief's
    order Inception crop (area 0.05-1, bilinear) -> resize -> random flip -> RandAugment(ops,
    magnitude) -> tensor -> [-1, 1]. Without ``crop`` (in-memory uint8 tensors: CIFAR-10, the
    generated data): random flip -> RandAugment -> [-1, 1], the same timm RandAugment on a PIL
    view; without RandAugment the flip runs on the tensor directly.
    """
    aa = randaug_name(randaug_ops, randaug_magnitude) if randaug_ops > 0 else None
    if crop:
        return create_transform(img_size, is_training=True, scale=(0.05, 1.0), hflip=0.5,
                                color_jitter=None, auto_augment=aa, interpolation="bilinear",
                                mean=HALF, std=HALF)
    if aa is None:
        return v2.Compose([v2.RandomHorizontalFlip(), v2.Lambda(to_signed)])
    hparams = dict(translate_const=int(img_size * 0.45), img_mean=(128, 128, 128),
                   interpolation=str_to_pil_interp("bilinear"))
    return transforms.Compose([transforms.ToPILImage(), transforms.RandomHorizontalFlip(),
                               rand_augment_transform(aa, hparams), transforms.PILToTensor(),
                               v2.Lambda(to_signed)])


def eval_transform(img_size: int, pil: bool):
    """Resize to the model's size without a crop (official), then [-1, 1]."""
    steps = [v2.PILToTensor(), v2.Resize((img_size, img_size), antialias=True)] if pil else []
    return v2.Compose(steps + [v2.Lambda(to_signed)])


class TensorImages(Dataset):
    """In-memory uint8 images (N, 3, S, S) with labels, transformed on access."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform=None):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        x = self.images[i]
        return (self.transform(x) if self.transform else to_signed(x)), int(self.labels[i])


def build_datasets(cfg):
    """(train, val, num_classes) for a config with ``data``, ``dataset``, ``img_size``, ..."""
    kind = image_source(cfg.dataset, cfg.data, cfg.img_size)
    aug = (cfg.randaug_ops, cfg.randaug_magnitude)
    if kind == "generated":
        train = TensorImages(*generated_images(cfg.train_size, cfg.num_classes, cfg.img_size,
                                               cfg.seed, 1, **GENERATED),
                             train_transform(cfg.img_size, *aug, crop=False))
        val = TensorImages(*generated_images(cfg.val_size, cfg.num_classes, cfg.img_size,
                                             cfg.seed, 2, **GENERATED))
        return train, val, cfg.num_classes
    if kind == "cifar10":
        train = TensorImages(*read_cifar_batches(cfg.data, CIFAR_TRAIN),
                             train_transform(32, *aug, crop=False))
        val = TensorImages(*read_cifar_batches(cfg.data, CIFAR_TEST))
        return train, val, 10
    train, val = image_folders(cfg.data, train_transform(cfg.img_size, *aug, crop=True),
                               eval_transform(cfg.img_size, pil=True), cfg.skip_bad_images)
    return train, val, len(train.classes)
