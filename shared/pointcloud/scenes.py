"""Procedural indoor scenes: a floor, walls and furniture from :mod:`shared.pointcloud.shapes`, with per-point
class and instance labels and oriented ground-truth boxes (default data for 3D detection).

    scene = make_scene(seed=0, n_points=20000)
    scene.points (N, 3) float32 metres, y up, floor at y = 0, room centred at the origin
    scene.colors (N, 3) float32 in [0, 1]
    scene.labels (N,) int64: index into scene.categories, or -1 on floor and walls
    scene.instances (N,) int64: index into scene.boxes, or -1 on floor and walls
    scene.structure (N,) int64: 0 object, 1 floor, 2 wall
    scene.boxes (M, 7) float32: centre (3), half extents (3) in the object's frame, yaw about y
    scene.box_labels (M,) int64

Box convention: a point ``p`` is inside box ``(c, h, yaw)`` when ``|R_y(yaw)^T (p - c)| <= h``
component-wise, with ``R_y`` the right-handed rotation of :func:`shared.pointcloud.points.yaw_rotation`
(``[[cos, 0, sin], [0, 1, 0], [-sin, 0, cos]]``); the object's front (+z of its canonical frame)
points along ``R_y(yaw) e_z``. Objects get a uniform random yaw and are placed by rejection
sampling so that their footprint circles neither overlap each other nor cross the walls.

Command line: ``python -m shared.pointcloud.scenes --seed 0 --out scene.png`` renders one scene coloured by
class with its boxes.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

import numpy as np

from .shapes import make_mesh

SCENE_CATEGORIES: tuple[str, ...] = ("chair", "table", "sofa", "cabinet", "bookshelf", "lamp")
STRUCTURE_NAMES: tuple[str, ...] = ("object", "floor", "wall")


@dataclass
class Scene:
    points: np.ndarray          # (N, 3) float32
    colors: np.ndarray          # (N, 3) float32
    labels: np.ndarray          # (N,) int64, class index or -1
    instances: np.ndarray       # (N,) int64, box index or -1
    structure: np.ndarray       # (N,) int64, 0 object / 1 floor / 2 wall
    boxes: np.ndarray           # (M, 7) float32: cx, cy, cz, hx, hy, hz, yaw
    box_labels: np.ndarray      # (M,) int64
    categories: tuple[str, ...]
    room_size: tuple[float, float]  # (x, z) extent in metres
    seed: int = 0


# ----------------------------------------------------------------------------- box geometry

def yaw_matrix(yaw: float) -> np.ndarray:
    """Right-handed rotation about y (numpy twin of :func:`shared.pointcloud.points.yaw_rotation`)."""
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def box_corners(box) -> np.ndarray:
    """The 8 corners ``(8, 3)`` of ``box = (cx, cy, cz, hx, hy, hz, yaw)``; corners 0-3 have +y
    (top face), in the order (+x,+z), (-x,+z), (-x,-z), (+x,-z) of the box frame, then the same
    at -y."""
    b = np.asarray(box, dtype=np.float64)
    signs = np.array([[1, 1, 1], [-1, 1, 1], [-1, 1, -1], [1, 1, -1],
                      [1, -1, 1], [-1, -1, 1], [-1, -1, -1], [1, -1, -1]], float)
    return (signs * b[3:6]) @ yaw_matrix(b[6]).T + b[:3]


def points_in_boxes(points, boxes, margin: float = 0.0) -> np.ndarray:
    """``(N, M)`` bool: point n lies inside box m (enlarged by ``margin`` on every side)."""
    P = np.asarray(points, dtype=np.float64)
    B = np.asarray(boxes, dtype=np.float64).reshape(-1, 7)
    out = np.zeros((len(P), len(B)), dtype=bool)
    for m, b in enumerate(B):
        local = (P - b[:3]) @ yaw_matrix(b[6])                              # R^T (p - c), row form
        out[:, m] = (np.abs(local) <= b[3:6] + margin).all(1)
    return out


# ----------------------------------------------------------------------------- sampling

def _rect(corners) -> tuple[np.ndarray, np.ndarray]:
    v = np.asarray(corners, float)
    return v, np.array([[0, 1, 2], [0, 2, 3]])


def _sample_triangles(V, T, n, rng):
    tri = V[T]
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    which = rng.choice(len(tri), size=n, p=area / area.sum())
    u, v = rng.random(n), rng.random(n)
    flip = u + v > 1
    u[flip], v[flip] = 1 - u[flip], 1 - v[flip]
    t = tri[which]
    return t[:, 0] + u[:, None] * (t[:, 1] - t[:, 0]) + v[:, None] * (t[:, 2] - t[:, 0]), which


def make_scene(seed: int, n_points: int = 20000, n_objects: tuple[int, int] = (4, 8),
               room_size: tuple[float, float] = (3.5, 6.0), wall_height: float = 2.4,
               categories: tuple[str, ...] = SCENE_CATEGORIES, gap: float = 0.1,
               object_share: float = 0.5) -> Scene:
    """One room: floor, four walls and ``n_objects`` (inclusive range) pieces of furniture.

    Args:
        n_points: points in the scene; ``object_share`` of them are sampled uniformly
            (area-weighted) over the objects' surfaces, the rest over floor and walls (a real
            scan's uniform density would leave few points on furniture in a small cloud).
        room_size: range of the room's x and z extents in metres (each drawn independently).
        categories: shape categories to draw objects from (labels index this tuple).
        gap: minimum clearance between footprint circles, and to the walls.
    Objects that cannot be placed after 200 tries (a crowded room) are left out, so
    ``len(scene.boxes)`` can be below ``n_objects[0]`` for very small rooms.
    """
    if n_points < 1:
        raise ValueError(f"n_points must be >= 1; got {n_points}")
    if not 0.0 <= object_share < 1.0:
        raise ValueError(f"object_share must be in [0, 1); got {object_share}")
    if not 1 <= n_objects[0] <= n_objects[1]:
        raise ValueError(f"n_objects must be a range (lo, hi) with 1 <= lo <= hi; got {n_objects}")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 7919]))
    X, Z = rng.uniform(*room_size, size=2)
    palette = rng.uniform(0.15, 0.9, size=(64, 3))

    V, T, tri_label, tri_inst, tri_struct, tri_part = [], [], [], [], [], []

    def add(v, t, label, inst, struct, part):
        T.append(t + sum(len(x) for x in V))
        V.append(v)
        tri_label.append(np.full(len(t), label))
        tri_inst.append(np.full(len(t), inst))
        tri_struct.append(np.full(len(t), struct))
        tri_part.append(part if np.ndim(part) else np.full(len(t), part))

    add(*_rect([(-X / 2, 0, -Z / 2), (X / 2, 0, -Z / 2), (X / 2, 0, Z / 2), (-X / 2, 0, Z / 2)]),
        -1, -1, 1, 0)
    corners = [(-X / 2, -Z / 2), (X / 2, -Z / 2), (X / 2, Z / 2), (-X / 2, Z / 2)]
    for (x0, z0), (x1, z1) in zip(corners, corners[1:] + corners[:1]):
        add(*_rect([(x0, 0, z0), (x1, 0, z1), (x1, wall_height, z1), (x0, wall_height, z0)]),
            -1, -1, 2, 0)

    boxes, box_labels, placed = [], [], []                 # placed: (x, z, footprint radius)
    for i in range(int(rng.integers(n_objects[0], n_objects[1] + 1))):
        cat = categories[int(rng.integers(len(categories)))]
        mesh = make_mesh(cat, int(rng.integers(2 ** 31)))
        hi = mesh.vertices.max(0)
        lo = mesh.vertices.min(0)
        half = (hi - lo) / 2
        local_centre = (hi + lo) / 2                       # x, z ~ 0 and y = half height
        radius = math.hypot(half[0], half[2]) + math.hypot(local_centre[0], local_centre[2])
        for _ in range(200):
            room = radius + gap                            # keep the footprint off the walls
            x = rng.uniform(-X / 2 + room, X / 2 - room) if X / 2 > room else None
            z = rng.uniform(-Z / 2 + room, Z / 2 - room) if Z / 2 > room else None
            if x is None or z is None:
                break
            if all(math.hypot(x - px, z - pz) >= radius + pr + gap for px, pz, pr in placed):
                break
        else:
            continue
        if x is None or z is None:
            continue
        yaw = rng.uniform(0, 2 * math.pi)
        R = yaw_matrix(yaw)
        t = np.array([x, 0.0, z])
        inst = len(boxes)
        add(mesh.vertices @ R.T + t, mesh.triangles, categories.index(cat), inst, 0,
            mesh.triangle_parts)
        boxes.append(np.r_[R @ local_centre + t, half, yaw])
        box_labels.append(categories.index(cat))
        placed.append((x, z, radius))

    Vs, Ts = np.concatenate(V), np.concatenate(T)
    tri_obj = np.concatenate(tri_struct) == 0
    n_obj = int(round(n_points * object_share)) if boxes else 0
    idx_obj, idx_bg = np.flatnonzero(tri_obj), np.flatnonzero(~tri_obj)
    p1, w1 = (_sample_triangles(Vs, Ts[idx_obj], n_obj, rng) if n_obj
              else (np.zeros((0, 3)), idx_obj[:0]))
    p2, w2 = _sample_triangles(Vs, Ts[idx_bg], n_points - n_obj, rng)
    pts, which = np.concatenate([p1, p2]), np.concatenate([idx_obj[w1], idx_bg[w2]])
    labels = np.concatenate(tri_label)[which]
    inst = np.concatenate(tri_inst)[which]
    struct = np.concatenate(tri_struct)[which]
    part = np.concatenate(tri_part)[which]
    base = np.where(struct[:, None] == 1, [0.55, 0.45, 0.35],
                    np.where(struct[:, None] == 2, [0.85, 0.85, 0.8], palette[inst % 64]))
    shade = 1.0 - 0.15 * (part % 3)[:, None]
    colors = np.clip(base * shade + rng.normal(0, 0.03, size=base.shape), 0, 1)
    return Scene(pts.astype(np.float32), colors.astype(np.float32), labels.astype(np.int64),
                 inst.astype(np.int64), struct.astype(np.int64),
                 np.array(boxes, dtype=np.float32).reshape(-1, 7),
                 np.array(box_labels, dtype=np.int64), tuple(categories), (float(X), float(Z)),
                 int(seed))


def scene_picture(scene: Scene, path, title: str | None = None, size=(1000, 800)):
    """Render ``scene`` to a PNG: points coloured by class (floor and walls grey), box edges."""
    from .render import box_edges, render_points
    segs = np.concatenate([box_edges(b[:3], b[3:6], b[6]) for b in scene.boxes]) \
        if len(scene.boxes) else None
    return render_points(scene.points, path, labels=scene.labels, label_names=scene.categories,
                         segments=segs, view=(40, -60), size=size, title=title)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="Render a procedural scene to a PNG.")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--points", type=int, default=30000)
    ap.add_argument("--out", default="scene.png", help="PNG path")
    args = ap.parse_args(argv)
    scene = make_scene(args.seed, n_points=args.points)
    names = ", ".join(scene.categories[l] for l in scene.box_labels)
    scene_picture(scene, args.out, title=f"scene {args.seed}: {len(scene.boxes)} objects ({names})")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
