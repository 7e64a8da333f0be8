"""procs: children and temporary directories do not outlive a SIGKILLed parent."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from sessionizer import procs

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux's")

# A parent that ties a child and a directory to itself, says so, then waits to be killed.
PARENT = """
import sys, time
from sessionizer import procs
with procs.tied_tempdir("tied-") as tmp:
    child = procs.popen_tied(["sleep", "300"])
    print(child.pid, tmp, flush=True)
    time.sleep(300)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_a_sigkilled_parent_takes_its_tied_child_and_directory_with_it(tmp_path: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True, env=env
    )
    assert parent.stdout is not None
    pid_text, tmp = parent.stdout.readline().split()
    child = int(pid_text)
    try:
        assert _alive(child) and Path(tmp).is_dir() and Path(tmp).parent == tmp_path
        parent.kill()
        parent.wait(10)
        deadline = time.monotonic() + 10
        while (_alive(child) or Path(tmp).exists()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child)
        assert not Path(tmp).exists()
    finally:
        if _alive(child):
            os.kill(child, 9)


def test_a_tied_tempdir_is_removed_when_its_block_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with procs.tied_tempdir("tied-") as tmp:
        (tmp / "f").write_text("x")
        assert tmp.parent == tmp_path
    assert list(tmp_path.iterdir()) == []
