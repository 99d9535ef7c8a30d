"""Imports point one way: store ← lease/dataset ← worker loop/fan-in ← manager ← run ← CLI.

Checked on the run-time import graph of the package (imports inside ``if TYPE_CHECKING:`` are
annotations, not dependencies; imports inside functions count). A module may import its own layer or
lower ones, never a higher one, and the graph has no cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "shardclaim"

#: Lowest first. A module's layer is the one of the longest prefix that names it.
LAYERS: list[tuple[str, ...]] = [
    (
        "errors",
        "_identity",
        "_scan",
        "_valid",
        "crc",
        "layout",
        "locations",
        "idranges",
        "console",
        "rate",
        "store",
    ),
    ("lease", "dataset", "status", "attempt_log", "reader"),
    ("worker", "fanin", "operations", "stealing"),
    ("manager",),
    ("attempt", "run", "_selftest", "view"),
    ("cli", "__main__", "testing", ""),  # "" is the package itself (its lazy exports)
]


def _layer(module: str) -> int:
    best, found = -1, None
    for level, names in enumerate(LAYERS):
        for name in names:
            named = module == name or module.startswith(name + ".")
            if named and len(name) > best:
                best, found = len(name), level
    if found is None:
        pytest.fail(f"shardclaim.{module} has no layer: add it to LAYERS in {__file__}")
    return found


def _name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _runtime_imports(tree: ast.AST, modules: set[str]) -> set[str]:
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for stmt in child.orelse:
                    visit(stmt)
                continue
            names: list[str] = []
            if isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                names = [child.module, *(f"{child.module}.{a.name}" for a in child.names)]
            elif isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            for full in names:
                if full == "shardclaim" or full.startswith("shardclaim."):
                    name = full.removeprefix("shardclaim").removeprefix(".")
                    if name in modules:
                        found.add(name)
            visit(child)

    visit(tree)
    return found


def _graph() -> dict[str, set[str]]:
    paths = {_name(p): p for p in PACKAGE.rglob("*.py")}
    return {m: _runtime_imports(ast.parse(p.read_text()), set(paths)) - {m} for m, p in paths.items()}


def test_no_module_imports_a_higher_layer() -> None:
    upward = [
        f"shardclaim.{m} (layer {_layer(m)}) imports shardclaim.{d} (layer {_layer(d)})"
        for m, deps in sorted(_graph().items())
        for d in sorted(deps)
        if _layer(d) > _layer(m)
    ]
    assert upward == []


def test_the_import_graph_of_components_has_no_cycle() -> None:
    """Components are top-level modules and packages (``store``, ``lease``, ``manager`` ...)."""
    graph: dict[str, set[str]] = {}
    for m, deps in _graph().items():
        top = m.split(".")[0]
        graph.setdefault(top, set()).update(d.split(".")[0] for d in deps)
    graph = {m: deps - {m} for m, deps in graph.items()}
    state: dict[str, int] = {}  # 1 on the path, 2 done

    def cycle_from(m: str, path: list[str]) -> list[str] | None:
        state[m] = 1
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                return [*path, m, d]
            if d not in state and (found := cycle_from(d, [*path, m])):
                return found
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := cycle_from(m, [])):
            pytest.fail("import cycle: " + " -> ".join(found))


def test_the_check_sees_an_upward_import() -> None:
    """The checker itself: an import placed in a function body still counts; one under TYPE_CHECKING
    does not."""
    code = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from shardclaim.cli import main\n"
        "def f():\n    from shardclaim.manager import ShardManager\n"
    )
    assert _runtime_imports(ast.parse(code), {"cli", "manager"}) == {"manager"}
