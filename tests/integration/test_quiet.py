"""Quiet by default: at the default log level a worker prints start-up, its ready
lines (one per assignment) and problems, nothing else; never a terminal escape
into a file (docs/operations.md#start-up)."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sessionizer import codec
from sessionizer.testing import MIN, T0, batch, launch, screen
from sessionizer.testing.harness import Names, WorkerProc, produce

pytestmark = [pytest.mark.integration, pytest.mark.timeout(400)]

PARTITIONS = 4
READY = re.compile(r"sessionizer worker ready: partitions \[([0-9, ]*)\] of \S+; web \S+")
# What a worker may print at the default level when nothing goes wrong.
EXPECTED = (READY, re.compile(r"created topics: \S.*"))


async def _ready(w: WorkerProc, until: Callable[[list[str]], bool], what: str) -> None:
    """Waits until the partition lists of ``w``'s ready lines so far satisfy ``until``."""
    deadline = time.monotonic() + 150
    while not until(READY.findall(w.log())):
        assert w.proc is not None and w.proc.poll() is None, w.log()[-3000:]
        assert time.monotonic() < deadline, f"{what}: not reached\n{w.log()[-3000:]}"
        await asyncio.sleep(0.2)


async def test_a_rebalance_prints_only_the_ready_lines(broker: Any, tmp_path: Path) -> None:
    names = Names(f"quiet-{uuid.uuid4().hex[:8]}")
    a, b = (
        WorkerProc(
            broker.bootstrap, names, tmp_path, partitions=PARTITIONS, tag=tag, loglevel="warning"
        )
        for tag in "ab"
    )
    a.start()
    try:
        everything = ", ".join(map(str, range(PARTITIONS)))
        await _ready(a, lambda lines: lines[-1:] == [everything], "worker a ready")
        recs = [codec.dumps(batch(f"q-{i}", launch(T0), screen(T0 + MIN))) for i in range(16)]
        await produce(broker.bootstrap, names.topics["raw_events"], recs)
        b.start()  # a rebalance: a gives partitions to b ...
        await _ready(b, lambda lines: bool(lines and lines[-1]), "worker b owns some")
        await _ready(a, lambda lines: lines[-1] != everything, "worker a shares")
        assert b.terminate() == 0, b.log()
        # ... and takes them back when b leaves.
        await _ready(a, lambda lines: lines[-1] == everything, "worker a owns all again")
    finally:
        a.terminate()
        b.terminate()
    for w in (a, b):
        raw = w.log_path.read_bytes()
        assert b"\x1b" not in raw, raw[:2000]  # no spinner or cursor escapes in a file
        noise = [
            line
            for line in raw.decode(errors="replace").splitlines()
            if line.strip() and not any(p.fullmatch(line) for p in EXPECTED)
        ]
        assert noise == [], "\n".join(noise)
