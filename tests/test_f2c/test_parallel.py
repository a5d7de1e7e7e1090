"""Distributed F2C and baselines on gloo processes against one process.

* Full FC and Partial FC with class centres sharded over 2 and 4 ranks (odd sizes: 37 classes,
  3 rows per rank, 7-d embeddings): the loss, every centre shard's gradient and the backbone
  gradient after the core's gradient plan equal the single-device head on the global batch.
  Tolerance 1e-5 (fp32 relative): the two compute the same sums in a different order.
* F2C on 2 ranks, three real training steps through the training core: the pool (queue, LRU
  order, labels, slot bits) is bit-identical on every rank, as are the gallery nets.
"""
import torch

from shared.parallel.comm import raw_all_gather_object
from shared.parallel.dist import spawn
from shared.parallel.topology import build_topology
from shared.train.gradients import sync_gradients
from shared.train.config import parse_config

C, D, B, IN = 37, 7, 3, 5
# (head, margin, Partial FC sample rate): r = 0.05 leaves shards with no sampled centre at all
CASES = [("fc", "cosface", 1.0), ("fc", "arcface", 1.0), ("pfc", "cosface", 0.3),
         ("pfc", "arcface", 0.05)]


def _serial_and_sharded(kind, world, rank, group, margin_type, rate=0.3):
    from f2c.models import FaceClassifier, MarginFC, PartialFC
    from f2c.parallel import grad_plans, parallelize

    torch.manual_seed(0)
    x = torch.randn(world * B, IN)
    y = torch.randint(0, C, (world * B,))
    y[:2] = torch.tensor([C - 1, 0])                     # both ends of the centre matrix
    kw = dict(scale=16.0, margin=0.3, margin_type=margin_type, seed=3)
    make = (lambda dev: PartialFC(C, D, rate, shards=world, device=dev, **kw)) if kind == "pfc" \
        else (lambda dev: MarginFC(C, D, device=dev, **kw))
    torch.manual_seed(1)
    serial = FaceClassifier(torch.nn.Linear(IN, D), make(None))
    torch.manual_seed(1)
    dist_model = parallelize(FaceClassifier(torch.nn.Linear(IN, D), make("meta")), group)
    loss_s = serial.loss(x, y, step=5)
    loss_s.backward()
    rows = slice(rank * B, (rank + 1) * B)
    loss_d = dist_model.loss(x[rows], y[rows], step=5)
    loss_d.backward()
    sync, _ = grad_plans(dist_model, group)
    sync_gradients(sync)
    lo, hi = dist_model.head.rows
    return {"loss": (loss_s.item(), loss_d.item()),
            "head": (serial.head.weight.grad[lo:hi], dist_model.head.weight.grad),
            "weights": (serial.head.weight.detach()[lo:hi], dist_model.head.weight.detach()),
            "backbone": (serial.backbone.weight.grad, dist_model.backbone.weight.grad),
            "bias": (serial.backbone.bias.grad, dist_model.backbone.bias.grad)}


def _train_f2c(env, out_dir):
    from f2c.config import PRESETS, Config
    from f2c.train import FaceTask
    from shared.train import fit

    cfg = parse_config(Config, PRESETS, [
        "--num_ids", "40", "--images_per_id", "3", "--batch_size", "24", "--pool_size", "13",
        "--steps", "3", "--val_ids", "6", "--val_images_per_id", "2", "--val_pairs", "20",
        "--eval_every", "0", "--quiet", "--out_dir", out_dir, "--run", "f2c2"])
    task = FaceTask(cfg, env)
    summary = fit(cfg, task)
    pool = task.model.pool
    state = (pool.queue, pool.order(), pool.labels(), pool.slots(), pool.used,
             [p.detach() for p in task.model.gallery.parameters()])
    return summary["step"], raw_all_gather_object(state, build_topology("data")["data"])


def _worker(env, out_dir):
    group = build_topology("data")["data"]
    out = {}
    for kind, margin, rate in CASES:
        out[f"{kind}-{margin}-{rate}"] = _serial_and_sharded(kind, env.world_size, env.rank,
                                                             group, margin, rate)
    if out_dir:
        out["f2c"] = _train_f2c(env, out_dir)
    return out


def _check_heads(results):
    for rank, res in enumerate(results):
        for kind, margin, rate in CASES:
            case = f"{kind}-{margin}-{rate}"
            r = res[case]
            assabs = abs(r["loss"][0] - r["loss"][1])
            assert assabs < 1e-5 * max(1.0, abs(r["loss"][0])), (rank, case, r["loss"])
            for key in ("weights", "head", "backbone", "bias"):
                torch.testing.assert_close(r[key][1], r[key][0], rtol=1e-5, atol=1e-6,
                                           msg=f"rank {rank} {case} {key}")
            if kind == "fc":
                assert r["head"][1].abs().sum() > 0


def test_sharded_heads_equal_one_process_on_2_ranks_and_f2c_pools_agree(tmp_path):
    results = spawn(_worker, 2, str(tmp_path), timeout_s=240)
    _check_heads(results)
    steps, states = results[0]["f2c"]
    assert steps == 3
    first = states[0]
    assert first[4] > 0
    for other in states[1:]:
        assert torch.equal(other[0], first[0])                    # queue, bit for bit
        assert other[1:5] == first[1:5]                           # LRU order, labels, slots
        assert all(torch.equal(a, b) for a, b in zip(other[5], first[5]))    # gallery nets
    assert results[1]["f2c"][1][0][1] == first[1]


def test_sharded_heads_equal_one_process_on_4_ranks():
    _check_heads(spawn(_worker, 4, "", timeout_s=240))
