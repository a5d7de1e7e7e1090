"""Training: loss decreases on the generated data, exact resume, NaN guard, expert-parallel
training under 2 gloo ranks, and the reproduce/bench smoke modes writing their tables."""
import dataclasses

import pytest
import torch

from shared.train.checkpoint import load_checkpoint
from shared.parallel.dist import spawn
from shared.train.run import read_metrics
from widenet import bench, reproduce
from widenet.config import PRESETS, Config
from widenet.eval import main as eval_main
from widenet.train import lr_at, train

from .test_data import write_imagenet


def _cfg(tmp_path, **kw):
    base = dict(PRESETS["tiny"], train_size=256, val_size=64, batch_size=32, epochs=1.0,
                warmup_epochs=0.25, quiet=True, out_dir=str(tmp_path), log_every=1)
    base.update(kw)
    return Config(**base)


def test_tiny_training_loss_decreases(tmp_path):
    cfg = _cfg(tmp_path, model="widenet_tiny", epochs=8.0, run_name="learn", mixup_alpha=0.0)
    s = train(cfg)
    losses = [r["ce"] for r in read_metrics(tmp_path / "learn" / "metrics.jsonl") if "ce" in r]
    assert len(losses) == s["steps"] == 64
    first, last = sum(losses[:8]) / 8, sum(losses[-8:]) / 8
    assert last < first - 0.15, f"cross-entropy did not decrease: {first:.3f} -> {last:.3f}"


def test_resume_continues_exactly(tmp_path):
    common = dict(model="vit_moe_tiny", epochs=1.0, eval_every=100)
    full = train(_cfg(tmp_path, run_name="full", **common))
    train(_cfg(tmp_path, run_name="cut", stop_at=3, **common))
    resumed = train(_cfg(tmp_path, resume=str(tmp_path / "cut"), **common))
    a = load_checkpoint(tmp_path / "full" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    assert a["step"] == b["step"] == 8
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert full["last_loss"] == resumed["last_loss"]
    evaluated = eval_main(["--run", str(tmp_path / "full")])
    assert evaluated["val_acc"] == full["val_acc"]


def test_nan_loss_stops_with_a_clear_error(tmp_path):
    with pytest.raises(FloatingPointError, match="loss became nan at step"):
        train(_cfg(tmp_path, lr=float("nan"), warmup_epochs=0.0))


def test_lr_schedule_is_linear_warmup_then_linear_decay():
    cfg = Config(lr=0.01, lr_min=1e-5)
    assert lr_at(0, 100, 10, cfg) == pytest.approx(1e-5)
    assert lr_at(5, 100, 10, cfg) == pytest.approx((1e-5 + 0.01) / 2)
    assert lr_at(10, 100, 10, cfg) == pytest.approx(0.01)
    assert lr_at(55, 100, 10, cfg) == pytest.approx((0.01 + 1e-5) / 2)
    assert lr_at(100, 100, 10, cfg) == pytest.approx(1e-5)


def _train_worker(env, out, mode):
    cfg = Config(**dict(PRESETS["tiny"], train_size=64, val_size=32, batch_size=16,
                        max_steps=2, quiet=True, out_dir=out, run_name=f"{mode}", mode=mode))
    s = train(cfg)
    return s["val_acc"], s["last_loss"]


def test_training_under_two_ranks_expert_and_data_parallel(tmp_path):
    for mode in ("expert", "data"):
        results = spawn(_train_worker, 2, str(tmp_path), mode)
        assert results[0][0] == results[1][0]          # accuracy is summed over both ranks
    assert (tmp_path / "expert" / "checkpoint-rank1.pt").is_file()
    assert (tmp_path / "data" / "checkpoint.pt").is_file()


def test_reproduce_and_bench_smoke_write_tables(tmp_path):
    rows, ratios, tiny = reproduce.main(["--smoke", "true", "--out", str(tmp_path)])
    assert all(r["match"] == "yes" for r in rows)
    assert [r["paper ratio"] for r in ratios][:3] == ["0.72x", "0.46x", "0.13x"]
    assert [r["ours (floor M, as the paper)"] for r in ratios][:3] == ["0.724x", "0.460x", "0.131x"]
    assert len(tiny) == 3
    for stem in ("imagenet_params", "param_ratios", "scaled_down"):
        assert (tmp_path / f"{stem}.md").is_file() and (tmp_path / f"{stem}.csv").is_file()
    assert "SMOKE" in (tmp_path / "scaled_down.md").read_text()
    moe_rows, tp_rows = bench.main(["--smoke", "true", "--out", str(tmp_path)])
    assert moe_rows[0]["MoE / dense time"] > 0 and len(tp_rows) == 3
    assert (tmp_path / "bench_moe_layer.md").is_file()
    assert (tmp_path / "bench_throughput.csv").is_file()


def test_training_on_imagenet_folders_with_the_paper_head(tmp_path):
    write_imagenet(tmp_path / "inet", per_class=(4, 2))
    cfg = _cfg(tmp_path, data=str(tmp_path / "inet"), num_classes=1001, batch_size=4,
               randaug_ops=2, dropout=0.1, max_steps=2, run_name="inet")
    s = train(cfg)
    assert s["steps"] == 2 and 0.0 <= s["val_acc"] <= 1.0
    state = load_checkpoint(tmp_path / "inet" / "checkpoint.pt")
    assert state["model"]["head.weight"].shape[0] == 1001
    with pytest.raises(ValueError, match="the data has 2 classes but num_classes=1"):
        train(dataclasses.replace(cfg, num_classes=1))


def test_odd_per_rank_batch_with_mixup_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="must be even"):
        train(dataclasses.replace(_cfg(tmp_path), batch_size=31))
