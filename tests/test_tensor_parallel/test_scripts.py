"""The table-producing scripts run in smoke mode (so they cannot rot) and the cost model's
closed form is exercised where it must agree with the brief's formulas. (That the README's
tables are the generated ones is checked for every paper by tests/test_readmes.py.)"""
import math

import pytest

from tensor_parallel import bench, reproduce
from tensor_parallel.cost_model import (Cluster, layer_collectives, layer_sent_bytes, link,
                                        step_time)


def test_reproduce_smoke_measured_equals_closed_form(tmp_path):
    cm, proj, claims = reproduce.main(["--smoke", "--out", str(tmp_path), "--inter_gbs", "25"])
    assert {r["mode"] for r in cm} == {"serial", "1d", "2d", "2p5d", "3d"}
    for r in cm:
        assert r["equal"] == "yes", r
        if r["mode"] != "serial":
            assert r["param ratio"] < 1.0 and r["act ratio"] < 1.0
            # each rank does 1/P of the serial FLOPs
            assert math.isclose(r["FLOP ratio"], 1.0 / r["ranks"], rel_tol=1e-9)
    assert (tmp_path / "comm_memory.md").is_file() and (tmp_path / "claims.csv").is_file()
    assert "inter-node 25 GB/s" in (tmp_path / "claims.md").read_text()   # the flags are used
    assert all(r["paper"] > 0 and r["ours, per-GPU NIC"] > 0 and r["ours, shared NIC"] > 0
               for r in claims)
    # a shared NIC never speeds a mode up; it hurts 3D's many small groups more than 1D's ring
    for r in proj:
        assert r["train s, shared NIC"] >= r["train s, per-GPU NIC"] - 1e-12
    three_vs_one = claims[0]
    assert three_vs_one["ours, shared NIC"] < three_vs_one["ours, per-GPU NIC"]


def test_bench_smoke(tmp_path):
    overhead, steps, anchor, memory, overlap, proj = bench.main(["--smoke", "--out", str(tmp_path)])
    assert [r["layer"].split()[0] for r in overhead] == ["serial", "1d", "2d", "2p5d", "3d"]
    assert [(r["mode"], r["processes"]) for r in steps] == [
        ("serial", 1), ("1d", 4), ("2d", 4), ("2p5d (d=1)", 4)]
    assert all(r["fwd+bwd ms"] > 0 for r in overhead) and all(r["step ms"] > 0 for r in steps)
    assert (tmp_path / "bench_step_times.md").is_file()
    # torch's own TP (parallelize_module) as the anchor: same block, same weights; both agree
    # with each other and with the serial block to fp32 summation-order error
    assert [r["ranks"] for r in anchor] == [2] * len(anchor) and anchor
    for r in anchor:
        for col in ("out err ours vs torch", "grad err ours vs torch", "out err ours vs serial",
                    "grad err ours vs serial", "grad err torch vs serial"):
            assert r[col] <= 1e-5, (col, r)
        assert r["ours ms"] > 0 and r["torch ms"] > 0
    assert (tmp_path / "bench_torch_tp.md").is_file()
    # memory per rank: parameters + AdamW moments are exactly 1/p of serial's (up to 1D's
    # replicated LayerNorms, biases and position table); every phase measured
    assert [(r["mode"], r["ranks"]) for r in memory] == [("serial", 1), ("1d", 4), ("2d", 4)]
    assert memory[2]["vs serial/p"] == pytest.approx(1.0)
    assert 1.0 < memory[1]["vs serial/p"] < 1.2
    assert all(r[f"{k} peak MiB"] > 0 for r in memory for k in ("construct", "step", "save"))
    assert [r["mode"] for r in overlap] == ["2d"] and overlap[0]["off/on"] > 0
    # the projection under both network assumptions: a shared NIC never speeds a mode up
    assert (tmp_path / "projection.md").is_file() and {r["GPUs"] for r in proj} == {8, 16, 64}
    assert all(r["train s, shared NIC"] >= r["train s, per-GPU NIC"] for r in proj)


def test_bench_rejects_unknown_section(tmp_path):
    from shared.train import ConfigError
    with pytest.raises(ConfigError, match="choose from overhead, steps, torch_tp, memory"):
        bench.main.__wrapped__(["--smoke", "--only", "nope", "--out", str(tmp_path)])


@pytest.mark.parametrize("q", [2, 3, 4])
def test_linear_part_matches_brief_formula(q):
    """Without biases and LayerNorms, the 2D and 3D counts reduce to the brief's table."""
    N, h = 6 * q ** 3, 12 * q * q
    lin2 = sum(c.sent_elements for c in layer_collectives("2d", q * q, N, h)
               if c.op in ("broadcast", "reduce"))
    brief2 = sum(3 * (q - 1) * (N * k + k * n) / q ** 2
                 for k, n in [(h, 3 * h), (h, h), (h, 4 * h), (4 * h, h)])
    assert math.isclose(lin2, brief2)
    lin3 = sum(c.sent_elements for c in layer_collectives("3d", q ** 3, N, h)
               if c.family in ("input/output", "output/input", "weight"))
    brief3 = sum(2 * (q - 1) * (N * k + k * n + N * n) / q ** 3
                 for k, n in [(h, 3 * h), (h, h), (h, 4 * h), (4 * h, h)])
    assert math.isclose(lin3, brief3)
    assert math.isclose(layer_sent_bytes("1d", q, N, h), 4 * 4 * 2 * (q - 1) / q * N * h)


def test_projection_counts_inter_node_links():
    """A 1D group of 8 spans two 4-GPU nodes: slower than 4 GPUs inside one node per byte."""
    one_node = step_time("1d", 4, 4096, 512, 1024, 1)["comm_s"]
    two_nodes = step_time("1d", 8, 4096, 512, 1024, 1)["comm_s"]
    assert two_nodes > one_node


def test_projection_network_assumptions_are_inputs():
    """3D on 64 GPUs (16 nodes of 4): its 16 input groups span nodes, 4 of them per node. With a
    shared NIC each gets a quarter of the link; 1D's single ring leaves each node once and
    keeps the whole link. Placing ranks round-robin moves the 2D row groups off-node."""
    per_gpu, shared = Cluster(nic="per_gpu"), Cluster(nic="shared")
    assert link("3d", 64, 1, "input/output", per_gpu)[1] == per_gpu.beta_inter
    assert link("3d", 64, 1, "input/output", shared)[1] == shared.beta_inter / 4
    assert link("1d", 64, 1, "tensor", shared)[1] == shared.beta_inter
    assert link("3d", 64, 1, "weight", shared) == (shared.alpha_intra, shared.beta_intra)
    spread = Cluster(placement="round_robin")
    assert link("2d", 16, 1, "row", Cluster())[1] == Cluster().beta_intra
    assert link("2d", 16, 1, "row", spread)[1] == spread.beta_inter
    with pytest.raises(ValueError, match="choose per_gpu or shared"):
        link("1d", 8, 1, "tensor", Cluster(nic="bogus"))


@pytest.mark.parametrize("q, d", [(2, 2), (3, 2), (4, 4)])
def test_2p5d_linear_part_matches_brief_formula(q, d):
    """2.5D: SUMMA on N/d tokens per slice + the depth all-reduce of every weight block."""
    N, h = 6 * q * q * d, 12 * q * q
    colls = layer_collectives("2p5d", q * q * d, N, h, depth=d)
    summa = sum(c.sent_elements for c in colls if c.op in ("broadcast", "reduce"))
    dep_weights = sum(c.sent_elements for c in colls
                      if c.family == "dep" and c.elements >= h * h / q ** 2)
    lin = [(h, 3 * h), (h, h), (h, 4 * h), (4 * h, h)]
    brief = sum(3 * (q - 1) * (N * k / d + k * n) / q ** 2 + 2 * (d - 1) / d * k * n / q ** 2
                for k, n in lin)
    assert math.isclose(summa + dep_weights, brief)
