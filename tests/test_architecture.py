"""The import graph (docs/architecture.md): no import circle, in the core or in a system, and no
import from a lower floor to a higher one."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FLOORS = {
    1: {"errors", "_version", "_lazy", "checks", "io", "outputs", "assets"},
    2: {"core"},
    3: {"lrp", "data", "models"},
    4: {"methods", "metrics"},
    5: {"pipeline", "dense", "retrieval", "evaluation", "concepts", "viz"},
    6: {"cli", "serve", "__main__", ""},  # "" is the package root (the public API)
}
FLOOR_OF = {name: floor for floor, names in FLOORS.items() for name in names}


def _module_name(path: Path, src: Path) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    """``{module: {imported modules of the same top-level package or of visionlens}}``."""
    src = package_dir.parent
    modules = {_module_name(p, src): p for p in package_dir.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                candidates = [f"{target}.{a.name}" for a in node.names] + [target]
            elif isinstance(node, ast.Import):
                candidates = [a.name for a in node.names]
            else:
                continue
            for c in candidates:
                while c and c not in modules and not c.startswith("visionlens."):
                    c = c.rpartition(".")[0]
                if c in modules and c != name:
                    edges.add(c)
                    break
                if c.startswith("visionlens.") and package_dir.name != "visionlens":
                    edges.add(c)
                    break
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in list(graph):
        if v not in index:
            visit(v)
    return found


def _packages() -> list[Path]:
    return [ROOT / "src" / "visionlens", *sorted(ROOT.glob("systems/*/src/*")), ]


@pytest.mark.parametrize("package", _packages(), ids=lambda p: p.name)
def test_no_import_circle(package):
    assert cycles(import_graph(package)) == []


def _floor(module: str) -> int:
    top = module.split(".")[1] if "." in module else ""
    return FLOOR_OF.get(top.removesuffix(".py"), 0)


def test_every_core_module_has_a_floor():
    tops = {p.stem if p.is_file() else p.name for p in (ROOT / "src" / "visionlens").iterdir()
            if (p.suffix == ".py" or (p.is_dir() and (p / "__init__.py").exists()))}
    assert tops - {"__init__"} <= set(FLOOR_OF)


def test_no_lower_floor_imports_a_higher_one():
    graph = import_graph(ROOT / "src" / "visionlens")
    upward = sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets if _floor(b) > _floor(a))
    assert upward == []


def test_the_sub_packages_are_attributes_of_the_package_without_importing_torch_first():
    """`import visionlens` then `visionlens.data.load_image(...)` works (the docs' examples), and
    importing the package alone still does not import torch."""
    code = ("import sys, visionlens; assert 'torch' not in sys.modules; "
            "assert callable(visionlens.data.load_image) and callable(visionlens.viz.overlay); "
            "assert 'data' in dir(visionlens); print(visionlens.metrics.__name__)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "visionlens.metrics", proc.stderr
