"""Training on the shared core: a tiny run reduces its loss and resumes bit-identically; eval
reproduces the run's mAP and draws a PNG; bf16 autocast forward + backward of every head;
data parallelism on 2 gloo ranks equals the serial mean of the shards' gradients; one-line errors;
the reproduce and bench smoke modes."""
import math

import pytest
import torch

from canonical_voting import bench, reproduce
from canonical_voting.data import collate, make_targets, procedural_scenes, voxelize
from canonical_voting.eval import main as eval_main
from canonical_voting.losses import detection_loss
from canonical_voting.models.detector import Detector
from canonical_voting.models.sparse import SparseTensor
from canonical_voting.train import main as train_main
from shared.train import load_checkpoint, read_metrics

SMALL = ["--train_scenes", "4", "--val_scenes", "2", "--eval_scenes", "1", "--scene_points",
         "3000", "--voxel_size", "0.08", "--batch_size", "2", "--quiet", "--log_every", "1",
         "--threads", "1"]


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("CANONICAL_VOTING_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def _losses(run):
    return [r["loss"] for r in read_metrics(run / "metrics.jsonl") if "loss" in r]


def test_tiny_training_reduces_loss_resumes_and_evaluates(tmp_path):
    args = SMALL + ["--out_dir", str(tmp_path), "--steps", "12", "--lr_drops", "0.9"]
    whole = train_main(args + ["--run", "whole"])
    loss = _losses(tmp_path / "whole")
    assert len(loss) == 12
    assert sum(loss[-4:]) / 4 < sum(loss[:4]) / 4 - 0.5, loss
    assert (tmp_path / "whole" / "detections.png").stat().st_size > 10_000
    assert 0 <= whole["map25"] <= 1 and set(whole["ap25"]) <= {"chair", "table", "sofa", "cabinet",
                                                               "bookshelf", "lamp"}
    # stop at step 6, resume from the run alone: the same losses and weights
    train_main(args + ["--run", "cut", "--stop_at", "5", "--picture", "false"])
    train_main(["--resume", str(tmp_path / "cut"), "--picture", "false"])
    assert _losses(tmp_path / "cut") == loss
    a = load_checkpoint(tmp_path / "whole" / "checkpoint.pt")["task"]["model"]
    b = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["task"]["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    # eval finds the run's checkpoint and reproduces its final mAP
    out = eval_main(["--run", str(tmp_path / "whole"), "--picture", "false"])
    assert out["map25"] == pytest.approx(whole["map25"]) or (
        math.isnan(out["map25"]) and math.isnan(whole["map25"]))


@pytest.mark.parametrize("head", ["joint", "separate", "regression"])
def test_bf16_autocast_forward_and_backward(head):
    scenes = procedural_scenes([3], n_points=2000, cache=False)
    batch = collate([voxelize(scenes[0], 0.1)])
    C = 1 if head == "separate" else 6
    model = Detector("minkunet_small", 3, head, C)
    class_map = torch.tensor([0, -1, -1, -1, -1, -1]) if head == "separate" else None
    targets = make_targets(batch, C, class_map)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(SparseTensor(batch.feats, batch.coords))
        loss, _ = detection_loss(out, targets, head)
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def _dp_worker(env):
    """Each rank: its own scene; gradients synced by canonical_voting.parallel's plan."""
    from canonical_voting.parallel import gather_detections, grad_plans
    from shared.parallel.topology import build_topology
    from shared.train.gradients import sync_gradients
    torch.manual_seed(0)
    model = Detector("minkunet_small", 3, "joint", 6)
    scenes = procedural_scenes([10, 11], n_points=1500, cache=False)
    batch = collate([voxelize(scenes[env.rank], 0.1)])
    loss, _ = detection_loss(model(SparseTensor(batch.feats, batch.coords)),
                             make_targets(batch, 6), "joint")
    loss.backward()
    group = build_topology("data")["data"]
    sync, _ = grad_plans(model, group)
    sync_gradients(sync)
    dets = gather_detections({env.rank: [env.rank]}, group)
    return {"grads": {n: p.grad.clone() for n, p in model.named_parameters()}, "dets": dets}


def test_data_parallel_gradients_equal_the_serial_mean():
    """2 gloo ranks, one scene each, against one process computing both scenes' gradients
    (float32: the all-reduce sums in another order, hence 1e-6)."""
    from shared.parallel.dist import spawn
    results = spawn(_dp_worker, 2)
    torch.manual_seed(0)
    model = Detector("minkunet_small", 3, "joint", 6)
    scenes = procedural_scenes([10, 11], n_points=1500, cache=False)
    serial = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for s in scenes:                       # BN statistics per rank = per scene here
        model.zero_grad()
        batch = collate([voxelize(s, 0.1)])
        loss, _ = detection_loss(model(SparseTensor(batch.feats, batch.coords)),
                                 make_targets(batch, 6), "joint")
        loss.backward()
        for n, p in model.named_parameters():
            serial[n] += p.grad / 2
    for r in results:
        assert r["dets"] == {0: [0], 1: [1]}
        for n, g in serial.items():
            torch.testing.assert_close(r["grads"][n], g, atol=1e-6, rtol=1e-5)


BAD = [
    (["--method", "votenet"], "--method 'votenet': choose one of canonical, regression"),
    (["--head", "separate"], "name it with --category"),
    (["--head", "separate", "--category", "piano"], "not a class of this dataset"),
    (["--dataset", "scannet", "--data", "/nonexistent/scannet"], "does not exist"),
    (["--batch_size", "5"], "larger than the 4 training rooms"),
    (["--steps", "1", "--vote_voxel", "0.001"], "raise --vote_voxel to"),
]


@pytest.mark.parametrize("argv,message", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_gives_one_line_and_exit_2(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        train_main(SMALL + ["--out_dir", str(tmp_path), "--steps", "2"] + argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1, err
    assert err[0].startswith("error: ") and message in err[0], err[0]


def test_eval_without_runs_and_smoke_modes(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        eval_main(["--out_dir", str(tmp_path / "none")])
    assert exc.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    rows = reproduce.main(["--smoke", "--out", str(tmp_path / "repro"), "--workers", "1",
                           "--seeds", "0"])
    assert {r["method"] for r in rows} == {"canonical", "regression"} and len(rows) == 2
    assert (tmp_path / "repro" / "scaled_down.md").is_file()
    assert (tmp_path / "repro" / "per_class.md").is_file()
    bench.main(["--smoke", "--out", str(tmp_path / "bench")])
    assert (tmp_path / "bench" / "bench_voting.md").is_file()
    assert (tmp_path / "bench" / "bench_sparse_conv.md").is_file()
