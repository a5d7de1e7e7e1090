"""Reading a run back for eval: per-rank files merged (shards united, BatchNorm statistics of
replicas averaged), another paper's checkpoint refused, a model that does not fit named, and the
newest run of a mode found (or a named run of another mode refused)."""
import json
import os

import pytest
import torch

from shared.errors import UsageError
from shared.train import EvalConfig, resolve_run, save_checkpoint
from shared.train.config import ConfigError
from shared.train.restore import load_run_weights, load_weights_into


def _write_run(root, name, mode, files, paper="toy", mtime=None):
    run = root / name
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"mode": mode}))
    for fname, model in files.items():
        save_checkpoint({"paper": paper, "step": 7, "world_size": len(files),
                         "task": {"model": model}}, run / fname)
        if mtime is not None:
            os.utime(run / fname, (mtime, mtime))
    return run


def test_rank_files_are_united_and_bn_statistics_averaged(tmp_path):
    run = _write_run(tmp_path, "a", "dp", {
        "checkpoint-rank0.pt": {"w": torch.ones(2), "bn.running_mean": torch.tensor([1.0, 3.0]),
                                "expert.0": torch.zeros(1)},
        "checkpoint-rank1.pt": {"w": torch.ones(2), "bn.running_mean": torch.tensor([3.0, 5.0]),
                                "expert.1": torch.ones(1)}})
    weights, step, world = load_run_weights(run, "toy")
    assert (step, world) == (7, 2)
    assert set(weights) == {"w", "bn.running_mean", "expert.0", "expert.1"}
    assert torch.equal(weights["bn.running_mean"], torch.tensor([2.0, 4.0]))
    first, _, _ = load_run_weights(run, "toy", rank0_only=True)
    assert torch.equal(first["bn.running_mean"], torch.tensor([1.0, 3.0])) and "expert.1" not in first
    with pytest.raises(UsageError, match="checkpoint of 'toy', not of other"):
        load_run_weights(run, "other")


def test_a_model_that_does_not_fit_is_named(tmp_path):
    model = torch.nn.Linear(2, 3)
    with pytest.raises(UsageError, match="does not fit tiny"):
        load_weights_into(model, {"weight": torch.zeros(3, 2)}, tmp_path, "tiny")    # bias missing
    with pytest.raises(UsageError, match="does not fit tiny.*size"):
        load_weights_into(model, {"weight": torch.zeros(4, 2), "bias": torch.zeros(3)},
                          tmp_path, "tiny")
    load_weights_into(model, {"weight": torch.zeros(3, 2), "bias": torch.ones(3)}, tmp_path, "tiny")
    assert torch.equal(model.bias.data, torch.ones(3))


def test_newest_run_of_a_mode(tmp_path):
    w = {"checkpoint.pt": {"w": torch.zeros(1)}}
    _write_run(tmp_path, "old_expert", "expert", w, mtime=1000)
    _write_run(tmp_path, "new_dense", "dense", w, mtime=3000)
    _write_run(tmp_path, "mid_expert", "expert", w, mtime=2000)
    assert resolve_run(tmp_path, "").name == "new_dense"
    assert resolve_run(tmp_path, "", mode="expert").name == "mid_expert"
    with pytest.raises(UsageError, match="trained with --mode dense, not expert"):
        resolve_run(tmp_path, "new_dense", mode="expert")
    with pytest.raises(UsageError, match="no run of --mode moe"):
        resolve_run(tmp_path, "", mode="moe")


def test_eval_config_checks_its_flags():
    class Paper(EvalConfig):
        MODES = ("a", "b")

    Paper(mode="a").validate()
    with pytest.raises(ConfigError, match="choose one of: a, b"):
        Paper(mode="c").validate()
    with pytest.raises(ConfigError, match="has no modes"):
        EvalConfig(mode="a").validate()
    with pytest.raises(ConfigError, match="--batch_size must be >= 0"):
        EvalConfig(batch_size=-1).validate()
    assert EvalConfig(device="cpu").torch_device().type == "cpu"
