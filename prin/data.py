"""Shapes with parts and categories, and the rotation protocols.

* ``generated`` (default): the procedural categories of :mod:`shared.pointcloud.shapes` (11
  categories, 31 parts; canonical pose y up, unit sphere, 2048 surface points each), train and test
  drawn from disjoint seeds. Deterministic and cached on disk under ``runs/prin/cache``.
* ``shapenet_part`` (``--data DIR``): ``shapenet_part_seg_hdf5_data`` (``ply_data_*.h5``: ``data``,
  ``label`` 0..15, ``pid`` 0..49), train = train + val files (14,007 shapes), test (2,874).
* ``modelnet40`` (``--data DIR``, classification only): ``modelnet40_ply_hdf5_2048`` (9,840 / 2,468).

Rotation protocols (train/test; brief §4): NR = the canonical pose, AR = a rotation drawn uniformly
from SO(3) for every shape (at every step in training; one fixed rotation per test shape in
evaluation, the same for every model and seed). Every evaluation reports both test protocols, so a
run trained NR gives NR/NR and NR/AR, one trained AR gives AR/NR and AR/AR.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from shared.errors import UsageError
from shared.pointcloud import pcio, shapes
from shared.pointcloud.points import random_rotation

DATASETS = ("auto", "generated", "shapenet_part", "modelnet40")
PROTOCOLS = ("nr", "ar")
TEST_ROTATION_SEED = 20210224          # AR test rotations: one per test shape, fixed everywhere
TEST_SUBSET_SEED = 7                   # which points of each test shape are evaluated


class DataError(UsageError):
    """Missing or malformed dataset files."""


@dataclass
class ShapeSet:
    """Clouds with category labels and (for segmentation) global part labels."""
    points: np.ndarray                 # (M, P, 3) float32
    labels: np.ndarray                 # (M,) int64 category / class
    parts: np.ndarray | None           # (M, P) int64 global part id, None for classification
    names: tuple[str, ...]             # category / class names
    part_ranges: tuple[tuple[int, int], ...] = ()   # per category: global part ids [lo, hi)
    part_names: tuple[str, ...] = ()                  # per global part id (generated data)

    def __len__(self) -> int:
        return len(self.points)

    @property
    def num_categories(self) -> int:
        return len(self.names)

    @property
    def num_parts(self) -> int:
        return self.part_ranges[-1][1] if self.part_ranges else 0

    def part_mask(self) -> torch.Tensor:
        """``(num_categories, num_parts)`` bool: the parts each category may have."""
        mask = torch.zeros(self.num_categories, self.num_parts, dtype=torch.bool)
        for c, (lo, hi) in enumerate(self.part_ranges):
            mask[c, lo:hi] = True
        return mask


def _ranges(counts) -> tuple[tuple[int, int], ...]:
    ends = np.cumsum(counts)
    return tuple((int(e - c), int(e)) for c, e in zip(counts, ends))


def generated(split: str, per_category: int, cache_dir: Path | None = None) -> ShapeSet:
    """The procedural shapes: ``per_category`` shapes of each category, 2048 points each; the
    train split uses seed 0 and the test split seed 1 of :func:`shapes.make_dataset`."""
    seed = {"train": 0, "test": 1}[split]
    key = hashlib.sha1(f"{split}-{per_category}-{shapes.CATEGORIES}-v1".encode()).hexdigest()[:12]
    path = cache_dir / f"generated-{split}-{per_category}-{key}.npz" if cache_dir else None
    if path is not None and path.is_file():
        with np.load(path) as z:
            arrays = {k: z[k] for k in ("data", "label", "pid")}
    else:
        arrays = shapes.make_dataset(per_category=per_category, n_points=2048, seed=seed)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp.npz")
            np.savez(tmp, data=arrays["data"], label=arrays["label"], pid=arrays["pid"])
            tmp.replace(path)
    offsets = np.array([shapes.PART_OFFSETS[c] for c in shapes.CATEGORIES])
    parts = arrays["pid"] + offsets[arrays["label"]][:, None]
    return ShapeSet(arrays["data"].astype(np.float32), arrays["label"].astype(np.int64),
                    parts.astype(np.int64), shapes.CATEGORIES,
                    _ranges([len(shapes.PART_NAMES[c]) for c in shapes.CATEGORIES]),
                    tuple(n for c in shapes.CATEGORIES for n in shapes.PART_NAMES[c]))


def _load(fn, root, split, what):
    try:
        return fn(root, split)
    except (FileNotFoundError, ValueError) as exc:
        raise DataError(f"{what}: {exc}") from None


def shapenet_part(root, split: str) -> ShapeSet:
    d = _load(pcio.load_shapenet_part_h5, root, "trainval" if split == "train" else "test",
              "--data is not a ShapeNet part HDF5 folder (shapenet_part_seg_hdf5_data)")
    return ShapeSet(d["data"], d["label"], d["pid"], pcio.SHAPENET_PART_CATEGORIES,
                    _ranges(pcio.SHAPENET_PART_COUNTS))


def modelnet40(root, split: str) -> ShapeSet:
    d = _load(pcio.load_modelnet40_h5, root, split,
              "--data is not a ModelNet40 HDF5 folder (modelnet40_ply_hdf5_2048)")
    names = tuple(d["shape_names"] or [str(i) for i in range(40)])
    return ShapeSet(d["data"], d["label"], None, names)


def resolve_dataset(dataset: str, task: str, data: str) -> str:
    """``auto``: generated without ``--data``; ShapeNet part (seg) or ModelNet40 (cls) with it."""
    if dataset == "auto":
        return "generated" if not data else ("shapenet_part" if task == "seg" else "modelnet40")
    if dataset != "generated" and not data:
        raise DataError(f"--dataset {dataset} reads files: pass --data DIR (or --dataset generated)")
    if dataset == "modelnet40" and task == "seg":
        raise DataError("ModelNet40 has no part labels: use --task cls with it, or --dataset "
                        "shapenet_part for segmentation")
    return dataset


def build_datasets(cfg, cache_dir: Path | None = None) -> tuple[ShapeSet, ShapeSet]:
    """``(train, test)`` for the config's dataset, task and data path."""
    kind = resolve_dataset(cfg.dataset, cfg.task, cfg.data)
    if kind == "generated":
        return (generated("train", cfg.per_category, cache_dir),
                generated("test", cfg.test_per_category, cache_dir))
    if kind == "shapenet_part":
        return shapenet_part(cfg.data, "train"), shapenet_part(cfg.data, "test")
    return modelnet40(cfg.data, "train"), modelnet40(cfg.data, "test")


# ----------------------------------------------------------------------------- batches


def subsample(n_have: int, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` point indices out of ``n_have``: a random subset, with replacement only when short."""
    if n <= n_have:
        return torch.randperm(n_have, generator=generator)[:n]
    return torch.randint(n_have, (n,), generator=generator)


def make_batch(data: ShapeSet, idx: torch.Tensor, n_points: int, rotation: str,
               jitter: float = 0.0, jitter_clip: float = 0.0, generator=None) -> dict:
    """A training batch: random point subsets, jitter ``N(0, σ²)`` clipped, and the rotation
    protocol (``ar``: a uniform SO(3) rotation per shape). Draws from ``generator`` (default:
    the torch RNG, which the training core checkpoints)."""
    sel = torch.stack([subsample(data.points.shape[1], n_points, generator) for _ in idx])
    rows = torch.as_tensor(idx, dtype=torch.long)
    pts = torch.from_numpy(data.points[rows.numpy()[:, None], sel.numpy()])     # (B, n, 3)
    if jitter > 0:
        noise = torch.randn(pts.shape, generator=generator) * jitter
        pts = pts + (noise.clamp(-jitter_clip, jitter_clip) if jitter_clip > 0 else noise)
    if rotation == "ar":
        pts = pts @ random_rotation(len(rows), generator=generator).transpose(1, 2)
    out = {"points": pts.float(), "labels": torch.from_numpy(data.labels[rows.numpy()])}
    if data.parts is not None:
        out["parts"] = torch.from_numpy(data.parts[rows.numpy()[:, None], sel.numpy()])
    return out


def test_batches(data: ShapeSet, n_points: int, protocol: str, chunks):
    """The fixed evaluation batches of a test protocol, one per chunk of test-shape indices: the
    same point subset and (AR) the same rotation for a shape in every run, whatever the model,
    seed, batch size or number of processes."""
    g = torch.Generator().manual_seed(TEST_SUBSET_SEED)
    sel = torch.stack([subsample(data.points.shape[1], n_points, g) for _ in range(len(data))])
    rot = random_rotation(len(data), generator=torch.Generator().manual_seed(TEST_ROTATION_SEED))
    for rows in chunks:
        rows = np.asarray(rows, dtype=np.int64)
        pts = torch.from_numpy(data.points[rows[:, None], sel[rows].numpy()])
        if protocol == "ar":
            pts = pts @ rot[rows].transpose(1, 2)
        out = {"index": torch.as_tensor(rows), "points": pts.float(),
               "labels": torch.from_numpy(data.labels[rows])}
        if data.parts is not None:
            out["parts"] = torch.from_numpy(data.parts[rows[:, None], sel[rows].numpy()])
        yield out


def one_hot(labels: torch.Tensor, n: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(labels, n).float()
