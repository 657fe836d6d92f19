"""The import graph of diffbench: no cycles, and no module imports from a layer above its own.

Every import statement counts (module level, inside functions, under TYPE_CHECKING), read with ast.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "diffbench"

# Lowest first; a module may import from its own layer and the layers below. A name ending in "."
# is a package prefix; the most specific match decides a module's layer.
LAYERS: list[tuple[str, ...]] = [
    ("diffbench", "diffbench.errors", "diffbench.registries", "diffbench.interrupts", "diffbench.atomicio",
     "diffbench.noise",
     "diffbench.columns", "diffbench.schema", "diffbench.assetstore", "diffbench.tensorcache", "diffbench.batching",
     "diffbench.warmup", "diffbench.stageclock", "diffbench.distributed", "diffbench.schedules"),
    ("diffbench.results",),  # the table's storage: rows go in, plots and checks read them out
    ("diffbench.steps",),
    ("diffbench.models", "diffbench.models."),
    ("diffbench.data",),
    ("diffbench.solvers", "diffbench.solvers."),
    ("diffbench.config",),
    ("diffbench.fit.artefacts",),  # fitted grids' cache: the engine reads them
    ("diffbench.sampling",),
    ("diffbench.fit.gits", "diffbench.fit.pas"),
    ("diffbench.metrics", "diffbench.metrics."),
    ("diffbench.discrete", "diffbench.discrete."),  # masked diffusion: uses noise, columns, metrics' bootstrap
    ("diffbench.engine", "diffbench.engine."),
    ("diffbench.fit", "diffbench.fit."),  # `diffbench fit`: fits on calibration noise against cached references
    ("diffbench.launch", "diffbench.plots", "diffbench.regression", "diffbench.reproduce"),
    ("diffbench.report",),
    ("diffbench.cli",),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def imports(name: str) -> set[str]:
    """The diffbench modules `name` imports (`from pkg import mod` counts as pkg.mod when mod is a module)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] +
                                ([base] if base else []))
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: imports(name) for name in MODULES}


def layer(name: str) -> int:
    """Index of the layer a module belongs to (by its most specific listed name)."""
    best = (-1, -1)
    for index, names in enumerate(LAYERS):
        for entry in names:
            if name == entry or (entry.endswith(".") and name.startswith(entry)):
                best = max(best, (len(entry), index))
    assert best[1] >= 0, f"{name} is in no layer; add it to LAYERS in tests/test_imports.py"
    return best[1]


@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_module_has_a_layer(name):
    layer(name)


def test_no_upward_imports():
    upward = [f"{m} (layer {layer(m)}) imports {d} (layer {layer(d)})"
              for m, deps in GRAPH.items() for d in sorted(deps) if layer(d) > layer(m)]
    assert not upward, "\n".join(upward)


def test_no_cycles():
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in sorted(GRAPH[node]):
            if state.get(dep) == 1:
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, [*stack, dep])
        state[node] = 2

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [name])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_the_graph_sees_imports():
    """The parser finds real edges (guards the tests above against an empty graph)."""
    assert "diffbench.engine.points" in GRAPH["diffbench.engine.sweep"]
    assert "diffbench.solvers.ems" in GRAPH["diffbench.solvers.dpm_solver_v3"]


ENGINE_LIMIT = 250  # lines per engine module (issue 12)


@pytest.mark.parametrize("name", [n for n in sorted(MODULES) if n.startswith("diffbench.engine")]
                         + ["diffbench.sampling", "diffbench.metrics.suite"])
def test_engine_modules_stay_small(name):
    assert len(MODULES[name].read_text().splitlines()) <= ENGINE_LIMIT
