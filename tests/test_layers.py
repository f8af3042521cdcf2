"""Imports run one way: no cycle between subpackages, and every import goes down the layers.

Every ``import`` of a module counts, inside functions too (a lazy import is still an arrow);
imports under ``if TYPE_CHECKING:`` do not, since they never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

import mmcontrast

PACKAGE = Path(mmcontrast.__file__).parent

# Lower layers never import higher ones; equal layers may import each other only without a
# cycle. A new subpackage or top-level module gets its layer here.
LAYERS = {
    "config": 0,
    "registry": 0,
    "distributed": 0,
    "cpu_allocator": 0,
    "resources": 0,
    "logs": 0,
    "data": 1,
    "losses": 1,
    "models": 2,
    "demo": 2,
    "methods": 3,
    "train": 4,
    "eval": 5,
    "hub": 5,
    "search": 5,
    "pipeline": 6,
    "cli_search": 7,
    "cli_serve": 7,
    "cli": 8,
    "__main__": 9,
}


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for n in ast.walk(node))
    return skip


def import_edges() -> dict[tuple[str, str], str]:
    """(importing unit, imported unit) -> one ``file:line`` that makes the edge."""
    edges: dict[tuple[str, str], str] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        me = _module_name(path)
        tree = ast.parse(path.read_text(), str(path))
        skip = _type_checking_nodes(tree)
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = me.split(".")
                    parts = parts if path.name == "__init__.py" else parts[:-1]
                    parts = parts[: len(parts) - node.level + 1]
                    base = ".".join(parts + ([node.module] if node.module else []))
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            for target in targets:
                if not target.startswith("mmcontrast."):
                    continue
                a, b = _unit(me), _unit(target)
                if a != b and "__init__" not in (a, b):
                    where = f"{path.relative_to(PACKAGE.parent)}:{node.lineno} imports {target}"
                    edges.setdefault((a, b), where)
    return edges


def find_cycle(edges: dict[tuple[str, str], str]) -> list[str] | None:
    """A list of units forming a cycle, or None."""
    graph: dict[str, set[str]] = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_the_cycle_finder_finds_cycles() -> None:
    edges = {("a", "b"): "", ("b", "c"): "", ("c", "a"): "", ("c", "d"): ""}
    assert find_cycle(edges) == ["a", "b", "c", "a"]
    assert find_cycle({("a", "b"): "", ("b", "c"): ""}) is None


def test_the_edges_include_lazy_imports_but_not_type_checking_ones() -> None:
    edges = import_edges()
    assert ("pipeline", "train") in edges  # a module-level import is seen
    assert all(a != b for a, b in edges)


def test_no_import_cycle_between_subpackages() -> None:
    edges = import_edges()
    cycle = find_cycle(edges)
    if cycle:
        ties = [edges[(a, b)] for a, b in zip(cycle, cycle[1:], strict=False)]
        raise AssertionError("import cycle " + " -> ".join(cycle) + ":\n  " + "\n  ".join(ties))


def test_imports_run_down_the_layers() -> None:
    units = {_unit(_module_name(p)) for p in PACKAGE.rglob("*.py")} - {"__init__"}
    assert not units - set(LAYERS), f"give {sorted(units - set(LAYERS))} a layer in LAYERS"
    upward = [
        f"{why} ({a}: layer {LAYERS[a]} -> {b}: layer {LAYERS[b]})"
        for (a, b), why in sorted(import_edges().items())
        if LAYERS[b] > LAYERS[a]
    ]
    assert not upward, "imports that run up the layers:\n" + "\n".join(upward)
