"""`sessionizer report` against a real broker: the sessions topic, whole or since a time."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from sessionizer import codec
from sessionizer.testing import MIN, T0, batch, exit_, launch, screen, single
from sessionizer.testing import run as engine_run
from sessionizer.tools.report import summarize

pytestmark = pytest.mark.integration


def _sessions_records() -> list[bytes]:
    """Session records of a few devices, as the engine writes them."""
    recs = []
    for i in range(6):
        dev = f"rep-dev-{i}"
        recs.append(batch(dev, launch(T0 + i * MIN), screen(T0 + i * MIN + 1000)))
        if i % 2:
            recs.append(batch(dev, exit_(T0 + i * MIN + 5000)))
    recs.append(single("rep-web", screen(T0)))
    return [codec.dumps(r) for r in engine_run(recs).sessions]


def _report(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sessionizer", "report", "--out", "r.html", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _tiles(page: Path) -> dict[str, str]:
    return dict(re.findall(r'data-name="([^"]+)"><b>([^<]+)</b>', page.read_text("utf-8")))


async def test_report_reads_the_sessions_topic(
    broker: Any, unique: Callable[[str], str], tmp_path: Path
) -> None:
    topic = unique("sessions")
    values = _sessions_records()
    t_old, t_new = 1_700_000_000_000, 1_700_000_000_000 + 3_600_000
    half = len(values) // 2
    p = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
    await p.start()
    try:
        futs = [
            await p.send(topic, v, key=b"k", timestamp_ms=(t_old if i < half else t_new) + i)
            for i, v in enumerate(values)
        ]
        await asyncio.gather(*futs)
    finally:
        await p.stop()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIONIZER_")}
    env.update(SESSIONIZER_BROKER_URL=broker.url, SESSIONIZER_TOPIC_SESSIONS=topic)

    res = await asyncio.to_thread(_report, env, tmp_path, "--from-beginning")
    assert res.returncode == 0, res.stderr
    want = summarize([(None, v) for v in values])
    assert res.stdout.startswith(f"report: {want.sessions} sessions ({want.ended} ended")
    tiles = _tiles(tmp_path / "r.html")
    assert (tiles["sessions"], tiles["ended"]) == (str(want.sessions), str(want.ended))

    res = await asyncio.to_thread(_report, env, tmp_path, "--since", str(t_new))
    assert res.returncode == 0, res.stderr
    later = summarize([(None, v) for v in values[half:]])
    assert _tiles(tmp_path / "r.html")["sessions"] == str(later.sessions)
    assert f"from {len(values) - half} records" in res.stdout


def test_report_on_a_missing_topic_is_one_line(broker: Any, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIONIZER_")}
    env.update(SESSIONIZER_BROKER_URL=broker.url, SESSIONIZER_TOPIC_SESSIONS="no-such-topic-rep")
    res = _report(env, tmp_path, "--since", "1h")
    assert res.returncode == 1, res.stderr
    assert (
        res.stderr.strip() == f"sessionizer: topic no-such-topic-rep does not exist on {broker.url}"
    )
