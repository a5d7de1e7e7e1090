"""`make export-<paper>`: a toy paper exported from a toy copy of the repository.

What is copied (only the shared layers the paper imports, only their tests), what is generated
(requirements, Makefile, pyproject, README), that the export runs by its own Makefile, and that
an export never destroys a file: a non-empty destination is refused unless it is an earlier
export of the same paper, which is then merged (files you changed are kept).
"""
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from shared.errors import UsageError
from shared.export import (MANIFEST, ROOT, ExportError, export, generate_makefile, main,
                           plan_export)

TOY_TRAIN = '''"""A toy paper: trains nothing, prints where its shared package came from."""
import argparse

from shared.data.sampler import EpochSampler


def _lazy():
    import scipy  # noqa: F401  (imported inside a function: still a requirement)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="tiny")
    p.add_argument("--mode", default="none")
    args = p.parse_args()
    import shared
    s = EpochSampler(10, 5, seed=1)
    print("toy trained", args.preset, args.mode, len(next(s)), shared.__file__)


if __name__ == "__main__":
    main()
'''


def _toy_repo(root: Path) -> Path:
    """A repository holding the real shared/, Makefile, requirements and pyproject, and a toy
    paper with tests; tests/test_shared has one test per kind of dependency."""
    root.mkdir(parents=True)
    shutil.copytree(ROOT / "shared", root / "shared", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("requirements.txt", "Makefile", "pyproject.toml"):
        shutil.copy2(ROOT / name, root / name)
    (root / "tools").mkdir()
    shutil.copy2(ROOT / "tools" / "check_system.sh", root / "tools" / "check_system.sh")
    (root / "toy").mkdir()
    (root / "toy" / "__init__.py").write_text("")
    (root / "toy" / "train.py").write_text(TOY_TRAIN)
    (root / "toy" / "old.py").write_text("X = 1\n")
    (root / "toy" / "README.md").write_text(
        "# toy\n\nSee [the notes](notes/extra.md) and [the paper](https://arxiv.org).\n\n"
        "```\nmake train-toy MODE=fast\nmake test-toy\n```\n")
    (root / "toy" / "notes").mkdir()
    (root / "toy" / "notes" / "extra.md").write_text("notes\n")
    (root / "other").mkdir()
    (root / "other" / "__init__.py").write_text("")
    (root / "other" / "train.py").write_text("from toy.train import main\n")
    tests = root / "tests"
    (tests / "test_toy").mkdir(parents=True)
    (tests / "__init__.py").write_text("")
    (tests / "conftest.py").write_text('"""conftest"""\n')
    (tests / "test_toy" / "__init__.py").write_text("")
    (tests / "test_toy" / "test_toy.py").write_text(
        "from tests.test_shared.helper import VALUE\n"
        "from shared.data import EpochSampler\n\n"
        "def test_toy():\n    assert VALUE == 3 and len(next(EpochSampler(6, 3, seed=0))) == 3\n")
    ts = tests / "test_shared"
    ts.mkdir()
    (ts / "__init__.py").write_text("")
    (ts / "helper.py").write_text("VALUE = 3\n")
    (ts / "test_data_layer.py").write_text(
        "from shared.data.sampler import EpochSampler\n\n"
        "def test_sampler():\n    assert len(next(EpochSampler(4, 2, seed=0))) == 2\n")
    (ts / "test_points_layer.py").write_text(
        "from shared.pointcloud import points\n\ndef test_points():\n    assert points\n")
    (ts / "test_lazy_train.py").write_text(
        "def test_train():\n    from shared.train import config  # noqa: F401\n")
    return root


@pytest.fixture
def repo(tmp_path):
    return _toy_repo(tmp_path / "repo")


def _fake_venv(dest: Path) -> None:
    """Point the export's .venv at this interpreter (no pip install in tests): a python that
    runs ours, and a setup stamp newer than requirements.txt, so `make setup` has nothing to do."""
    (dest / ".venv" / "bin").mkdir(parents=True)
    py = dest / ".venv" / "bin" / "python"
    py.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    py.chmod(0o755)
    (dest / ".venv" / ".setup-stamp").touch()


def _env():
    return {k: v for k, v in os.environ.items()
            if k not in ("PYTHONPATH", "RANK", "WORLD_SIZE", "MAKEFLAGS", "MAKELEVEL")}


def test_export_copies_only_what_the_paper_imports(repo, tmp_path):
    plan = plan_export("toy", repo)
    assert plan.shared_units == ["__init__", "data", "errors"]
    res = export("toy", tmp_path / "out", root=repo)
    dest = res.dest
    assert (dest / "toy" / "train.py").is_file() and (dest / "toy" / "notes" / "extra.md").is_file()
    assert (dest / "shared" / "__init__.py").is_file() and (dest / "shared" / "errors.py").is_file()
    assert (dest / "shared" / "data" / "sampler.py").is_file()
    for absent in ("shared/parallel", "shared/train", "shared/pointcloud", "shared/bench",
                   "shared/export.py", "other", "tools/check_system.sh"):
        assert not (dest / absent).exists(), absent
    # the paper's tests, their helper, and only the shared tests whose layers are exported
    assert (dest / "tests" / "test_toy" / "test_toy.py").is_file()
    assert (dest / "tests" / "test_shared" / "helper.py").is_file()
    assert (dest / "tests" / "test_shared" / "test_data_layer.py").is_file()
    assert not (dest / "tests" / "test_shared" / "test_points_layer.py").exists()
    assert not (dest / "tests" / "test_shared" / "test_lazy_train.py").exists()
    assert "tests/test_shared/test_lazy_train.py" in plan.skipped_tests
    # requirements: what is imported (scipy lazily, numpy by the data layer), never h5py/open3d
    reqs = (dest / "requirements.txt").read_text()
    names = {re.match(r"[\w.-]+", ln).group(0) for ln in reqs.splitlines()
             if ln and not ln.startswith("#")}
    repo_names = {re.match(r"[\w.-]+", ln).group(0) for ln in (repo / "requirements.txt")
                  .read_text().splitlines() if ln and not ln.startswith("#")}
    assert {"torch", "scipy", "numpy", "pytest", "pytest-timeout"} <= names
    assert not names & {"h5py", "open3d", "open3d-cpu", "matplotlib", "timm"}, names
    assert ("tensorboard" in names) == ("tensorboard" in repo_names)
    # pyproject: the paper and shared only
    assert 'include = ["toy*", "shared*"]' in (dest / "pyproject.toml").read_text()
    # README: a header on how to run, then the paper's README with its links still working
    readme = (dest / "README.md").read_text()
    assert "make test" in readme and "make train-toy" in readme and "# toy" in readme
    assert "(toy/notes/extra.md)" in readme and "(https://arxiv.org)" in readme
    manifest = json.loads((dest / MANIFEST).read_text())
    assert manifest["paper"] == "toy" and "toy/train.py" in manifest["files"]
    assert sorted(res.written) == sorted(manifest["files"])


def test_generated_makefile_keeps_the_targets_and_variables(repo):
    text = (repo / "Makefile").read_text()
    out = generate_makefile(text, "toy", ["torch==1", "scipy==1"], needs_open3d=False)
    for target in ("setup:", "test:", "test-%:", "train-%:", "eval-%:", "reproduce-%:",
                   "bench-%:", "clean:"):
        assert re.search(rf"^{re.escape(target)}", out, re.M), target
    assert "export-%" not in out and "bench-points" not in out and "check_system" not in out
    assert re.search(r"^PAPERS := toy$", out, re.M)
    assert '-c "import torch, scipy"' in out
    for var in ("PRESET", "NPROC", "MODE", "DATA", "ARGS", "VENV"):
        assert f"$({var})" in out, var
    with_o3d = generate_makefile(text, "toy", ["torch==1", "open3d-cpu==0.2"], needs_open3d=True)
    assert "bash tools/check_system.sh" in with_o3d
    # a repository Makefile that drifted from what the generator knows is an error, not a guess
    with pytest.raises(RuntimeError, match="import check"):
        generate_makefile(text.replace('-c "import ', '-c "from x import '), "toy", [], False)


def test_exported_tree_runs_make_test_and_make_train_by_its_own_makefile(repo, tmp_path):
    dest = export("toy", tmp_path / "out", root=repo).dest
    _fake_venv(dest)
    shutil.rmtree(repo)  # nothing of the repository is left to import from
    train = subprocess.run(["make", "-s", "train-toy", "PRESET=small", "MODE=fast"], cwd=dest,
                           env=_env(), capture_output=True, text=True, timeout=120)
    assert train.returncode == 0, train.stdout + train.stderr
    assert "toy trained small fast 5" in train.stdout
    assert str(dest / "shared") in train.stdout
    test = subprocess.run(["make", "-s", "test", "PYTEST_ARGS=-p no:cacheprovider"], cwd=dest,
                          env=_env(), capture_output=True, text=True, timeout=120)
    assert test.returncode == 0, test.stdout + test.stderr
    assert "2 passed" in test.stdout, test.stdout
    # every `make` command of the README exists in the exported Makefile
    for cmd in re.findall(r"^make [^\n#]*", (dest / "README.md").read_text(), re.M):
        dry = subprocess.run(["make", "-n", *shlex.split(cmd)[1:]], cwd=dest, env=_env(),
                             capture_output=True, text=True, timeout=60)
        assert dry.returncode == 0, (cmd, dry.stderr)


def test_a_directory_holding_a_users_file_is_refused_and_kept(repo, tmp_path, capsys):
    dest = tmp_path / "mine"
    dest.mkdir()
    (dest / "README.md").write_text("my own notes\n")
    with pytest.raises(ExportError, match=r"mine is not empty and is not an earlier export of toy")\
            as info:
        export("toy", dest, root=repo)
    assert isinstance(info.value, UsageError) and "new or empty directory" in str(info.value)
    assert [p.name for p in dest.iterdir()] == ["README.md"]
    assert (dest / "README.md").read_text() == "my own notes\n"
    # the command line: one line, `error: ...`, exit status 2
    cmd = [sys.executable, "-c", "import sys; from shared.export import main; "
           f"sys.exit(main(['toy', {str(dest)!r}]))"]
    env = dict(_env(), PYTHONPATH=str(repo))
    out = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and out.stderr.startswith("error: ") and out.stderr.count("\n") == 1
    assert (dest / "README.md").read_text() == "my own notes\n"


def test_reexport_merges_and_never_destroys(repo, tmp_path):
    dest = export("toy", tmp_path / "out", root=repo).dest
    _fake_venv(dest)
    (dest / "toy" / "train.py").write_text(TOY_TRAIN + "# my change\n")   # a user's edit
    (dest / "notes.txt").write_text("mine\n")                               # a user's file
    (dest / "Makefile").unlink()                                            # a deleted file
    # the repository moves on: a changed README, a new module, a module removed
    (repo / "toy" / "README.md").write_text("# toy v2\n")
    (repo / "toy" / "new.py").write_text("Y = 2\n")
    (dest / "toy" / "clash.py").write_text("mine too\n")
    (repo / "toy" / "clash.py").write_text("Z = 3\n")
    (repo / "toy" / "old.py").unlink()
    res = export("toy", dest, root=repo)
    assert res.kept_modified == ["toy/train.py"]
    assert (dest / "toy" / "train.py").read_text().endswith("# my change\n")
    assert res.kept_foreign == ["toy/clash.py"] and (dest / "toy" / "clash.py").read_text() == "mine too\n"
    assert (dest / "notes.txt").read_text() == "mine\n" and (dest / ".venv" / ".setup-stamp").exists()
    assert "# toy v2" in (dest / "README.md").read_text() and (dest / "toy" / "new.py").is_file()
    assert (dest / "Makefile").is_file(), "a deleted file of the export is written again"
    assert res.stale == ["toy/old.py"] and (dest / "toy" / "old.py").is_file()
    summary = res.summary()
    assert "toy/train.py" in summary and "toy/old.py" in summary and "toy/clash.py" in summary
    # a third export still knows the edited file is the user's
    again = export("toy", dest, root=repo)
    assert again.kept_modified == ["toy/train.py"] and not again.written
    assert (dest / "toy" / "train.py").read_text().endswith("# my change\n")


def test_refusals_name_the_problem(repo, tmp_path):
    dest = export("toy", tmp_path / "out", root=repo).dest
    shutil.copytree(repo / "toy", repo / "toy2")
    with pytest.raises(ExportError, match="holds an export of toy, not toy2"):
        export("toy2", dest, root=repo)
    with pytest.raises(ExportError, match="no paper package 'nope'.*papers: other, toy, toy2"):
        export("nope", tmp_path / "x", root=repo)
    with pytest.raises(ExportError, match="inside the repository"):
        export("toy", repo / "shared" / "x", root=repo)
    with pytest.raises(ExportError, match="papers must not import each other"):
        export("other", tmp_path / "y", root=repo)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ExportError, match="is a file, not a directory"):
        export("toy", tmp_path / "afile", root=repo)
    (dest / MANIFEST).write_text("{not json")
    with pytest.raises(ExportError, match="not a readable export manifest"):
        export("toy", dest, root=repo)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_a_point_cloud_paper_gets_open3d_and_the_system_check(repo):
    (repo / "pc").mkdir()
    (repo / "pc" / "__init__.py").write_text("")
    (repo / "pc" / "train.py").write_text("from shared.pointcloud import pcio\n")
    plan = plan_export("pc", repo)
    assert "pointcloud" in plan.shared_units and "tools/check_system.sh" in plan.copies
    names = [re.match(r"[\w.-]+", ln).group(0) for ln in plan.requirements]
    assert "open3d-cpu" in names and "open3d" in names and "h5py" in names
    assert "bash tools/check_system.sh" in plan.generated["Makefile"].decode()
    assert "tests/test_shared/test_points_layer.py" in plan.copies
