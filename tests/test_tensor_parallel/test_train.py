"""Training on the shared core: learning, sharded checkpoints that resume and evaluate under
any mode and world size, exact resume, run names, and one-line errors for bad command lines.

Cross-mode comparisons use 1e-4 relative for losses after optimizer steps (AdamW divides by
sqrt(v) + eps, which amplifies summation-order differences of ~1e-7 in tiny gradients) and 1e-5
for a plain evaluation of the same weights (no optimizer in between).
"""
import json
import shutil

import pytest
import torch

from shared.parallel import spawn
from shared.train import load_checkpoint, read_metrics
from tensor_parallel import eval as tp_eval
from tensor_parallel import train as tp_train
from tensor_parallel.convert import main as convert_main
from tensor_parallel.models import GPT, GPTConfig


def _argv(tmp, *extra):
    """The smoke preset: 6 steps, checkpoints and validation at steps 3 and 6."""
    return ["--preset", "smoke", "--out_dir", str(tmp), "--quiet", "--device", "cpu", *extra]


def _losses(run):
    return [(r["step"], r["loss"]) for r in read_metrics(run / "metrics.jsonl") if "loss" in r]


def _train_then_eval_worker(env, train_argvs, eval_argv):
    # the undecorated mains: entry_point would tear down the spawned process group
    return ([tp_train.main.__wrapped__(argv) for argv in train_argvs],
            tp_eval.main.__wrapped__(eval_argv))


def _train_worker(env, argv):
    return tp_train.main.__wrapped__(argv)


def test_sharded_checkpoint_moves_between_modes_and_world_sizes(tmp_path, capsys):
    """A sharded checkpoint (torch.distributed.checkpoint) written by 2D on 4 ranks resumes in
    1D on 2 ranks and in one process with the same next-step loss, and evaluates under 2.5D;
    1D × 2 data replicas (--dp 2) trains like the serial model."""
    # one process (the serial model) for 6 steps, the reference ...
    full = tp_train.main(_argv(tmp_path, "--run", "a"))
    # ... the same run in 2D on 4 ranks cut at step 3, and whole in 1D × 2 replicas; the same
    # ranks evaluate run a under 2.5D
    (cut, dp), grid_eval = spawn(
        _train_then_eval_worker, 4,
        [_argv(tmp_path, "--run", "b", "--mode", "2d", "--stop_at", "3"),
         _argv(tmp_path, "--run", "dp", "--mode", "1d", "--dp", "2")],
        ["--out_dir", str(tmp_path), "--run", "a", "--mode", "2p5d", "--device", "cpu"],
        timeout_s=240)[0]
    assert cut["step"] == 3 and dp["step"] == 6
    for (sa, la), (sd, ld) in zip(_losses(tmp_path / "a"), _losses(tmp_path / "dp")):
        assert sa == sd and ld == pytest.approx(la, rel=1e-4)
    assert dp["val_loss"] == pytest.approx(full["val_loss"], rel=1e-4)
    assert load_checkpoint(tmp_path / "dp" / "checkpoint.pt")["task"]["dp"] == 2
    ckpt = load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    assert ckpt["step"] == 3 and ckpt["task"]["mode"] == "2d" and ckpt["task"]["world"] == 4
    shards = tmp_path / "b" / ckpt["shards"]
    assert sorted(f.name for f in shards.iterdir()) == [".metadata"] + [
        f"__{r}_0.distcp" for r in range(4)]                   # every rank wrote its pieces
    assert not list((tmp_path / "b").glob("shards-step000000*"))   # superseded: none before
    shutil.copytree(tmp_path / "b", tmp_path / "c")
    # resumed from the run directory alone: 1D on 2 ranks, and one process
    resumed = spawn(_train_worker, 2, ["--resume", str(tmp_path / "b"), "--mode", "1d",
                                       "--device", "cpu", "--quiet"], timeout_s=240)[0]
    serial = tp_train.main(["--resume", str(tmp_path / "c"), "--mode", "1d", "--quiet"])
    assert resumed["step"] == serial["step"] == 6
    whole, in_1d, in_one = (_losses(tmp_path / r) for r in "abc")
    assert [s for s, _ in in_1d] == [s for s, _ in in_one] == [s for s, _ in whole] == [
        1, 2, 3, 4, 5, 6]
    assert in_1d[:3] == in_one[:3]                              # the 2D run's own losses
    assert in_1d[3][1] == pytest.approx(in_one[3][1], rel=1e-5)  # the next step's loss
    for (_, la), (_, lb), (_, lc) in zip(whole, in_1d, in_one):
        assert lb == pytest.approx(la, rel=1e-4) and lc == pytest.approx(la, rel=1e-4)
    assert resumed["val_loss"] == pytest.approx(serial["val_loss"], rel=1e-5)
    assert resumed["val_loss"] == pytest.approx(full["val_loss"], rel=1e-4)
    assert not shards.exists()                                  # replaced by step 6's shards
    # a checkpoint evaluates to its run's val loss under another grid, and in one process
    assert grid_eval == pytest.approx(full["val_loss"], rel=1e-5)
    single = tp_eval.main(["--out_dir", str(tmp_path), "--run", "b"])
    assert single == pytest.approx(resumed["val_loss"], rel=1e-5)
    # convert: the plain serial state dict (read from 1D shards), and a shard report
    capsys.readouterr()
    model = convert_main(["--out_dir", str(tmp_path), "--run", "b", "--out",
                          str(tmp_path / "gpt.pt"), "--mode", "2d", "--world", "4"])
    report = capsys.readouterr().out
    saved = torch.load(tmp_path / "gpt.pt", weights_only=True)     # a plain state dict
    cfg = GPTConfig(**json.loads((tmp_path / "gpt.json").read_text()))
    assert cfg == model.cfg
    fresh = GPT(cfg)
    fresh.load_state_dict(saved)                                   # strict: every key
    x = torch.randint(0, cfg.vocab_size, (2, cfg.seq_len))
    assert torch.equal(fresh(x)[0], model(x)[0])
    assert "blocks.0.attn.qkv.weight: (12, 36)" in report          # [k/q, n/q] of a 24x72 weight
    line = [ln for ln in report.splitlines() if ln.startswith("parameter bytes on rank 0")][0]
    local, total = (int(w.strip("()")) for w in line.split() if w.strip("()").isdigit())
    assert 0 < local < total / 3                                     # about a quarter


def test_learning_and_exact_resume_from_the_run_alone(tmp_path):
    """A run learns (validation loss well below the untrained model's); ``--resume RUN`` alone
    restores the config of a run cut with ``--stop_at`` and continues to bit-identical losses."""
    extra = ["--dropout", "0.1", "--lr", "0.004", "--steps", "8", "--eval_every", "4"]
    whole = tp_train.main(_argv(tmp_path, "--run", "whole", *extra))
    assert whole["val_loss"] < whole["initial_val_loss"] - 0.25, whole
    tp_train.main(_argv(tmp_path, "--run", "split", "--stop_at", "3", *extra))
    assert [s for s, _ in _losses(tmp_path / "split")] == [1, 2, 3]
    resumed = tp_train.main(["--resume", str(tmp_path / "split"), "--quiet"])
    saved = json.loads((tmp_path / "split" / "config.json").read_text())
    assert (saved["dropout"], saved["lr"], saved["steps"], saved["preset"]) == (0.1, 0.004, 8,
                                                                               "smoke")
    assert resumed["step"] == 8 and resumed["initial_val_loss"] is None
    assert _losses(tmp_path / "split") == _losses(tmp_path / "whole")      # exactly
    assert resumed["val_loss"] == whole["val_loss"]


def test_real_data_formats(tmp_path):
    """A nanoGPT train.bin/val.bin directory (uint16 tokens) trains; the vocabulary (300) is
    padded to a multiple of 64 and recorded in the run's config."""
    import numpy as np
    rng = np.random.default_rng(0)
    data = tmp_path / "corpus"
    data.mkdir()
    (rng.integers(0, 300, 5000).astype(np.uint16)).tofile(data / "train.bin")
    (rng.integers(0, 300, 800).astype(np.uint16)).tofile(data / "val.bin")
    out = tp_train.main(_argv(tmp_path, "--run", "r", "--data", str(data), "--steps", "3"))
    assert out["step"] == 3
    assert json.loads((tmp_path / "r" / "config.json").read_text())["vocab_size"] == 320
    assert convert_main(["--out_dir", str(tmp_path), "--run", "r", "--out",
                         str(tmp_path / "r.pt")]).head.weight.shape == (320, 24)


def _one_line_error(capsys, main, argv, *expected):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    for text in expected:
        assert text in err[0], err[0]
    return err[0]


def test_bad_command_lines_give_one_line_and_exit_2(tmp_path, capsys):
    base = _argv(tmp_path)
    train, ev = tp_train.main, tp_eval.main
    _one_line_error(capsys, train, base + ["--bogus", "1"], "--bogus")
    line = _one_line_error(capsys, train, base + ["--mode", "4d"], "4d", "1d, 2d, 2p5d, 3d")
    assert "seq" not in line and "expert" not in line
    _one_line_error(capsys, train, base + ["--lr", "fast"], "--lr", "float")
    _one_line_error(capsys, train, base + ["--hidden", "30"], "--hidden 30", "--heads 4")
    _one_line_error(capsys, train, base + ["--mode", "2p5d", "--depth", "2"],
                    "with --depth 2", "use --depth 1")               # 1 process: world = q²·d
    _one_line_error(capsys, train, base + ["--data", str(tmp_path / "missing")],
                    "no corpus at", "missing")
    _one_line_error(capsys, train, base + ["--seq_len", "300000"], "windows", "--seq_len")
    # a reused run name is refused; the first run is untouched
    tp_train.main(base + ["--run", "r", "--steps", "1"])
    before = (tmp_path / "r" / "checkpoint.pt").read_bytes()
    _one_line_error(capsys, train, base + ["--run", "r"], "already exists", "--resume")
    assert (tmp_path / "r" / "checkpoint.pt").read_bytes() == before
    # eval
    run = ["--out_dir", str(tmp_path), "--run", "r"]
    _one_line_error(capsys, ev, run + ["--bogus"], "--bogus")
    _one_line_error(capsys, ev, run + ["--mode", "5d"], "1d, 2d, 2p5d, 3d")
    _one_line_error(capsys, ev, run + ["--split", "test"], "--split", "train or val")
    _one_line_error(capsys, ev, ["--out_dir", str(tmp_path), "--run", "nope"], "no run directory")
    _one_line_error(capsys, ev, run + ["--batch_size", "many"], "--batch_size", "int")
