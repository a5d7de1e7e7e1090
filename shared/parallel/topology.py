"""Process-group topology: how ranks are laid out for each kind of parallelism.

Every mode arranges the world as ``data × model``: the model-parallel grid (tensor, sequence or
expert ranks) is innermost and contiguous, so that it sits on one node when it fits, and data
parallelism runs over the remaining ranks::

    global_rank = data_rank * grid_size + t        # t = rank inside the model-parallel grid

Coordinates of ``t`` per mode (``q`` is the side of the grid, ``d`` the 2.5D depth):

=========  =======================  ==========================================================
mode       grid size                 coordinates of t and the group families built
=========  =======================  ==========================================================
data       1                         data only
1d         p                         ``tensor = t``                       (Megatron)
2d         q²                        ``t = r·q + c``; ``row`` varies c (local rank c),
                                     ``col`` varies r (local rank r)     (Optimus / SUMMA)
2p5d       q²·d                      ``t = c + q·r + q²·k``; ``row`` (c), ``col`` (r),
                                     ``dep`` (k), ``xz`` (r and k, local index r + q·k)
3d         q³                        ``t = i + q·j + q²·k``; ``weight`` (i), ``input`` (j),
                                     ``output`` (k), ``input_x_weight`` (i, j; local i + q·j),
                                     ``output_x_weight`` (i, k; local i + q·k)
seq        n                         ``seq = t``                          (Ring Self-Attention)
expert     e                         ``expert = t``                       (expert parallelism)
=========  =======================  ==========================================================

Every mode also has the families ``tensor`` (the whole grid: one group per data replica; for
``seq`` and ``expert`` it is the same group as ``seq``/``expert``) and ``data`` (ranks with the
same ``t``, one group per ``t``).

Note the naming trap of ColossalAI, which this module does *not* copy: there ``row_rank`` is the
local rank in the COL group. Here ``coords["row"]`` is ``r`` and ``groups["row"]`` is the group of
ranks sharing ``r``.

The math (``grid_shape``, ``coordinates``, ``group_members``) is pure Python and testable without
processes; :func:`build_topology` creates the torch process groups.
"""
from __future__ import annotations

import math

from ..errors import UsageError
from dataclasses import dataclass, field

MODES = ("data", "1d", "2d", "2p5d", "3d", "seq", "expert")

_FAMILIES = {
    "data": (),
    "1d": ("tensor",),
    "2d": ("row", "col", "tensor"),
    "2p5d": ("row", "col", "dep", "xz", "tensor"),
    "3d": ("weight", "input", "output", "input_x_weight", "output_x_weight", "tensor"),
    "seq": ("seq", "tensor"),
    "expert": ("expert", "tensor"),
}


class TopologyError(UsageError):
    """An impossible world size or grid for a parallel mode (the message lists valid sizes)."""


class Group:
    """A process group seen from one rank.

    Attributes:
        name: ``"<mode>.<family>"`` (e.g. ``"2d.row"``); communication is counted under this name.
        ranks: global ranks of the members, in group-rank order.
        rank: this process's index in ``ranks`` (-1 when it is not a member).
        pg: the torch ``ProcessGroup``, or ``None`` for a group of one / a single process.
    """

    def __init__(self, name: str, ranks, rank: int, pg=None):
        self.name = name
        self.ranks = tuple(int(r) for r in ranks)
        self.rank = rank
        self.pg = pg

    @property
    def size(self) -> int:
        return len(self.ranks)

    def global_rank(self, group_rank: int) -> int:
        """Global rank of the member with index ``group_rank`` in this group."""
        return self.ranks[group_rank]

    def __repr__(self) -> str:
        return f"Group({self.name!r}, ranks={list(self.ranks)}, rank={self.rank})"


def single_group(name: str = "single") -> Group:
    """A group holding only this process: every collective on it is a no-op."""
    return Group(name, (0,), 0, None)


def _isqrt_exact(n: int) -> int | None:
    q = math.isqrt(n)
    return q if q * q == n else None


def _icbrt_exact(n: int) -> int | None:
    q = round(n ** (1.0 / 3.0))
    for c in (q - 1, q, q + 1):
        if c > 0 and c ** 3 == n:
            return c
    return None


def _nearest(n: int, valid) -> str:
    below = [v for v in valid if v <= n]
    above = [v for v in valid if v > n]
    opts = ([below[-1]] if below else []) + ([above[0]] if above else [])
    return " or ".join(str(v) for v in opts)


def grid_shape(mode: str, grid_size: int, depth: int = 1) -> dict[str, int]:
    """Validate a model-parallel grid and return its sides.

    Returns e.g. ``{"q": 2}`` for 2d/3d, ``{"q": 2, "d": 2}`` for 2p5d, ``{"p": 4}`` for 1d.
    Raises ValueError naming the constraint and valid alternatives.
    """
    if mode not in MODES:
        raise TopologyError(f"unknown parallel mode {mode!r}; choose one of {', '.join(MODES)}")
    if grid_size < 1:
        raise TopologyError(f"the {mode} grid needs at least one rank; got {grid_size}")
    if mode == "data":
        if grid_size != 1:
            raise TopologyError("data parallelism has no model-parallel grid; its grid size is 1")
        return {}
    if mode in ("1d", "seq", "expert"):
        return {"p": grid_size}
    if mode == "2d":
        q = _isqrt_exact(grid_size)
        if q is None:
            raise TopologyError(
                f"2D tensor parallelism needs a square number of ranks; got {grid_size} "
                f"(try {_nearest(grid_size, [i * i for i in range(1, 33)])})")
        return {"q": q}
    if mode == "2p5d":
        if depth < 1 or grid_size % depth:
            raise TopologyError(
                f"2.5D tensor parallelism needs q²·d ranks with depth d dividing them; "
                f"got {grid_size} ranks and d={depth}")
        q = _isqrt_exact(grid_size // depth)
        if q is None:
            raise TopologyError(
                f"2.5D tensor parallelism needs q²·d ranks; got {grid_size} with d={depth}, "
                f"and {grid_size // depth} is not a square "
                f"(try {_nearest(grid_size, [i * i * depth for i in range(1, 33)])} ranks)")
        return {"q": q, "d": depth}
    q = _icbrt_exact(grid_size)  # 3d
    if q is None:
        raise TopologyError(
            f"3D tensor parallelism needs a cube number of ranks; got {grid_size} "
            f"(try {_nearest(grid_size, [i ** 3 for i in range(1, 17)])})")
    return {"q": q}


def coordinates(mode: str, t: int, grid_size: int, depth: int = 1) -> dict[str, int]:
    """Coordinates of grid rank ``t`` (see the module docstring for the maps)."""
    shape = grid_shape(mode, grid_size, depth)
    if not 0 <= t < max(grid_size, 1):
        raise TopologyError(f"grid rank {t} is outside a grid of {grid_size}")
    if mode == "data":
        return {}
    if mode == "1d":
        return {"tensor": t}
    if mode in ("seq", "expert"):
        return {mode: t}
    q = shape["q"]
    if mode == "2d":
        return {"r": t // q, "c": t % q}
    if mode == "2p5d":
        return {"c": t % q, "r": (t // q) % q, "k": t // (q * q)}
    return {"i": t % q, "j": (t // q) % q, "k": t // (q * q)}


def grid_rank(mode: str, coords: dict[str, int], grid_size: int, depth: int = 1) -> int:
    """Inverse of :func:`coordinates`."""
    shape = grid_shape(mode, grid_size, depth)
    if mode == "data":
        return 0
    if mode == "1d":
        return coords["tensor"]
    if mode in ("seq", "expert"):
        return coords[mode]
    q = shape["q"]
    if mode == "2d":
        return coords["r"] * q + coords["c"]
    if mode == "2p5d":
        return coords["c"] + q * coords["r"] + q * q * coords["k"]
    return coords["i"] + q * coords["j"] + q * q * coords["k"]


def _family_key(mode: str, family: str, t: int, grid_size: int, depth: int):
    """(key identifying the group of t in this family, local index of t in it)."""
    if family == "tensor" or family == mode:  # 1d/seq/expert, or the whole grid
        return 0, t
    c = coordinates(mode, t, grid_size, depth)
    q = grid_shape(mode, grid_size, depth)["q"]
    if mode == "2d":
        return {"row": ((c["r"],), c["c"]), "col": ((c["c"],), c["r"])}[family]
    if mode == "2p5d":
        return {
            "row": ((c["r"], c["k"]), c["c"]),
            "col": ((c["c"], c["k"]), c["r"]),
            "dep": ((c["r"], c["c"]), c["k"]),
            "xz": ((c["c"],), c["r"] + q * c["k"]),
        }[family]
    return {  # 3d
        "weight": ((c["j"], c["k"]), c["i"]),
        "input": ((c["i"], c["k"]), c["j"]),
        "output": ((c["i"], c["j"]), c["k"]),
        "input_x_weight": ((c["k"],), c["i"] + q * c["j"]),
        "output_x_weight": ((c["j"],), c["i"] + q * c["k"]),
    }[family]


def check_world(mode: str, world_size: int, grid_size: int | None = None, depth: int = 1) -> int:
    """Validate ``world_size`` for a mode; returns the grid size (default: the whole world)."""
    if world_size < 1:
        raise TopologyError(f"world size must be at least 1; got {world_size}")
    if grid_size is None:
        grid_size = 1 if mode == "data" else world_size
    grid_shape(mode, grid_size, depth)
    if world_size % grid_size:
        sizes = sorted({grid_size * max(1, world_size // grid_size),
                        grid_size * (world_size // grid_size + 1)})
        raise TopologyError(
            f"world size {world_size} is not a multiple of the {mode} grid size {grid_size}: "
            f"data parallelism takes the remaining ranks, so use a world size of "
            f"{' or '.join(str(v) for v in sizes)}")
    return grid_size


def group_members(mode: str, world_size: int, grid_size: int | None = None,
                  depth: int = 1) -> dict[str, list[tuple[int, ...]]]:
    """All groups of every family, as tuples of global ranks in group-rank order.

    The order of families and of groups within a family is deterministic: every rank must create
    torch process groups in the same order.
    """
    grid_size = check_world(mode, world_size, grid_size, depth)
    dp = world_size // grid_size
    out: dict[str, list[tuple[int, ...]]] = {}
    for family in _FAMILIES[mode]:
        groups: dict[tuple, list[tuple[int, int]]] = {}
        for d in range(dp):
            for t in range(grid_size):
                key, local = _family_key(mode, family, t, grid_size, depth)
                groups.setdefault((d, key), []).append((local, d * grid_size + t))
        out[family] = [tuple(g for _, g in sorted(m)) for _, m in sorted(groups.items())]
    out["data"] = [tuple(d * grid_size + t for d in range(dp)) for t in range(grid_size)]
    return out


@dataclass
class Topology:
    """This rank's view of a layout: its coordinates and one :class:`Group` per family.

    Attributes:
        mode: one of :data:`MODES`.
        world_size, rank: of the whole job.
        grid_size: ranks in the model-parallel grid; ``dp_size = world_size // grid_size``.
        shape: the grid's sides (``q``, ``d`` or ``p``).
        coords: this rank's grid coordinates plus ``"data"`` (its data-parallel index).
        groups: family name → :class:`Group` containing this rank.
    """
    mode: str
    world_size: int
    rank: int
    grid_size: int
    depth: int = 1
    shape: dict = field(default_factory=dict)
    coords: dict = field(default_factory=dict)
    groups: dict = field(default_factory=dict)

    @property
    def dp_size(self) -> int:
        return self.world_size // self.grid_size

    @property
    def grid_rank(self) -> int:
        return self.rank % self.grid_size

    def __getitem__(self, family: str) -> Group:
        try:
            return self.groups[family]
        except KeyError:
            raise KeyError(f"the {self.mode} topology has no {family!r} group; "
                           f"it has {', '.join(self.groups)}") from None


def build_topology(mode: str, world_size: int | None = None, rank: int | None = None,
                   grid_size: int | None = None, depth: int = 1) -> Topology:
    """Create the process groups of ``mode`` and return this rank's :class:`Topology`.

    With torch.distributed initialised, ``world_size``/``rank`` default to the job's, and every rank
    must call this with the same arguments (groups are created collectively). Without it, a
    single-process topology is returned (all groups of size one, collectives become no-ops).
    ``grid_size`` defaults to the whole world (no data parallelism); ``depth`` is the 2.5D ``d``.
    """
    import torch.distributed as dist

    initialised = dist.is_available() and dist.is_initialized()
    if world_size is None:
        world_size = dist.get_world_size() if initialised else 1
    if rank is None:
        rank = dist.get_rank() if initialised else 0
    grid_size = check_world(mode, world_size, grid_size, depth)
    members = group_members(mode, world_size, grid_size, depth)
    groups: dict[str, Group] = {}
    for family, lists in members.items():
        for ranks in lists:
            pg = None
            if initialised and len(ranks) > 1:
                # every rank creates every group, in the same order
                pg = dist.new_group(list(ranks)) if len(ranks) < world_size else dist.group.WORLD
            if rank in ranks:
                groups[family] = Group(f"{mode}.{family}", ranks, ranks.index(rank), pg)
    t = rank % grid_size
    coords = coordinates(mode, t, grid_size, depth)
    coords["data"] = rank // grid_size
    return Topology(mode, world_size, rank, grid_size, depth,
                    grid_shape(mode, grid_size, depth), coords, groups)


def world_group() -> Group:
    """The whole job as one :class:`Group` (a group of one in a single process)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return single_group("world")
    n = dist.get_world_size()
    return Group("world", range(n), dist.get_rank(), dist.group.WORLD if n > 1 else None)
