"""Closed-form communication of one transformer layer, and an alpha-beta step-time model.

1. :func:`layer_collectives` lists, for one pre-LN transformer layer (LN, qkv, attention, proj,
   LN, fc1, GELU, fc2) and one training step (forward + backward), every collective a rank of
   each mode issues, with the size ``M`` (elements of the full logical tensor) that the comm
   layer (``shared/parallel/comm.py``) counts. It follows the layer code of this package (the
   brief's formulas for the Linears, plus the LayerNorm statistics, bias and γ/β collectives and
   the 2.5D depth all-reduce). ``reproduce.py`` checks that the bytes the comm layer
   *measures* equal it.

   Per Linear (k in, n out, N tokens of the global batch), elements sent per rank:
   1D 2(P−1)/P·N·n or ·N·k; 2D 3(q−1)(Nk+kn)/q²; 2.5D 3(q−1)(Nk/d+kn)/q² + 2(d−1)/d·kn/q²;
   3D 2(q−1)(Nk+kn+Nn)/q³ (the brief's table).

2. :class:`Cluster` + :func:`step_time`: the alpha-beta model ``t = Σ calls·α·steps + bytes/β``
   over the collectives (ring algorithm: all-reduce 2(g−1) steps, the others g−1), with the link
   chosen by whether the group spans nodes and, for a shared NIC, divided among the groups that
   leave a node at once (:func:`link`), plus ``flops / flop_rate`` compute, no overlap. Every
   assumption is a field of :class:`Cluster` (GPUs per node, intra- and inter-node α and β,
   per-GPU or shared NIC, placement of ranks on nodes); the defaults describe a V100 cluster
   like the papers' (4 V100 per node with NVLink 2, InfiniBand EDR between nodes) and are
   *our* assumptions, not numbers from the papers.
"""
from __future__ import annotations

from dataclasses import dataclass

from shared.parallel.topology import grid_shape, group_members

RING = {"all_reduce": lambda g: 2.0 * (g - 1) / g, "all_gather": lambda g: (g - 1) / g,
        "reduce_scatter": lambda g: (g - 1) / g, "broadcast": lambda g: (g - 1) / g,
        "reduce": lambda g: (g - 1) / g}
STEPS = {"all_reduce": lambda g: 2 * (g - 1), "all_gather": lambda g: g - 1,
         "reduce_scatter": lambda g: g - 1, "broadcast": lambda g: g - 1, "reduce": lambda g: g - 1}


@dataclass
class Coll:
    """``calls`` collectives ``op`` of ``elements`` (full logical tensor) on a ``family`` group,
    in the forward (``phase="fwd"``) or backward pass."""
    family: str
    size: int
    op: str
    elements: float
    calls: int = 1
    phase: str = "fwd"

    @property
    def sent_elements(self) -> float:
        return self.calls * RING[self.op](self.size) * self.elements if self.size > 1 else 0.0


def _linears(h: int):
    """(k, n) of qkv, proj, fc1, fc2 (all with bias)."""
    return [(h, 3 * h), (h, h), (h, 4 * h), (4 * h, h)]


def layer_collectives(mode: str, P: int, N: int, h: int, depth: int = 1) -> list[Coll]:
    """Every collective of one transformer layer, forward + backward, on one rank."""
    C = Coll
    out: list[Coll] = []
    if mode == "1d":
        # row proj, fc2: all-reduce Y [N, h] forward; column qkv, fc1: all-reduce dX backward
        return [C("tensor", P, "all_reduce", N * h, 2, "fwd"),
                C("tensor", P, "all_reduce", N * h, 2, "bwd")]
    if mode in ("2d", "2p5d"):
        d = depth if mode == "2p5d" else 1
        q = grid_shape(mode, P, d)["q"]
        Nd = N / d                                          # tokens of one depth slice
        for k, n in _linears(h):
            x_blk, w_blk = Nd * k / q ** 2, k * n / q ** 2
            out += [C("row", q, "broadcast", x_blk, q, "fwd"),        # X(r,t) along row
                    C("col", q, "broadcast", w_blk, q, "fwd"),        # W(t,c) along col
                    C("col", q, "all_gather", n / q, 1, "fwd"),       # bias pieces
                    C("col", q, "broadcast", w_blk, q, "bwd"),        # W for dX
                    C("row", q, "reduce", x_blk, q, "bwd"),           # dX(r,t) to its owner
                    C("row", q, "broadcast", x_blk, q, "bwd"),        # X for dW
                    C("col", q, "reduce", w_blk, q, "bwd"),           # dW(t,c) to its owner
                    C("col", q, "reduce_scatter", n / q, 1, "bwd"),   # db pieces
                    C("dep", d, "all_reduce", w_blk, 1, "bwd"),       # dW over depth
                    C("dep", d, "all_reduce", n / q ** 2, 1, "bwd")]  # db over depth
        for _ in range(2):                                            # ln1, ln2
            out += [C("row", q, "all_reduce", Nd / q, 2, "fwd"),      # Σx, then Σ(x−mean)²
                    C("col", q, "all_gather", h / q, 2, "fwd"),       # γ, β
                    C("row", q, "all_reduce", 2 * Nd / q, 1, "bwd"),  # (Σg, Σg·x̂)
                    C("col", q, "reduce_scatter", h / q, 2, "bwd"),
                    C("dep", d, "all_reduce", h / q ** 2, 2, "bwd")]
        return [c for c in out if c.size > 1]
    if mode == "3d":
        q = grid_shape(mode, P)["q"]
        # the two Linears of a pair use swapped input/output groups; sizes are the same (q)
        for k, n in _linears(h):
            out += [C("input/output", q, "all_gather", N * k / q ** 2, 1, "fwd"),     # X
                    C("weight", q, "all_gather", k * n / q ** 2, 1, "fwd"),           # W
                    C("output/input", q, "reduce_scatter", N * n / q ** 2, 1, "fwd"),  # Y
                    C("output/input", q, "all_gather", N * n / q ** 2, 1, "bwd"),     # dY
                    C("input/output", q, "reduce_scatter", N * k / q ** 2, 1, "bwd"),  # dX
                    C("weight", q, "reduce_scatter", k * n / q ** 2, 1, "bwd"),       # dW
                    C("x_weight", q * q, "all_reduce", n / q, 1, "bwd")]              # db
        for _ in range(2):
            out += [C("output", q, "all_reduce", N / q ** 2, 2, "fwd"),   # Σx, Σ(x−mean)²
                    C("output", q, "all_reduce", 2 * N / q ** 2, 1, "bwd"),   # (Σg, Σg·x̂)
                    C("input_x_weight", q * q, "all_reduce", h / q, 2, "bwd")]        # dγ, dβ
        return [c for c in out if c.size > 1]
    raise ValueError(f"unknown mode {mode!r}; choose 1d, 2d, 2p5d or 3d")


def layer_sent_bytes(mode: str, P: int, N: int, h: int, depth: int = 1,
                     bytes_per_element: int = 4) -> float:
    return bytes_per_element * sum(c.sent_elements for c in layer_collectives(mode, P, N, h, depth))


def layer_calls(mode: str, P: int, N: int, h: int, depth: int = 1) -> int:
    return sum(c.calls for c in layer_collectives(mode, P, N, h, depth))


def layer_flops(N: int, s: int, h: int, backward: bool = True, attention: bool = True) -> float:
    """Serial FLOPs of one layer: 24·N·h² (the four Linears) + 4·N·s·h (QKᵀ and AV over the
    full square; ``attention=False`` leaves them out); the backward pass doubles it."""
    fwd = 24 * N * h * h + (4 * N * s * h if attention else 0)
    return 3 * fwd if backward else fwd


# ----------------------------------------------------------------------------------------------
# alpha-beta model

@dataclass
class Cluster:
    """The network and GPUs the projection assumes: every field is an input (``reproduce.py``
    takes them as flags). Defaults (our assumptions, not the papers' numbers):

    * ``gpus_per_node`` 4: TACC Longhorn/Frontera-style nodes with 4 GPUs;
    * intra-node link NVLink 2: ``beta_intra`` 75 GB/s per direction per GPU, ``alpha_intra`` 5 µs;
    * inter-node InfiniBand EDR 100 Gb/s: ``beta_inter`` 12.5 GB/s, ``alpha_inter`` 10 µs;
    * ``nic``: ``"per_gpu"`` = each GPU has its own inter-node link of ``beta_inter``;
      ``"shared"`` = one such link per node, shared by every group of a family whose ring
      leaves that node during the same collective (all groups of a family run at once);
    * ``placement``: ``"contiguous"`` = global rank r on node r // gpus_per_node (the order of
      shared/parallel/topology.py, grid innermost); ``"round_robin"`` = node r mod nodes;
    * ``flop_rate`` 62.5 TFLOP/s: half the V100's 125 TFLOP/s fp16 tensor-core peak, a typical
      achieved rate for large matmuls in mixed precision;
    * ``bytes_per_element`` 2 (fp16 activations and weights on the wire).
    """
    gpus_per_node: int = 4
    alpha_intra: float = 5e-6
    beta_intra: float = 75e9
    alpha_inter: float = 10e-6
    beta_inter: float = 12.5e9
    nic: str = "per_gpu"
    placement: str = "contiguous"
    flop_rate: float = 62.5e12
    bytes_per_element: int = 2

    def node(self, rank: int, P: int) -> int:
        if self.placement == "contiguous":
            return rank // self.gpus_per_node
        if self.placement == "round_robin":
            return rank % max(1, -(-P // self.gpus_per_node))
        raise ValueError(f"placement {self.placement!r}: choose contiguous or round_robin")


def _families(mode: str, family: str) -> tuple[str, ...]:
    """The topology families a cost-model family stands for (3D alternates input/output)."""
    if mode == "3d" and family in ("input/output", "output/input"):
        return ("input", "output")
    if mode == "3d" and family == "x_weight":
        return ("input_x_weight", "output_x_weight")
    return (family,)


def link(mode: str, P: int, depth: int, family: str, cluster: Cluster) -> tuple[float, float]:
    """(latency α, bandwidth β per rank) of a collective on ``family``: intra-node when no group
    of the family spans nodes; otherwise the inter-node link, divided with a shared NIC by the
    number of the family's node-spanning groups present on the busiest node (their rings leave
    that node at the same time; a ring ordered by node leaves each node once)."""
    if cluster.nic not in ("per_gpu", "shared"):
        raise ValueError(f"nic {cluster.nic!r}: choose per_gpu or shared")
    members = group_members(mode, P, depth=depth)
    share, spans = 1, False
    for fam in _families(mode, family):
        per_node: dict[int, int] = {}
        for group in members[fam]:
            nodes = {cluster.node(r, P) for r in group}
            if len(nodes) > 1:
                spans = True
                for n in nodes:
                    per_node[n] = per_node.get(n, 0) + 1
        if per_node and cluster.nic == "shared":
            share = max(share, max(per_node.values()))
    if not spans:
        return cluster.alpha_intra, cluster.beta_intra
    return cluster.alpha_inter, min(cluster.beta_intra, cluster.beta_inter / share)


def step_time(mode: str, P: int, N: int, s: int, h: int, layers: int, depth: int = 1,
              cluster: Cluster | None = None, backward: bool = True) -> dict:
    """Projected seconds per step of ``layers`` transformer layers: compute + communication
    (no overlap)."""
    cluster = cluster or Cluster()
    colls = layer_collectives(mode, P, N, h, depth)
    if not backward:                                   # inference: the forward pass only
        colls = [c for c in colls if c.phase == "fwd"]
    comm = 0.0
    for c in colls:
        alpha, beta = link(mode, P, depth, c.family, cluster)
        comm += c.calls * STEPS[c.op](c.size) * alpha
        comm += c.sent_elements * cluster.bytes_per_element / beta
    compute = layer_flops(N, s, h, backward) / P / cluster.flop_rate
    return {"compute_s": layers * compute, "comm_s": layers * comm,
            "step_s": layers * (compute + comm)}
