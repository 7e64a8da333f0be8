"""Faust and aiokafka internals are touched in one module only: the runtime adapter.

``sessionizer/stream/compat.py`` is the worker's runtime on Faust and the home of
every private call into Faust or aiokafka (they are checked against pinned
versions there). Any other module of the package that uses those libraries may
use their public API only, and Faust itself is imported by the adapter and the
web views (Faust's web server) alone.
"""

from __future__ import annotations

import ast
from functools import cache
from importlib.metadata import distribution
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "sessionizer"
ADAPTER = PACKAGE / "stream" / "compat.py"
FAUST_USERS = {ADAPTER, PACKAGE / "stream" / "web.py"}
LIBRARIES = ("faust", "aiokafka")
DISTRIBUTIONS = {"faust": "faust-streaming", "aiokafka": "aiokafka"}


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _defined_private_names(tree: ast.AST) -> set[str]:
    """Private names a module defines: functions, classes, and assigned attributes."""
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            name = node.name
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            name = node.attr
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            name = node.id
        else:
            continue
        if _private(name):
            out.add(name)
    return out


@cache
def library_private_names() -> frozenset[str]:
    names: set[str] = set()
    for lib in LIBRARIES:
        # From the installed files: another test may have replaced the module itself.
        root = Path(str(distribution(DISTRIBUTIONS[lib]).locate_file(lib)))
        assert root.is_dir(), root
        for path in root.rglob("*.py"):
            names |= _defined_private_names(ast.parse(path.read_text(), str(path)))
    return frozenset(names)


def _imports_library(tree: ast.AST) -> set[str]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & set(LIBRARIES)


def violations(source: str, where: str) -> list[str]:
    """Private library attributes reached by a module that uses faust or aiokafka."""
    tree = ast.parse(source, where)
    if not _imports_library(tree):
        return []
    foreign = library_private_names()
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or node.attr not in foreign:
            continue
        receiver = node.value
        if isinstance(receiver, ast.Name) and receiver.id in ("self", "cls"):
            continue  # our own object's attribute
        out.append(f"{where}:{node.lineno}: .{node.attr}")
    return out


def test_the_checker_finds_private_access() -> None:
    planted = "from aiokafka import AIOKafkaConsumer\n\nasync def f(c):\n    c._client.x()\n"
    assert violations(planted, "planted.py") == ["planted.py:4: ._client"]
    # The same code in a module that uses neither library is not about them.
    assert violations(planted.split("\n", 1)[1], "plain.py") == []


def test_private_faust_and_aiokafka_access_lives_in_the_adapter_only() -> None:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path != ADAPTER:
            found += violations(path.read_text(), str(path.relative_to(PACKAGE.parent)))
    assert found == [], "move these into sessionizer/stream/compat.py"


def test_faust_is_imported_by_the_adapter_and_the_web_views_only() -> None:
    users = set()
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        if "faust" in _imports_library(tree):
            users.add(path)
    assert users - FAUST_USERS == set()
    assert ADAPTER in users
