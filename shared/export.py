"""``python -m shared.export PAPER DEST``: copy one paper so it runs on its own.

Copies ``PAPER/``, ``shared/``, the paper's tests (if any), ``requirements.txt`` and the setup
helper into ``DEST`` and writes a short README there. Inside ``DEST``::

    python -m venv .venv && .venv/bin/pip install -r requirements.txt
    .venv/bin/python -m PAPER.train --preset tiny
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "runs", ".pytest_cache")


def export(paper: str, dest, root=ROOT) -> Path:
    """Copy ``paper`` (a package directory under ``root``) and its dependencies into ``dest``."""
    root = Path(root).resolve()
    src = root / paper
    if not (src / "__init__.py").is_file():
        raise ValueError(f"no paper package {paper!r} at {src}")
    dest = Path(dest).resolve()
    inside = {dest, *dest.parents}
    if dest == root or root / paper in inside or root / "shared" in inside:
        raise ValueError(f"export destination {dest} is inside the repository; choose another")
    dest.mkdir(parents=True, exist_ok=True)
    for name in (paper, "shared"):
        target = dest / name
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(root / name, target, ignore=_IGNORE)
    tests = root / "tests" / f"test_{paper}"
    if tests.is_dir():
        target = dest / "tests" / f"test_{paper}"
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(tests, target, ignore=_IGNORE)
        for extra in ("conftest.py",):
            if (root / "tests" / extra).is_file():
                shutil.copy2(root / "tests" / extra, dest / "tests" / extra)
        (dest / "tests" / "__init__.py").touch()
    shutil.copy2(root / "requirements.txt", dest / "requirements.txt")
    (dest / "tools").mkdir(exist_ok=True)
    shutil.copy2(root / "tools" / "check_system.sh", dest / "tools" / "check_system.sh")
    (dest / "README.md").write_text(
        f"# {paper} (exported)\n\nExported from the papers monorepo: the `{paper}` package and "
        f"the `shared` package it builds on.\n\n```\npython3 -m venv .venv\n"
        f".venv/bin/pip install -r requirements.txt\nbash tools/check_system.sh .venv/bin/python\n"
        f".venv/bin/python -m {paper}.train --preset tiny\n```\n\nSee `{paper}/README.md`.\n")
    return dest


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m shared.export PAPER DEST", file=sys.stderr)
        return 2
    try:
        out = export(*argv)
    except ValueError as exc:
        print(f"export: {exc}", file=sys.stderr)
        return 2
    print(f"exported {argv[0]} to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
