"""The compiled hot path (sessionizer/_native.py): used when current, else the sources.

The suite itself runs on whatever ``make test`` built (the compiled modules on
a machine with a C compiler) and once more on the sources
(``SESSIONIZER_PURE_PYTHON=1``, the Makefile's PURE_TESTS); the golden test
pins the bytes both write.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import sessionizer
from sessionizer import _native
from sessionizer.testing import source_modules

PROBE = (
    "import sessionizer, sessionizer.core.engine as e, sessionizer.run.files as o; "
    "print(sessionizer.HOT_PATH, e.__file__.endswith('.py'), o.__file__.endswith('.py'))"
)


def _probe(root: Path, **env: str) -> list[str]:
    full = {k: v for k, v in os.environ.items() if k != _native.PURE_ENV}
    res = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=root,
        env={**full, "PYTHONPATH": str(root), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert res.stderr == ""  # quiet either way
    return res.stdout.split()


def test_this_run_uses_what_was_built() -> None:
    forced = os.environ.get(_native.PURE_ENV, "") not in ("", "0")
    mods = [importlib.import_module(m) for m in _native.MODULES]
    if forced or not _native.built():
        assert sessionizer.HOT_PATH in ("sources", "pure")
        assert not any(_native.compiled(m) for m in mods)
        return
    # make test builds first: a build that does not match its sources is a stale build.
    assert _native.up_to_date(), "compiled modules older than their sources: make native"
    assert sessionizer.HOT_PATH == "compiled"
    assert all(_native.compiled(m) for m in mods)


@pytest.fixture
def package_copy(tmp_path: Path) -> Path:
    """The package copied as it is, built or not."""
    shutil.copytree(
        _native.PACKAGE_DIR, tmp_path / "sessionizer", ignore=shutil.ignore_patterns("__pycache__")
    )
    return tmp_path


def _fake_build(root: Path) -> None:
    """An extension file that cannot load, for each module: importing one would fail."""
    for m in _native.MODULES:
        ext = root.joinpath(*m.split(".")).with_suffix(_ext_suffix())
        ext.write_bytes(b"not a shared library")


def _ext_suffix() -> str:
    return importlib.machinery.EXTENSION_SUFFIXES[0]


def test_a_stale_build_runs_the_sources(package_copy: Path) -> None:
    _fake_build(package_copy)
    (package_copy / "sessionizer" / "_native.json").unlink(missing_ok=True)
    assert _probe(package_copy) == ["sources", "True", "True"]


def _matching_manifest(root: Path) -> None:
    digest = {m: _native._digest(root.joinpath(*m.split(".")).with_suffix(".py"))
              for m in _native.MODULES}  # fmt: skip
    manifest = {"cache_tag": sys.implementation.cache_tag, "sources": digest}
    (root / "sessionizer" / "_native.json").write_bytes(_native.orjson.dumps(manifest))


def _imports_the_build(root: Path, **env: str) -> bool:
    """The (fake) build is imported: the import fails."""
    res = subprocess.run(
        [sys.executable, "-c", "import sessionizer.core.engine"],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root), _native.PURE_ENV: "", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return res.returncode != 0 and "ImportError" in res.stderr


def test_a_current_build_is_imported_until_a_source_changes(package_copy: Path) -> None:
    _fake_build(package_copy)
    _matching_manifest(package_copy)
    assert _imports_the_build(package_copy)
    engine = package_copy / "sessionizer" / "core" / "engine.py"
    engine.write_text(engine.read_text() + "\n")
    assert _probe(package_copy) == ["sources", "True", "True"]


def test_the_environment_forces_the_sources(package_copy: Path) -> None:
    _fake_build(package_copy)
    _matching_manifest(package_copy)
    assert _probe(package_copy, SESSIONIZER_PURE_PYTHON="1") == ["sources", "True", "True"]
    assert _imports_the_build(package_copy, SESSIONIZER_PURE_PYTHON="0")


def test_nothing_built_is_pure(package_copy: Path) -> None:
    _native_copy = package_copy / "sessionizer"
    for p in [*_native_copy.rglob("*.so"), _native_copy / "_native.json"]:
        p.unlink(missing_ok=True)
    assert _probe(package_copy) == ["pure", "True", "True"]


def test_source_modules_are_an_interpreted_copy_that_leaves_the_real_ones() -> None:
    from sessionizer.core import engine
    from sessionizer.run import files

    copy = source_modules()
    assert not any(_native.compiled(m) for m in copy.values())
    assert copy["sessionizer.run.files"].Engine is copy["sessionizer.core.engine"].Engine
    assert sys.modules["sessionizer.core.engine"] is engine
    assert sys.modules["sessionizer.run.files"] is files
    from sessionizer.core import engine as again

    assert again is engine and sessionizer.core.engine is engine


def test_version_names_the_hot_path() -> None:
    res = subprocess.run(
        [sys.executable, "-m", "sessionizer", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert f"({sessionizer.HOT_PATH})" in res.stdout


def test_counts_add_sums_every_count() -> None:
    # Counts.add names each field (a compiled class has no __slots__ to walk).
    from sessionizer.core.model import Counts

    a, b = Counts(), Counts()
    fields = [k for k, v in a.as_dict().items() if isinstance(v, int)]
    for i, name in enumerate(fields):
        setattr(a, name, i + 1)
        setattr(b, name, 100 * (i + 1))
    b.sessions_ended = {**b.sessions_ended, "idle": 3}
    b.dead_by_reason = {**b.dead_by_reason, "bad_event": 4}
    a.add(b)
    d = a.as_dict()
    assert [d[name] for name in fields] == [101 * (i + 1) for i in range(len(fields))]
    assert d["sessions_ended"]["idle"] == 3 and d["dead_letters"]["bad_event"] == 4
    assert sum(d["sessions_ended"].values()) == 3 and sum(d["dead_letters"].values()) == 4
