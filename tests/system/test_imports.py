"""The arrows point one way: no import cycle in dlcli/, and the leaves stay leaves.

Every ``import`` statement counts — at module level, inside a function, or under
``if TYPE_CHECKING:`` — since each is an arrow a reader has to follow; importing ``a.b.c``
also imports the package ``a.b``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "dlcli"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported(name: str, path: Path, known: set[str]) -> Iterator[str]:
    """The dlcli modules that ``name`` (in file ``path``) imports, with their packages."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        for target in targets:
            while target and target != "dlcli":  # a.b.c, then its packages a.b ...
                # (not the packages of ``name`` itself: those are running already)
                if target in known and not (name + ".").startswith(target + "."):
                    yield target
                target = target.rpartition(".")[0]


def graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: set(imported(name, path, known)) for name, path in found.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_the_walk_sees_the_imports() -> None:
    edges = graph()
    assert "dlcli.engine" in edges["dlcli.pipeline"]
    assert "dlcli.distributed.world" in edges["dlcli.distributed.launch"]
    assert {"dlcli.data", "dlcli.data.dataset"} <= edges["dlcli.pipeline"]  # and its package
    assert "dlcli.distributed" not in edges["dlcli.distributed.world"]  # its own: running
    assert "dlcli.errors" in edges["dlcli.config"]


def test_the_cycle_finder_finds_a_cycle() -> None:
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(edges) == [["a", "b", "c"]]


def test_dlcli_has_no_import_cycle() -> None:
    assert cycles(graph()) == []


@pytest.mark.parametrize("leaf", ["dlcli.errors", "dlcli.hooks", "dlcli.version"])
def test_leaf_modules_import_nothing_of_dlcli(leaf: str) -> None:
    assert graph()[leaf] == set()


def test_distributed_imports_nothing_above_it() -> None:
    allowed = {"dlcli.errors", "dlcli.device"}
    for name, targets in graph().items():
        if name.startswith("dlcli.distributed"):
            outside = {t for t in targets if not t.startswith("dlcli.distributed")}
            assert outside <= allowed, f"{name} imports {sorted(outside - allowed)}"
