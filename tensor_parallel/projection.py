"""The alpha-beta projection of step times to the papers' GPU counts (a MODEL, not a
measurement): per mode at 8, 16 and 64 GPUs, with a NIC per GPU and one NIC shared per node side
by side. ``make bench-tensor_parallel`` writes its table; ``reproduce`` compares the papers'
claims with it. Every network assumption is an input (:class:`NetworkFlags`)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from shared.parallel import build_topology
from shared.train import ConfigError

from .cost_model import Cluster, step_time
from .models import GPTConfig
from .parallel import check_shapes

# projection workload (ours; the papers' per-config tables are not in the brief)
PROJ = dict(batch=128, seq=512, hidden=4096, heads=64, layers=24)
NICS = {"per-GPU NIC": "per_gpu", "shared NIC": "shared"}


def projection_table(cluster: Cluster) -> list[dict]:
    """Projected step time per mode at 8, 16 and 64 GPUs (alpha-beta model), with each GPU
    having its own inter-node link and with one link shared per node, side by side."""
    b, s, h, L = PROJ["batch"], PROJ["seq"], PROJ["hidden"], PROJ["layers"]
    N = b * s
    grids = {8: [("1d", 1), ("2p5d", 2), ("3d", 1)],
             16: [("1d", 1), ("2d", 1), ("2p5d", 4)],
             64: [("1d", 1), ("2d", 1), ("2p5d", 4), ("3d", 1)]}
    out = []
    for P, cases in grids.items():
        for mode, depth in cases:
            topo = build_topology(mode, world_size=P, rank=0, depth=depth)
            check_shapes(GPTConfig(vocab_size=64, seq_len=s, hidden=h, heads=PROJ["heads"]),
                         topo, b)
            row = {"GPUs": P, "mode": mode,
                   "grid": ", ".join(f"{k}={v}" for k, v in topo.shape.items())}
            for label, nic in NICS.items():
                c = dataclasses.replace(cluster, nic=nic)
                train = step_time(mode, P, N, s, h, L, depth, c)
                row[f"train s, {label}"] = train["step_s"]
                row[f"comm s, {label}"] = train["comm_s"]
            for label, nic in NICS.items():
                c = dataclasses.replace(cluster, nic=nic)
                row[f"inference s, {label}"] = step_time(mode, P, N, s, h, L, depth, c,
                                                         backward=False)["step_s"]
            out.append(row)
    return out


def weak_scaling_efficiency(mode: str, depth: int, P: int, cluster: Cluster,
                            P0: int = 4) -> float:
    """E(P) = T(P0 GPUs, batch b0) / T(P GPUs, batch b0·P/P0): the projected step time when
    the global batch grows with the GPU count (1.0 = perfect weak scaling). The base is the
    P0 = 4 grid of the mode (2D and 2.5D: q = 2, d = 1; 1D: p = 4; 3D has none)."""
    b, s, h, L = PROJ["batch"], PROJ["seq"], PROJ["hidden"], PROJ["layers"]
    base = "2d" if mode == "2p5d" else mode                  # 2.5D at d = 1 is 2D
    t0 = step_time(base, P0, b * P0 // P * s, s, h, L, 1, cluster)["step_s"]
    return t0 / step_time(mode, P, b * s, s, h, L, depth, cluster)["step_s"]


def cluster_note(cluster: Cluster) -> str:
    """One line naming every assumption of ``cluster`` (for a table's notes)."""
    return (f"cluster (assumed, see cost_model.Cluster; flags --gpus_per_node --intra_gbs "
            f"--inter_gbs --intra_latency_us --inter_latency_us --placement --tflops): "
            f"{cluster.gpus_per_node} GPUs per node, intra-node {cluster.beta_intra / 1e9:g} "
            f"GB/s and {cluster.alpha_intra * 1e6:g} us, inter-node {cluster.beta_inter / 1e9:g} "
            f"GB/s per NIC and {cluster.alpha_inter * 1e6:g} us, placement "
            f"{cluster.placement}, {cluster.flop_rate / 1e12:g} TFLOP/s per GPU, "
            f"{cluster.bytes_per_element} bytes per element")


def projection_notes(cluster: Cluster) -> list[str]:
    return [f"workload (ours): {PROJ['layers']} layers, hidden {PROJ['hidden']}, heads "
            f"{PROJ['heads']}, global batch {PROJ['batch']}, seq {PROJ['seq']}",
            cluster_note(cluster),
            "per-GPU NIC: every GPU has its own inter-node link; shared NIC: one link "
            "per node, divided among the groups of a family whose rings leave the node "
            "at once (3D's and 2D's many small groups suffer, 1D's one ring does not)",
            "communication from the closed form that the measured counts match "
            "(comm_memory table of make reproduce-tensor_parallel); compute = layer FLOPs / P / "
            "flop_rate; no overlap",
            "grids that do not exist are left out: 2D at 8 (not a square), 3D at 16 "
            "(not a cube); 2.5D uses d=2 at 8, d=4 at 16 and [4,4,4] at 64"]


@dataclass
class NetworkFlags:
    """The projection's network assumptions as flags (:class:`tensor_parallel.cost_model.Cluster`);
    bench and reproduce take them."""
    gpus_per_node: int = Cluster.gpus_per_node
    intra_gbs: float = Cluster.beta_intra / 1e9
    """intra-node bandwidth per GPU, GB/s"""
    inter_gbs: float = Cluster.beta_inter / 1e9
    """inter-node bandwidth of one NIC, GB/s"""
    intra_latency_us: float = Cluster.alpha_intra * 1e6
    inter_latency_us: float = Cluster.alpha_inter * 1e6
    placement: str = Cluster.placement
    """contiguous (grid innermost, as shared/parallel/topology.py) or round_robin"""
    tflops: float = Cluster.flop_rate / 1e12
    """achieved compute per GPU, TFLOP/s"""

    def cluster(self) -> Cluster:
        if self.placement not in ("contiguous", "round_robin"):
            raise ConfigError(f"--placement {self.placement!r}: choose contiguous or round_robin")
        for name in ("gpus_per_node", "intra_gbs", "inter_gbs", "tflops"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"--{name} must be positive; got {getattr(self, name)}")
        return Cluster(gpus_per_node=self.gpus_per_node, alpha_intra=self.intra_latency_us * 1e-6,
                       beta_intra=self.intra_gbs * 1e9, alpha_inter=self.inter_latency_us * 1e-6,
                       beta_inter=self.inter_gbs * 1e9, placement=self.placement,
                       flop_rate=self.tflops * 1e12)
