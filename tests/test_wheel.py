"""The wheel's build hook (setup.py): compiled where a C compiler exists, else pure.

The compiled wheel is built, installed into a clean venv and run on the golden
input by ``make wheel-check`` (.ci/wheel-check, ~1 min); here, the quick half:
without a compiler ``pip wheel .`` still works and gives a pure wheel.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from sessionizer import _native

ROOT = Path(__file__).resolve().parent.parent


def test_the_build_hook_compiles_native_modules_list() -> None:
    src = (ROOT / "setup.py").read_text()
    namespace: dict[str, object] = {"__file__": str(ROOT / "setup.py")}
    # Everything up to the setup() call: the constants, not a build.
    exec(compile(src.split("\nsetup(")[0], "setup.py", "exec"), namespace)
    assert namespace["MODULES"] == _native.MODULES
    assert namespace["NATIVE_CONSTANTS"] == {
        "MODULES": _native.MODULES,
        "GROUP": _native.GROUP,
        "PURE_ENV": _native.PURE_ENV,
    }


def _tree(dst: Path) -> Path:
    """What `pip wheel .` reads, without a development build (make native) in it."""
    dst.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(ROOT / name, dst / name)
    shutil.copytree(
        ROOT / "sessionizer",
        dst / "sessionizer",
        ignore=shutil.ignore_patterns("__pycache__", "*.so", "_native.json"),
    )
    return dst


def test_without_a_c_compiler_the_wheel_is_pure(tmp_path: Path) -> None:
    tree = _tree(tmp_path / "src")
    env = {k: v for k, v in os.environ.items() if k != _native.PURE_ENV}
    res = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", "-v", "-w", str(tmp_path / "dist"), str(tree)],
        env={**env, "CC": "no-such-cc"},
        capture_output=True,
        text=True,
        timeout=240,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert "building a pure-Python wheel: no C compiler (no-such-cc not found)" in (
        res.stdout + res.stderr
    )
    (wheel,) = (tmp_path / "dist").glob("sessionizer-*.whl")
    assert wheel.name.endswith("-py3-none-any.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "sessionizer/core/engine.py" in names
    assert not [n for n in names if n.endswith(".so") or n.endswith("_native.json")]
