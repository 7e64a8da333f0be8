"""R26 live: a phone whose clock runs a day ahead closes no other session early."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sessionizer import codec
from sessionizer.testing import batch, custom, screen
from sessionizer.testing.harness import (
    Names,
    WorkerProc,
    http_get,
    produce,
    read_all,
    running,
    until,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

APP = "com.example.shop"
DAY_MS = 24 * 3600 * 1000
DEVICES = [f"live-{i}" for i in range(10)]
PHONE = "phone-a-day-ahead"


def _wall_ms() -> int:
    return int(time.time() * 1000)


_get = http_get
_until = until


async def test_r26_a_phone_a_day_ahead_closes_no_other_session_on_a_live_partition(
    broker: Any, tmp_path: Path
) -> None:
    names = Names(f"clock-{uuid.uuid4().hex[:8]}")
    w = WorkerProc(
        broker.bootstrap,
        names,
        tmp_path,
        partitions=1,
        env={
            "SESSIONIZER_TIMEOUT": "4s",
            # Longer than the rounds' spacing: the devices' own records stay in step.
            "SESSIONIZER_GRACE": "5s",
            "SESSIONIZER_IDLE_TIMEOUT": "1s",
            "SESSIONIZER_MAX_FUTURE_SKEW": "48h",  # the phone's records are accepted (§1.3)
        },
    )
    raw = names.topics["raw_events"]
    async with running(w):

        async def healthy() -> Any:
            status, body = await _get(w.web_port, "/health")
            return body if status == 200 and body["ready"] else None

        await _until(healthy, "/health ready", 120)
        last: dict[str, int] = {}
        for rnd in range(3):  # live traffic, stamped with the wall clock, 1 s apart
            now = _wall_ms()
            recs = [codec.dumps(batch(d, screen(now + i))) for i, d in enumerate(DEVICES)]
            last = {d: now + i for i, d in enumerate(DEVICES)}
            await produce(broker.bootstrap, raw, recs, partition=0)
            if rnd == 0:  # the phone, once: its clock a day ahead of everyone's
                phone = batch(PHONE, custom(_wall_ms() + DAY_MS))
                await produce(broker.bootstrap, raw, [codec.dumps(phone)], partition=0)
            await asyncio.sleep(1)

        topic = names.topics["sessions"]

        def closed(out: dict[str, list[Any]]) -> bool:
            ends = {
                v["device"]: v["end_unixtime_ms"]
                for _, v in out[topic]
                if v["record"] == "session_end"
            }
            return all(ends.get(d) == t for d, t in last.items())

        out = await read_all(broker.bootstrap, [topic], until=closed, timeout=120)
        ends = [v for _, v in out[topic] if v["record"] == "session_end"]
        # Each device's one session closed once, by its timeout, with its 3 events:
        # no early close by the phone's time and so no revision.
        assert sorted(v["device"] for v in ends) == sorted(DEVICES)
        assert {(v["revision"], v["end_reason"], v["event_count"]) for v in ends} == {
            (0, "timeout", 3)
        }

        status, health = await _get(w.web_port, "/health")
        assert status == 200
        (outlier,) = health["time_outliers"]
        assert outlier["partition"] == 0 and outlier["events_ahead"] == 1
        assert outlier["key"] == f"{APP}/{PHONE}"
        assert outlier["ahead_ms"] > DAY_MS // 2

        status, text = await _get(w.web_port, "/metrics")
        samples = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
        assert samples["sessionizer_events_ahead_total"] == 1
