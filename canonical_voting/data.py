"""Scenes with oriented boxes: procedural rooms (the default) or ScanNet v2 + Scan2CAD from a path;
voxelization, augmentation and the per-voxel training targets.

**Procedural** (``--data ""``): rooms from :func:`shared.pointcloud.scenes.make_scene` (floor,
walls, 4-8 pieces of furniture of 6 classes, each with a uniform random yaw), deterministic in
``data_seed``; train and validation rooms come from disjoint seeds, the same for every training
seed and method. Generated once and cached under ``<repo>/runs/canonical_voting/scene_cache``.
Symmetries: tables turn by 180 degrees into themselves (``__SYM_ROTATE_UP_2``), lamps are
lathed (``__SYM_ROTATE_UP_INF``), the rest have none.

**ScanNet v2 + Scan2CAD** (``--dataset scannet --data ROOT``), brief Sec. 3::

    ROOT/scans/<scene>/<scene>_vh_clean_2.ply          vertices x y z red green blue
    ROOT/scannetv2_train.txt, ROOT/scannetv2_val.txt   official splits
    ROOT/full_annotations.json                         Scan2CAD (or ROOT/scan2cad/full_annotations.json)
    ROOT/scan2cad_segments/{train,val}/scan2cad_segments.pkl   optional, the authors' segments

Per scan, Scan2CAD's ``trs`` gives ``M_scan = T(t) R(q) S(s)`` (quaternions **w, x, y, z**,
converted with scipy) taking the mesh into the y-up Scan2CAD frame; each aligned CAD model gives
``M_box = T(t_o) R(q_o) S(s_o) T(c) S(h)`` with ``c``, ``h`` the CAD box centre and half
extents. The box is centre ``M_box 0``, half extents ``s_o * h`` and the yaw of ``R(q_o)`` about
y. Models with a scale below 1e-3 are skipped (brief pitfall 2). Object points: the authors'
segments when the pickle is there, otherwise (the regeneration rule) the vertices inside the box
enlarged by ``SEGMENT_MARGIN`` (a vertex inside several goes to the box whose LCC it is most
central in). Classes: the top-8 Scan2CAD categories plus "others".

Voxelization keeps one point per ``voxel_size`` cell; a voxel's position is its cell centre
(``(floor(p / v) + 0.5) v``), used for the LCC targets, the votes and the box tests alike (the
reference computes targets on raw points and votes from cell corners, half a voxel apart); its
features are the RGB colour mapped to [-1, 1] (no xyz, as the paper). Training augmentation
(paper): a rotation about the up axis by ``k * 90`` degrees plus U(-20, 20) degrees.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from shared.errors import UsageError
from shared.pointcloud.scenes import SCENE_CATEGORIES, make_scene, yaw_matrix

from .boxes import SYM_NONE, SYM_UP2, SYM_UPINF, SYMMETRIES
from .boxes import lcc as box_lcc

PROCEDURAL_CLASSES = tuple(SCENE_CATEGORIES)
PROCEDURAL_SYM = {"table": SYM_UP2, "lamp": SYM_UPINF}

SCANNET_CLASSES = ("others", "display", "table", "bathtub", "trash bin", "sofa", "chair",
                   "cabinet", "bookshelf")
WORDNET = {"03211117": "display", "04379243": "table", "02808440": "bathtub",
           "02747177": "trash bin", "04256520": "sofa", "03001627": "chair",
           "02933112": "cabinet", "02871439": "bookshelf"}
SEGMENT_MARGIN = 1.1
"""regenerated segments: vertices inside the CAD box scaled by this factor"""

CACHE_VERSION = "1"


class DataError(UsageError):
    """Missing or malformed data: names the path, what was expected and what was found."""


@dataclass
class RawScene:
    """One scene before voxelization (y up, metres)."""
    name: str
    points: np.ndarray          # (N, 3) float32
    colors: np.ndarray          # (N, 3) float32 in [0, 1]
    instance: np.ndarray        # (N,) int64: index into boxes, -1 = no object
    boxes: np.ndarray           # (M, 7) float32: centre, half extents, yaw
    box_labels: np.ndarray      # (M,) int64 class index
    box_sym: np.ndarray         # (M,) int64 symmetry code (canonical_voting.boxes.SYMMETRIES)


@dataclass
class Sample:
    """One voxelized scene: what the network and the losses see."""
    name: str
    coords: torch.Tensor        # (N, 3) int64 voxel indices (minimum 0)
    feats: torch.Tensor         # (N, 3) float32 colours in [-1, 1]
    positions: torch.Tensor     # (N, 3) float32 voxel centres, metres
    instance: torch.Tensor      # (N,) int64 box index or -1
    boxes: torch.Tensor         # (M, 7) float32
    box_labels: torch.Tensor    # (M,) int64
    box_sym: torch.Tensor       # (M,) int64


# ----------------------------------------------------------------------------- voxelization

def rotate_scene(scene: RawScene, angle: float) -> RawScene:
    """The scene turned by ``angle`` about the vertical axis through its footprint's centre."""
    if angle == 0.0:
        return scene
    R = yaw_matrix(angle)
    pivot = np.zeros(3)
    if len(scene.points):
        pivot[[0, 2]] = (scene.points[:, [0, 2]].min(0) + scene.points[:, [0, 2]].max(0)) / 2
    points = (scene.points - pivot) @ R.T + pivot
    boxes = scene.boxes.astype(np.float64).copy()
    if len(boxes):
        boxes[:, :3] = (boxes[:, :3] - pivot) @ R.T + pivot
        boxes[:, 6] = np.mod(boxes[:, 6] + angle, 2 * math.pi)
    return RawScene(scene.name, points.astype(np.float32), scene.colors, scene.instance,
                    boxes.astype(np.float32), scene.box_labels, scene.box_sym)


def voxelize(scene: RawScene, voxel: float, rng: np.random.Generator | None = None) -> Sample:
    """One point per ``voxel`` cell (a random one with ``rng``, else the first)."""
    if len(scene.points) == 0:
        raise DataError(f"scene {scene.name} has no points; expected a non-empty point cloud")
    if not np.isfinite(scene.points).all():
        raise DataError(f"scene {scene.name} has non-finite coordinates (NaN or inf); fix or "
                        f"drop the scene")
    order = rng.permutation(len(scene.points)) if rng is not None else np.arange(len(scene.points))
    cell = np.floor(scene.points[order] / voxel).astype(np.int64)
    lo = cell.min(0)
    rel = cell - lo
    span = rel.max(0) + 1
    key = (rel[:, 0] * span[1] + rel[:, 1]) * span[2] + rel[:, 2]
    _, first = np.unique(key, return_index=True)
    keep = order[first]
    coords = rel[first]
    positions = (cell[first] + 0.5) * voxel
    return Sample(scene.name, torch.from_numpy(coords), torch.from_numpy(scene.colors[keep] * 2 - 1),
                  torch.from_numpy(positions.astype(np.float32)),
                  torch.from_numpy(scene.instance[keep].astype(np.int64)),
                  torch.from_numpy(scene.boxes.astype(np.float32)).reshape(-1, 7),
                  torch.from_numpy(scene.box_labels.astype(np.int64)),
                  torch.from_numpy(scene.box_sym.astype(np.int64)))


def augment_angle(rng: np.random.Generator) -> float:
    """The paper's augmentation: ``k * 90`` degrees plus U(-20, 20) degrees about the up axis."""
    return float(rng.integers(4) * math.pi / 2 + math.radians(rng.uniform(-20, 20)))


@dataclass
class Batch:
    """Scenes of one step, concatenated: ``coords (N, 4)`` with the batch index first."""
    coords: torch.Tensor
    feats: torch.Tensor
    positions: torch.Tensor
    instance: torch.Tensor      # (N,) index into ``boxes`` (all scenes), -1 = none
    boxes: torch.Tensor         # (M, 7)
    box_labels: torch.Tensor
    box_sym: torch.Tensor
    splits: list                # voxels per scene
    names: list

    def to(self, device) -> "Batch":
        return Batch(*(getattr(self, f).to(device) if torch.is_tensor(getattr(self, f))
                       else getattr(self, f) for f in self.__dataclass_fields__))


def collate(samples: list[Sample]) -> Batch:
    coords, inst, offset = [], [], 0
    for b, s in enumerate(samples):
        coords.append(torch.cat([torch.full((len(s.coords), 1), b, dtype=torch.long),
                                 s.coords], 1))
        inst.append(torch.where(s.instance >= 0, s.instance + offset, s.instance))
        offset += len(s.boxes)
    return Batch(torch.cat(coords), torch.cat([s.feats for s in samples]),
                 torch.cat([s.positions for s in samples]), torch.cat(inst),
                 torch.cat([s.boxes for s in samples]), torch.cat([s.box_labels for s in samples]),
                 torch.cat([s.box_sym for s in samples]), [len(s.coords) for s in samples],
                 [s.name for s in samples])


@dataclass
class Targets:
    """Per-voxel targets of a batch (brief Sec. 1)."""
    label: torch.Tensor         # (N,) class index, ``num_classes`` = background
    obj: torch.Tensor           # (N,) bool: voxel on an object of the model's classes
    instance: torch.Tensor      # (N,) box index (valid where obj)
    lcc: torch.Tensor           # (N, 3) R^T (p - c) / h
    log_half: torch.Tensor      # (N, 3) log h
    offset: torch.Tensor        # (N, 3) c - p (regression baseline)
    yaw: torch.Tensor           # (N,) box yaw (regression baseline)
    sym: torch.Tensor           # (N,) symmetry code


def make_targets(batch: Batch, num_classes: int, class_map: torch.Tensor | None = None) -> Targets:
    """Targets of every voxel. ``class_map`` maps dataset class -> model class (-1: treat as
    background), e.g. one class for a separate model."""
    inst = batch.instance
    on = inst >= 0
    safe = inst.clamp_min(0)
    if len(batch.boxes):
        box = batch.boxes[safe]
        label = batch.box_labels[safe]
        sym = batch.box_sym[safe]
    else:
        box = batch.positions.new_zeros(len(inst), 7)
        box[:, 3:6] = 1
        label = torch.zeros_like(inst)
        sym = torch.zeros_like(inst)
    if class_map is not None:
        label = class_map.to(label.device)[label]
        on = on & (label >= 0)
    label = torch.where(on, label, torch.full_like(label, num_classes))
    centre, half, yaw = box[:, :3], box[:, 3:6].clamp_min(1e-3), box[:, 6]
    return Targets(label, on, safe, box_lcc(batch.positions, centre, half, yaw), torch.log(half),
                   centre - batch.positions, yaw, sym)


# ----------------------------------------------------------------------------- procedural scenes

def _cache_root() -> Path:
    from shared.train.cli import REPO_ROOT
    return Path(os.environ.get("CANONICAL_VOTING_CACHE", REPO_ROOT / "runs" / "canonical_voting"
                               / "scene_cache"))


def align_objects(scene: RawScene, jitter_deg: float, seed: int) -> RawScene:
    """Each object turned about its box centre so that its yaw is the nearest multiple of 90
    degrees plus U(-jitter, jitter): furniture parallel to the walls, as in scanned rooms."""
    rng = np.random.default_rng([seed, 4242])
    points, boxes = scene.points.astype(np.float64).copy(), scene.boxes.astype(np.float64).copy()
    for m, b in enumerate(boxes):
        target = round(b[6] / (math.pi / 2)) * (math.pi / 2) + math.radians(
            rng.uniform(-jitter_deg, jitter_deg))
        sel = scene.instance == m
        points[sel] = (points[sel] - b[:3]) @ yaw_matrix(target - b[6]).T + b[:3]
        boxes[m, 6] = np.mod(target, 2 * math.pi)
    return RawScene(scene.name, points.astype(np.float32), scene.colors, scene.instance,
                    boxes.astype(np.float32), scene.box_labels, scene.box_sym)


def _from_scene(seed: int, n_points: int, yaw_jitter: float | None) -> RawScene:
    s = make_scene(seed, n_points=n_points)
    sym = np.array([PROCEDURAL_SYM.get(s.categories[l], SYM_NONE) for l in s.box_labels],
                   dtype=np.int64)
    raw = RawScene(f"procedural-{seed}", s.points, s.colors, s.instances, s.boxes,
                   s.box_labels, sym)
    return raw if yaw_jitter is None else align_objects(raw, yaw_jitter, seed)


def procedural_scenes(seeds: list[int], n_points: int, cache: bool = True,
                      yaw_jitter: float | None = None) -> list[RawScene]:
    """Scenes of ``make_scene(seed)`` for each seed (objects at uniform random yaws, or aligned
    to the walls up to ``yaw_jitter`` degrees), cached on disk as one .npz per list."""
    tag = hashlib.sha1(f"{CACHE_VERSION}:{n_points}:{yaw_jitter}:{list(seeds)}".encode()
                       ).hexdigest()[:16]
    path = _cache_root() / f"scenes-{tag}.npz"
    if cache and path.is_file():
        try:
            with np.load(path) as z:
                return [RawScene(f"procedural-{seed}", *(z[f"{i}_{k}"] for k in
                                 ("points", "colors", "instance", "boxes", "box_labels",
                                  "box_sym")))
                        for i, seed in enumerate(seeds)]
        except (OSError, KeyError, ValueError):
            pass                                    # unreadable cache: regenerate
    scenes = [_from_scene(s, n_points, yaw_jitter) for s in seeds]
    if cache:
        arrays = {f"{i}_{k}": getattr(sc, k) for i, sc in enumerate(scenes)
                  for k in ("points", "colors", "instance", "boxes", "box_labels", "box_sym")}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
            np.savez(tmp, **arrays)
            os.replace(tmp, path)
        except OSError:
            pass                                    # a read-only checkout: no cache
    return scenes


def procedural_split(split: str, count: int, n_points: int, data_seed: int = 0,
                     yaw_jitter: float | None = None) -> list[RawScene]:
    """Train rooms use seeds ``data_seed * 10**6 + i``, validation rooms ``... + 500000 + i``."""
    base = data_seed * 10 ** 6 + (0 if split == "train" else 500_000)
    return procedural_scenes([base + i for i in range(count)], n_points, yaw_jitter=yaw_jitter)


# ----------------------------------------------------------------------------- ScanNet + Scan2CAD

def _quat_matrix(q, where: str) -> np.ndarray:
    from scipy.spatial.transform import Rotation
    q = np.asarray(q, np.float64).reshape(-1)
    if q.shape != (4,) or not np.isfinite(q).all() or np.linalg.norm(q) == 0:
        raise DataError(f"{where}: expected a rotation quaternion of 4 numbers (w, x, y, z); "
                        f"got {q.tolist()}")
    w, x, y, z = q
    return Rotation.from_quat([x, y, z, w]).as_matrix()


def _trs(entry: dict, where: str):
    try:
        t = np.asarray(entry["translation"], np.float64).reshape(3)
        s = np.asarray(entry["scale"], np.float64).reshape(3)
        R = _quat_matrix(entry["rotation"], where)
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"{where}: expected 'trs' with translation (3), rotation (w, x, y, z) "
                        f"and scale (3); got {entry!r:.200}") from None
    return t, R, s


def yaw_of(R: np.ndarray) -> float:
    """Yaw about y of a rotation (the shared convention: R[0, 2] = sin, R[0, 0] = cos)."""
    return float(math.atan2(R[0, 2] - R[2, 0], R[0, 0] + R[2, 2]))


def scan2cad_boxes(annotation: dict, where: str):
    """``(M_scan as (t, R, s), boxes (M, 7), labels, syms, kept model indices)`` of one scan."""
    t, R, s = _trs(annotation.get("trs", {}), f"{where} trs")
    boxes, labels, syms, kept = [], [], [], []
    models = annotation.get("aligned_models")
    if not isinstance(models, list):
        raise DataError(f"{where}: expected a list 'aligned_models'; got {type(models).__name__}")
    for k, m in enumerate(models):
        mw = f"{where} aligned_models[{k}]"
        to, Ro, so = _trs(m.get("trs", {}), f"{mw} trs")
        try:
            c = np.asarray(m["center"], np.float64).reshape(3)
            h = np.asarray(m["bbox"], np.float64).reshape(3)
            cat = str(m["catid_cad"])
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{mw}: expected 'center' (3), 'bbox' (3 half extents) and "
                            f"'catid_cad'; got keys {sorted(m)}") from None
        if (np.abs(so) < 1e-3).any() or (h <= 0).any():
            continue
        centre = to + Ro @ (so * c)
        half = np.abs(so * h)
        boxes.append(np.r_[centre, half, yaw_of(Ro)])
        labels.append(SCANNET_CLASSES.index(WORDNET.get(cat, "others")))
        sym = m.get("sym", SYMMETRIES[SYM_NONE])
        syms.append(SYMMETRIES.index(sym) if sym in SYMMETRIES else SYM_NONE)
        kept.append(k)
    return ((t, R, s), np.array(boxes, np.float32).reshape(-1, 7), np.array(labels, np.int64),
            np.array(syms, np.int64), kept)


def assign_points(points: np.ndarray, boxes: np.ndarray, margin: float = SEGMENT_MARGIN) -> np.ndarray:
    """The regeneration rule: each point's box (-1 for none) among those it lies inside when
    enlarged by ``margin``; ties go to the box in whose LCC the point is most central."""
    best = np.full(len(points), np.inf)
    inst = np.full(len(points), -1, np.int64)
    for m, b in enumerate(boxes):
        local = np.abs((points - b[:3]) @ yaw_matrix(float(b[6]))) / (b[3:6] * margin)
        r = local.max(1)
        take = (r <= 1) & (r < best)
        inst[take], best[take] = m, r[take]
    return inst


class ScanNetScenes:
    """ScanNet v2 scans of one split with their Scan2CAD boxes, read lazily (``raw(i)``)."""

    def __init__(self, root, split: str):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"--data {root} does not exist; expected a ScanNet v2 root with "
                            f"scans/, scannetv2_{{train,val}}.txt and Scan2CAD's "
                            f"full_annotations.json")
        split_file = self.root / f"scannetv2_{split}.txt"
        if not split_file.is_file():
            raise DataError(f"{split_file} not found; expected the official split list "
                            f"(one scene name per line)")
        names = [l.strip() for l in split_file.read_text().splitlines() if l.strip()]
        ann_path = next((p for p in (self.root / "full_annotations.json",
                                     self.root / "scan2cad" / "full_annotations.json")
                         if p.is_file()), None)
        if ann_path is None:
            raise DataError(f"no Scan2CAD full_annotations.json under {self.root} (or "
                            f"{self.root}/scan2cad/); download Scan2CAD's annotations")
        try:
            annotations = json.loads(ann_path.read_text())
            by_scan = {a["id_scan"]: a for a in annotations}
        except (json.JSONDecodeError, TypeError, KeyError) as exc:
            raise DataError(f"{ann_path} is not Scan2CAD's full_annotations.json (a JSON list of "
                            f"objects with 'id_scan', 'trs', 'aligned_models'): {exc}") from None
        self.ann_path = ann_path
        self.names = [n for n in names if n in by_scan]
        if not self.names:
            raise DataError(f"none of the {len(names)} scenes of {split_file} has a Scan2CAD "
                            f"annotation in {ann_path}")
        self.annotations = by_scan
        seg = self.root / "scan2cad_segments" / split / "scan2cad_segments.pkl"
        self.segments = None
        if seg.is_file():
            with open(seg, "rb") as f:          # the authors' file: dict id_scan -> index arrays
                self.segments = pickle.load(f)

    def __len__(self) -> int:
        return len(self.names)

    def raw(self, i: int) -> RawScene:
        from shared.pointcloud.pcio import read_points
        name = self.names[i]
        ply = self.root / "scans" / name / f"{name}_vh_clean_2.ply"
        if not ply.is_file():
            raise DataError(f"{ply} not found; expected the ScanNet v2 mesh of {name}")
        cloud = read_points(ply)
        if cloud.colors is None:
            raise DataError(f"{ply} has no vertex colours; expected red, green, blue")
        (t, R, s), boxes, labels, syms, kept = scan2cad_boxes(
            self.annotations[name], f"{self.ann_path} [{name}]")
        points = (cloud.points.astype(np.float64) * s) @ R.T + t
        if self.segments is not None and name in self.segments:
            inst = np.full(len(points), -1, np.int64)
            segs = self.segments[name]
            for new, k in enumerate(kept):
                if k < len(segs):
                    inst[np.asarray(segs[k], np.int64)] = new
        else:
            inst = assign_points(points, boxes)
        return RawScene(name, points.astype(np.float32), cloud.colors.astype(np.float32), inst,
                        boxes, labels, syms)


class SceneList:
    """A list of in-memory :class:`RawScene` with the same interface as :class:`ScanNetScenes`."""

    def __init__(self, scenes: list[RawScene]):
        self.scenes = scenes

    def __len__(self) -> int:
        return len(self.scenes)

    def raw(self, i: int) -> RawScene:
        return self.scenes[i]


def build_data(cfg):
    """``(train scenes, val scenes, class names)`` as the config says."""
    if cfg.dataset == "scannet" or (cfg.dataset == "auto" and cfg.data):
        if not cfg.data:
            raise DataError("--dataset scannet needs --data ROOT (a ScanNet v2 root with "
                            "Scan2CAD annotations)")
        return ScanNetScenes(cfg.data, "train"), ScanNetScenes(cfg.data, "val"), SCANNET_CLASSES
    if cfg.data:
        raise DataError(f"--data {cfg.data} was given with --dataset {cfg.dataset}; use "
                        f"--dataset scannet (or auto) to read it, or drop --data")
    jitter = None if cfg.object_yaw == "uniform" else cfg.yaw_jitter
    train = procedural_split("train", cfg.train_scenes, cfg.scene_points, cfg.data_seed, jitter)
    val = procedural_split("val", cfg.val_scenes, cfg.scene_points, cfg.data_seed, jitter)
    return SceneList(train), SceneList(val), PROCEDURAL_CLASSES
