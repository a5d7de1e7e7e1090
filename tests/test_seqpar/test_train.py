"""Training entry points: single process, sequence × data parallel, exact resume, eval, data,
and the smoke modes of reproduce.py and bench.py (tables produced, not timed)."""
import json
from pathlib import Path

import pytest
import torch

from shared.train.checkpoint import load_checkpoint
from shared.parallel.dist import SpawnError, spawn
from shared.data.text_corpus import load_corpus

from seqpar import bench, reproduce
from seqpar import eval as seqpar_eval
from seqpar import train
from seqpar.data import MLMData

TINY = ["--hidden", "24", "--heads", "3", "--layers", "1", "--ffn", "40", "--seq_len", "24",
        "--batch_size", "4", "--max_bytes", "200000", "--log_every", "2", "--eval_every", "4",
        "--eval_batches", "2", "--warmup", "2"]


def train_worker(env, argv):
    return train.main(argv)


def read_rows(run: Path):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_single_process_train_resume_and_eval(tmp_path):
    common = TINY + ["--out_dir", str(tmp_path), "--steps", "8", "--ckpt_every", "4",
                     "--dropout", "0.1", "--attn_dropout", "0.1"]   # resume restores RNG streams
    full = train.main(common + ["--run_name", "full"])
    assert full["step"] == 8 and full["train_loss"] == full["train_loss"]
    # interrupted at step 4, then resumed to 8: identical weights and losses
    train.main(common + ["--run_name", "split", "--stop_at", "4"])
    resumed = train.main(["--resume", str(tmp_path / "split")])
    a = load_checkpoint(tmp_path / "full" / "checkpoint.pt")["model"]
    b = load_checkpoint(tmp_path / "split" / "checkpoint.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["train_loss"] == full["train_loss"]
    losses = [r["loss"] for r in read_rows(tmp_path / "split") if "loss" in r]
    assert losses == [r["loss"] for r in read_rows(tmp_path / "full") if "loss" in r]
    assert (tmp_path / "full" / "curves.png").is_file()
    metrics = seqpar_eval.main(["--run", str(tmp_path / "full"), "--batches", "2",
                                "--batch_size", "2"])
    assert 0.0 < metrics["val_loss"] < 10.0


def test_parallel_runs_match_single_process(tmp_path):
    """Dropout off: 2 sequence ranks and 2 seq × 2 data ranks train like one process."""
    common = TINY + ["--out_dir", str(tmp_path), "--steps", "3", "--dropout", "0",
                     "--attn_dropout", "0", "--eval_every", "3"]
    ref = train.main(common + ["--run_name", "one"])
    seq2 = spawn(train_worker, 2, common + ["--run_name", "seq2", "--lean", "true"])[0]
    grid = spawn(train_worker, 4, common + ["--run_name", "grid", "--seq_parallel", "2"])[0]
    for out in (seq2, grid):
        assert abs(out["train_loss"] - ref["train_loss"]) < 1e-4 * ref["train_loss"]
        assert abs(out["val_loss"] - ref["val_loss"]) < 1e-4 * ref["val_loss"]


def test_train_rejects_bad_settings(tmp_path):
    with pytest.raises(SpawnError, match="sequence length 25 is not divisible"):
        spawn(train_worker, 2, TINY + ["--seq_len", "25", "--out_dir", str(tmp_path)])
    with pytest.raises(Exception, match="--mode seq"):
        train.main(TINY + ["--mode", "2d", "--out_dir", str(tmp_path)])


def test_mlm_batches(tmp_path):
    text = tmp_path / "corpus.txt"
    text.write_bytes(b"the quick brown fox jumps over the lazy dog. " * 200)
    data = MLMData(load_corpus(str(text)), seq_len=32, mask_prob=0.15, min_len_fraction=0.5)
    ids, mask, labels = data.batch("train", torch.arange(8), key=3)
    assert ids.shape == mask.shape == labels.shape == (8, 32)
    assert mask[:, :16].all() and not mask.all()                 # padded tails, length >= 16
    assert (ids[~mask] == data.pad_id).all() and (labels[~mask] == -100).all()
    target = labels != -100
    assert 0.05 < target.float().mean() < 0.3
    assert (ids[target] == data.mask_id).float().mean() > 0.5      # most targets are [MASK]
    again = data.batch("train", torch.arange(8), key=3)
    assert all(torch.equal(x, y) for x, y in zip((ids, mask, labels), again))
    with pytest.raises(ValueError, match="fewer than one window"):
        MLMData(load_corpus(str(text)), seq_len=100_000)


def test_reproduce_and_bench_smoke(tmp_path):
    out = reproduce.main(["--smoke", "--out", str(tmp_path)])
    rows = {(r["method"], r["N"]): r for r in out["memory"]}
    # sequence parallelism: the longest sequence grows with N; TP stops at the head count
    lengths = [rows[("rsa", n)]["max seq len"] for n in (1, 2, 4)]
    assert lengths[0] < lengths[1] < lengths[2]
    assert "impossible" in rows[("tp", 4)]["note"]
    assert all(r["fit error"] < 1e-6 for r in out["memory"] if "fit error" in r)
    assert rows[("lean", 4)]["saved MB"] < rows[("rsa", 4)]["saved MB"]
    for name in ("smoke_memory", "smoke_weak_scaling", "smoke_formulas"):
        assert (tmp_path / f"{name}.md").is_file() and (tmp_path / f"{name}.csv").is_file()
    rows = bench.main(["--smoke", "--out", str(tmp_path)])
    assert {(r["attention"], r["overlap"]) for r in rows} == {
        ("rsa", "yes"), ("rsa", "no"), ("lean", "yes"), ("lean", "no")}
    assert (tmp_path / "smoke_bench.md").is_file()


def test_grid_resume_is_exact(tmp_path):
    """2 seq x 2 data with dropout: the per-rank RNG streams are saved and restored."""
    common = TINY + ["--out_dir", str(tmp_path), "--steps", "4", "--ckpt_every", "2",
                     "--dropout", "0.1", "--attn_dropout", "0.1", "--seq_parallel", "2"]
    spawn(train_worker, 4, common + ["--run_name", "full"])
    spawn(train_worker, 4, common + ["--run_name", "split", "--stop_at", "2"])
    spawn(train_worker, 4, ["--resume", str(tmp_path / "split")])
    a = load_checkpoint(tmp_path / "full" / "checkpoint.pt")["model"]
    b = load_checkpoint(tmp_path / "split" / "checkpoint.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_nan_loss_stops_with_clear_error(tmp_path):
    with pytest.raises(FloatingPointError, match=r"loss became (nan|inf) at step [1-4]"):
        train.main(TINY + ["--out_dir", str(tmp_path), "--steps", "5", "--warmup", "1",
                           "--lr", "1e30", "--min_lr", "1e30"])
