"""Procedural shape categories with parts and named semantic keypoints (default 3D data).

Each category is a small program that assembles open3d primitives (boxes, cylinders) and
surfaces of revolution / extrusions / tubes with randomised proportions into a triangle mesh
whose triangles carry a part label, plus named keypoints placed on the surface (e.g. chair: seat
corners, leg ends, back-top corners). Everything is deterministic in ``seed``.

Conventions (canonical orientation, as ShapeNetCore): **y up**, the object's front faces **+z**,
its left is **+x** (right-handed). Meshes are in metres (furniture at real size, standing on
``y = 0``, centred in x and z) so scenes can place them; :func:`make_shape` by default centres the
bounding box at the origin and scales to the unit sphere (like the PointNet HDF5 files).

    shape = make_shape("chair", seed=3, n_points=2048)
    shape.points (2048, 3) float32, shape.parts (2048,) int64 in [0, len(PART_NAMES["chair"]))
    shape.keypoints (10, 3) float32, in the order of KEYPOINT_NAMES["chair"]

Command line: ``python -m shared.pointcloud.shapes --category chair --out chair.png`` renders one shape
coloured by part with its keypoints (``--category all`` renders a grid of every category).
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field

import numpy as np

# ----------------------------------------------------------------------------- vocabulary

PART_NAMES: dict[str, tuple[str, ...]] = {
    "airplane": ("body", "wing", "tail", "engine"),
    "bookshelf": ("frame", "shelf"),
    "bottle": ("body", "neck", "cap"),
    "cabinet": ("body", "door"),
    "car": ("body", "roof", "wheel"),
    "chair": ("seat", "back", "leg", "arm"),
    "guitar": ("head", "neck", "body"),
    "lamp": ("base", "pole", "shade"),
    "mug": ("body", "handle"),
    "sofa": ("seat", "back", "arm"),
    "table": ("top", "leg"),
}
CATEGORIES: tuple[str, ...] = tuple(PART_NAMES)          # label = index in this tuple

KEYPOINT_NAMES: dict[str, tuple[str, ...]] = {
    "airplane": ("nose", "tail", "wing_tip_left", "wing_tip_right", "fin_top",
                 "stabilizer_tip_left", "stabilizer_tip_right"),
    "bookshelf": ("top_front_left", "top_front_right", "top_back_left", "top_back_right",
                  "bottom_front_left", "bottom_front_right"),
    "bottle": ("bottom_center", "bottom_rim_left", "bottom_rim_right", "shoulder_left",
               "shoulder_right", "cap_top"),
    "cabinet": ("top_front_left", "top_front_right", "top_back_left", "top_back_right",
                "bottom_front_left", "bottom_front_right"),
    "car": ("wheel_front_left", "wheel_front_right", "wheel_back_left", "wheel_back_right",
            "bumper_front", "bumper_back", "roof_front_left", "roof_front_right",
            "roof_back_left", "roof_back_right"),
    "chair": ("seat_front_left", "seat_front_right", "seat_back_left", "seat_back_right",
              "leg_front_left_end", "leg_front_right_end", "leg_back_left_end",
              "leg_back_right_end", "back_top_left", "back_top_right"),
    "guitar": ("head_top", "neck_joint", "body_bottom", "lower_bout_left", "lower_bout_right",
               "upper_bout_left", "upper_bout_right"),
    "lamp": ("base_bottom_center", "base_rim_front", "shade_bottom_left", "shade_bottom_right",
             "shade_bottom_front", "shade_top_front"),
    "mug": ("bottom_center", "rim_front", "rim_back", "rim_left", "rim_right", "handle_outer"),
    "sofa": ("seat_front_left", "seat_front_right", "back_top_left", "back_top_right",
             "arm_front_left", "arm_front_right"),
    "table": ("top_front_left", "top_front_right", "top_back_left", "top_back_right",
              "leg_front_left_end", "leg_front_right_end", "leg_back_left_end",
              "leg_back_right_end"),
}

# Parts that a shape may lack (drawn at random), everything else is always present.
OPTIONAL_PARTS: dict[str, tuple[str, ...]] = {"airplane": ("engine",), "chair": ("arm",)}

_offsets = np.cumsum([0] + [len(PART_NAMES[c]) for c in CATEGORIES])
PART_OFFSETS: dict[str, int] = {c: int(o) for c, o in zip(CATEGORIES, _offsets)}
NUM_PARTS: int = int(_offsets[-1])    # global part id = PART_OFFSETS[category] + local part id


_PART_COLOURS = np.array([[0.12, 0.47, 0.71], [1.0, 0.5, 0.05], [0.17, 0.63, 0.17],
                          [0.84, 0.15, 0.16], [0.58, 0.4, 0.74], [0.55, 0.34, 0.29]])

# ----------------------------------------------------------------------------- containers

@dataclass
class ShapeMesh:
    """A triangle mesh whose triangles carry part labels, with named keypoints."""
    category: str
    vertices: np.ndarray            # (V, 3) float64
    triangles: np.ndarray           # (T, 3) int64
    triangle_parts: np.ndarray      # (T,) int64, local part id
    keypoints: np.ndarray           # (K, 3) float64, order of KEYPOINT_NAMES[category]

    @property
    def part_names(self) -> tuple[str, ...]:
        return PART_NAMES[self.category]

    @property
    def keypoint_names(self) -> tuple[str, ...]:
        return KEYPOINT_NAMES[self.category]

    def transformed(self, scale: float = 1.0, rotation=None, translation=(0, 0, 0)) -> "ShapeMesh":
        """``x -> scale * R x + t`` applied to vertices and keypoints."""
        R = np.eye(3) if rotation is None else np.asarray(rotation, dtype=np.float64)
        t = np.asarray(translation, dtype=np.float64)
        f = lambda p: scale * p @ R.T + t                                       # noqa: E731
        return ShapeMesh(self.category, f(self.vertices), self.triangles, self.triangle_parts,
                         f(self.keypoints))

    def to_open3d(self):
        """An ``open3d.geometry.TriangleMesh`` with vertex colours by part (each primitive owns
        its vertices, so every vertex belongs to one part)."""
        import open3d as o3d
        mesh = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(self.vertices),
                                         o3d.utility.Vector3iVector(self.triangles.astype(np.int32)))
        vertex_part = np.zeros(len(self.vertices), dtype=np.int64)
        vertex_part[self.triangles.reshape(-1)] = np.repeat(self.triangle_parts, 3)
        mesh.vertex_colors = o3d.utility.Vector3dVector(_PART_COLOURS[vertex_part % len(_PART_COLOURS)])
        return mesh


@dataclass
class Shape:
    """A sampled shape: points with part labels, keypoints, and the mesh they came from."""
    category: str
    points: np.ndarray              # (N, 3) float32
    parts: np.ndarray               # (N,) int64, local part id
    keypoints: np.ndarray           # (K, 3) float32
    mesh: ShapeMesh = field(repr=False)
    seed: int = 0

    @property
    def label(self) -> int:
        return CATEGORIES.index(self.category)

    @property
    def part_names(self) -> tuple[str, ...]:
        return PART_NAMES[self.category]

    @property
    def keypoint_names(self) -> tuple[str, ...]:
        return KEYPOINT_NAMES[self.category]

    @property
    def global_parts(self) -> np.ndarray:
        return self.parts + PART_OFFSETS[self.category]

    def rotated(self, R) -> "Shape":
        """The shape rotated about the origin by ``R (3, 3)`` (numpy or torch, e.g. from
        :func:`shared.pointcloud.points.random_rotation` or :func:`shared.pointcloud.points.random_yaw_rotation`)."""
        R = np.asarray(R.detach().cpu() if hasattr(R, "detach") else R, dtype=np.float64)
        if R.shape != (3, 3) or not np.allclose(R @ R.T, np.eye(3), atol=1e-5):
            raise ValueError(f"R must be a 3 x 3 rotation matrix; got shape {R.shape}")
        return Shape(self.category, (self.points @ R.T).astype(np.float32), self.parts,
                     (self.keypoints @ R.T).astype(np.float32), self.mesh.transformed(rotation=R),
                     self.seed)

    @property
    def keypoint_indices(self) -> np.ndarray:
        """``(K,)`` index of the sampled point nearest to each keypoint (KeypointNet's
        ``pcd_info.point_index``)."""
        d = ((self.points[None, :, :] - self.keypoints[:, None, :]) ** 2).sum(-1)
        return d.argmin(1)


# ----------------------------------------------------------------------------- primitives
# Each returns (vertices (V, 3), triangles (T, 3)); open3d builds boxes and cylinders.

def _o3d_arrays(mesh):
    return np.asarray(mesh.vertices, dtype=np.float64), np.asarray(mesh.triangles, dtype=np.int64)


def box(lo, hi):
    """Axis-aligned box with corners ``lo`` and ``hi``."""
    import open3d as o3d
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    v, t = _o3d_arrays(o3d.geometry.TriangleMesh.create_box(*(hi - lo)))
    return v + lo, t


def cylinder(radius, height, centre, axis="y", resolution=32):
    """Closed cylinder of the given axis ("x", "y" or "z") centred at ``centre``."""
    import open3d as o3d
    v, t = _o3d_arrays(o3d.geometry.TriangleMesh.create_cylinder(radius, height, resolution, 1))
    v = v[:, {"x": [2, 0, 1], "y": [1, 2, 0], "z": [0, 1, 2]}[axis]]   # open3d's axis is z
    return v + np.asarray(centre, float), t


def lathe(profile, resolution=32):
    """Surface of revolution about y of the polyline ``profile = [(r, y), ...]`` (open ends;
    put ``r = 0`` at an end to close it). Vertex angles start at +x, so ±x and ±z lie on it."""
    prof = np.asarray(profile, float)                                        # (P, 2)
    phi = np.arange(resolution) * 2 * math.pi / resolution
    r, y = prof[:, :1], prof[:, 1:]
    v = np.stack([r * np.cos(phi), np.broadcast_to(y, r.shape[:1] + phi.shape),
                  r * np.sin(phi)], -1).reshape(-1, 3)                       # (P*R, 3)
    i = np.arange(len(prof) - 1)[:, None] * resolution
    j = np.arange(resolution)[None, :]
    a, b = i + j, i + (j + 1) % resolution
    c, d = a + resolution, b + resolution
    t = np.concatenate([np.stack([a, c, b], -1).reshape(-1, 3),
                        np.stack([b, c, d], -1).reshape(-1, 3)])
    return v, t


def extrude_outline(outline_xy, z0, z1):
    """Prism between ``z0`` and ``z1`` over a polygon star-shaped about the origin."""
    xy = np.asarray(outline_xy, float)                                       # (M, 2)
    M = len(xy)
    v = np.concatenate([np.c_[xy, np.full(M, z0)], np.c_[xy, np.full(M, z1)],
                        [[0, 0, z0], [0, 0, z1]]])
    j = np.arange(M)
    k = (j + 1) % M
    side = np.concatenate([np.stack([j, k, j + M], -1), np.stack([k, k + M, j + M], -1)])
    caps = np.concatenate([np.stack([np.full(M, 2 * M), k, j], -1),
                           np.stack([np.full(M, 2 * M + 1), j + M, k + M], -1)])
    return v, np.concatenate([side, caps])


def tube(path, radius, resolution=12):
    """A tube of circular section around a polyline ``path (P, 3)`` lying in a plane z = const."""
    p = np.asarray(path, float)
    tang = np.gradient(p, axis=0)
    tang /= np.linalg.norm(tang, axis=1, keepdims=True)
    binorm = np.array([0.0, 0.0, 1.0])
    normal = np.cross(binorm, tang)
    phi = np.arange(resolution) * 2 * math.pi / resolution
    v = (p[:, None, :] + radius * (np.cos(phi)[None, :, None] * normal[:, None, :]
                                   + np.sin(phi)[None, :, None] * binorm)).reshape(-1, 3)
    i = np.arange(len(p) - 1)[:, None] * resolution
    j = np.arange(resolution)[None, :]
    a, b = i + j, i + (j + 1) % resolution
    c, d = a + resolution, b + resolution
    return v, np.concatenate([np.stack([a, b, c], -1).reshape(-1, 3),
                              np.stack([b, d, c], -1).reshape(-1, 3)])


class _Builder:
    """Collects primitives with their part names and the keypoints of one shape."""

    def __init__(self, category: str):
        self.category = category
        self.pieces: list[tuple[np.ndarray, np.ndarray, int]] = []
        self.kps: dict[str, np.ndarray] = {}

    def add(self, part: str, mesh) -> None:
        self.pieces.append((mesh[0], mesh[1], PART_NAMES[self.category].index(part)))

    def kp(self, name: str, xyz) -> None:
        self.kps[name] = np.asarray(xyz, float)

    def build(self) -> ShapeMesh:
        verts, tris, parts, n = [], [], [], 0
        for v, t, p in self.pieces:
            verts.append(v)
            tris.append(t + n)
            parts.append(np.full(len(t), p, dtype=np.int64))
            n += len(v)
        names = KEYPOINT_NAMES[self.category]
        missing = set(names) ^ set(self.kps)
        assert not missing, f"{self.category}: keypoints {missing} defined inconsistently"
        mesh = ShapeMesh(self.category, np.concatenate(verts), np.concatenate(tris),
                         np.concatenate(parts), np.stack([self.kps[k] for k in names]))
        # stand on y = 0, centred in x and z
        lo, hi = mesh.vertices.min(0), mesh.vertices.max(0)
        return mesh.transformed(translation=(-(lo[0] + hi[0]) / 2, -lo[1], -(lo[2] + hi[2]) / 2))


# ----------------------------------------------------------------------------- categories
# Each builder receives a numpy Generator and returns a ShapeMesh in metres.

def _chair(rng) -> ShapeMesh:
    b = _Builder("chair")
    W, D = rng.uniform(0.40, 0.56), rng.uniform(0.40, 0.55)                # seat width (x), depth (z)
    H, t = rng.uniform(0.40, 0.50), rng.uniform(0.03, 0.07)                # seat top height, thickness
    leg, inset = rng.uniform(0.025, 0.05), rng.uniform(0.0, 0.03)
    Hb, tb = rng.uniform(0.35, 0.55), rng.uniform(0.02, 0.05)              # back height, thickness
    b.add("seat", box((-W / 2, H - t, -D / 2), (W / 2, H, D / 2)))
    b.add("back", box((-W / 2, H, -D / 2), (W / 2, H + Hb, -D / 2 + tb)))
    for sx, sz, name in [(1, 1, "front_left"), (-1, 1, "front_right"),
                         (1, -1, "back_left"), (-1, -1, "back_right")]:
        x, z = sx * (W / 2 - inset - leg / 2), sz * (D / 2 - inset - leg / 2)
        b.add("leg", box((x - leg / 2, 0, z - leg / 2), (x + leg / 2, H - t, z + leg / 2)))
        b.kp(f"leg_{name}_end", (x, 0, z))
        b.kp(f"seat_{name}", (sx * W / 2, H, sz * D / 2))
    if rng.uniform() < 0.4:
        aw, ah = rng.uniform(0.04, 0.06), rng.uniform(0.18, 0.25)
        for sx in (1, -1):
            x0, x1 = sorted((sx * W / 2, sx * (W / 2 - aw)))
            b.add("arm", box((x0, H + ah - 0.03, -D / 2 + tb), (x1, H + ah, D / 2)))
            b.add("arm", box((x0, H, D / 2 - aw), (x1, H + ah - 0.03, D / 2)))
    b.kp("back_top_left", (W / 2, H + Hb, -D / 2 + tb / 2))
    b.kp("back_top_right", (-W / 2, H + Hb, -D / 2 + tb / 2))
    return b.build()


def _table(rng) -> ShapeMesh:
    b = _Builder("table")
    W, D = rng.uniform(0.8, 1.6), rng.uniform(0.5, 0.9)
    H, t = rng.uniform(0.65, 0.78), rng.uniform(0.03, 0.06)
    leg, inset = rng.uniform(0.04, 0.08), rng.uniform(0.0, 0.08)
    b.add("top", box((-W / 2, H - t, -D / 2), (W / 2, H, D / 2)))
    for sx, sz, name in [(1, 1, "front_left"), (-1, 1, "front_right"),
                         (1, -1, "back_left"), (-1, -1, "back_right")]:
        x, z = sx * (W / 2 - inset - leg / 2), sz * (D / 2 - inset - leg / 2)
        b.add("leg", box((x - leg / 2, 0, z - leg / 2), (x + leg / 2, H - t, z + leg / 2)))
        b.kp(f"leg_{name}_end", (x, 0, z))
        b.kp(f"top_{name}", (sx * W / 2, H, sz * D / 2))
    return b.build()


def _airplane(rng) -> ShapeMesh:
    b = _Builder("airplane")
    L, r = rng.uniform(3.0, 4.0), rng.uniform(0.15, 0.24)                  # fuselage along z, nose +z
    prof = [(0, 0), (0.3 * r, 0), (r, 0.22 * L), (r, 0.8 * L), (0.55 * r, 0.94 * L), (0, L)]
    fv, ft = lathe(prof)
    b.add("body", (fv[:, [0, 2, 1]] * [1, 1, 1], ft[:, ::-1]))             # y axis -> z axis
    b.kp("nose", (0, 0, L))
    b.kp("tail", (0, 0, 0))
    span, chord, th = rng.uniform(2.6, 4.0), rng.uniform(0.4, 0.7), 0.04
    sweep = math.tan(math.radians(rng.uniform(0, 30)))
    zw, yw = rng.uniform(0.45, 0.6) * L, rng.uniform(-0.5, 0.2) * r
    for sx, side in ((1, "left"), (-1, "right")):
        v, t = box((0.8 * r, yw - th / 2, zw - chord / 2), (span / 2, yw + th / 2, zw + chord / 2))
        v[:, 2] -= sweep * (v[:, 0] - 0.8 * r)
        v[:, 0] *= sx
        b.add("wing", (v, t if sx > 0 else t[:, ::-1]))
        b.kp(f"wing_tip_{side}", (sx * span / 2, yw, zw - sweep * (span / 2 - 0.8 * r)))
    hf, cf = rng.uniform(0.5, 0.9), rng.uniform(0.35, 0.55)
    b.add("tail", box((-0.02, 0.6 * r, 0.03 * L), (0.02, r + hf, 0.03 * L + cf)))
    b.kp("fin_top", (0, r + hf, 0.03 * L + cf / 2))
    ss, cs = rng.uniform(0.5, 0.8), rng.uniform(0.25, 0.4)
    for sx, side in ((1, "left"), (-1, "right")):
        x0, x1 = sorted((sx * 0.4 * r, sx * (0.4 * r + ss)))
        b.add("tail", box((x0, -0.015, 0.03 * L), (x1, 0.015, 0.03 * L + cs)))
        b.kp(f"stabilizer_tip_{side}", (sx * (0.4 * r + ss), 0, 0.03 * L + cs / 2))
    if rng.uniform() < 0.7:
        re, le = rng.uniform(0.08, 0.13), rng.uniform(0.35, 0.55)
        for sx in (1, -1):
            x = sx * rng.uniform(0.3, 0.4) * span / 2
            b.add("engine", cylinder(re, le, (x, yw - th / 2 - re, zw - sweep * (abs(x) - 0.8 * r)),
                                     axis="z", resolution=20))
    return b.build()


def _car(rng) -> ShapeMesh:
    b = _Builder("car")
    L, W = rng.uniform(3.8, 4.8), rng.uniform(1.6, 1.9)
    rw, ww = rng.uniform(0.28, 0.36), rng.uniform(0.18, 0.24)
    y0, hb = 0.6 * rw, rng.uniform(0.45, 0.65)
    b.add("body", box((-W / 2, y0, -L / 2), (W / 2, y0 + hb, L / 2)))
    b.kp("bumper_front", (0, y0 + hb / 2, L / 2))
    b.kp("bumper_back", (0, y0 + hb / 2, -L / 2))
    Wr, Lr, hr = W * rng.uniform(0.8, 0.9), L * rng.uniform(0.4, 0.55), rng.uniform(0.35, 0.5)
    zr, taper = L * rng.uniform(-0.12, 0.05), rng.uniform(0.7, 0.9)
    v, t = box((-Wr / 2, y0 + hb, zr - Lr / 2), (Wr / 2, y0 + hb + hr, zr + Lr / 2))
    top = v[:, 1] > y0 + hb + hr / 2
    v[top, 0] *= taper
    v[top, 2] = zr + (v[top, 2] - zr) * taper
    b.add("roof", (v, t))
    for sx, sz, name in [(1, 1, "front_left"), (-1, 1, "front_right"),
                         (1, -1, "back_left"), (-1, -1, "back_right")]:
        b.kp(f"roof_{name}", (sx * taper * Wr / 2, y0 + hb + hr, zr + sz * taper * Lr / 2))
        xw, zw = sx * (W / 2 + ww / 2 - 0.05), sz * L * rng.uniform(0.3, 0.34)
        b.add("wheel", cylinder(rw, ww, (xw, rw, zw), axis="x", resolution=24))
        b.kp(f"wheel_{name}", (xw + sx * ww / 2, rw, zw))
    return b.build()


def _lamp(rng) -> ShapeMesh:
    b = _Builder("lamp")
    rb, hb = rng.uniform(0.1, 0.18), rng.uniform(0.02, 0.05)
    rp, Hp = rng.uniform(0.01, 0.02), rng.uniform(0.4, 1.4)
    rs1, hs = rng.uniform(0.15, 0.25), rng.uniform(0.15, 0.3)
    rs2 = rs1 * rng.uniform(0.4, 0.8)
    b.add("base", cylinder(rb, hb, (0, hb / 2, 0), axis="y"))
    b.add("pole", cylinder(rp, Hp, (0, hb + Hp / 2, 0), axis="y", resolution=12))
    ys = hb + Hp - 0.6 * hs
    b.add("shade", lathe([(rs1, ys), (rs2, ys + hs)]))
    b.kp("base_bottom_center", (0, 0, 0))
    b.kp("base_rim_front", (0, hb / 2, rb))
    b.kp("shade_bottom_left", (rs1, ys, 0))
    b.kp("shade_bottom_right", (-rs1, ys, 0))
    b.kp("shade_bottom_front", (0, ys, rs1))
    b.kp("shade_top_front", (0, ys + hs, rs2))
    return b.build()


def _mug(rng) -> ShapeMesh:
    b = _Builder("mug")
    R, H = rng.uniform(0.04, 0.06), rng.uniform(0.08, 0.12)
    wall = rng.uniform(0.004, 0.008)
    b.add("body", lathe([(0, 0), (R, 0), (R, H), (R - wall, H), (R - wall, wall), (0, wall)]))
    y1, y2 = H * rng.uniform(0.15, 0.3), H * rng.uniform(0.7, 0.85)
    hw, tr = rng.uniform(0.025, 0.045), rng.uniform(0.005, 0.009)
    a = np.linspace(-math.pi / 2, math.pi / 2, 25)           # odd: a = 0 is a ring
    path = np.stack([R - tr + (hw + tr) * np.cos(a), (y1 + y2) / 2 + (y2 - y1) / 2 * np.sin(a),
                     np.zeros_like(a)], -1)
    b.add("handle", tube(path, tr))
    b.kp("bottom_center", (0, 0, 0))
    b.kp("rim_front", (0, H, R))
    b.kp("rim_back", (0, H, -R))
    b.kp("rim_left", (R, H, 0))
    b.kp("rim_right", (-R, H, 0))
    b.kp("handle_outer", (R + hw + tr, (y1 + y2) / 2, 0))
    return b.build()


def _guitar(rng) -> ShapeMesh:
    b = _Builder("guitar")
    R1 = rng.uniform(0.18, 0.22)
    R2 = R1 * rng.uniform(0.7, 0.85)
    d1, d2 = R1 * rng.uniform(0.5, 0.7), R2 * rng.uniform(0.5, 0.7)
    T = rng.uniform(0.08, 0.12)
    phi = np.arange(96) * 2 * math.pi / 96
    dirs = np.stack([np.cos(phi), np.sin(phi)], -1)                         # rays from the waist
    reach = []
    for cy, rad in ((-d1, R1), (d2, R2)):                                   # union of two circles
        dc = dirs[:, 1] * cy
        reach.append(dc + np.sqrt(dc ** 2 - cy ** 2 + rad ** 2))
    outline = dirs * np.maximum(*reach)[:, None]
    b.add("body", extrude_outline(outline, -T / 2, T / 2))
    wn, tn, Ln = rng.uniform(0.045, 0.06), rng.uniform(0.02, 0.03), rng.uniform(0.4, 0.5)
    yn = d2 + R2 - 0.03
    b.add("neck", box((-wn / 2, yn, -tn / 2), (wn / 2, yn + Ln, tn / 2)))
    wh, Lh = rng.uniform(0.07, 0.09), rng.uniform(0.15, 0.2)
    b.add("head", box((-wh / 2, yn + Ln, -tn / 2), (wh / 2, yn + Ln + Lh, tn / 2)))
    b.kp("head_top", (0, yn + Ln + Lh, 0))
    b.kp("neck_joint", (0, d2 + R2, tn / 2))
    b.kp("body_bottom", (0, -d1 - R1, 0))
    b.kp("lower_bout_left", (R1, -d1, 0))
    b.kp("lower_bout_right", (-R1, -d1, 0))
    b.kp("upper_bout_left", (R2, d2, 0))
    b.kp("upper_bout_right", (-R2, d2, 0))
    return b.build()


def _bottle(rng) -> ShapeMesh:
    b = _Builder("bottle")
    R, Hb = rng.uniform(0.03, 0.05), rng.uniform(0.12, 0.2)
    rn, hs, hn = R * rng.uniform(0.3, 0.45), rng.uniform(0.02, 0.05), rng.uniform(0.03, 0.06)
    rc, hc = rn * 1.15, rng.uniform(0.015, 0.025)
    b.add("body", lathe([(0, 0), (R, 0), (R, Hb), (rn, Hb + hs)]))
    b.add("neck", lathe([(rn, Hb + hs), (rn, Hb + hs + hn)]))
    yc = Hb + hs + hn - 0.3 * hc
    b.add("cap", lathe([(rc, yc), (rc, yc + hc), (0, yc + hc)]))
    b.kp("bottom_center", (0, 0, 0))
    b.kp("bottom_rim_left", (R, 0, 0))
    b.kp("bottom_rim_right", (-R, 0, 0))
    b.kp("shoulder_left", (R, Hb, 0))
    b.kp("shoulder_right", (-R, Hb, 0))
    b.kp("cap_top", (0, yc + hc, 0))
    return b.build()


def _sofa(rng) -> ShapeMesh:
    b = _Builder("sofa")
    W, D = rng.uniform(1.4, 2.2), rng.uniform(0.8, 1.0)
    hs, hb, tb = rng.uniform(0.35, 0.45), rng.uniform(0.35, 0.5), rng.uniform(0.15, 0.25)
    aw, ha = rng.uniform(0.12, 0.2), rng.uniform(0.15, 0.25)
    b.add("seat", box((-W / 2 + aw, 0, -D / 2 + tb), (W / 2 - aw, hs, D / 2)))
    b.add("back", box((-W / 2, 0, -D / 2), (W / 2, hs + hb, -D / 2 + tb)))
    for sx, side in ((1, "left"), (-1, "right")):
        x0, x1 = sorted((sx * (W / 2 - aw), sx * W / 2))
        b.add("arm", box((x0, 0, -D / 2 + tb), (x1, hs + ha, D / 2)))
        b.kp(f"seat_front_{side}", (sx * (W / 2 - aw), hs, D / 2))
        b.kp(f"back_top_{side}", (sx * W / 2, hs + hb, -D / 2 + tb / 2))
        b.kp(f"arm_front_{side}", (sx * (W / 2 - aw / 2), hs + ha, D / 2))
    return b.build()


def _cabinet(rng) -> ShapeMesh:
    b = _Builder("cabinet")
    W, H, D = rng.uniform(0.4, 1.0), rng.uniform(0.6, 1.2), rng.uniform(0.35, 0.6)
    b.add("body", box((-W / 2, 0, -D / 2), (W / 2, H, D / 2)))
    n_doors, gap, m = (1 if W < 0.6 else 2), 0.01, 0.03
    dw = (W - 2 * m - (n_doors - 1) * gap) / n_doors
    for i in range(n_doors):
        x0 = -W / 2 + m + i * (dw + gap)
        b.add("door", box((x0, m, D / 2), (x0 + dw, H - m, D / 2 + 0.02)))
    for sx, side in ((1, "left"), (-1, "right")):
        b.kp(f"top_front_{side}", (sx * W / 2, H, D / 2))
        b.kp(f"top_back_{side}", (sx * W / 2, H, -D / 2))
        b.kp(f"bottom_front_{side}", (sx * W / 2, 0, D / 2))
    return b.build()


def _bookshelf(rng) -> ShapeMesh:
    b = _Builder("bookshelf")
    W, H, D = rng.uniform(0.6, 1.2), rng.uniform(1.0, 2.0), rng.uniform(0.25, 0.4)
    t = rng.uniform(0.015, 0.03)
    b.add("frame", box((-W / 2, 0, -D / 2), (-W / 2 + t, H, D / 2)))
    b.add("frame", box((W / 2 - t, 0, -D / 2), (W / 2, H, D / 2)))
    b.add("frame", box((-W / 2 + t, H - t, -D / 2), (W / 2 - t, H, D / 2)))
    b.add("frame", box((-W / 2 + t, 0, -D / 2), (W / 2 - t, t, D / 2)))
    b.add("frame", box((-W / 2 + t, t, -D / 2), (W / 2 - t, H - t, -D / 2 + t)))
    n = int(rng.integers(2, 5))
    for i in range(1, n + 1):
        y = i * H / (n + 1)
        b.add("shelf", box((-W / 2 + t, y - t / 2, -D / 2 + t), (W / 2 - t, y + t / 2, D / 2)))
    for sx, side in ((1, "left"), (-1, "right")):
        b.kp(f"top_front_{side}", (sx * W / 2, H, D / 2))
        b.kp(f"top_back_{side}", (sx * W / 2, H, -D / 2))
        b.kp(f"bottom_front_{side}", (sx * W / 2, 0, D / 2))
    return b.build()


_BUILDERS = {"airplane": _airplane, "bookshelf": _bookshelf, "bottle": _bottle,
             "cabinet": _cabinet, "car": _car, "chair": _chair, "guitar": _guitar, "lamp": _lamp,
             "mug": _mug, "sofa": _sofa, "table": _table}


# ----------------------------------------------------------------------------- public API

def _check_category(category: str) -> None:
    if category not in _BUILDERS:
        raise ValueError(f"unknown shape category {category!r}; "
                         f"choose one of {', '.join(CATEGORIES)}")


def make_mesh(category: str, seed: int) -> ShapeMesh:
    """The mesh of one ``category`` shape drawn with ``seed``, in metres (y up, front +z,
    standing on y = 0, centred in x and z)."""
    _check_category(category)
    ss = np.random.SeedSequence([int(seed), CATEGORIES.index(category)])
    return _BUILDERS[category](np.random.default_rng(ss))


def sample_surface(mesh: ShapeMesh, n_points: int, rng: np.random.Generator):
    """``n_points`` points uniform on the surface -> ``(points (N, 3), parts (N,))``."""
    if n_points < 1:
        raise ValueError(f"n_points must be >= 1; got {n_points}")
    tri = mesh.vertices[mesh.triangles]                                     # (T, 3, 3)
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    which = rng.choice(len(tri), size=n_points, p=area / area.sum())
    u, v = rng.random(n_points), rng.random(n_points)
    flip = u + v > 1                                                        # fold into the triangle
    u[flip], v[flip] = 1 - u[flip], 1 - v[flip]
    t = tri[which]
    pts = t[:, 0] + u[:, None] * (t[:, 1] - t[:, 0]) + v[:, None] * (t[:, 2] - t[:, 0])
    return pts, mesh.triangle_parts[which]


def unit_sphere_transform(mesh: ShapeMesh) -> tuple[float, np.ndarray]:
    """``(scale, translation)`` mapping the mesh's bounding-box centre to the origin and its
    farthest vertex to radius 1."""
    centre = (mesh.vertices.min(0) + mesh.vertices.max(0)) / 2
    scale = 1.0 / np.linalg.norm(mesh.vertices - centre, axis=1).max()
    return scale, -scale * centre


def make_shape(category: str, seed: int, n_points: int = 2048, normalize: bool = True) -> Shape:
    """Sample one shape: ``n_points`` surface points with part labels, and its keypoints.

    ``normalize``: centre the bounding box and scale into the unit sphere (default); otherwise
    metres, standing on y = 0. Deterministic in ``(category, seed, n_points)``."""
    mesh = make_mesh(category, seed)
    if normalize:
        scale, shift = unit_sphere_transform(mesh)
        mesh = mesh.transformed(scale=scale, translation=shift)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), CATEGORIES.index(category), 1]))
    pts, parts = sample_surface(mesh, n_points, rng)
    return Shape(category, pts.astype(np.float32), parts.astype(np.int64),
                 mesh.keypoints.astype(np.float32), mesh, int(seed))


def make_dataset(categories=CATEGORIES, per_category: int = 8, n_points: int = 2048,
                 seed: int = 0) -> dict[str, np.ndarray]:
    """Arrays in the layout of the PointNet HDF5 files, shapes ordered by category then seed:
    ``data (M, N, 3) float32``, ``label (M,) int64`` (index into ``categories``), ``pid (M, N)``
    local part ids, ``keypoints`` ``(M, K, 3)`` (only when all categories have the same K)."""
    shapes = [make_shape(c, seed * 1_000_003 + i, n_points) for c in categories
              for i in range(per_category)]
    out = {"data": np.stack([s.points for s in shapes]),
           "label": np.array([list(categories).index(s.category) for s in shapes], dtype=np.int64),
           "pid": np.stack([s.parts for s in shapes])}
    if len({len(KEYPOINT_NAMES[c]) for c in categories}) == 1:
        out["keypoints"] = np.stack([s.keypoints for s in shapes])
    return out


# ----------------------------------------------------------------------------- command line

def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="Render procedural shapes to a PNG (coloured by part, "
                                             "keypoints as labelled dots).")
    ap.add_argument("--category", default="chair", help=f"one of {', '.join(CATEGORIES)}, or 'all'")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--points", type=int, default=4096)
    ap.add_argument("--out", default="shape.png", help="PNG path")
    args = ap.parse_args(argv)
    from .render import render_grid, render_points

    if args.category == "all":
        shapes = [make_shape(c, args.seed, args.points) for c in CATEGORIES]
        render_grid([dict(points=s.points, labels=s.parts, keypoints=s.keypoints, title=s.category)
                     for s in shapes], args.out)
    else:
        _check_category(args.category)
        s = make_shape(args.category, args.seed, args.points)
        render_points(s.points, args.out, labels=s.parts, label_names=s.part_names,
                      keypoints=s.keypoints, keypoint_names=s.keypoint_names,
                      title=f"{s.category} (seed {s.seed}): parts and keypoints")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
