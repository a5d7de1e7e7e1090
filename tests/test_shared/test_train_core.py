"""The shared training core (shared.train) end to end, on the toy paper of toy_paper.py:
resume, SIGTERM, run names, timeouts naming a stopped rank, global metrics, TensorBoard."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from shared.train import read_metrics
from tests.test_shared import toy_paper

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable


def _toy(*args, **kw):
    return subprocess.Popen([PY, "-m", "tests.test_shared.toy_paper", "--quiet", *args],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, **kw)


def _losses(run: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in read_metrics(run / "metrics.jsonl") if "loss" in r]


def test_stop_at_then_resume_alone_restores_the_config_and_the_losses(tmp_path):
    base = ["--out_dir", str(tmp_path), "--lr", "0.07", "--dropout", "0.2", "--steps", "24"]
    toy_paper.main(base + ["--run", "whole"])
    toy_paper.main(base + ["--run", "split", "--stop_at", "9"])
    assert max(s for s, _ in _losses(tmp_path / "split")) == 9
    summary = toy_paper.main(["--resume", str(tmp_path / "split"), "--quiet"])
    saved = json.loads((tmp_path / "split" / "config.json").read_text())
    assert saved["lr"] == 0.07 and saved["dropout"] == 0.2 and saved["steps"] == 24
    assert summary["step"] == 24
    whole, split = _losses(tmp_path / "whole"), _losses(tmp_path / "split")
    assert [s for s, _ in split] == list(range(1, 25))          # no step repeated or missing
    assert split == whole                                        # bit-identical losses


def test_resume_checks_its_flags_against_the_run_not_the_preset(tmp_path, monkeypatch):
    # the default preset warms up 4 steps; the run was made with none. "--resume r --steps 3"
    # is valid for the run, though not for the preset (warm-up must stay below the steps)
    monkeypatch.setitem(toy_paper.PRESETS, "tiny", {"warmup_steps": 4})
    toy_paper.main(["--out_dir", str(tmp_path), "--run", "r", "--steps", "6", "--warmup_steps",
                    "0", "--stop_at", "1", "--quiet"])
    summary = toy_paper.main(["--resume", str(tmp_path / "r"), "--steps", "3", "--quiet"])
    assert summary["step"] == 3


def test_the_best_evaluation_so_far_survives_a_resume(tmp_path):
    args = ["--out_dir", str(tmp_path), "--steps", "12", "--eval_every", "3", "--quiet"]
    toy_paper.main(args + ["--run", "r", "--stop_at", "6"])
    toy_paper.main(["--resume", str(tmp_path / "r"), "--quiet"])
    rows = [r for r in read_metrics(tmp_path / "r" / "metrics.jsonl") if "val_loss" in r]
    assert [r["step"] for r in rows] == [3, 6, 9, 12]
    losses = [r["val_loss"] for r in rows]
    assert losses[0] > losses[2]                           # falling: the first stays the max
    assert [r["max_val_loss"] for r in rows] == [max(losses[:i + 1]) for i in range(4)]


def test_a_reused_run_name_is_refused_and_the_old_run_is_untouched(tmp_path, capsys):
    toy_paper.main(["--out_dir", str(tmp_path), "--run", "r", "--steps", "3", "--quiet"])
    before = {p.name: p.read_bytes() for p in (tmp_path / "r").iterdir() if p.is_file()}
    with pytest.raises(SystemExit) as exc:
        toy_paper.main(["--out_dir", str(tmp_path), "--run", "r", "--steps", "5", "--quiet"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already exists" in err[0] and "--resume" in err[0]
    after = {p.name: p.read_bytes() for p in (tmp_path / "r").iterdir() if p.is_file()}
    assert after == before
    # an unnamed run never collides: two runs started in the same second get two directories
    a = toy_paper.main(["--out_dir", str(tmp_path / "t"), "--steps", "2", "--quiet"])
    b = toy_paper.main(["--out_dir", str(tmp_path / "t"), "--steps", "2", "--quiet"])
    assert a["run_dir"] != b["run_dir"]


def test_a_changed_model_field_on_resume_is_refused_with_one_line(tmp_path, capsys):
    toy_paper.main(["--out_dir", str(tmp_path), "--run", "r", "--steps", "4", "--stop_at", "2",
                    "--quiet"])
    for flag, value in (("--width", "7"), ("--batch_size", "16"), ("--seed", "3")):
        with pytest.raises(SystemExit) as exc:
            toy_paper.main(["--resume", str(tmp_path / "r"), flag, value])
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and flag in err[0] and "cannot change on resume" in err[0]


def test_sigterm_checkpoints_at_the_step_boundary_and_resume_matches(tmp_path):
    args = ["--out_dir", str(tmp_path), "--steps", "40", "--sleep", "0.05", "--dropout", "0.3"]
    ref = _toy(*args, "--run", "ref", "--sleep", "0")
    proc = _toy(*args, "--run", "cut")
    metrics = tmp_path / "cut" / "metrics.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not metrics.exists()
                                           or len(metrics.read_text().splitlines()) < 5):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "stopped by SIGTERM" in out
    stopped_at = max(s for s, _ in _losses(tmp_path / "cut"))
    assert 5 <= stopped_at < 40
    assert (tmp_path / "cut" / "checkpoint.pt").is_file()
    res = _toy("--resume", str(tmp_path / "cut"), "--sleep", "0")
    res.communicate(timeout=120)
    ref.communicate(timeout=120)
    assert res.returncode == 0 and ref.returncode == 0
    assert _losses(tmp_path / "cut") == _losses(tmp_path / "ref")


def test_a_stopped_rank_ends_the_job_within_the_timeout_naming_it(tmp_path):
    """torchrun with 2 ranks and --timeout 5; SIGSTOP rank 1; the job must end within 20 s and
    the error must name rank 1."""
    torchrun = Path(PY).with_name("torchrun")
    proc = subprocess.Popen(
        [str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "tests.test_shared.toy_paper",
         "--", "--quiet", "--out_dir", str(tmp_path), "--run", "hang", "--steps", "100000",
         "--sleep", "0.02", "--timeout", "5", "--log_every", "1"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True)
    metrics = tmp_path / "hang" / "metrics.jsonl"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and (not metrics.exists()
                                           or len(metrics.read_text().splitlines()) < 3):
        time.sleep(0.1)
    assert metrics.exists(), "the job did not start"
    children = subprocess.run(["pgrep", "-f", "-P", str(proc.pid), "toy_paper"],
                              capture_output=True, text=True).stdout.split()
    # the workers are the grandchildren of torchrun's process group; find rank 1 by its env
    pids = subprocess.run(["pgrep", "-f", "tests.test_shared.toy_paper"], capture_output=True,
                          text=True).stdout.split()
    rank1 = [int(p) for p in pids if int(p) != proc.pid and _env(int(p)).get("RANK") == "1"
             and _env(int(p)).get("TORCHELASTIC_RUN_ID")]
    assert rank1, (children, pids)
    t0 = time.monotonic()
    os.kill(rank1[0], signal.SIGSTOP)
    try:
        out, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        os.kill(rank1[0], signal.SIGKILL)
        raise AssertionError("the job did not end within 20 s of SIGSTOP")
    elapsed = time.monotonic() - t0
    assert proc.returncode != 0
    assert elapsed < 20
    assert "rank 1" in err and "stopped responding" in err, err[-2000:]


def _env(pid: int) -> dict:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return {}
    return dict(x.decode(errors="replace").split("=", 1) for x in raw if b"=" in x)


def test_tensorboard_events_beside_metrics_and_a_clear_error_without_it(tmp_path, capsys,
                                                                        monkeypatch):
    toy_paper.main(["--out_dir", str(tmp_path), "--run", "tb", "--steps", "3", "--quiet",
                    "--tensorboard"])
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    import builtins
    real_import = builtins.__import__

    def no_tensorboard(name, *a, **k):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError("no tensorboard")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with pytest.raises(SystemExit) as exc:
        toy_paper.main(["--out_dir", str(tmp_path), "--run", "tb2", "--steps", "3", "--quiet",
                        "--tensorboard"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install tensorboard" in err[0]


def test_nan_loss_stops_with_one_line_before_the_update(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        toy_paper.main(["--out_dir", str(tmp_path), "--run", "nan", "--steps", "50", "--quiet",
                        "--lr", "1e30", "--grad_clip", "0"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "loss became" in err[0] and "--lr" in err[0]


def _dp_worker(env, out_dir):
    torch.set_num_threads(1)
    cfg = toy_paper.parse_args(toy_paper.Config, toy_paper.PRESETS,
                               ["--out_dir", out_dir, "--run", f"dp{env.world_size}", "--steps",
                                "12", "--dropout", "0", "--quiet", "--grad_clip", "5"],
                               paper="toy")
    return toy_paper.fit(cfg, toy_paper.ToyTask(cfg, env))


def test_data_parallel_curves_and_weights_equal_one_process(tmp_path):
    """2 ranks with the same global batch log the same global loss and grad norm as 1 process
    (clipping on), and end with the same weights."""
    from shared.parallel import spawn

    single = spawn(_dp_worker, 1, str(tmp_path))[0]
    double = spawn(_dp_worker, 2, str(tmp_path))
    assert double[0]["run_dir"] == double[1]["run_dir"]          # rank 0 named the run for all
    a, b = read_metrics(tmp_path / "dp1" / "metrics.jsonl"), read_metrics(
        tmp_path / "dp2" / "metrics.jsonl")
    for ra, rb in zip(a, b):
        for key in ("loss", "grad_norm", "val_loss"):
            if key in ra:
                assert rb[key] == pytest.approx(ra[key], rel=1e-5, abs=1e-6), (key, ra, rb)
    assert single["val_loss"] == pytest.approx(double[0]["val_loss"], rel=1e-5)
