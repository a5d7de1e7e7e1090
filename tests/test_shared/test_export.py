"""`make export-<paper>`: the exported copy runs on its own, outside the repository."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from shared.export import ROOT, export


def _toy_repo(root: Path) -> None:
    (root / "toy").mkdir(parents=True)
    (root / "toy" / "__init__.py").write_text("")
    (root / "toy" / "train.py").write_text(
        "import shared\n"
        "from shared import EpochSampler\n"
        "def main():\n"
        "    s = EpochSampler(10, 5, seed=1)\n"
        "    print('toy trained', len(next(s)), shared.__file__)\n"
        "if __name__ == '__main__':\n"
        "    main()\n")
    shutil.copytree(ROOT / "shared", root / "shared", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(ROOT / "requirements.txt", root / "requirements.txt")
    (root / "tools").mkdir()
    shutil.copy2(ROOT / "tools" / "check_system.sh", root / "tools" / "check_system.sh")


def test_exported_paper_runs_from_its_own_directory(tmp_path):
    _toy_repo(tmp_path / "repo")
    dest = export("toy", tmp_path / "out", root=tmp_path / "repo")
    assert (dest / "toy" / "train.py").is_file() and (dest / "shared" / "comm.py").is_file()
    assert (dest / "requirements.txt").is_file() and "python -m toy.train" in (dest / "README.md").read_text()
    # run with the exported tree first on the path and the repository nowhere on it
    out = subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, '.'); "
                          "import runpy; runpy.run_module('toy.train', run_name='__main__')"],
                         cwd=dest, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "toy trained 5" in out.stdout and str(dest / "shared") in out.stdout


def test_export_refuses_unknown_paper_and_destinations_inside_the_repo(tmp_path):
    _toy_repo(tmp_path / "repo")
    with pytest.raises(ValueError, match="no paper package 'nope'"):
        export("nope", tmp_path / "out", root=tmp_path / "repo")
    with pytest.raises(ValueError, match="inside the repository"):
        export("toy", tmp_path / "repo" / "shared" / "x", root=tmp_path / "repo")
