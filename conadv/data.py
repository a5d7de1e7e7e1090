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
import pickle
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from shared.data import EpochSampler
from shared.errors import UsageError

from .models import IMAGENET_MEAN, IMAGENET_STD

CIFAR_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
CIFAR_TEST = ["test_batch"]
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
GENERATED_MEAN, GENERATED_STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
AUGMENTS = ("none", "autoaugment", "randaugment")


class DataError(UsageError):
    """Missing or malformed data: the message names the path, what was expected and found."""


# ---------------------------------------------------------------------------------------------
# generated default

def _smooth(g: torch.Generator, n: int, channels: int, grid: int, size: int) -> torch.Tensor:
    """Smooth random fields (n, channels, size, size): a grid x grid normal grid, upsampled."""
    z = torch.randn(n, channels, grid, grid, generator=g)
    return F.interpolate(z, size=(size, size), mode="bicubic", align_corners=False)


def make_generated(n: int, num_classes: int = 10, img_size: int = 16, seed: int = 0,
                   split_seed: int = 1, noise: float = 0.15) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images (uint8, (n, 3, S, S)) and labels (n,).

    Class c is a smooth random pattern, symmetric under a left-right flip (so that the flip
    augmentation keeps the class), of zero mean and unit variance. A sample is
    ``0.5 + 0.25 a P_c(shifted) colour + 0.12 background + noise``, clipped to [0, 1], with an
    amplitude ``a ~ U(0.6, 1)``, a shift of up to S/4 pixels, a colour of random sign, a smooth
    random background and Gaussian pixel noise. The patterns depend on ``seed`` only (every split
    shares them), the samples on ``split_seed``.
    """
    if n < 1 or num_classes < 2 or img_size < 4:
        raise DataError(f"the generated dataset needs n >= 1, >= 2 classes and images of >= 4 "
                        f"pixels; got n={n}, num_classes={num_classes}, img_size={img_size}")
    pad = max(1, img_size // 4)
    tg = torch.Generator().manual_seed(seed)
    patterns = _smooth(tg, num_classes, 1, 4, img_size + pad)
    patterns = (patterns + patterns.flip(-1)) / 2
    patterns = (patterns - patterns.mean((2, 3), keepdim=True)) / patterns.std((2, 3), keepdim=True)
    g = torch.Generator().manual_seed(seed * 1_000_003 + split_seed)
    labels = torch.randint(num_classes, (n,), generator=g)
    dy = torch.randint(pad + 1, (n,), generator=g)
    dx = torch.randint(pad + 1, (n,), generator=g)
    patt = crop(patterns[labels], dy, dx, img_size)                  # (n, 1, S, S)
    amp = torch.empty(n, 1, 1, 1).uniform_(0.6, 1.0, generator=g)
    colour = torch.empty(n, 3, 1, 1).uniform_(0.4, 1.0, generator=g)
    colour = colour * torch.where(torch.rand(n, 1, 1, 1, generator=g) < 0.5, -1.0, 1.0)
    background = _smooth(g, n, 3, 3, img_size)
    img = (0.5 + 0.25 * amp * patt * colour + 0.12 * background
           + noise * torch.randn(n, 3, img_size, img_size, generator=g))
    return (img.clamp(0, 1) * 255).round().to(torch.uint8), labels


def crop(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, size: int) -> torch.Tensor:
    """Per-sample crop of (n, c, H, W) at offsets (dy, dx) to (n, c, size, size), vectorised."""
    n, c = x.shape[:2]
    rows = torch.arange(size)
    iy = (dy[:, None] + rows).view(n, 1, size, 1).expand(n, c, size, x.shape[3])
    x = x.gather(2, iy)                                                 # (n, c, size, W)
    ix = (dx[:, None] + rows).view(n, 1, 1, size).expand(n, c, size, size)
    return x.gather(3, ix)                                              # (n, c, size, size)


# ---------------------------------------------------------------------------------------------
# augmentation of in-memory images, a function of (seed, step, position in the global batch)

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
    x = crop(F.pad(images, (pad, pad, pad, pad)), dy, dx, size)
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
        from torchvision.datasets import ImageFolder

        root = Path(root)
        for split in ("train", "val"):
            if not (root / split).is_dir():
                found = sorted(p.name for p in root.iterdir())[:10] if root.is_dir() else "nothing"
                raise DataError(f"ImageNet layout expected {root / split}/<class>/<image> "
                                f"folders; {root / split} does not exist (found {found} in {root})")
        size = cfg.img_size
        steps = [v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip()]
        policy = policy_transform(cfg.augment, "imagenet")
        train_tf = v2.Compose([v2.PILToTensor(), *steps] + ([policy] if policy else []))
        val_tf = v2.Compose([v2.PILToTensor(), v2.Resize(round(size * 8 / 7), antialias=True),
                             v2.CenterCrop(size)])
        try:
            self.train = ImageFolder(str(root / "train"), transform=train_tf,
                                     loader=_rgb_loader)
            self.val = ImageFolder(str(root / "val"), transform=val_tf, loader=_rgb_loader)
        except (FileNotFoundError, RuntimeError) as exc:
            raise DataError(f"{root}: no readable images in class folders: {exc}") from None
        if self.train.classes != self.val.classes:
            raise DataError(f"{root}: train has {len(self.train.classes)} classes and val "
                            f"{len(self.val.classes)}; they must have the same class folders")
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


def _rgb_loader(path: str):
    from PIL import Image

    with open(path, "rb") as f:
        return Image.open(f).convert("RGB")        # CMYK and greyscale JPEGs too


# ---------------------------------------------------------------------------------------------
# CIFAR-10 and the dataset switch

def _cifar_dir(root: Path) -> Path:
    for cand in (root / "cifar-10-batches-py", root):
        if all((cand / f).is_file() for f in CIFAR_TRAIN + CIFAR_TEST):
            return cand
    found = sorted(p.name for p in root.iterdir())[:10] if root.is_dir() else "no directory"
    raise DataError(f"no CIFAR-10 python batches under {root}: expected "
                    f"{', '.join(CIFAR_TRAIN + CIFAR_TEST)} in {root}/cifar-10-batches-py or "
                    f"{root}; found {found}")


def read_cifar_batches(root, names) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-10 pickles -> uint8 images (N, 3, 32, 32) and labels (N,)."""
    folder = _cifar_dir(Path(root))
    images, labels = [], []
    for name in names:
        path = folder / name
        try:
            with open(path, "rb") as f:
                batch = pickle.load(f, encoding="latin1")
            data = np.asarray(batch["data"], dtype=np.uint8)
            lab = np.asarray(batch["labels"], dtype=np.int64)
        except (pickle.UnpicklingError, KeyError, EOFError, TypeError, ValueError) as exc:
            raise DataError(f"{path} is not a CIFAR-10 python batch (a pickled dict with 'data' "
                            f"N x 3072 uint8 and 'labels'): {type(exc).__name__}: {exc}") from None
        if data.ndim != 2 or data.shape[1] != 3072 or len(lab) != len(data):
            raise DataError(f"{path}: expected 'data' of shape (N, 3072) and N labels; found "
                            f"data {data.shape} and {len(lab)} labels")
        images.append(torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()))
        labels.append(torch.from_numpy(lab))
    return torch.cat(images), torch.cat(labels)


def detect_dataset(path: str) -> str:
    root = Path(path)
    if not root.exists():
        raise DataError(f"data path {root} does not exist; pass an ImageNet root (train/ and val/ "
                        f"folders) or a CIFAR-10 root (cifar-10-batches-py/), or omit --data")
    if (root / "train").is_dir():
        return "imagenet"
    if (root / "cifar-10-batches-py").is_dir() or (root / "data_batch_1").is_file():
        return "cifar10"
    found = sorted(p.name for p in root.iterdir())[:10] if root.is_dir() else [root.name]
    raise DataError(f"cannot tell the dataset at {root}: expected train/ and val/ folders "
                    f"(ImageNet) or cifar-10-batches-py/ (CIFAR-10); found {found}")


def build_data(cfg):
    """The data of a config (``data``, ``dataset``, ``img_size``, ``num_classes``,
    ``train_size``, ``val_size``, ``augment``, ``seed``, ``workers``)."""
    kind = cfg.dataset
    if kind == "auto":
        kind = detect_dataset(cfg.data) if cfg.data else "generated"
    if kind == "generated":
        train = make_generated(cfg.train_size, cfg.num_classes, cfg.img_size, cfg.seed, 1)
        val = make_generated(cfg.val_size, cfg.num_classes, cfg.img_size, cfg.seed, 2)
        return TensorData(train, val, cfg.num_classes, GENERATED_MEAN, GENERATED_STD,
                          "generated", cfg)
    if not cfg.data:
        raise DataError(f"--dataset {kind} needs --data PATH")
    if kind == "cifar10":
        if cfg.img_size != 32:
            raise DataError(f"CIFAR-10 images are 32x32 but --img_size is {cfg.img_size}; "
                            f"pass --img_size 32")
        return TensorData(read_cifar_batches(cfg.data, CIFAR_TRAIN),
                          read_cifar_batches(cfg.data, CIFAR_TEST), 10, CIFAR_MEAN, CIFAR_STD,
                          "cifar10", cfg)
    if kind == "imagenet":
        return FolderData(cfg.data, cfg)
    raise DataError(f"unknown dataset {kind!r}; choose auto, generated, cifar10 or imagenet")
