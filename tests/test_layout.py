"""The repository's layout rules, checked on the source: shared/ is layered (a layer imports
only lower layers), papers import shared but never each other, shared imports no paper, there is
no import cycle inside shared/, and every paper package has the same skeleton."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["errors", "parallel", "bench", "data", "train", "pointcloud", "export"]
PAPERS = ["tensor_parallel", "seqpar", "widenet", "conadv", "f2c", "skeleton_merger", "prin",
          "canonical_voting"]
SKELETON = ["models", "parallel.py", "config.py", "train.py", "eval.py", "reproduce.py",
            "bench.py", "results", "README.md"]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Absolute names of the modules ``path`` imports (top-level and inside functions)."""
    tree = ast.parse(path.read_text())
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names)
    return out


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "shared" else None


def _shared_files():
    return sorted(p for p in (ROOT / "shared").rglob("*.py") if "results" not in p.parts)


def test_every_shared_module_lives_in_a_layer():
    for path in _shared_files():
        rel = path.relative_to(ROOT / "shared")
        if rel.name == "__init__.py" and len(rel.parts) == 1:
            continue
        assert rel.parts[0].removesuffix(".py") in LAYERS, f"{rel} is outside the layers {LAYERS}"


def test_shared_layers_import_only_lower_layers_and_no_paper():
    bad = []
    for path in _shared_files():
        here = _layer(_module_name(path))
        if here is None:
            continue
        for mod in _imports(path):
            top = mod.split(".")[0]
            if top in PAPERS:
                bad.append(f"{path.relative_to(ROOT)} imports the paper {mod}")
            other = _layer(mod)
            if other in LAYERS and LAYERS.index(other) > LAYERS.index(here):
                bad.append(f"{path.relative_to(ROOT)} ({here}) imports the higher layer {mod}")
    assert not bad, "\n".join(bad)


def test_no_import_cycle_inside_shared():
    graph = {}
    modules = {_module_name(p): p for p in _shared_files()}
    for name, path in modules.items():
        graph[name] = {m for m in _imports(path) if m in modules and m != name
                       and not name.startswith(m + ".") and not (m == "shared")}
    seen, stack = {}, []

    def visit(node):
        seen[node] = "open"
        stack.append(node)
        for nxt in graph[node]:
            if seen.get(nxt) == "open":
                cycle = stack[stack.index(nxt):] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in seen:
                visit(nxt)
        stack.pop()
        seen[node] = "done"

    for node in graph:
        if node not in seen:
            visit(node)


@pytest.mark.parametrize("paper", [p for p in PAPERS if (ROOT / p).is_dir()])
def test_papers_have_the_skeleton_and_import_no_other_paper(paper):
    missing = [f for f in SKELETON if not (ROOT / paper / f).exists()]
    assert not missing, f"{paper} lacks {missing}"
    for path in (ROOT / paper).rglob("*.py"):
        for mod in _imports(path):
            top = mod.split(".")[0]
            assert top == paper or top not in PAPERS, f"{path.relative_to(ROOT)} imports {mod}"
    for path in (ROOT / paper / "models").rglob("*.py"):
        src = path.read_text()
        assert "torch.distributed" not in src and "shared.parallel" not in src, (
            f"{path.relative_to(ROOT)}: models/ is single-device; distribute in parallel.py")
    distributed = [p.name for p in (ROOT / paper).glob("*.py")
                   if "shared.parallel.comm" in p.read_text() and not p.name.startswith(
                       ("parallel", "bench", "reproduce", "gpu_check"))]
    assert not distributed, f"{paper}: collectives outside parallel*.py: {distributed}"
