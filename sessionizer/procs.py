"""Child processes for the demo, the benchmarks and the integration tests.

One way to run a helper process (a worker, a broker, a benchmark pipeline):
``spawn`` starts it in a process group of its own, its output in a log file;
``stop`` signals the whole group and waits, then SIGKILLs what is left;
whatever is still running when this process exits is killed (``atexit``), so a
crashed or interrupted run leaves nothing behind. ``free_port`` finds a port.

Nothing outlives its parent, even a SIGKILLed one, which no ``atexit`` hook sees:
``popen_tied`` (or ``tied_preexec`` for a ``Popen`` of your own) starts a child that
the kernel kills when we die, and ``tied_tempdir`` is a temporary directory that a
small watchdog removes when we die.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "bindable_port",
    "free_port",
    "kill",
    "kill_all",
    "popen_tied",
    "port_busy",
    "signal_group",
    "spawn",
    "stop",
    "stop_all",
    "stop_async",
    "tied_preexec",
    "tied_tempdir",
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


def bindable_port(host: str, port: int) -> int | None:
    """``port`` (0: any free one) if a server could listen on ``host`` there now; None if
    something else listens there. Any other reason it cannot (no such address, a
    privileged port) raises the OSError."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        # Like servers do, ignore connections lingering in TIME_WAIT.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host.strip("[]"), port))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                return None
            raise
        return int(sock.getsockname()[1])


def port_busy(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


_PR_SET_PDEATHSIG = 1
_libc: Any = None


def tied_preexec(sig: int = signal.SIGKILL) -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get ``sig`` when we die, however we die.

    Linux's parent-death signal (prctl PR_SET_PDEATHSIG); None elsewhere. The
    kernel sends it when the *thread* that started the child ends: start tied
    children from the main thread (or one that lives as long as they do).
    """
    global _libc
    if not sys.platform.startswith("linux"):
        return None
    if _libc is None:
        import ctypes

        # Loaded here, not in the child: no import between fork and exec.
        _libc = ctypes.CDLL(None, use_errno=True)
    prctl, parent = _libc.prctl, os.getpid()

    def tie() -> None:  # pragma: no cover - runs in the child
        prctl(_PR_SET_PDEATHSIG, sig)
        if os.getppid() != parent:  # we died before the tie was made
            os.kill(os.getpid(), sig)

    return tie


def popen_tied(
    args: Sequence[str], *, sig: int = signal.SIGKILL, **kw: Any
) -> subprocess.Popen[Any]:
    """``subprocess.Popen(args, **kw)`` for a child that dies with us (``tied_preexec``)."""
    return subprocess.Popen(list(args), preexec_fn=tied_preexec(sig), **kw)


# The watchdog: blocks on its stdin, whose write end only we hold; the EOF that
# comes when we exit, however, removes the directory (again a moment later, in
# case a dying child was still writing into it).
_WATCHDOG = """
import os, shutil, signal, sys, time
for s in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
    signal.signal(s, signal.SIG_IGN)
sys.stdin.buffer.read()
for _ in range(3):
    shutil.rmtree(sys.argv[1], ignore_errors=True)
    time.sleep(0.3)
"""


@contextlib.contextmanager
def tied_tempdir(prefix: str) -> Iterator[Path]:
    """A temporary directory removed when the block ends or, if we are killed, by a watchdog."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    read_end, write_end = os.pipe()  # both not inherited by other children
    try:
        watchdog = subprocess.Popen(
            [sys.executable, "-S", "-c", _WATCHDOG, str(path)],
            stdin=read_end,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # no Ctrl-C of our terminal reaches it
        )
    finally:
        os.close(read_end)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        os.close(write_end)  # the watchdog finds nothing left and exits
        with contextlib.suppress(subprocess.TimeoutExpired):
            watchdog.wait(5)


def spawn(
    args: Sequence[str],
    log_path: Path,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    die_with_parent: bool | int = False,
) -> Proc:
    """Starts ``args`` in a new session (its own process group), stdout and stderr
    appended to ``log_path``, stdin from /dev/null; it is killed at our exit if still running,
    and, with ``die_with_parent`` (True: SIGTERM, or the signal), gets it if we die first.
    """
    tie = None
    if die_with_parent is not False:
        tie = tied_preexec(signal.SIGTERM if die_with_parent is True else int(die_with_parent))
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            list(args),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=None if env is None else dict(env),
            cwd=cwd,
            start_new_session=True,
            preexec_fn=tie,
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
