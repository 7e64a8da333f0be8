"""No import cycle between the package's modules (issue #10).

Every import counts: at module level, inside functions (lazy), under
``TYPE_CHECKING`` and ``importlib.import_module("…")`` with a literal name, so a
cycle cannot hide behind any of them. Also: the core
imports nothing of the rest of the package (imports point one way).
"""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "sessionizer"


def _modules() -> dict[str, Path]:
    mods: dict[str, Path] = {}
    for path in PKG.rglob("*.py"):
        parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        mods[".".join(parts)] = path
    return mods


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    prefix = ".".join(base + ([node.module] if node.module else []))
                else:
                    prefix = node.module or ""
                # ``from pkg import mod`` imports the module pkg.mod; else pkg itself.
                targets = [
                    f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in mods else prefix
                    for a in node.names
                ]
            elif isinstance(node, ast.Call) and _dynamic_import(node):
                targets = [node.args[0].value]
            deps.update(t for t in targets if t in mods and t != name)
        graph[name] = deps
    return graph


def _dynamic_import(call: ast.Call) -> bool:
    """``importlib.import_module("name")`` or ``import_module("name")``."""
    f = call.func
    fname = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
    return (
        fname in ("import_module", "__import__")
        and bool(call.args)
        and isinstance(call.args[0], ast.Constant)
        and isinstance(call.args[0].value, str)
    )


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_the_imports() -> None:
    g = _graph()
    assert "sessionizer.stream.metrics" in g["sessionizer.stream.worker"]
    assert "sessionizer.stream.web" in g["sessionizer.stream.worker"]  # a lazy import
    assert "sessionizer.core.engine" in g["sessionizer.run.task"]
    assert "sessionizer.integrations" in g["sessionizer.settings"]  # importlib.import_module
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle_in_the_package() -> None:
    assert _cycles(_graph()) == []


def test_the_core_depends_on_nothing_else_of_the_package() -> None:
    for name, deps in _graph().items():
        if name.startswith("sessionizer.core"):
            outside = {d for d in deps if not d.startswith("sessionizer.core")}
            assert not outside, (name, outside)


def test_metrics_and_web_do_not_know_the_worker() -> None:
    g = _graph()
    for name in ("sessionizer.stream.metrics", "sessionizer.stream.web"):
        assert "sessionizer.stream.worker" not in g[name], name


def test_only_tests_and_bench_import_the_testing_package() -> None:
    """``sessionizer.testing`` drives workers for tests: the running code never loads it."""
    for name, deps in _graph().items():
        if not name.startswith("sessionizer.testing"):
            assert not {d for d in deps if d.startswith("sessionizer.testing")}, name
