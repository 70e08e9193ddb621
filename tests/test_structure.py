"""The shape of the code base: layers that point down, no import cycle, small modules.

The import graph is built from the source with ``ast``: module-level and function-level
imports alike, so a lazy import inside a function cannot hide a cycle. ``from . import x``
counts as an edge to the submodule ``x`` (not to the package's ``__init__``), and importing
a package counts as an edge to its ``__init__``.
"""

from __future__ import annotations

import ast
import functools
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "ipyproctrack"
PACKAGE = "ipyproctrack"
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80

# Which of our own packages each layer may import (dependencies point down only).
ALLOWED: dict[str, set[str]] = {
    "_platform": {"_platform"},
    "_proc": {"_proc", "_platform"},
    "_keeper": {"_keeper", "_proc", "_platform", "errors"},
    "_engine": {"_engine", "_keeper", "_proc", "_platform", "errors"},
    # A front: the engine and the exceptions, by module path; never _notebook.
    "pytest_plugin": {"_engine", "errors"},
    # The cluster view: a front too. On the engines it measures and renders with the
    # notebook's pure helpers (see CLUSTER_NOTEBOOK_MODULES), imported only in functions.
    "cluster": {"_engine", "errors", "_notebook"},
    # The command line: a front over the engine, like the pytest plugin.
    "_cli": {"_engine", "errors"},
    "__main__": {"_cli"},
}
# What the cluster front may use of _notebook: no IPython magics, sessions or widgets.
CLUSTER_NOTEBOOK_MODULES = {f"{PACKAGE}._notebook.{m}" for m in ("engines", "stats", "views")}
# Layers that must run in the keeper's interpreter: the standard library only.
STDLIB_ONLY = ("_platform", "_proc", "_keeper")
# The engine's client of the keeper runs in the kernel: it may use subprocess and friends,
# but it is still stdlib-only (its imports are checked like the keeper's).


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _resolve(current: str, level: int, module: str | None) -> str:
    if level == 0:
        return module or ""
    base = current.split(".")
    if not _is_package(current):
        base = base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


@functools.cache
def _tree(name: str) -> ast.Module:
    """Each module is parsed once for the whole file's tests."""
    return ast.parse(MODULES[name].read_text(), str(MODULES[name]))


def _imports(name: str) -> Iterator[tuple[str, int]]:
    """(imported module, line) for every import statement anywhere in the module."""
    for node in ast.walk(_tree(name)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(name, node.level, node.module)
            subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in MODULES]
            if subs:
                yield from ((s, node.lineno) for s in subs)
                if len(subs) == len(node.names):
                    continue
            yield target, node.lineno


@functools.cache
def _type_checking_lines(name: str) -> frozenset[int]:
    """Lines of the imports under ``if TYPE_CHECKING:``, which never run."""
    return frozenset(
        inner.lineno
        for node in ast.walk(_tree(name))
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name)
        and node.test.id == "TYPE_CHECKING"
        for inner in ast.walk(node)
        if isinstance(inner, ast.Import | ast.ImportFrom)
    )


def _is_type_checking_only(name: str, line: int) -> bool:
    return line in _type_checking_lines(name)


@functools.cache
def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {name: set() for name in MODULES}
    for name in MODULES:
        for target, line in _imports(name):
            if target in MODULES and target != name and not _is_type_checking_only(name, line):
                graph[name].add(target)
    return graph


def _layer(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_the_import_graph_has_no_cycle() -> None:
    graph = _graph()
    state: dict[str, int] = {}
    path: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_layers_import_only_the_layers_below() -> None:
    wrong = []
    for name in MODULES:
        layer = _layer(name)
        if layer not in ALLOWED:
            continue
        for target, line in _imports(name):
            if not target.startswith(PACKAGE + ".") and target != PACKAGE:
                continue
            if _is_type_checking_only(name, line):
                continue
            if _layer(target) not in ALLOWED[layer]:
                wrong.append(f"{name}:{line} imports {target}")
    assert not wrong, "\n".join(wrong)


def test_the_cluster_front_imports_notebook_helpers_and_ipyparallel_only_lazily() -> None:
    name = f"{PACKAGE}.cluster"
    tree = ast.parse(MODULES[name].read_text())
    top_level = {node.lineno for node in tree.body if isinstance(node, ast.Import | ast.ImportFrom)}
    wrong = []
    for target, line in _imports(name):
        if _is_type_checking_only(name, line):
            continue
        notebook = _layer(target) == "_notebook" and target.startswith(PACKAGE + ".")
        if notebook and target not in CLUSTER_NOTEBOOK_MODULES:
            wrong.append(f"{name}:{line} imports {target}")
        if (notebook or target.split(".")[0] in ("ipyparallel", "IPython")) and line in top_level:
            wrong.append(f"{name}:{line} imports {target} at import time")
    assert not wrong, "\n".join(wrong)


def test_the_keeper_side_layers_use_only_the_standard_library() -> None:
    wrong = []
    for name in MODULES:
        if _layer(name) not in STDLIB_ONLY:
            continue
        for target, line in _imports(name):
            top = target.split(".")[0]
            if top in (PACKAGE, "__future__") or _is_type_checking_only(name, line):
                continue
            if top not in sys.stdlib_module_names:
                wrong.append(f"{name}:{line} imports {target}")
    assert not wrong, "\n".join(wrong)


def test_only_the_platform_package_tests_sys_platform() -> None:
    wrong = [
        f"{name}"
        for name, path in MODULES.items()
        if _layer(name) != "_platform" and "sys.platform" in path.read_text()
    ]
    assert not wrong, wrong


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_and_functions_stay_small(name: str) -> None:
    source = MODULES[name].read_text()
    lines = source.count("\n")
    assert lines <= MAX_MODULE_LINES, f"{name} has {lines} lines"
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno is not None
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, f"{name}: {', '.join(long)}"


def test_the_graph_sees_function_level_imports() -> None:
    # The package's lazy front functions import the notebook inside their bodies: the
    # graph must see those edges, or a cycle through a lazy import could hide.
    assert any(_layer(t) == "_notebook" for t in _graph()[PACKAGE])
