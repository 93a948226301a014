"""The package's shape: no import cycles between modules or between stage packages.

The graph is read from the source (AST), so imports inside functions count too: a lazy import
hides a cycle from Python, not from a reader of the code.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "immunoplex"
ROOT_ALLOWED = {"__init__", "errors", "paths"}
MAX_LINES = 500


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The module a dotted import refers to (``a.b.C`` -> ``a.b`` when C is a name in it)."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports (type-checking-only imports excluded)."""
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        skip: set[int] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and _is_type_checking(node):
                skip.update(id(n) for b in node.body for n in ast.walk(b))
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    pkg = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    pkg = pkg[: len(pkg) - node.level + 1]
                    base = ".".join(pkg + ([base] if base else []))
                targets = [f"{base}.{a.name}" for a in node.names] + [base]
            for t in targets:
                if not t.startswith("immunoplex"):
                    continue
                r = _resolve(t, modules)
                if r and r != mod:
                    graph[mod].add(r)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a list of nodes (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m) :] + [m]
            if m not in state and (c := visit(m)):
                return c
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (c := visit(n)):
            return c
    return None


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Stage package -> stage packages it imports (``immunoplex.io.base`` -> ``io``)."""

    def pkg(m: str) -> str:
        parts = m.split(".")
        return parts[1] if len(parts) > 1 else ""

    out: dict[str, set[str]] = {}
    for m, deps in graph.items():
        if m.count(".") < 2 and not (SRC / m.split(".")[-1]).is_dir():
            continue  # root modules (errors, paths) are leaves, not stages
        out.setdefault(pkg(m), set()).update(
            pkg(d) for d in deps if pkg(d) != pkg(m) and (SRC / pkg(d)).is_dir()
        )
    return out


def test_graph_sees_imports() -> None:
    g = import_graph()
    assert "immunoplex.io.base" in g["immunoplex.io.open"]
    assert "immunoplex.errors" in g["immunoplex.io.base"]


def test_find_cycle_detects_a_planted_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_module_cycle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_no_stage_package_cycle() -> None:
    cycle = find_cycle(package_graph(import_graph()))
    assert cycle is None, "stage packages import each other: " + " -> ".join(cycle or [])


def test_package_root_holds_only_packages() -> None:
    loose = sorted(p.stem for p in SRC.glob("*.py") if p.stem not in ROOT_ALLOWED)
    assert not loose, f"modules in the package root: {loose}"


@pytest.mark.parametrize("path", sorted(SRC.rglob("*.py")), ids=lambda p: _module_name(p))
def test_module_size(path: Path) -> None:
    n = len(path.read_text().splitlines())
    assert n <= MAX_LINES, f"{path.name}: {n} lines (limit {MAX_LINES})"
