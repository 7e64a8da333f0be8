"""The wheel's build hook: the engine compiled with mypyc where a C compiler exists.

Like black and mypy, ``pip wheel .`` (and ``pip install .``, the Dockerfile)
compiles sessionizer/_native.py's MODULES into one shared library and writes
the manifest that ``sessionizer._native.up_to_date`` checks, so the installed
package runs the compiled engine (``sessionizer --version`` says ``compiled``).
With no C compiler, or ``SESSIONIZER_PURE_PYTHON=1`` at build time, the wheel
is pure Python: the same bytes out, 1.3-1.6x slower. Everything else is in
pyproject.toml.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import shlex
import shutil
import sys
import sysconfig
from pathlib import Path
from typing import Any

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
NATIVE = ROOT / "sessionizer" / "_native.py"


def _native_constants() -> dict[str, Any]:
    """MODULES, GROUP and PURE_ENV of sessionizer/_native.py, read without importing
    the package (its import needs the runtime dependencies, absent at build time)."""
    out: dict[str, Any] = {}
    for node in ast.parse(NATIVE.read_text()).body:
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                if isinstance(t, ast.Name) and t.id in ("MODULES", "GROUP", "PURE_ENV"):
                    out[t.id] = ast.literal_eval(node.value)  # type: ignore[arg-type]
    return out


NATIVE_CONSTANTS = _native_constants()
MODULES: tuple[str, ...] = NATIVE_CONSTANTS["MODULES"]


def _source(module: str) -> Path:
    return ROOT.joinpath(*module.split(".")).with_suffix(".py")


def _why_pure() -> str | None:
    """Why this build cannot compile the engine; None when it can."""
    if os.environ.get(NATIVE_CONSTANTS["PURE_ENV"], "") not in ("", "0"):
        return f"{NATIVE_CONSTANTS['PURE_ENV']} is set"
    cc = shlex.split(os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc")
    if not cc or shutil.which(cc[0]) is None:
        return f"no C compiler ({' '.join(cc) or 'CC'} not found)"
    try:
        import mypyc.build  # noqa: F401
    except ImportError:
        return "mypyc is not installed"
    return None


class BuildNative(build_ext):
    """build_ext with the mypyc extensions, then the manifest beside them (wheel or in
    place). mypyc type-checks the package first (~15 s): done here, when the wheel is
    built, not on each of pip's metadata calls, which see a placeholder."""

    def finalize_options(self) -> None:
        if self.distribution.ext_modules:
            from mypyc.build import mypycify

            os.chdir(ROOT)  # mypycify takes paths relative to the project
            paths = [str(_source(m).relative_to(ROOT)) for m in MODULES]
            group = NATIVE_CONSTANTS["GROUP"]
            self.distribution.ext_modules = list(
                mypycify(paths, group_name=group, target_dir="build/mypyc")
            )
        super().finalize_options()

    def run(self) -> None:
        super().run()
        if not self.extensions:
            return
        pkg = ROOT / "sessionizer" if self.inplace else Path(self.build_lib) / "sessionizer"
        manifest = {
            "cache_tag": sys.implementation.cache_tag,
            "sources": {m: hashlib.sha256(_source(m).read_bytes()).hexdigest() for m in MODULES},
        }
        pkg.mkdir(parents=True, exist_ok=True)
        (pkg / "_native.json").write_text(json.dumps(manifest, indent=2))


def _ext_modules() -> list[Extension]:
    why = _why_pure()
    if why is not None:
        print(f"sessionizer: building a pure-Python wheel: {why}", file=sys.stderr)
        return []
    # Makes the wheel platform-specific and runs build_ext, which replaces it.
    return [Extension(NATIVE_CONSTANTS["GROUP"] + "__mypyc", sources=["<mypyc>"])]


setup(ext_modules=_ext_modules(), cmdclass={"build_ext": BuildNative})
