"""Image datasets that the image papers (conadv, widenet) read the same way.

* :func:`image_source`: which dataset a config means (``--dataset auto`` looks at ``--data``:
  ``train/`` + ``val/`` folders = ImageNet, ``cifar-10-batches-py/`` = CIFAR-10, no path = the
  generated default), with one clear error for what cannot work.
* CIFAR-10 python batches (:func:`read_cifar_batches`), read directly: torchvision's ``CIFAR10``
  insists on the original archive's checksums.
* ImageNet class folders (:func:`image_folders`): torchvision ``ImageFolder`` whose unreadable
  images are named, or skipped and counted (:class:`CheckedImageFolder`).
* The generated default (:func:`generated_images`): learnable, not linearly separable,
  deterministic for a seed, no download.

Each paper keeps its own transforms and batching; this module only reads.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..errors import DataError

CIFAR_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
CIFAR_TEST = ["test_batch"]
IMAGE_DATASETS = ("auto", "generated", "cifar10", "imagenet")


def _listing(root: Path) -> list[str] | str:
    return sorted(p.name for p in root.iterdir())[:10] if root.is_dir() else "no directory"


def image_source(dataset: str, data: str, img_size: int) -> str:
    """The dataset kind of ``--dataset``/``--data``/``--img_size`` (``auto`` resolved), or one
    :class:`DataError` naming what cannot work."""
    kind = dataset
    if kind == "auto":
        kind = detect_image_dataset(data) if data else "generated"
    if kind not in IMAGE_DATASETS[1:]:
        raise DataError(f"unknown dataset {kind!r}; choose {', '.join(IMAGE_DATASETS)}")
    if kind != "generated" and not data:
        raise DataError(f"--dataset {kind} needs --data PATH")
    if kind == "cifar10" and img_size != 32:
        raise DataError(f"CIFAR-10 images are 32x32 but --img_size is {img_size}; pass "
                        f"--img_size 32")
    return kind


def detect_image_dataset(path: str) -> str:
    """``imagenet`` or ``cifar10`` from the layout under ``path``."""
    root = Path(path)
    if not root.exists():
        raise DataError(f"data path {root} does not exist; pass an ImageNet root (train/ and val/ "
                        f"folders) or a CIFAR-10 root (cifar-10-batches-py/), or omit --data")
    if (root / "train").is_dir():
        return "imagenet"
    if (root / "cifar-10-batches-py").is_dir() or (root / "data_batch_1").is_file():
        return "cifar10"
    raise DataError(f"cannot tell the dataset at {root}: expected train/ and val/ folders "
                    f"(ImageNet) or cifar-10-batches-py/ (CIFAR-10); found {_listing(root)}")


# ---------------------------------------------------------------------------------------------
# CIFAR-10

def _cifar_dir(root: Path) -> Path:
    for cand in (root / "cifar-10-batches-py", root):
        if all((cand / f).is_file() for f in CIFAR_TRAIN + CIFAR_TEST):
            return cand
    raise DataError(f"no CIFAR-10 python batches under {root}: expected "
                    f"{', '.join(CIFAR_TRAIN + CIFAR_TEST)} in {root}/cifar-10-batches-py or "
                    f"{root}; found {_listing(root)}")


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


# ---------------------------------------------------------------------------------------------
# ImageNet folders

class CheckedImageFolder(Dataset):
    """torchvision ``ImageFolder`` (RGB, class index = sorted folder order) whose unreadable
    images are named (``DataError``) or, with ``skip_bad``, skipped: the next readable image
    takes the place, and ``skipped`` (a shared-memory counter, so DataLoader workers add to it
    too) counts the skips."""

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


def image_folders(root, train_transform, val_transform, skip_bad: bool = False):
    """``(train, val)`` :class:`CheckedImageFolder` of ``ROOT/train/<class>/*`` and
    ``ROOT/val/<class>/*``, which must hold the same class folders."""
    root = Path(root)
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise DataError(f"ImageNet layout expected {root / split}/<class>/<image> folders; "
                            f"{root / split} does not exist (found {_listing(root)} in {root})")
    splits = []
    for split, tf in (("train", train_transform), ("val", val_transform)):
        try:
            splits.append(CheckedImageFolder(str(root / split), tf, skip_bad))
        except (FileNotFoundError, RuntimeError) as exc:
            raise DataError(f"{root / split}: no readable images in class folders: {exc}") from None
    if splits[0].classes != splits[1].classes:
        raise DataError(f"{root}: train has {len(splits[0].classes)} classes and val "
                        f"{len(splits[1].classes)}; they must have the same class folders")
    return splits[0], splits[1]


# ---------------------------------------------------------------------------------------------
# the generated default

def _smooth(g: torch.Generator, n: int, channels: int, grid: int, size: int) -> torch.Tensor:
    """Smooth random fields (n, channels, size, size): a grid x grid normal grid, upsampled."""
    z = torch.randn(n, channels, grid, grid, generator=g)
    return F.interpolate(z, size=(size, size), mode="bicubic", align_corners=False)


def crop_batch(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, size: int) -> torch.Tensor:
    """Per-sample crop of (n, c, H, W) at offsets (dy, dx) to (n, c, size, size), vectorised."""
    n, c = x.shape[:2]
    rows = torch.arange(size, device=x.device)
    iy = (dy[:, None] + rows).view(n, 1, size, 1).expand(n, c, size, x.shape[3])
    x = x.gather(2, iy)                                                 # (n, c, size, W)
    ix = (dx[:, None] + rows).view(n, 1, 1, size).expand(n, c, size, size)
    return x.gather(3, ix)                                              # (n, c, size, size)


def generated_images(n: int, num_classes: int = 10, img_size: int = 16, seed: int = 0,
                     split_seed: int = 1, noise: float = 0.15, shift: int = 0, grid: int = 4,
                     x_first: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images (uint8, (n, 3, S, S)) and labels (n,).

    Class c is a smooth random pattern (a ``grid`` x ``grid`` normal field, upsampled), symmetric
    under a left-right flip (so that the flip augmentation keeps the class), of zero mean and
    unit variance. A sample is ``0.5 + 0.25 a P_c(shifted) colour + 0.12 background + noise``,
    clipped to [0, 1], with an amplitude ``a ~ U(0.6, 1)``, a shift of up to ``shift`` pixels
    (0 = S/4), a colour of random sign, a smooth random background and Gaussian pixel noise. The
    patterns depend on ``seed`` only (every split shares them), the samples on ``split_seed``.
    ``x_first`` draws the horizontal shifts before the vertical ones (widenet's published tables
    used that order; conadv's the other).
    """
    if n < 1 or num_classes < 2 or img_size < 4:
        raise DataError(f"the generated dataset needs n >= 1, >= 2 classes and images of >= 4 "
                        f"pixels; got n={n}, num_classes={num_classes}, img_size={img_size}")
    pad = shift or max(1, img_size // 4)
    tg = torch.Generator().manual_seed(seed)
    patterns = _smooth(tg, num_classes, 1, grid, img_size + pad)
    patterns = (patterns + patterns.flip(-1)) / 2
    patterns = (patterns - patterns.mean((2, 3), keepdim=True)) / patterns.std((2, 3), keepdim=True)
    g = torch.Generator().manual_seed(seed * 1_000_003 + split_seed)
    labels = torch.randint(num_classes, (n,), generator=g)
    first = torch.randint(pad + 1, (n,), generator=g)
    second = torch.randint(pad + 1, (n,), generator=g)
    dy, dx = (second, first) if x_first else (first, second)
    patt = crop_batch(patterns[labels], dy, dx, img_size)              # (n, 1, S, S)
    amp = torch.empty(n, 1, 1, 1).uniform_(0.6, 1.0, generator=g)
    colour = torch.empty(n, 3, 1, 1).uniform_(0.4, 1.0, generator=g)
    colour = colour * torch.where(torch.rand(n, 1, 1, 1, generator=g) < 0.5, -1.0, 1.0)
    background = _smooth(g, n, 3, 3, img_size)
    img = (0.5 + 0.25 * amp * patt * colour + 0.12 * background
           + noise * torch.randn(n, 3, img_size, img_size, generator=g))
    return (img.clamp(0, 1) * 255).round().to(torch.uint8), labels
