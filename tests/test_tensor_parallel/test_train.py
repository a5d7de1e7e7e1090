"""Training, checkpoints in the serial layout, resume and evaluation across modes/world sizes.

Cross-mode comparisons use 1e-4 relative for losses after optimizer steps (AdamW divides by
sqrt(v) + eps, which amplifies summation-order differences of ~1e-7 in tiny gradients) and 1e-5
for a plain evaluation of the same weights (no optimizer in between).
"""
import pytest
import torch

from shared.parallel import SpawnError, spawn
from shared.train import parse_config
from shared.data.text_corpus import CorpusError
from tensor_parallel import eval as tp_eval
from tensor_parallel import train as tp_train
from tensor_parallel.config import PRESETS, Config
from tensor_parallel.convert import main as convert_main


def _argv(tmp, name, mode, *extra):
    return ["--preset", "smoke", "--mode", mode, "--out_dir", str(tmp), "--run_name", name,
            "--steps", "4", "--ckpt_every", "2", "--eval_every", "2", *extra]


def _train_worker(env, argv):
    return tp_train.train(parse_config(Config, PRESETS, argv))


def _eval_worker(env, argv):
    return tp_eval.evaluate_checkpoint(parse_config(tp_eval.EvalConfig, None, argv,
                                                    default_preset=None))


def test_checkpoint_moves_between_modes_and_world_sizes(tmp_path):
    full = spawn(_train_worker, 4, _argv(tmp_path, "a", "2d"))[0]
    assert full["val_loss"] < full["initial_val_loss"], "the smoke run did not learn"
    # the same run interrupted at step 2 under 2.5D (q=2, d=2) on 8 ranks ...
    spawn(_train_worker, 8, _argv(tmp_path, "b", "2p5d", "--depth", "2", "--stop_at", "2"))
    # ... and resumed under 1D on 2 ranks reaches the same loss
    ckpt_b = tmp_path / "b" / "checkpoint.pt"
    resumed = spawn(_train_worker, 2, _argv(tmp_path, "c", "1d", "--resume", str(ckpt_b)))[0]
    assert resumed["steps"] == 4
    assert abs(resumed["val_loss"] - full["val_loss"]) <= 1e-4 * full["val_loss"]
    # the final checkpoint evaluates to the same loss in one process and under 3D on 8 ranks
    ckpt_a = str(tmp_path / "a" / "checkpoint.pt")
    single = tp_eval.evaluate_checkpoint(tp_eval.EvalConfig(ckpt=ckpt_a))
    cube = spawn(_eval_worker, 8, ["--ckpt", ckpt_a, "--mode", "3d"])[0]
    assert abs(single - full["val_loss"]) <= 1e-5 * full["val_loss"]
    assert abs(cube - full["val_loss"]) <= 1e-5 * full["val_loss"]
    # convert: the plain serial state dict, and a shard report for another grid
    model = convert_main(["--ckpt", ckpt_a, "--out", str(tmp_path / "gpt.pt"),
                          "--mode", "2d", "--world", "4"])
    x = torch.randint(0, 256, (2, 8))
    assert torch.isfinite(model(x, x)[1])


def test_resume_in_same_mode_is_exact(tmp_path):
    full = tp_train.train(parse_config(Config, PRESETS, _argv(tmp_path, "a", "1d")))
    tp_train.train(parse_config(Config, PRESETS, _argv(tmp_path, "b", "1d", "--stop_at", "2")))
    resumed = tp_train.train(parse_config(Config, PRESETS, _argv(
        tmp_path, "c", "1d", "--resume", str(tmp_path / "b" / "checkpoint.pt"))))
    assert resumed["val_loss"] == full["val_loss"]


def test_bad_data_and_shapes_fail_clearly(tmp_path):
    with pytest.raises(CorpusError, match="no corpus at"):
        tp_train.train(parse_config(Config, PRESETS, _argv(tmp_path, "x", "1d", "--data",
                                                            str(tmp_path / "missing"))))
    with pytest.raises(SpawnError, match="heads=5 must be divisible"):
        spawn(_train_worker, 4, _argv(tmp_path, "y", "2d", "--heads", "5", "--hidden", "20"))


def test_real_data_formats(tmp_path):
    """A nanoGPT train.bin/val.bin directory (uint16 tokens) trains; vocabulary is padded."""
    import numpy as np
    rng = np.random.default_rng(0)
    data = tmp_path / "corpus"
    data.mkdir()
    (rng.integers(0, 300, 5000).astype(np.uint16)).tofile(data / "train.bin")
    (rng.integers(0, 300, 800).astype(np.uint16)).tofile(data / "val.bin")
    out = tp_train.train(parse_config(Config, PRESETS, _argv(tmp_path, "r", "1d", "--data",
                                                               str(data), "--steps", "2")))
    assert out["steps"] == 2
