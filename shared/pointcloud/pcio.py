"""Point-cloud and mesh files: PLY, PCD (ASCII and binary), XYZ and OFF through open3d, and
the HDF5 packagings of the PointNet family through h5py.

    cloud = read_points("scene_vh_clean_2.ply")       # PointCloudData(points, colors, normals, attributes)
    write_points("out.pcd", xyz, colors=rgb, attributes={"label": parts}, binary=False)
    d = load_modelnet40_h5(root, "train")            # {"data": (M, 2048, 3), "label": (M,), ...}

HDF5 layouts (file names and keys as distributed):
* ModelNet40 ``modelnet40_ply_hdf5_2048/``: ``ply_data_{train,test}<i>.h5`` with ``data``
  (M, 2048, 3) float32 and ``label`` (M, 1) uint8; class names in ``shape_names.txt``.
* ShapeNet part ``shapenet_part_seg_hdf5_data/``: ``ply_data_{train,val,test}<i>.h5`` with
  ``data``, ``label`` (M, 1) category 0..15 and ``pid`` (M, 2048) global part 0..49 (AnTao97's
  mirror names it ``seg``).
* ShapeNetCore v2 ``shapenetcorev2_hdf5_2048/`` (AnTao97): ``{train,val,test}<i>.h5`` with
  ``data`` and ``label`` (M, 1), plus ``{split}<i>_id2name.json`` (one class name per shape).
Files of a split are read in the order of their trailing number and concatenated. Missing files,
missing keys and wrong shapes raise one error naming the file, what was expected and what was found.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

POINT_FORMATS = (".ply", ".pcd", ".xyz", ".xyzn", ".xyzrgb", ".pts", ".off")
MESH_FORMATS = (".ply", ".off", ".obj", ".stl")

SHAPENET_PART_CATEGORIES = ("Airplane", "Bag", "Cap", "Car", "Chair", "Earphone", "Guitar",
                            "Knife", "Lamp", "Laptop", "Motorbike", "Mug", "Pistol", "Rocket",
                            "Skateboard", "Table")
SHAPENET_PART_COUNTS = (4, 2, 2, 4, 4, 3, 3, 2, 4, 2, 6, 2, 3, 3, 3, 3)   # 50 global part ids


@dataclass
class PointCloudData:
    points: np.ndarray                       # (N, 3) float32
    colors: np.ndarray | None = None         # (N, 3) float32 in [0, 1]
    normals: np.ndarray | None = None        # (N, 3) float32
    attributes: dict[str, np.ndarray] = field(default_factory=dict)   # e.g. "label": (N,)


# ----------------------------------------------------------------------------- open3d formats

def _existing(path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    return path


def _suffix(path: Path, allowed) -> str:
    ext = path.suffix.lower()
    if ext not in allowed:
        raise ValueError(f"{path}: unsupported extension {ext!r}; supported: {', '.join(allowed)}")
    return ext


def read_points(path) -> PointCloudData:
    """Read a point cloud (.ply .pcd .xyz .xyzn .xyzrgb .pts) or the vertices of an .off mesh.

    Colours stored as bytes (ScanNet PLY, PCD rgb) come back as floats in [0, 1]; any other
    per-point property (e.g. ``label``) is returned in ``attributes`` with shape (N,) or (N, C)."""
    path = _existing(path)
    ext = _suffix(path, POINT_FORMATS)
    import open3d as o3d
    if ext == ".off":
        vertices, _ = read_mesh(path)
        return PointCloudData(vertices)
    pc = o3d.t.io.read_point_cloud(str(path))
    if "positions" not in pc.point or len(pc.point["positions"]) == 0:
        raise ValueError(f"{path}: no points could be read; expected a {ext[1:].upper()} file with "
                         "x, y, z per point (the file is empty, truncated or not in that format)")
    out = PointCloudData(pc.point["positions"].numpy().astype(np.float32))
    for key in pc.point:
        if key == "positions":
            continue
        arr = pc.point[key].numpy()
        if key == "colors":
            out.colors = (arr / 255.0 if arr.dtype.kind in "ui" else arr).astype(np.float32)
        elif key == "normals":
            out.normals = arr.astype(np.float32)
        else:
            out.attributes[key] = arr[:, 0] if arr.ndim == 2 and arr.shape[1] == 1 else arr
    return out


def write_points(path, points, colors=None, normals=None, attributes=None,
                 binary: bool = True) -> Path:
    """Write ``points (N, 3)`` with optional ``colors (N, 3)`` in [0, 1], ``normals`` and
    per-point ``attributes`` (PLY and PCD only) to .ply, .pcd (``binary`` or ASCII) or .xyz*.
    Binary files keep float32 exactly; open3d's ASCII PLY keeps about 6 significant digits."""
    path = Path(path)
    ext = _suffix(path, POINT_FORMATS[:-1])
    pts = np.asarray(points, dtype=np.float32)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise ValueError(f"points must have shape (N, 3); got {pts.shape}")
    if attributes and ext not in (".ply", ".pcd"):
        raise ValueError(f"{path}: per-point attributes need .ply or .pcd, not {ext}")
    import open3d as o3d
    pc = o3d.t.geometry.PointCloud()
    pc.point.positions = o3d.core.Tensor(pts)
    n = len(pts)
    for name, arr, cols in (("colors", colors, 3), ("normals", normals, 3)):
        if arr is not None:
            arr = np.asarray(arr, dtype=np.float32)
            if arr.shape != (n, cols):
                raise ValueError(f"{name} must have shape ({n}, {cols}); got {arr.shape}")
            pc.point[name] = o3d.core.Tensor(arr)
    for name, arr in (attributes or {}).items():
        arr = np.asarray(arr)
        if arr.shape[0] != n:
            raise ValueError(f"attribute {name!r} has {arr.shape[0]} rows for {n} points")
        pc.point[name] = o3d.core.Tensor(np.ascontiguousarray(arr.reshape(n, -1)))
    path.parent.mkdir(parents=True, exist_ok=True)
    if not o3d.t.io.write_point_cloud(str(path), pc, write_ascii=not binary):
        raise OSError(f"open3d could not write {path}")
    return path


def read_mesh(path) -> tuple[np.ndarray, np.ndarray]:
    """Read a triangle mesh (.off .ply .obj .stl) -> ``(vertices (V, 3), triangles (T, 3))``."""
    path = _existing(path)
    _suffix(path, MESH_FORMATS)
    import open3d as o3d
    mesh = o3d.io.read_triangle_mesh(str(path))
    v, t = np.asarray(mesh.vertices), np.asarray(mesh.triangles, dtype=np.int64)
    if len(v) == 0:
        raise ValueError(f"{path}: no vertices could be read; expected a mesh in "
                         f"{path.suffix[1:].upper()} format (e.g. OFF: 'OFF', counts, vertices, faces)")
    return v.astype(np.float64), t


def write_mesh(path, vertices, triangles) -> Path:
    """Write a triangle mesh to .off / .ply / .obj / .stl."""
    path = Path(path)
    _suffix(path, MESH_FORMATS)
    import open3d as o3d
    mesh = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(np.asarray(vertices, np.float64)),
                                     o3d.utility.Vector3iVector(np.asarray(triangles, np.int32)))
    path.parent.mkdir(parents=True, exist_ok=True)
    if not o3d.io.write_triangle_mesh(str(path), mesh):
        raise OSError(f"open3d could not write {path}")
    return path


# ----------------------------------------------------------------------------- HDF5 (PointNet family)

def _trailing_number(p: Path) -> int:
    nums = re.findall(r"\d+", p.stem)
    return int(nums[-1]) if nums else -1


def _split_files(root, pattern: str, layout: str) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{layout}: data directory {root} does not exist")
    files = sorted(root.glob(pattern), key=_trailing_number)
    if not files:
        found = sorted(p.name for p in root.iterdir())[:12]
        raise FileNotFoundError(f"{layout}: no files matching {pattern!r} in {root} "
                                f"(found: {', '.join(found) or 'nothing'})")
    return files


def read_h5(path, keys: dict[str, tuple]) -> dict[str, np.ndarray]:
    """Read datasets ``keys`` from one HDF5 file. ``keys[name]`` is a shape template: ``None``
    entries match any size, ``"M"`` must equal the first axis of the first dataset; a name may
    list alternatives as ``"pid|seg"`` (the first present is returned under the first name)."""
    import h5py
    path = _existing(path)
    out, M = {}, None
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise ValueError(f"{path}: not a readable HDF5 file ({e})") from None
    with f:
        for spec, template in keys.items():
            names = spec.split("|")
            name = next((n for n in names if n in f), None)
            if name is None:
                raise ValueError(f"{path}: missing dataset {' or '.join(map(repr, names))} "
                                 f"(found keys: {', '.join(sorted(f.keys())) or 'none'})")
            arr = f[name][()]
            if arr.ndim == len(template) + 1 and arr.shape[-1] == 1 and template[-1:] != (1,):
                arr = arr[..., 0]                               # (M, 1) labels -> (M,)
            ok = arr.ndim == len(template) and all(
                t is None or (t == "M" and (M is None or s == M)) or s == t
                for s, t in zip(arr.shape, template))
            if not ok:
                raise ValueError(f"{path}: dataset {name!r} has shape {arr.shape}; expected "
                                 f"{tuple('any' if t is None else t for t in template)}"
                                 f"{'' if M is None else f' with M = {M}'}")
            if M is None:
                M = arr.shape[0]
            out[names[0]] = arr
    return out


def _concat(parts: list[dict]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _check_range(path_desc, name, arr, hi):
    if arr.size and (arr.min() < 0 or arr.max() >= hi):
        raise ValueError(f"{path_desc}: {name} values must lie in [0, {hi}); found "
                         f"[{arr.min()}, {arr.max()}]")


def load_modelnet40_h5(root, split: str = "train") -> dict:
    """``modelnet40_ply_hdf5_2048``: ``{"data": (M, N, 3) float32, "label": (M,) int64,
    "shape_names": list of 40 names or None, "files": [...]}``."""
    if split not in ("train", "test"):
        raise ValueError(f"ModelNet40 split must be 'train' or 'test'; got {split!r}")
    files = _split_files(root, f"ply_data_{split}*.h5", "ModelNet40 (modelnet40_ply_hdf5_2048)")
    d = _concat([read_h5(f, {"data": ("M", None, 3), "label": ("M",)}) for f in files])
    names_file = Path(root) / "shape_names.txt"
    names = [l.strip() for l in names_file.read_text().splitlines() if l.strip()] \
        if names_file.is_file() else None
    _check_range(root, "label", d["label"], len(names) if names else 40)
    return {"data": d["data"].astype(np.float32), "label": d["label"].astype(np.int64),
            "shape_names": names, "files": files}


def load_shapenet_part_h5(root, split: str = "train") -> dict:
    """``shapenet_part_seg_hdf5_data``: ``{"data": (M, N, 3), "label": (M,) category 0..15,
    "pid": (M, N) global part 0..49, "files": [...]}``. ``split``: train, val, test or trainval."""
    splits = {"trainval": ("train", "val")}.get(split, (split,))
    if any(s not in ("train", "val", "test") for s in splits):
        raise ValueError(f"ShapeNet part split must be train, val, test or trainval; got {split!r}")
    files = [f for s in splits for f in _split_files(
        root, f"ply_data_{s}*.h5", "ShapeNet part (shapenet_part_seg_hdf5_data)")]
    d = _concat([read_h5(f, {"data": ("M", None, 3), "label": ("M",), "pid|seg": ("M", None)})
                 for f in files])
    if d["pid"].shape[1] != d["data"].shape[1]:
        raise ValueError(f"{root}: pid has {d['pid'].shape[1]} labels per shape for "
                         f"{d['data'].shape[1]} points")
    _check_range(root, "label", d["label"], len(SHAPENET_PART_CATEGORIES))
    _check_range(root, "pid", d["pid"], sum(SHAPENET_PART_COUNTS))
    return {"data": d["data"].astype(np.float32), "label": d["label"].astype(np.int64),
            "pid": d["pid"].astype(np.int64), "files": files}


def load_shapenetcore_h5(root, split: str = "train") -> dict:
    """AnTao97's ``shapenetcorev2_hdf5_2048``: ``{"data": (M, N, 3), "label": (M,),
    "names": list of M class names (from ``*_id2name.json``) or None, "files": [...]}``.
    Select a category by name (``names``), not by label number."""
    if split not in ("train", "val", "test"):
        raise ValueError(f"ShapeNetCore split must be train, val or test; got {split!r}")
    files = _split_files(root, f"{split}*.h5", "ShapeNetCore v2 (shapenetcorev2_hdf5_2048)")
    parts, names = [], []
    for f in files:
        d = read_h5(f, {"data": ("M", None, 3), "label": ("M",)})
        parts.append(d)
        js = f.with_name(f.stem + "_id2name.json")
        if names is not None and js.is_file():
            lst = json.loads(js.read_text())
            if len(lst) != len(d["label"]):
                raise ValueError(f"{js}: {len(lst)} names for {len(d['label'])} shapes in {f.name}")
            names += lst
        else:
            names = None
    d = _concat(parts)
    return {"data": d["data"].astype(np.float32), "label": d["label"].astype(np.int64),
            "names": names, "files": files}


def write_h5(path, **arrays) -> Path:
    """Write arrays as HDF5 datasets (e.g. ``data=..., label=labels[:, None], pid=...``), the
    layout the loaders above read; used by tests and to export generated data."""
    import h5py
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        for k, v in arrays.items():
            f.create_dataset(k, data=np.asarray(v))
    return path
