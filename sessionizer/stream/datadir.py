"""One worker per RocksDB data directory.

RocksDB locks each table it opens; a second worker on the same ``data_dir``
(two workers on one host, as the README's scaling advice does) died deep in
Faust's recovery with ``IO error: While lock file: …/LOCK``, a 40-line
traceback. The worker takes this lock first and stops at start-up with one
line naming the setting instead. The lock lives as long as the process.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK_NAME = "worker.lock"
_held: list[int] = []  # open descriptors: closing one would release its lock


def hold(data_dir: Path) -> int | None:
    """Locks ``data_dir`` for this process; the pid of the worker holding it, if another
    does (0 when it cannot be read)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(data_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            owner = int(os.read(fd, 32).decode().strip() or 0)
        except ValueError:
            owner = 0
        os.close(fd)
        return owner
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    _held.append(fd)
    return None


def release() -> None:
    """Releases every lock this process holds (tests)."""
    while _held:
        os.close(_held.pop())
