"""Data: ImageNet (folder layout), CIFAR-10 (python-pickle layout) and a generated default.

Every source yields images in [0, 1] (the model normalises them itself, so that attacks and their
clamp act on pixels) and integer labels, one share of the global batch per data-parallel rank.

* ImageNet: ``ROOT/train/<wnid>/*.JPEG`` and ``ROOT/val/<wnid>/*.JPEG`` (torchvision
  ``ImageFolder``, class index = sorted folder order). Train: random-resized crop, flip, optional
  AutoAugment (ImageNet policy) or RandAugment; eval: resize to 8/7 of the size, centre crop.
  Decoded by ``DataLoader`` workers.
* CIFAR-10: ``ROOT/cifar-10-batches-py/{data_batch_1..5, test_batch}`` (or those files in
  ROOT), each a pickle with ``data`` (N x 3072 uint8, RGB planes) and ``labels``; read directly,
  no download.
* generated (default, no path): 10 classes of left-right symmetric smooth patterns drawn at a
  random shift, amplitude and colour of random sign over a smooth background with pixel noise;
  deterministic for a seed, learnable in a few epochs, not linearly separable.

In-memory sets (CIFAR-10, generated) are augmented per step in the training process: random
crop from a zero-padded image and a horizontal flip, then (``--augment``) AutoAugment (CIFAR-10
policy) or RandAugment(2, 9), all torchvision. The random draws of a step are a function of
``(seed, step, position in the global batch)`` only, so a step's augmented batch is the same on
any number of ranks and after a resume, and ``stream(t)`` rebuilds it exactly (the tests use it
to check which images ConAdv attacked).
"""
from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from shared.data import EpochSampler
from shared.data.images import (CIFAR_TEST, CIFAR_TRAIN, crop_batch, generated_images,
                                image_folders, image_source, read_cifar_batches)
from shared.errors import DataError

from .models import IMAGENET_MEAN, IMAGENET_STD

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
GENERATED_MEAN, GENERATED_STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
AUGMENTS = ("none", "autoaugment", "randaugment")


def policy_transform(augment: str, dataset: str):
    """The '+ data augmentation' transform on uint8 images (torchvision), or None."""
    if augment == "none":
        return None
    if augment == "autoaugment":
        policy = (v2.AutoAugmentPolicy.IMAGENET if dataset == "imagenet"
                  else v2.AutoAugmentPolicy.CIFAR10)
        return v2.AutoAugment(policy)
    if augment == "randaugment":
        return v2.RandAugment(num_ops=2, magnitude=9)
    raise DataError(f"--augment {augment!r}: choose one of {', '.join(AUGMENTS)}")


def augment_batch(images: torch.Tensor, seed: int, step: int, offset: int, global_batch: int,
                  policy=None) -> torch.Tensor:
    """Random crop (zero padding of S/8) and flip, then ``policy`` per image, of the images at
    positions ``offset .. offset + len(images)`` of step ``step``'s global batch (uint8 in,
    uint8 out). Draws from its own generators, never from the global RNG."""
    n, _, size, _ = images.shape
    pad = max(1, size // 8)
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    dy = torch.randint(2 * pad + 1, (global_batch,), generator=g)[offset:offset + n]
    dx = torch.randint(2 * pad + 1, (global_batch,), generator=g)[offset:offset + n]
    flip = (torch.rand(global_batch, generator=g) < 0.5)[offset:offset + n]
    x = crop_batch(F.pad(images, (pad, pad, pad, pad)), dy, dx, size)
    x = torch.where(flip.view(n, 1, 1, 1), x.flip(-1), x)
    if policy is not None:
        out = torch.empty_like(x)
        with torch.random.fork_rng(devices=[]):
            for i in range(n):
                torch.manual_seed((seed * 1_000_003 + step) * 65_537 + offset + i)
                out[i] = policy(x[i])
        x = out
    return x


def to_unit(x: torch.Tensor, device) -> torch.Tensor:
    """uint8 images -> float32 in [0, 1] on ``device``."""
    return x.to(device, non_blocking=True).float().div_(255.0)


# ---------------------------------------------------------------------------------------------
# sources

class TensorData:
    """In-memory uint8 train/val images (CIFAR-10, generated) with per-step augmentation."""

    def __init__(self, train, val, num_classes: int, mean, std, name: str, cfg):
        self.train_images, self.train_labels = train
        self.val_images, self.val_labels = val
        self.num_classes, self.mean, self.std, self.name = num_classes, mean, std, name
        self.seed, self.policy = cfg.seed, policy_transform(cfg.augment, name)

    @property
    def train_size(self) -> int:
        return len(self.train_labels)

    @property
    def val_size(self) -> int:
        return len(self.val_labels)

    def stream(self, first_step: int, batch_size: int, rank: int, world: int, device):
        """This rank's share of the augmented global batch of every step from ``first_step``:
        an iterator of ``(images in [0, 1], labels)``."""
        sampler = EpochSampler(self.train_size, batch_size, seed=self.seed, rank=rank,
                               world=world).seek(first_step)
        share = batch_size // world
        for step in itertools.count(first_step):
            idx = next(sampler)
            x = augment_batch(self.train_images[idx], self.seed, step, rank * share, batch_size,
                              self.policy)
            yield to_unit(x, device), self.train_labels[idx].to(device)

    def val_batches(self, batch_size: int, rank: int, world: int, device):
        """This rank's share of the validation images (images ``rank, rank + world, ...``, so
        that the ranks together see every image once), in batches of ``batch_size``."""
        for idx in torch.arange(rank, self.val_size, world).split(batch_size):
            yield to_unit(self.val_images[idx], device), self.val_labels[idx].to(device)


class FolderData:
    """ImageNet folders, decoded and augmented by ``DataLoader`` workers."""

    def __init__(self, root, cfg):
        size = cfg.img_size
        steps = [v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip()]
        policy = policy_transform(cfg.augment, "imagenet")
        train_tf = v2.Compose([v2.PILToTensor(), *steps] + ([policy] if policy else []))
        val_tf = v2.Compose([v2.PILToTensor(), v2.Resize(round(size * 8 / 7), antialias=True),
                             v2.CenterCrop(size)])
        self.train, self.val = image_folders(root, train_tf, val_tf)
        self.num_classes, self.mean, self.std = len(self.train.classes), IMAGENET_MEAN, IMAGENET_STD
        self.name, self.seed, self.workers = "imagenet", cfg.seed, cfg.workers

    @property
    def train_size(self) -> int:
        return len(self.train)

    @property
    def val_size(self) -> int:
        return len(self.val)

    def stream(self, first_step: int, batch_size: int, rank: int, world: int, device):
        sampler = EpochSampler(self.train_size, batch_size, seed=self.seed, rank=rank,
                               world=world).seek(first_step)
        loader = DataLoader(self.train, batch_sampler=sampler, num_workers=self.workers,
                            pin_memory=torch.device(device).type == "cuda",
                            persistent_workers=self.workers > 0)
        for x, y in loader:
            yield to_unit(x, device), y.to(device, non_blocking=True)

    def val_batches(self, batch_size: int, rank: int, world: int, device):
        from torch.utils.data import Subset

        share = Subset(self.val, range(rank, self.val_size, world))
        loader = DataLoader(share, batch_size=batch_size, num_workers=self.workers)
        for x, y in loader:
            yield to_unit(x, device), y.to(device, non_blocking=True)


def build_data(cfg):
    """The data of a config (``data``, ``dataset``, ``img_size``, ``num_classes``,
    ``train_size``, ``val_size``, ``augment``, ``seed``, ``workers``)."""
    kind = image_source(cfg.dataset, cfg.data, cfg.img_size)
    if kind == "generated":
        train = generated_images(cfg.train_size, cfg.num_classes, cfg.img_size, cfg.seed, 1)
        val = generated_images(cfg.val_size, cfg.num_classes, cfg.img_size, cfg.seed, 2)
        return TensorData(train, val, cfg.num_classes, GENERATED_MEAN, GENERATED_STD,
                          "generated", cfg)
    if kind == "cifar10":
        return TensorData(read_cifar_batches(cfg.data, CIFAR_TRAIN),
                          read_cifar_batches(cfg.data, CIFAR_TEST), 10, CIFAR_MEAN, CIFAR_STD,
                          "cifar10", cfg)
    return FolderData(cfg.data, cfg)
