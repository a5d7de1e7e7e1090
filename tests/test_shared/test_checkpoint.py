"""Atomic, verified checkpoints, and exact resume of a training run."""
import os
import stat

import pytest
import torch
from torch import nn

from shared.data.sampler import EpochSampler
from shared.parallel import RNGStreams, capture_rng_state, restore_rng_state, seed_everything
from shared.train import (CheckpointError, load_checkpoint, load_sharded, remove_shards,
                          save_checkpoint, save_sharded)


def test_round_trip(tmp_path):
    state = {"w": torch.randn(7, 3), "step": 11, "nested": {"lr": 0.5, "list": [1, 2]}}
    path = save_checkpoint(state, tmp_path / "ckpt.pt")
    back = load_checkpoint(path)
    assert torch.equal(back["w"], state["w"]) and back["step"] == 11 and back["nested"] == state["nested"]
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"], "temporary files left behind"


def test_failed_write_keeps_the_previous_checkpoint(tmp_path):
    path = save_checkpoint({"step": 1}, tmp_path / "ckpt.pt")
    with pytest.raises(Exception):
        save_checkpoint({"step": 2, "bad": lambda: None}, path)  # a lambda cannot be pickled
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def test_sharded_round_trip_and_failed_save_keeps_the_previous(tmp_path, monkeypatch):
    """torch.distributed.checkpoint in one process: a round trip into other tensors (in
    place); a save that fails half-way leaves the previous shards and no temporary directory;
    removing old shards deletes only the files DCP wrote."""
    import torch.distributed.checkpoint as dcp

    from shared.parallel.topology import single_group
    group = single_group()
    state = {"model.w": torch.randn(5, 3), "optim.step": torch.tensor(4.0)}
    first = save_sharded(state, tmp_path, 3, group)
    assert first.startswith("shards-step000003-") and (tmp_path / first / ".metadata").is_file()
    back = {"model.w": torch.zeros(5, 3), "optim.step": torch.tensor(0.0)}
    view = back["model.w"]
    load_sharded(back, tmp_path / first)
    assert torch.equal(view, state["model.w"]) and back["optim.step"].item() == 4.0

    real_save = dcp.save

    def failing_save(sd, checkpoint_id, **kw):
        real_save(sd, checkpoint_id=checkpoint_id, **kw)       # some files are written ...
        raise OSError("disk full")                             # ... then the save fails

    monkeypatch.setattr(dcp, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        save_sharded({"model.w": torch.ones(5, 3)}, tmp_path, 6, group)
    assert sorted(p.name for p in tmp_path.iterdir()) == [first]   # no temporary left
    load_sharded(back, tmp_path / first)
    assert torch.equal(back["model.w"], state["model.w"])
    with pytest.raises(CheckpointError, match="not a complete sharded checkpoint"):
        load_sharded(back, tmp_path / "missing")
    (tmp_path / first / "notes.txt").write_text("mine")          # a file DCP did not write
    remove_shards(tmp_path / first)
    assert [p.name for p in (tmp_path / first).iterdir()] == ["notes.txt"]


def test_truncated_checkpoint_gives_a_clear_error(tmp_path):
    path = save_checkpoint({"w": torch.randn(100)}, tmp_path / "ckpt.pt")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(path)


def test_flipped_byte_gives_a_clear_error(tmp_path):
    path = save_checkpoint({"w": torch.randn(100)}, tmp_path / "ckpt.pt")
    data = bytearray(path.read_bytes())
    data[-50] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_checkpoint(path)


def test_foreign_and_missing_files(tmp_path):
    (tmp_path / "other.pt").write_bytes(b"not a checkpoint at all, just text" * 3)
    with pytest.raises(CheckpointError, match="not a checkpoint of this project"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "missing.pt")


# ---- exact resume --------------------------------------------------------------------------

class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.drop, self.fc2 = nn.Linear(5, 13), nn.Dropout(0.3), nn.Linear(13, 3)

    def forward(self, x):
        return self.fc2(self.drop(torch.relu(self.fc1(x))))


_X = torch.randn(37, 5, generator=torch.Generator().manual_seed(1))
_Y = torch.randint(0, 3, (37,), generator=torch.Generator().manual_seed(2))


def _build():
    seed_everything(0)
    model = _Net()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-2, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.7)
    sampler = EpochSampler(len(_X), batch_size=8, seed=5)  # 4 batches an epoch: epochs roll over
    streams = RNGStreams(seed=9)
    return model, opt, sched, sampler, streams


def _train(model, opt, sched, sampler, streams, steps):
    losses = []
    for _ in range(steps):
        idx = next(sampler)
        with streams.fork("sharded"):
            out = model(_X[idx])
        x_noise = torch.randn(()) * 1e-3  # uses the global RNG: must be restored too
        loss = nn.functional.cross_entropy(out, _Y[idx]) + x_noise
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    return losses


def test_interrupted_and_resumed_run_matches_uninterrupted_bit_for_bit(tmp_path):
    straight = _train(*_build(), steps=12)

    model, opt, sched, sampler, streams = _build()
    first = _train(model, opt, sched, sampler, streams, steps=5)
    save_checkpoint({"model": model.state_dict(), "opt": opt.state_dict(),
                     "sched": sched.state_dict(), "sampler": sampler.state_dict(),
                     "streams": streams.state_dict(), "rng": capture_rng_state(), "step": 5},
                    tmp_path / "ckpt.pt")
    del model, opt, sched, sampler, streams
    seed_everything(12345)  # a new process would start from another RNG state

    model, opt, sched, sampler, streams = _build()
    torch.manual_seed(999)
    state = load_checkpoint(tmp_path / "ckpt.pt")
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    sched.load_state_dict(state["sched"])
    sampler.load_state_dict(state["sampler"])
    streams.load_state_dict(state["streams"])
    restore_rng_state(state["rng"])
    rest = _train(model, opt, sched, sampler, streams, steps=12 - state["step"])
    assert first + rest == straight


def test_resume_detects_other_data(tmp_path):
    s = EpochSampler(37, 8)
    with pytest.raises(ValueError, match="resume with the same data"):
        EpochSampler(40, 8).load_state_dict(s.state_dict())


# ---- file mode -----------------------------------------------------------------------------

@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_checkpoint_mode_follows_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        path = save_checkpoint({"step": 1}, tmp_path / "ckpt.pt")
        plain = tmp_path / "plain.txt"
        plain.write_text("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == mode, oct(path.stat().st_mode)
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)
    assert load_checkpoint(path)["step"] == 1


def test_checkpoint_error_is_a_usage_error(tmp_path):
    from shared.errors import UsageError
    with pytest.raises(UsageError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "missing.pt")
