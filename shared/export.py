"""``make export-<paper> DEST=dir``: one paper, standalone, without ever destroying a file.

``python -m shared.export PAPER DEST`` writes into ``DEST``:

* ``PAPER/`` and its tests ``tests/test_PAPER/`` (plus ``tests/conftest.py``);
* the layers of ``shared/`` the paper imports, found by static analysis (``ast``) of every
  ``.py`` file of the paper and its tests, followed through the shared modules they reach
  (imports inside functions count too); ``shared/__init__.py`` and ``shared/errors.py`` always;
* the tests of those layers: each ``tests/test_shared/*.py`` whose own imports are all exported;
* ``requirements.txt``: the repository's pinned lines for what the copied code imports (plus
  torch, pytest, pytest-timeout, and tensorboard when pinned, which the training core imports
  lazily);
* a ``Makefile`` generated from the repository's, with the same variables (``PRESET NPROC MODE
  DATA ARGS``) and targets (``setup test test-% train-% eval-% reproduce-% bench-% clean``);
* ``pyproject.toml`` (the paper and ``shared*``), ``tools/check_system.sh`` when open3d is
  needed, and ``README.md``: a short header on how to run the export, then the paper's README;
* ``.export-manifest.json``: the paper's name and the SHA-256 of every file written.

Never destroys a file: a non-empty ``DEST`` is refused (:class:`ExportError`, exit status 2)
unless it holds the manifest of an earlier export of the same paper. Then the export merges:
it writes new files, overwrites only files it wrote before and that are unchanged since (same
hash as in the manifest), keeps and lists the files you changed, and deletes nothing (files of
the earlier export that are no longer part of it are listed).

This module imports nothing of ``shared`` but :mod:`shared.errors` and needs only the standard
library, so ``make export-<paper>`` runs before ``make setup``.
"""
from __future__ import annotations

import ast
import fnmatch
import hashlib
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from shared.errors import UsageError

ROOT = Path(__file__).resolve().parent.parent
MANIFEST = ".export-manifest.json"
_IGNORE = ("__pycache__", "*.pyc", "runs", ".pytest_cache", "*.egg-info", ".venv", ".git")
ALWAYS_SHARED = ("errors",)  # and shared/__init__.py, the package itself
# requirements kept whatever the code imports: the framework, the test runner, and tensorboard,
# which the training core imports lazily (inside a function, behind a flag)
_ALWAYS_REQUIREMENTS = {"torch", "pytest", "pytest-timeout", "tensorboard"}
_ALSO_NEEDS = {"timm": {"torchvision"}}        # keep the pinned pair together
# modules that come with another requirement (pillow is installed by torchvision)
_PROVIDED_BY = {"PIL": "torchvision"}
_IMPORT_NAME = {"open3d-cpu": "open3d", "pillow": "PIL", "pyyaml": "yaml",
                "scikit-learn": "sklearn", "opencv-python": "cv2"}
_DROPPED_RULES = ("export-%", "bench-points")  # repository-only targets
_MAKE_VARIABLES = ("PRESET", "NPROC", "MODE", "DATA", "ARGS")


class ExportError(UsageError):
    """An export that cannot be done as asked (unknown paper, a destination that is not empty
    and not an earlier export of the same paper, a destination inside the repository)."""


# ---- what a paper needs ------------------------------------------------------------------------

def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path, root: Path) -> set[str]:
    """Absolute dotted names that the Python file ``path`` imports anywhere in its body (also
    inside functions); relative imports are resolved against its package under ``root``. For
    ``from a import b`` both ``a`` and ``a.b`` are returned (``b`` may be a submodule)."""
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except SyntaxError as exc:
        raise ExportError(f"cannot analyse the imports of {path}: {exc}") from exc
    module = _module_name(path, root)
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1] if node.level > 1 else package
                base = ".".join(base + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base:
                names.add(base)
            names.update(f"{base}.{alias.name}" if base else alias.name
                         for alias in node.names if alias.name != "*")
    return names


def _ignored(name: str) -> bool:
    return any(fnmatch.fnmatch(name, pattern) for pattern in _IGNORE)


def _files_under(path: Path) -> list[Path]:
    """Files under ``path`` (or ``path`` itself), skipping caches, runs and build outputs."""
    if path.is_file():
        return [path]
    out = []
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = sorted(d for d in dirnames if not _ignored(d))
        out.extend(Path(dirpath) / f for f in sorted(filenames) if not _ignored(f))
    return out


def _shared_units(root: Path) -> dict[str, Path]:
    """The units of ``shared/`` an export copies whole: each subpackage and each module."""
    units = {}
    for p in sorted((root / "shared").iterdir()):
        if p.is_dir() and (p / "__init__.py").is_file():
            units[p.name] = p
        elif p.suffix == ".py" and p.name != "__init__.py":
            units[p.stem] = p
    return units


def _units_of(names, units) -> set[str]:
    out = set()
    for name in names:
        parts = name.split(".")
        if parts[0] == "shared" and len(parts) > 1 and parts[1] in units:
            out.add(parts[1])
    return out


def _py_files(path: Path) -> list[Path]:
    return [p for p in _files_under(path) if p.suffix == ".py"]


@dataclass
class Plan:
    """What an export of ``paper`` writes.

    Attributes:
        paper: the paper package.
        shared_units: layers/modules of ``shared/`` copied (``"__init__"`` is the package file).
        copies: destination-relative path -> source file in the repository.
        generated: destination-relative path -> file content (requirements, Makefile, ...).
        requirements: the requirement lines kept.
        skipped_tests: shared tests left out because they import layers that are not exported.
        unknown_imports: third-party modules the code imports that no requirement line provides.
    """
    paper: str
    shared_units: list[str]
    copies: dict[str, Path] = field(default_factory=dict)
    generated: dict[str, bytes] = field(default_factory=dict)
    requirements: list[str] = field(default_factory=list)
    skipped_tests: list[str] = field(default_factory=list)
    unknown_imports: list[str] = field(default_factory=list)

    def files(self) -> dict[str, bytes]:
        """Every file of the export, destination-relative path -> bytes (the manifest aside)."""
        out = {rel: src.read_bytes() for rel, src in self.copies.items()}
        out.update(self.generated)
        return dict(sorted(out.items()))


def _papers(root: Path) -> set[str]:
    return {p.name for p in root.iterdir()
            if p.is_dir() and (p / "__init__.py").is_file() and p.name not in ("shared", "tests")}


def plan_export(paper: str, root=ROOT) -> Plan:
    """Work out what an export of ``paper`` from the repository at ``root`` contains."""
    root = Path(root).resolve()
    papers = _papers(root)
    if paper not in papers:
        raise ExportError(f"no paper package {paper!r} at {root / paper} (papers: "
                          f"{', '.join(sorted(papers)) or 'none'}); pass one of them")
    units = _shared_units(root)
    tests = root / "tests"

    # 1. roots: the paper, its tests, the test setup, and any test helper they import
    roots = _py_files(root / paper)
    if (tests / f"test_{paper}").is_dir():
        roots += _py_files(tests / f"test_{paper}")
    for extra in ("__init__.py", "conftest.py"):
        if (tests / extra).is_file():
            roots.append(tests / extra)
    imports: dict[Path, set[str]] = {}
    pending = list(roots)
    while pending:
        f = pending.pop()
        if f in imports:
            continue
        imports[f] = imported_modules(f, root)
        for helper in _test_files_of(imports[f], root):
            if helper not in imports:
                roots.append(helper)
                pending.append(helper)
        others = {n.split(".")[0] for n in imports[f]} & (papers - {paper})
        if others:
            raise ExportError(f"{f.relative_to(root)} imports the paper package(s) "
                              f"{', '.join(sorted(others))}; papers must not import each other, so "
                              f"{paper} cannot be exported alone until that import is removed")

    # 2. the shared units they reach, followed through shared's own imports
    needed = {u for u in ALWAYS_SHARED if u in units} | {"__init__"}
    for f in roots:
        needed |= _units_of(imports[f], units)
    todo = list(needed)
    while todo:
        unit = todo.pop()
        files = [root / "shared" / "__init__.py"] if unit == "__init__" else _py_files(units[unit])
        for f in files:
            imports.setdefault(f, imported_modules(f, root))
            for u in _units_of(imports[f], units) - needed:
                needed.add(u)
                todo.append(u)

    plan = Plan(paper, sorted(needed))
    for f in _files_under(root / paper):
        plan.copies[f.relative_to(root).as_posix()] = f
    plan.copies["shared/__init__.py"] = root / "shared" / "__init__.py"
    for unit in sorted(needed - {"__init__"}):
        for f in _files_under(units[unit]):
            plan.copies[f.relative_to(root).as_posix()] = f
    for f in roots:
        if f.is_relative_to(tests):
            plan.copies[f.relative_to(root).as_posix()] = f
    if (tests / f"test_{paper}").is_dir():  # data files of the paper's tests too
        for f in _files_under(tests / f"test_{paper}"):
            plan.copies[f.relative_to(root).as_posix()] = f

    # 3. the shared tests whose imports are all exported (and their helpers)
    shared_tests = tests / "test_shared"
    if shared_tests.is_dir():
        candidates = {f: imported_modules(f, root) for f in _py_files(shared_tests)
                      if f.name != "__init__.py"}
        chosen = {f for f, names in candidates.items() if _units_of(names, units) <= needed}
        packages = {p for p in [tests / "__init__.py", shared_tests / "__init__.py"] if p.is_file()}
        changed = True
        while changed:  # drop tests whose test helpers were dropped
            changed = False
            for f in sorted(chosen):
                if not set(_test_files_of(candidates[f], root)) <= chosen | set(roots) | packages:
                    chosen.discard(f)
                    changed = True
        plan.skipped_tests = sorted(f.relative_to(root).as_posix()
                                    for f in set(candidates) - chosen)
        if chosen:
            init = shared_tests / "__init__.py"
            for f in sorted(chosen) + ([init] if init.is_file() else []):
                plan.copies[f.relative_to(root).as_posix()] = f
                imports.setdefault(f, candidates.get(f) or imported_modules(f, root))

    for rel in [r for r in plan.copies if r.startswith("tests/")]:  # their packages' __init__
        for parent in Path(rel).parents:
            init = root / parent / "__init__.py"
            if parent.parts and parent.parts[0] == "tests" and init.is_file():
                plan.copies.setdefault((parent / "__init__.py").as_posix(), init)

    # 4. requirements, Makefile, pyproject, README
    copied_py = [src for src in plan.copies.values() if src.suffix == ".py"]
    top = set()
    for f in copied_py:
        top |= {n.split(".")[0] for n in imports.get(f) or imported_modules(f, root)}
    local = {paper, "shared", "tests"} | papers
    third_party = {m for m in top if m not in local and m not in sys.stdlib_module_names}
    plan.requirements, provided = _requirements(root / "requirements.txt", third_party)
    plan.unknown_imports = sorted(third_party - provided - {"pkg_resources", "setuptools"})
    needs_open3d = "open3d" in provided
    plan.generated["requirements.txt"] = _requirements_text(root / "requirements.txt",
                                                            plan.requirements)
    plan.generated["Makefile"] = generate_makefile(
        (root / "Makefile").read_text(), paper, plan.requirements, needs_open3d).encode()
    plan.generated["pyproject.toml"] = _pyproject((root / "pyproject.toml").read_text(),
                                                  paper).encode()
    if needs_open3d:
        plan.copies["tools/check_system.sh"] = root / "tools" / "check_system.sh"
    plan.generated["README.md"] = _readme(root, paper, plan).encode()
    return plan


def _test_files_of(names, root: Path) -> list[Path]:
    """Files of ``tests/`` that the dotted ``names`` refer to (test helpers)."""
    out = []
    for name in names:
        if name.split(".")[0] != "tests":
            continue
        p = root.joinpath(*name.split("."))
        for cand in (p.with_suffix(".py"), p / "__init__.py"):
            if cand.is_file():
                out.append(cand)
                break
    return out


def _requirement_name(line: str) -> str | None:
    m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", line)
    return m.group(1).lower() if m and not line.lstrip().startswith("#") else None


def _requirements(path: Path, third_party: set[str]) -> tuple[list[str], set[str]]:
    """The lines of ``path`` that the export needs, and the import names they provide."""
    lines = [ln.rstrip() for ln in path.read_text().splitlines()]
    import_of = {}
    for ln in lines:
        name = _requirement_name(ln)
        if name:
            import_of[name] = _IMPORT_NAME.get(name, name.replace("-", "_"))
    keep = {name for name, mod in import_of.items()
            if name in _ALWAYS_REQUIREMENTS or mod in third_party}
    keep |= {_PROVIDED_BY[m] for m in third_party if _PROVIDED_BY.get(m) in import_of}
    for name in list(keep):
        keep |= _ALSO_NEEDS.get(name, set()) & set(import_of)
    kept = [ln for ln in lines if _requirement_name(ln) in keep]
    provided = {import_of[n] for n in keep}
    provided |= {m for m, by in _PROVIDED_BY.items() if by in keep}
    return kept, provided


def _requirements_text(path: Path, kept: list[str]) -> bytes:
    header = []
    for ln in path.read_text().splitlines():  # the header comment explains the pins
        if not ln.startswith("#"):
            break
        header.append(ln)
    return ("\n".join(header + ["# (exported: only what this paper imports)"] + kept) + "\n").encode()


def generate_makefile(text: str, paper: str, requirements: list[str], needs_open3d: bool) -> str:
    """The export's Makefile, derived from the repository's Makefile ``text`` so the two cannot
    drift: the same variables and targets, minus the repository-only rules (``export-%``,
    ``bench-points``), ``PAPERS`` set to ``paper``, and the setup's import check (and
    ``tools/check_system.sh`` call, unless open3d is needed) cut to the kept requirements."""
    kept_imports = {_IMPORT_NAME.get(n, n.replace("-", "_"))
                    for n in map(_requirement_name, requirements) if n}
    lines, out, skipping = text.splitlines(), [], False
    for line in lines:
        if re.match(rf"^({'|'.join(map(re.escape, _DROPPED_RULES))})\s*:", line):
            skipping = True  # the rule line, then its recipe (tab-indented) and one blank line
            while out and out[-1].startswith("#"):  # and the comment just above it
                out.pop()
            continue
        if skipping:
            if line.startswith("\t"):
                continue
            skipping = False
            if not line.strip():
                continue
        out.append(line)
    text = "\n".join(out) + "\n"

    def sub(pattern, repl, what, flags=0):
        nonlocal text
        new, n = re.subn(pattern, repl, text, flags=flags)
        if not n:
            raise RuntimeError(f"the repository Makefile no longer has {what}; update "
                               f"shared/export.py (generate_makefile) to match it")
        text = new

    sub(r"^#[^\n]*make export-[^\n]*\n", "", "the 'make export-' comment line", re.M)
    sub(r"^PAPERS\s*:=.*$", f"PAPERS := {paper}", "the PAPERS variable", re.M)
    sub(r"^(\.PHONY:.*)$", lambda m: " ".join(
        w for w in m.group(1).split() if w not in _DROPPED_RULES), "the .PHONY line", re.M)

    def imports(m):
        mods = [x.strip() for x in m.group(2).split(",")]
        return m.group(1) + ", ".join(x for x in mods if x in kept_imports) + m.group(3)
    sub(r'(-c "import )([\w, ]+)(")', imports, "the setup's import check")
    if not needs_open3d:
        sub(r"^\t@?bash tools/check_system\.sh[^\n]*\n", "", "the check_system.sh call", re.M)
        sub(r"^(\$\(STAMP\):[^\n]*?)\s+tools/check_system\.sh", r"\1",
            "tools/check_system.sh as a setup prerequisite", re.M)
    for var in _MAKE_VARIABLES:
        if not re.search(rf"\$\({var}\)", text):
            raise RuntimeError(f"the generated Makefile lost the variable {var}")
    header = (f"# Exported from the papers monorepo (make export-{paper}); generated from its "
              f"Makefile.\n")
    return header + text.rstrip("\n") + "\n"


def _pyproject(text: str, paper: str) -> str:
    text, n = re.subn(r"include\s*=\s*\[[^\]]*\]", f'include = ["{paper}*", "shared*"]', text,
                      flags=re.S)
    if not n:
        raise RuntimeError("the repository pyproject.toml has no packages.find include list; "
                           "update shared/export.py (_pyproject)")
    text = re.sub(r'^name\s*=.*$', f'name = "{paper.replace("_", "-")}-standalone"', text,
                  count=1, flags=re.M)
    text = re.sub(r'^description\s*=.*$',
                  f'description = "{paper}, exported from the papers monorepo to run on its own"',
                  text, count=1, flags=re.M)
    return text


def _readme(root: Path, paper: str, plan: Plan) -> str:
    layers = ", ".join(u for u in plan.shared_units if u != "__init__")
    header = (
        f"# {paper}: standalone export\n\n"
        f"Exported from the papers monorepo with `make export-{paper}`: the `{paper}` package, "
        f"its tests, the layers of `shared/` it imports ({layers}), and a Makefile with the "
        f"repository's targets. Run from this directory:\n\n"
        f"```\n"
        f"make test                       # first time: creates .venv and installs requirements.txt\n"
        f"make train-{paper}\n"
        f"```\n\n"
        f"Every target runs `make setup` first. The paper's README follows; its commands run "
        f"from this directory.\n\n---\n\n")
    src = root / paper / "README.md"
    body = src.read_text() if src.is_file() else ""
    exported = set(plan.copies) | set(plan.generated)

    def relink(m):
        target = m.group(2)
        if re.match(r"^([a-z]+:|#|/)", target):
            return m.group(0)
        path, _, anchor = target.partition("#")
        rel = os.path.normpath(os.path.join(paper, path)).replace(os.sep, "/")
        if rel in exported or any(f.startswith(rel + "/") for f in exported):
            return f"{m.group(1)}({rel}{'#' + anchor if anchor else ''})"
        return m.group(0)
    body = re.sub(r"(\]|\]\s)\(([^)\s]+)\)", relink, body)
    return header + body


# ---- writing without destroying ----------------------------------------------------------------

def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class ExportResult:
    """What :func:`export` did.

    Attributes:
        dest: the export's directory.
        plan: the :class:`Plan` exported.
        written: files written (new, or updated from an earlier export).
        unchanged: files already identical.
        kept_modified: files of an earlier export that were changed since, left as they are.
        kept_foreign: files the export would write that it did not create, left as they are.
        stale: files of an earlier export that are no longer part of it, left in place.
    """
    dest: Path
    plan: Plan
    written: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    kept_modified: list[str] = field(default_factory=list)
    kept_foreign: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """Lines for the terminal: what was written, kept and left, and how to run it."""
        p = self.plan
        lines = [f"exported {p.paper} to {self.dest}: {len(self.written)} files written, "
                 f"{len(self.unchanged)} unchanged; shared layers: "
                 f"{', '.join(u for u in p.shared_units if u != '__init__')}"]
        if self.kept_modified:
            lines.append(f"kept {len(self.kept_modified)} files you changed since the last export "
                         f"(not overwritten): {', '.join(self.kept_modified)}")
        if self.kept_foreign:
            lines.append(f"kept {len(self.kept_foreign)} files that were not written by an "
                         f"export (not overwritten): {', '.join(self.kept_foreign)}")
        if self.stale:
            lines.append(f"left {len(self.stale)} files of the earlier export that are no longer "
                         f"part of it (delete them if unused): {', '.join(self.stale)}")
        if p.unknown_imports:
            lines.append(f"warning: the code imports {', '.join(p.unknown_imports)}, which no "
                         f"line of requirements.txt provides")
        lines.append(f"run it: cd {self.dest} && make test && make train-{p.paper}")
        return "\n".join(lines)


def _read_manifest(dest: Path) -> dict | None:
    path = dest / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        if not isinstance(data.get("paper"), str) or not isinstance(data.get("files"), dict):
            raise ValueError("no 'paper' or 'files'")
        return data
    except (ValueError, OSError) as exc:
        raise ExportError(f"{path} is not a readable export manifest ({exc}); export into a new "
                          f"or empty directory instead") from exc


def _write(path: Path, data: bytes, mode: int | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.export-tmp")
    tmp.write_bytes(data)
    if mode is not None:
        os.chmod(tmp, mode)
    os.replace(tmp, path)


def export(paper: str, dest, root=ROOT) -> ExportResult:
    """Export ``paper`` from the repository at ``root`` into ``dest`` (see the module docstring).

    Raises :class:`ExportError` for an unknown paper, a destination inside the repository, or a
    non-empty destination that is not an earlier export of the same paper. Never deletes a file.
    """
    root = Path(root).resolve()
    dest = Path(dest).expanduser().resolve()
    if dest == root or any(dest.is_relative_to(root / d) for d in ("shared", "tests", paper)) \
            or root.is_relative_to(dest):
        raise ExportError(f"export destination {dest} is inside the repository (or holds it); "
                          f"choose a directory outside {root}")
    if dest.exists() and not dest.is_dir():
        raise ExportError(f"export destination {dest} is a file, not a directory; choose a new "
                          f"or empty directory")
    plan = plan_export(paper, root)
    manifest = _read_manifest(dest) if dest.is_dir() else None
    if dest.is_dir() and any(dest.iterdir()):
        if manifest is None:
            raise ExportError(
                f"export destination {dest} is not empty and is not an earlier export of "
                f"{paper} (no {MANIFEST}); nothing was written: choose a new or empty directory")
        if manifest["paper"] != paper:
            raise ExportError(
                f"export destination {dest} holds an export of {manifest['paper']}, not {paper}; "
                f"nothing was written: export {paper} into a new or empty directory")
    before = dict(manifest["files"]) if manifest else {}
    result = ExportResult(dest, plan)
    record = {}
    files = plan.files()
    for rel, data in files.items():
        target = dest / rel
        new_hash = _sha(data)
        src = plan.copies.get(rel)
        mode = (src.stat().st_mode & 0o777) if src is not None else None
        if target.is_dir() or (target.exists() and not target.is_file()):
            result.kept_foreign.append(rel)
            continue
        if not target.exists():
            _write(target, data, mode)
            result.written.append(rel)
            record[rel] = new_hash
            continue
        current = _sha(target.read_bytes())
        if current == new_hash:
            result.unchanged.append(rel)
            record[rel] = new_hash
        elif rel not in before:
            result.kept_foreign.append(rel)
        elif current != before[rel]:
            result.kept_modified.append(rel)
            record[rel] = before[rel]  # still ours, still changed by you: kept next time too
        else:
            _write(target, data, mode)
            result.written.append(rel)
            record[rel] = new_hash
    result.stale = sorted(rel for rel in before if rel not in files and (dest / rel).exists())
    for rel in result.stale:
        record[rel] = before[rel]
    manifest_data = {"format": 1, "paper": paper,
                     "shared_units": [u for u in plan.shared_units if u != "__init__"],
                     "requirements": plan.requirements, "files": dict(sorted(record.items()))}
    dest.mkdir(parents=True, exist_ok=True)
    _write(dest / MANIFEST, (json.dumps(manifest_data, indent=1) + "\n").encode(), None)
    return result


def main(argv=None) -> int:
    """``python -m shared.export PAPER DEST``: export, print what was done; exit 2 on bad input."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0].startswith("-"):
        print("usage: python -m shared.export PAPER DEST   (make export-PAPER DEST=dir)",
              file=sys.stderr)
        return 2
    try:
        result = export(*argv)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(result.summary())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
