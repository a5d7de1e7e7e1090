"""`make export-<paper>`: each paper, exported by the repository's Makefile, runs `make test` (its
tests are collected from the exported tree alone) and a short `make train-<paper>` by its own
Makefile, outside the repository. The export's .venv points at this interpreter, so no pip
install happens here (the setup stamp is fresh)."""
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from shared.export import MANIFEST, ROOT

# a few steps of each paper's training, small enough for seconds on a CPU
SHORT_RUNS = {
    "tensor_parallel": ("smoke", []),
    "seqpar": ("tiny", ["--stop_at", "3", "--eval_every", "3", "--ckpt_every", "3",
                        "--max_bytes", "200000", "--batch_size", "8", "--seq_len", "32"]),
    "widenet": ("tiny", ["--stop_at", "3", "--train_size", "64", "--val_size", "32",
                         "--batch_size", "16"]),
}


def _env():
    return {k: v for k, v in os.environ.items()
            if k not in ("PYTHONPATH", "RANK", "WORLD_SIZE", "MAKEFLAGS", "MAKELEVEL")}


def _make(args, cwd, timeout=300):
    return subprocess.run(["make", "-s", *args], cwd=cwd, env=_env(), capture_output=True,
                          text=True, timeout=timeout)


def _fake_venv(dest: Path) -> None:
    (dest / ".venv" / "bin").mkdir(parents=True)
    py = dest / ".venv" / "bin" / "python"
    py.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    py.chmod(0o755)
    (dest / ".venv" / ".setup-stamp").touch()


@pytest.mark.parametrize("paper", [p for p in SHORT_RUNS if (ROOT / p).is_dir()])
def test_exported_paper_tests_and_trains_standalone(paper, tmp_path):
    dest = tmp_path / "export"
    out = _make([f"export-{paper}", f"DEST={dest}"], ROOT, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"exported {paper} to {dest}" in out.stdout
    assert (dest / MANIFEST).is_file() and (dest / paper / "README.md").is_file()
    assert (dest / "shared" / "parallel" / "comm.py").is_file()
    assert not (dest / "shared" / "export.py").exists()
    _fake_venv(dest)
    # the exported packages, not the repository's (installed in this venv), are the ones found
    where = subprocess.run([str(dest / ".venv" / "bin" / "python"), "-c",
                            "from importlib.util import find_spec as f; "
                            f"print(f('shared').origin, f('{paper}').origin)"],
                           cwd=dest, env=_env(), capture_output=True, text=True, timeout=60)
    assert where.stdout.split() == [str(dest / "shared" / "__init__.py"),
                                    str(dest / paper / "__init__.py")], where.stderr
    # make test: every exported test module imports from the exported tree alone
    test = _make(["test", "PYTEST_ARGS=--collect-only -q -p no:cacheprovider"], dest)
    assert test.returncode == 0, test.stdout[-3000:] + test.stderr[-3000:]
    assert f"tests/test_{paper}/" in test.stdout
    # make train-<paper>: a short run by the export's own Makefile
    preset, args = SHORT_RUNS[paper]
    runs = tmp_path / "runs"
    train = _make([f"train-{paper}", f"PRESET={preset}",
                   "ARGS=" + " ".join(args + ["--out_dir", str(runs)])], dest)
    assert train.returncode == 0, train.stdout[-2000:] + train.stderr[-3000:]
    assert any(runs.rglob("config.json")), "the run wrote no run directory"
    # the README's `make` commands exist in the exported Makefile as written
    readme = (dest / "README.md").read_text()
    commands = re.findall(r"^make [^\n#]*", readme, re.M)
    assert "make test" in [c.strip() for c in commands]
    for cmd in commands:
        dry = subprocess.run(["make", "-n", *shlex.split(cmd)[1:]], cwd=dest, env=_env(),
                             capture_output=True, text=True, timeout=60)
        assert dry.returncode == 0, (cmd, dry.stderr)


def test_make_export_refuses_a_directory_holding_a_users_file(tmp_path):
    dest = tmp_path / "mine"
    dest.mkdir()
    (dest / "notes.md").write_text("mine\n")
    out = _make(["export-tensor_parallel", f"DEST={dest}"], ROOT, timeout=120)
    assert out.returncode == 2, out.stdout + out.stderr
    assert f"error: export destination {dest} is not empty" in out.stderr
    assert [p.name for p in dest.iterdir()] == ["notes.md"]
    assert (dest / "notes.md").read_text() == "mine\n"
    usage = _make(["export-tensor_parallel"], ROOT, timeout=60)
    assert usage.returncode == 2 and "usage: make export-tensor_parallel DEST=" in usage.stdout
