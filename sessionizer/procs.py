"""Child processes for the demo, the benchmarks and the integration tests.

One way to run a helper process (a worker, a broker, a benchmark pipeline):
``spawn`` starts it in a process group of its own, its output in a log file;
``stop`` signals the whole group and waits, then SIGKILLs what is left;
whatever is still running when this process exits is killed (``atexit``), so a
crashed or interrupted run leaves nothing behind. ``free_port`` finds a port.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = [
    "free_port",
    "kill",
    "kill_all",
    "port_busy",
    "signal_group",
    "spawn",
    "stop",
    "stop_all",
    "stop_async",
    "wait_async",
]

Proc = subprocess.Popen[bytes]

# Every child spawned here and not yet known to be reaped, oldest first.
_CHILDREN: list[Proc] = []


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_busy(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    # Linux: the child gets SIGTERM if we are killed (SIGKILL, crash) before we can stop it.
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(Exception):
            ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def spawn(
    args: Sequence[str],
    log_path: Path,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    die_with_parent: bool = False,
) -> Proc:
    """Starts ``args`` in a new session (its own process group), stdout and stderr
    appended to ``log_path``, stdin from /dev/null; it is killed at our exit if still running.
    """
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            list(args),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=None if env is None else dict(env),
            cwd=cwd,
            start_new_session=True,
            preexec_fn=_die_with_parent if die_with_parent else None,
        )
    if not _CHILDREN:
        atexit.register(kill_all)
    _CHILDREN.append(proc)
    return proc


def signal_group(proc: Proc, sig: int) -> None:
    """``sig`` to the child's whole process group (nothing if it is gone)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def _forget(proc: Proc) -> None:
    with contextlib.suppress(ValueError):
        _CHILDREN.remove(proc)


def kill(proc: Proc, timeout: float = 10.0) -> int | None:
    """SIGKILL to the child's group; waits up to ``timeout`` for it. Its exit code."""
    signal_group(proc, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout)
    if proc.returncode is not None:
        _forget(proc)
    return proc.returncode


def stop(proc: Proc, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int | None:
    """``sig`` to the child's group, then SIGKILL if it has not exited within ``timeout``;
    anything else left in its group is killed too. Returns its exit code."""
    if proc.poll() is None:
        signal_group(proc, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout)
    # The leader is gone (or about to be): what it left in its group goes too.
    return kill(proc)


async def wait_async(proc: Proc, timeout: float | None = None, poll: float = 0.05) -> int | None:
    """Waits for the child without blocking the event loop; its exit code, None on timeout."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while proc.poll() is None:
        if deadline is not None and time.monotonic() >= deadline:
            return None
        await asyncio.sleep(poll)
    return proc.returncode


async def stop_async(proc: Proc, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int | None:
    """``stop`` for an event loop: it keeps running while the child shuts down."""
    if proc.poll() is None:
        signal_group(proc, sig)
        if await wait_async(proc, timeout) is None:
            signal_group(proc, signal.SIGKILL)
            await wait_async(proc, 10.0)
    signal_group(proc, signal.SIGKILL)
    if proc.returncode is not None:
        _forget(proc)
    return proc.returncode


def stop_all(timeout: float = 10.0) -> None:
    """Stops every child still running, newest first (SIGTERM, then SIGKILL)."""
    for proc in reversed(list(_CHILDREN)):
        stop(proc, timeout=timeout)


def kill_all() -> None:
    """SIGKILLs every child still running and its group: the last resort, no event loop needed."""
    for proc in list(_CHILDREN):
        if proc.poll() is None:
            kill(proc, timeout=5.0)
        _forget(proc)
