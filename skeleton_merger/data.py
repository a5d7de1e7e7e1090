"""Data: ShapeNetCore v2 HDF5 for training, KeypointNet for evaluation, and procedural shapes
with semantic keypoints as the generated default.

* **ShapeNetCore v2 HDF5** (AnTao97's ``shapenetcorev2_hdf5_2048``; ``--data ROOT``):
  ``ROOT/{train,val,test}<i>.h5`` with ``data (M, 2048, 3)`` and ``label (M, 1)``, and
  ``{split}<i>_id2name.json`` beside each file. One model per category: ``--category`` selects the
  shapes **by name** from the id2name lists (the authors' hard-coded label 14 is not the chair of
  that packaging). Read with :func:`shared.pointcloud.pcio.load_shapenetcore_h5`.
* **KeypointNet** (``--keypointnet ROOT``): ``ROOT/annotations/<category>.json``, a list of
  ``{class_id, model_id, keypoints: [{xyz, semantic_id, pcd_info: {point_index}}, ...]}``, and
  ``ROOT/pcds/<class_id>/<model_id>.pcd`` (2048 points). As the authors, every annotated model of
  the category is evaluated; ground truth = ``pcd[point_index]``.
* **procedural** (default): :func:`shared.pointcloud.shapes.make_shape` — a category's shapes with
  random proportions, ``N`` points sampled on the surface, centred and scaled to a unit
  bounding-box diagonal (the units of KeypointNet's pcds, ShapeNetCore v2's normalisation, so
  the mIoU thresholds mean the same), and the category's named keypoints
  (``KEYPOINT_NAMES``); ground truth is the sampled
  point nearest to each keypoint (KeypointNet's ``pcd[point_index]``), semantic id = its index
  in ``KEYPOINT_NAMES[category]``. Training shapes use seeds ``0..M-1`` offset by the data seed;
  validation shapes come from a disjoint seed range. Deterministic.

Every cloud is normalised as the authors do (scalar min/max over all coordinates into [-1, 1];
:func:`skeleton_merger.metrics.normalize`), and the factors are kept to map keypoints back.
Clouds with NaN/inf coordinates or too few points are refused with one line naming the file.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared.errors import UsageError
from shared.pointcloud import pcio
from shared.pointcloud.shapes import CATEGORIES, KEYPOINT_NAMES, make_shape

from .metrics import normalize

VAL_SEED_OFFSET = 1_000_000
"""procedural validation shapes use seeds from here on (disjoint from the training seeds)"""


class DataError(UsageError):
    """Missing or malformed data: the message names the path, what was expected and found."""


@dataclass
class ShapeSet:
    """Clouds of one category, normalised for the network, with what evaluation needs.

    ``points (M, N, 3)`` float32 in [-1, 1]; ``factors (M, 2)`` ``[max, min]``; ``raw (M, N, 3)``
    the clouds in their original units. With keypoints (evaluation sets): ``keypoints (M, G, 3)``
    in original units, ``semantic_ids (M, G)`` and ``valid (M, G)`` (KeypointNet shapes have
    different numbers of keypoints; padded rows are invalid)."""
    name: str
    points: np.ndarray
    factors: np.ndarray
    raw: np.ndarray
    keypoints: np.ndarray | None = None
    semantic_ids: np.ndarray | None = None
    valid: np.ndarray | None = None
    keypoint_names: tuple | None = None

    def __len__(self) -> int:
        return len(self.points)

    @property
    def has_keypoints(self) -> bool:
        return self.keypoints is not None

    def subset(self, index) -> "ShapeSet":
        pick = lambda a: None if a is None else a[index]                     # noqa: E731
        return ShapeSet(self.name, self.points[index], self.factors[index], self.raw[index],
                        pick(self.keypoints), pick(self.semantic_ids), pick(self.valid),
                        self.keypoint_names)


def check_clouds(points: np.ndarray, where: str) -> None:
    """Refuse NaN/inf coordinates and degenerate clouds, naming ``where`` they came from."""
    bad = ~np.isfinite(points).all(axis=(-2, -1))
    if bad.any():
        raise DataError(f"{where}: {int(bad.sum())} cloud(s) contain NaN or inf coordinates "
                        f"(first: shape {int(np.flatnonzero(bad)[0])}); remove them or clean "
                        f"the data before training")
    span = points.max(axis=(-2, -1)) - points.min(axis=(-2, -1))
    if (span <= 0).any():
        raise DataError(f"{where}: shape {int(np.flatnonzero(span <= 0)[0])} has all its "
                        f"coordinates equal; it cannot be normalised, remove it")


def _make_set(name: str, raw: np.ndarray, where: str, **keypoints) -> ShapeSet:
    raw = np.ascontiguousarray(raw, dtype=np.float32)
    check_clouds(raw, where)
    points, factors = normalize(raw.astype(np.float64))
    return ShapeSet(name, points.astype(np.float32), factors, raw, **keypoints)


# ----------------------------------------------------------------------------- procedural

def check_category(category: str) -> None:
    if category not in CATEGORIES:
        raise DataError(f"--category {category!r} is not a procedural category; choose one of: "
                        f"{', '.join(CATEGORIES)}")


def procedural(category: str, count: int, num_points: int, seed: int = 0,
               split: str = "train") -> ShapeSet:
    """``count`` procedural shapes of ``category`` with their keypoints (module docstring)."""
    check_category(category)
    base = seed * 10_007 + (VAL_SEED_OFFSET if split == "val" else 0)
    shapes = [make_shape(category, base + i, num_points) for i in range(count)]
    raw = np.stack([s.points for s in shapes])
    gt = np.stack([s.points[s.keypoint_indices] for s in shapes])                # pcd[point_index]
    # KeypointNet's units: ShapeNetCore v2 models have a unit bounding-box diagonal
    diagonal = np.linalg.norm(raw.max(1) - raw.min(1), axis=-1)[:, None, None]
    raw, gt = raw / diagonal, gt / diagonal
    G = gt.shape[1]
    return _make_set(f"procedural {category} ({split})", raw, f"procedural {category}",
                     keypoints=gt, semantic_ids=np.broadcast_to(np.arange(G), (count, G)).copy(),
                     valid=np.ones((count, G), dtype=bool),
                     keypoint_names=KEYPOINT_NAMES[category])


# ----------------------------------------------------------------------------- ShapeNetCore v2

def shapenet(root, category: str, split: str, num_points: int, seed: int = 0) -> ShapeSet:
    """The ``category`` shapes of a ShapeNetCore v2 HDF5 split (module docstring). With
    ``num_points`` below the files' point count, a seeded random subset of each cloud is kept."""
    try:
        d = pcio.load_shapenetcore_h5(root, split)
    except (OSError, ValueError) as exc:
        raise DataError(f"ShapeNetCore v2 HDF5 at --data {root}: {exc}") from None
    names = d["names"]
    if names is None:
        raise DataError(f"--data {root}: the {split} files have no *_id2name.json beside them; "
                        f"the category is chosen by name, so copy the id2name lists of "
                        f"shapenetcorev2_hdf5_2048 next to the .h5 files")
    names = np.array([str(n).lower() for n in names])
    pick = np.flatnonzero(names == category.lower())
    if pick.size == 0:
        raise DataError(f"--category {category!r} is not in the {split} split of {root}; valid "
                        f"categories: {', '.join(sorted(set(names.tolist())))}")
    raw = d["data"][pick]
    if raw.shape[1] < num_points:
        raise DataError(f"--data {root}: clouds have {raw.shape[1]} points, fewer than "
                        f"--num_points {num_points}; lower --num_points")
    if raw.shape[1] > num_points:
        rng = np.random.default_rng(seed)
        idx = np.stack([rng.choice(raw.shape[1], num_points, replace=False) for _ in raw])
        raw = np.take_along_axis(raw, idx[..., None], axis=1)
    return _make_set(f"ShapeNetCore {category} ({split})", raw, f"{root} ({split})")


# ----------------------------------------------------------------------------- KeypointNet

def keypointnet(root, category: str) -> ShapeSet:
    """Every annotated model of ``category`` in KeypointNet (module docstring)."""
    root = Path(root)
    ann_dir = root / "annotations"
    ann = ann_dir / f"{category.lower()}.json"
    if not ann.is_file():
        found = sorted(p.stem for p in ann_dir.glob("*.json")) if ann_dir.is_dir() else []
        raise DataError(f"--keypointnet {root}: no annotations/{category.lower()}.json"
                        + (f"; categories there: {', '.join(found)}" if found else
                           " (expected ROOT/annotations/<category>.json and ROOT/pcds/)"))
    try:
        entries = json.loads(ann.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{ann}: not valid JSON ({exc})") from None
    if not isinstance(entries, list) or not entries:
        raise DataError(f"{ann}: expected a non-empty list of annotated models")
    clouds, gts, sems = [], [], []
    for n, entry in enumerate(entries):
        try:
            pcd = root / "pcds" / entry["class_id"] / f"{entry['model_id']}.pcd"
            kps = entry["keypoints"]
            index = [int(kp["pcd_info"]["point_index"]) for kp in kps]
            sem = [int(kp["semantic_id"]) for kp in kps]
        except (KeyError, TypeError) as exc:
            raise DataError(f"{ann}: entry {n} lacks {exc} (expected class_id, model_id and "
                            f"keypoints with semantic_id and pcd_info.point_index)") from None
        try:
            pts = pcio.read_points(pcd).points
        except (OSError, ValueError) as exc:
            raise DataError(f"KeypointNet: {exc}") from None
        if clouds and len(pts) != len(clouds[0]):
            raise DataError(f"{pcd}: {len(pts)} points, but the other pcds have "
                            f"{len(clouds[0])}; KeypointNet pcds all have 2048")
        if not index or max(index) >= len(pts) or min(index) < 0:
            raise DataError(f"{ann}: entry {n} has no keypoints or a point_index outside its "
                            f"{len(pts)}-point pcd")
        clouds.append(pts)
        gts.append(pts[index])
        sems.append(np.array(sem))
    G = max(len(g) for g in gts)
    M = len(gts)
    kp = np.zeros((M, G, 3), np.float32)
    sid = np.full((M, G), -1, np.int64)
    valid = np.zeros((M, G), bool)
    for m, (g, s) in enumerate(zip(gts, sems)):
        kp[m, :len(g)], sid[m, :len(s)], valid[m, :len(g)] = g, s, True
    return _make_set(f"KeypointNet {category}", np.stack(clouds), str(ann), keypoints=kp,
                     semantic_ids=sid, valid=valid)


# ----------------------------------------------------------------------------- the run's data

def build_datasets(cfg) -> tuple[ShapeSet, ShapeSet]:
    """``(train, evaluation)`` sets for a config (its ``data``, ``keypointnet``, ``category``,
    ``num_points``, ``train_shapes``, ``val_shapes``, ``seed``)."""
    if cfg.data:
        train = shapenet(cfg.data, cfg.category, "train", cfg.num_points, cfg.seed)
        if cfg.keypointnet:
            val = keypointnet(cfg.keypointnet, cfg.category)
            if val.points.shape[1] != cfg.num_points:     # the network sees num_points points
                rng = np.random.default_rng(cfg.seed)
                raw = val.raw
                if raw.shape[1] < cfg.num_points:
                    raise DataError(f"--keypointnet {cfg.keypointnet}: pcds have {raw.shape[1]} "
                                    f"points, fewer than --num_points {cfg.num_points}")
                idx = np.sort(rng.choice(raw.shape[1], cfg.num_points, replace=False))
                net = _make_set(val.name, raw[:, idx], val.name)
                val.points, val.factors = net.points, net.factors
        else:
            val = shapenet(cfg.data, cfg.category, "val", cfg.num_points, cfg.seed)
    else:
        if cfg.keypointnet:
            raise DataError("--keypointnet evaluates a model trained on ShapeNetCore; give the "
                            "HDF5 root with --data too (or neither, for the procedural shapes)")
        train = procedural(cfg.category, cfg.train_shapes, cfg.num_points, cfg.seed, "train")
        val = procedural(cfg.category, cfg.val_shapes, cfg.num_points, cfg.seed, "val")
    return train, val
