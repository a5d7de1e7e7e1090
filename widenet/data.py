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

import pickle
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from timm.data import create_transform, rand_augment_transform
from timm.data.transforms import str_to_pil_interp
from torchvision import transforms
from torchvision.transforms import v2

from shared.errors import UsageError

CIFAR_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
CIFAR_TEST = ["test_batch"]


class DataError(UsageError):
    """Missing or malformed data: the message names the path, what was expected and found."""


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


# ---------------------------------------------------------------------------------------------
# generated default

def _smooth(g: torch.Generator, n: int, channels: int, grid: int, size: int) -> torch.Tensor:
    """Smooth random fields (n, channels, size, size): a grid x grid normal grid, upsampled."""
    z = torch.randn(n, channels, grid, grid, generator=g)
    return F.interpolate(z, size=(size, size), mode="bicubic", align_corners=False)


def make_generated(n: int, num_classes: int = 10, img_size: int = 32, seed: int = 0,
                   split_seed: int = 1, noise: float = 0.15):
    """``n`` generated images (uint8, (n, 3, S, S)) and labels (n,).

    Class c is a left-right symmetric smooth random pattern (zero mean, unit variance). A sample
    is ``0.5 + 0.25 a (pattern shifted by up to 6 px) * colour + 0.12 background + noise``,
    clipped to [0, 1], with a random amplitude ``a``, a random colour of random sign, a random
    smooth background and pixel noise. The patterns depend only on ``seed`` (shared by all
    splits), the samples on ``split_seed``.
    """
    if n < 1 or num_classes < 2:
        raise DataError(f"the generated dataset needs n >= 1 and >= 2 classes; got n={n}, "
                        f"num_classes={num_classes}")
    pad = 6
    tg = torch.Generator().manual_seed(seed)
    templates = _smooth(tg, num_classes, 1, 5, img_size + pad)
    templates = (templates + templates.flip(-1)) / 2                  # left-right symmetric
    templates = (templates - templates.mean((2, 3), keepdim=True)) / templates.std((2, 3), keepdim=True)
    g = torch.Generator().manual_seed(seed * 1_000_003 + split_seed)
    labels = torch.randint(num_classes, (n,), generator=g)
    dx = torch.randint(pad + 1, (n,), generator=g)
    dy = torch.randint(pad + 1, (n,), generator=g)
    patt = _crop(templates[labels], dy, dx, img_size)                 # (n, 1, S, S)
    amp = torch.empty(n, 1, 1, 1).uniform_(0.6, 1.0, generator=g)
    colour = torch.empty(n, 3, 1, 1).uniform_(0.4, 1.0, generator=g)
    colour = colour * torch.where(torch.rand(n, 1, 1, 1, generator=g) < 0.5, -1.0, 1.0)
    background = _smooth(g, n, 3, 3, img_size)
    img = (0.5 + 0.25 * amp * patt * colour + 0.12 * background
           + noise * torch.randn(n, 3, img_size, img_size, generator=g))
    return (img.clamp(0, 1) * 255).round().to(torch.uint8), labels


def _crop(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, size: int) -> torch.Tensor:
    """Per-sample crop of (n, c, H, W) at offsets (dy, dx) to (n, c, size, size), vectorised."""
    n, c = x.shape[:2]
    rows = torch.arange(size)
    iy = (dy[:, None] + rows).view(n, 1, size, 1).expand(n, c, size, x.shape[3])
    x = x.gather(2, iy)                                                 # (n, c, size, W)
    ix = (dx[:, None] + rows).view(n, 1, 1, size).expand(n, c, size, size)
    return x.gather(3, ix)                                              # (n, c, size, size)


# ---------------------------------------------------------------------------------------------
# CIFAR-10 and ImageNet

def _cifar_dir(root: Path) -> Path:
    for cand in (root / "cifar-10-batches-py", root):
        if all((cand / f).is_file() for f in CIFAR_TRAIN + CIFAR_TEST):
            return cand
    raise DataError(f"no CIFAR-10 python batches under {root}: expected "
                    f"{', '.join(CIFAR_TRAIN + CIFAR_TEST)} in {root}/cifar-10-batches-py or {root}; "
                    f"found {sorted(p.name for p in root.iterdir())[:10] if root.is_dir() else 'no directory'}")


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


class CheckedImageFolder(Dataset):
    """torchvision ``ImageFolder`` whose unreadable images are named (``DataError``) or, with
    ``skip_bad``, skipped: the next readable image takes the place, and ``skipped`` (a
    shared-memory counter, so DataLoader workers add to it too) counts the skips."""

    def __init__(self, root: str, transform, skip_bad: bool = False):
        from torchvision.datasets import ImageFolder

        self.folder = ImageFolder(root)
        self.classes, self.samples = self.folder.classes, self.folder.samples
        self.transform, self.skip_bad = transform, skip_bad
        self.skipped = torch.zeros(1, dtype=torch.int64).share_memory_()

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i):
        for j in range(i, i + len(self.samples)):
            path, label = self.samples[j % len(self.samples)]
            try:
                image = self.folder.loader(path)           # PIL open + convert: decodes fully
            except (OSError, ValueError, SyntaxError) as exc:
                if not self.skip_bad:
                    raise DataError(f"cannot read image {path} ({type(exc).__name__}: {exc}); "
                                    f"replace or delete it, or pass --skip_bad_images true to "
                                    f"skip unreadable images") from None
                self.skipped += 1
                continue
            return self.transform(image), label
        raise DataError(f"no readable image in {self.folder.root}")


def imagenet_folders(root, img_size: int, randaug_ops: int, randaug_magnitude: int,
                     skip_bad: bool = False):
    root = Path(root)
    for split in ("train", "val"):
        if not (root / split).is_dir():
            found = sorted(p.name for p in root.iterdir())[:10] if root.is_dir() else "nothing"
            raise DataError(f"ImageNet layout expected {root / split}/<class>/<image> folders; "
                            f"{root / split} does not exist (found {found} in {root})")
    splits = []
    for split in ("train", "val"):
        folder = root / split
        tf = (train_transform(img_size, randaug_ops, randaug_magnitude, crop=True) if split == "train"
              else eval_transform(img_size, pil=True))
        try:
            splits.append(CheckedImageFolder(str(folder), tf, skip_bad))
        except (FileNotFoundError, RuntimeError) as exc:
            raise DataError(f"{folder}: no readable images in class folders: {exc}") from None
    if splits[0].classes != splits[1].classes:
        raise DataError(f"{root}: train has {len(splits[0].classes)} classes and val "
                        f"{len(splits[1].classes)}; they must have the same class folders")
    return splits[0], splits[1], len(splits[0].classes)


def detect_dataset(path: str) -> str:
    root = Path(path)
    if not root.exists():
        raise DataError(f"data path {root} does not exist; pass an ImageNet root (train/ and val/ "
                        f"folders) or a CIFAR-10 root (cifar-10-batches-py/), or omit --data")
    if (root / "train").is_dir():
        return "imagenet"
    if (root / "cifar-10-batches-py").is_dir() or (root / "data_batch_1").is_file():
        return "cifar10"
    raise DataError(f"cannot tell the dataset at {root}: expected train/ and val/ folders "
                    f"(ImageNet) or cifar-10-batches-py/ (CIFAR-10); found "
                    f"{sorted(p.name for p in root.iterdir())[:10]}")


def build_datasets(cfg):
    """(train, val, num_classes) for a config with ``data``, ``dataset``, ``img_size``, ..."""
    kind = cfg.dataset
    if kind == "auto":
        kind = detect_dataset(cfg.data) if cfg.data else "generated"
    aug = (cfg.randaug_ops, cfg.randaug_magnitude)
    if kind == "generated":
        train = TensorImages(*make_generated(cfg.train_size, cfg.num_classes, cfg.img_size,
                                             cfg.seed, split_seed=1),
                             train_transform(cfg.img_size, *aug, crop=False))
        val = TensorImages(*make_generated(cfg.val_size, cfg.num_classes, cfg.img_size,
                                           cfg.seed, split_seed=2))
        return train, val, cfg.num_classes
    if not cfg.data:
        raise DataError(f"--dataset {kind} needs --data PATH")
    if kind == "cifar10":
        if cfg.img_size != 32:
            raise DataError(f"CIFAR-10 images are 32x32 but img_size={cfg.img_size}; "
                            f"pass --img_size 32")
        train = TensorImages(*read_cifar_batches(cfg.data, CIFAR_TRAIN),
                             train_transform(32, *aug, crop=False))
        val = TensorImages(*read_cifar_batches(cfg.data, CIFAR_TEST))
        return train, val, 10
    if kind == "imagenet":
        return imagenet_folders(cfg.data, cfg.img_size, *aug, skip_bad=cfg.skip_bad_images)
    raise DataError(f"unknown dataset {kind!r}; choose auto, generated, cifar10 or imagenet")
