"""The compiled hot path: the engine and its file driver built with mypyc.

``make native`` (part of ``make install``; ``_native.build()``)
compiles :data:`MODULES` with mypyc, the compiler of the mypy that checks them,
into extension modules beside their sources: the same code, 1.3-1.6x faster
(docs/performance.md#the-compiled-hot-path). Python imports an extension
before a ``.py`` of the same name, so a build older than its sources would run
old code: the build writes :data:`MANIFEST` with each source's hash, and when a
source differs (or ``SESSIONIZER_PURE_PYTHON=1``) a finder ahead of Python's
own imports the sources instead. Without a C compiler nothing is built and the
sources run; either way the outputs are the same bytes (tests/test_golden.py).
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import orjson

PACKAGE_DIR = Path(__file__).resolve().parent
# Compiled together (one shared library: calls between them stay native).
MODULES = (
    "sessionizer.core.config",
    "sessionizer.core.model",
    "sessionizer.core.ids",
    "sessionizer.core.state",
    "sessionizer.core.engine",
    "sessionizer.run.encode",
    "sessionizer.run.task",
    "sessionizer.run.files",
)
GROUP = "sessionizer._hot"  # the shared library: sessionizer/_hot__mypyc.*.so
MANIFEST = PACKAGE_DIR / "_native.json"
PURE_ENV = "SESSIONIZER_PURE_PYTHON"


def source_path(module: str) -> Path:
    return PACKAGE_DIR.parent.joinpath(*module.split(".")).with_suffix(".py")


def _extension_paths(module: str) -> list[Path]:
    base = source_path(module).with_suffix("")
    return [Path(f"{base}{suffix}") for suffix in importlib.machinery.EXTENSION_SUFFIXES]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def built() -> bool:
    """An extension of some module of :data:`MODULES` is on disk for this interpreter."""
    return any(p.exists() for m in MODULES for p in _extension_paths(m))


def up_to_date() -> bool:
    """The build's manifest names this interpreter and every source as it is now."""
    try:
        manifest = orjson.loads(MANIFEST.read_bytes())
        return bool(
            manifest.get("cache_tag") == sys.implementation.cache_tag
            and manifest.get("sources") == {m: _digest(source_path(m)) for m in MODULES}
        )
    except (OSError, orjson.JSONDecodeError, AttributeError):
        return False


class Sources:
    """Imports :data:`MODULES` from their ``.py`` files, whatever else is beside them.
    (A meta path finder by its one method: importlib.abc costs 10 ms of start-up.)"""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MODULES:
            return None
        return importlib.util.spec_from_file_location(fullname, source_path(fullname))


def install_guard() -> str:
    """Called first thing on ``import sessionizer``; returns which code runs:
    ``compiled``, ``pure`` (nothing built) or ``sources`` (forced or stale)."""
    if not built():
        return "pure"
    if os.environ.get(PURE_ENV, "") in ("", "0") and up_to_date():
        return "compiled"
    # Quietly: a stale build is a developer's edit in progress, and running it is right.
    sys.meta_path.insert(0, Sources())
    return "sources"


def compiled(module: ModuleType) -> bool:
    """``module`` was loaded from an extension, not from its source."""
    return not str(getattr(module, "__file__", "")).endswith(".py")


def build() -> int:
    """Compiles :data:`MODULES` in place and writes the manifest; 0 when built."""
    # The build tools are development dependencies: imported only here.
    import warnings

    from mypyc.build import mypycify
    from setuptools import setup

    root = PACKAGE_DIR.parent
    os.chdir(root)
    MANIFEST.unlink(missing_ok=True)
    paths = [str(source_path(m).relative_to(root)) for m in MODULES]
    # Hashed before compiling: an edit during the build leaves the build stale.
    sources = {m: _digest(source_path(m)) for m in MODULES}
    warnings.filterwarnings("ignore", module="setuptools")  # [tool.setuptools] is "beta"
    setup(
        name="sessionizer-native",
        ext_modules=mypycify(paths, group_name=GROUP, target_dir="build/mypyc"),
        script_args=["--quiet", "build_ext", "--inplace", "--build-temp", "build/mypyc"],
        packages=[],
        py_modules=[],
    )
    MANIFEST.write_bytes(
        orjson.dumps(
            {"cache_tag": sys.implementation.cache_tag, "sources": sources},
            option=orjson.OPT_INDENT_2,
        )
    )
    return 0


def clean() -> int:
    """Removes the extensions and the manifest: the sources run."""
    for m in MODULES:
        for p in _extension_paths(m):
            p.unlink(missing_ok=True)
    for p in PACKAGE_DIR.glob(GROUP.rsplit(".", 1)[1] + "__mypyc*"):
        p.unlink()
    MANIFEST.unlink(missing_ok=True)
    return 0
