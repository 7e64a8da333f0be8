"""`sessionizer tail` against a real broker: human and --json output, following, Ctrl-C."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from collections.abc import Callable
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from sessionizer import codec
from sessionizer.core.model import DEAD_LETTERS, EVENTS, SESSIONS
from sessionizer.kafka.clients import TopicSpec, ensure_topics
from sessionizer.settings import load_settings
from sessionizer.testing import (
    MIN,
    SEC,
    T0,
    background,
    batch,
    custom,
    event,
    foreground,
    launch,
    run,
    screen,
    set_attr,
    single,
)
from sessionizer.tools.tail import format_duration, format_time

ROLE_ENV = {
    EVENTS: "SESSIONIZER_TOPIC_SESSIONIZED_EVENTS",
    SESSIONS: "SESSIONIZER_TOPIC_SESSIONS",
    DEAD_LETTERS: "SESSIONIZER_TOPIC_DEAD_LETTERS",
}


def _outputs() -> list[tuple[int, Any, dict[str, Any]]]:
    """Real output records of the engine: sessions with attributes, a revision, dead letters."""
    result = run(
        [
            batch(
                "dev-1",
                launch(T0),
                screen(T0 + 1 * SEC),
                set_attr(T0 + 2 * SEC, "plan", "pro"),
                custom(T0 + 3 * SEC),
            ),
            batch("dev-1", background(T0 + 1 * MIN)),
            batch("dev-1", foreground(T0 + 3 * MIN), screen(T0 + 12 * MIN + 5 * SEC)),
            # dev-2's event moves the watermark past dev-1's deadline (last event + 4 x 30 min
            # after a foreground, R5) + grace: dev-1 closes as idle ...
            single("dev-2", custom(T0 + 180 * MIN)),
            # ... and dev-1's next event lies before that deadline: reopened (R21), revision 1.
            batch("dev-1", custom(T0 + 20 * MIN)),
            b"{not json",
            batch("dev-3", event("custom_event", "yesterday-ish")),
        ]
    )
    return result.order


async def _write(bootstrap: str, topics: dict[int, str]) -> list[tuple[int, bytes]]:
    written: list[tuple[int, bytes]] = []
    p = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await p.start()
    try:
        for role, key, value in _outputs():
            raw = codec.dumps(value)
            k = key.encode() if isinstance(key, str) else key
            # One partition: the test can expect the output in exactly the order written.
            await p.send_and_wait(topics[role], raw, key=k, partition=0)
            written.append((role, raw))
    finally:
        await p.stop()
    return written


@pytest.fixture
async def topics(broker: Any, unique: Callable[[str], str]) -> dict[str, Any]:
    names = {role: unique(env.rsplit("_", 2)[-1].lower()) for role, env in ROLE_ENV.items()}
    settings = load_settings(None, env={}, broker_url=broker.url)
    await ensure_topics(settings, [TopicSpec(n, 2) for n in names.values()])
    written = await _write(broker.bootstrap, names)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIONIZER_")}
    env.update({ROLE_ENV[role]: name for role, name in names.items()})
    env.update(TZ="UTC", NO_COLOR="1", COLUMNS="200")
    return {"names": names, "written": written, "env": env, "url": broker.url}


async def _tail(t: dict[str, Any], *args: str, timeout: float = 60.0) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sessionizer",
        "tail",
        *args,
        "--broker",
        t["url"],
        "--timeout",
        "45",
        env=t["env"],
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def _values(t: dict[str, Any], role: int) -> list[bytes]:
    return [v for r, v in t["written"] if r == role]


@pytest.mark.integration
async def test_tail_json_prints_each_value_unchanged(topics: dict[str, Any]) -> None:
    runs = {
        role: _tail(
            topics, kind, "--json", "--from-beginning", "--max", str(len(_values(topics, role)))
        )
        for role, kind in (
            (SESSIONS, "sessions"),
            (EVENTS, "events"),
            (DEAD_LETTERS, "dead-letters"),
        )
    }
    results = dict(zip(runs, await asyncio.gather(*runs.values()), strict=True))
    for role, (rc, out, err) in results.items():
        assert rc == 0, err
        expected = _values(topics, role)
        assert out.encode().splitlines() == expected
        assert all(type(codec.loads(line)) is dict for line in out.splitlines())


@pytest.mark.integration
async def test_tail_sessions_human(topics: dict[str, Any]) -> None:
    n = len(_values(topics, SESSIONS))
    rc, out, err = await _tail(topics, "sessions", "--from-beginning", "--max", str(n))
    assert rc == 0, err
    assert "\x1b[" not in out  # not a terminal: no colour codes
    lines = out.splitlines()
    assert len(lines) == n
    starts = [line for line in lines if "  START  " in line]
    ends = [line for line in lines if "  END  " in line]
    assert len(starts) + len(ends) == n
    assert starts[0].startswith("2026-01-01T00:00:00+00:00  START  dev-1 ")
    assert "com.example.shop" in starts[0] and "#1" in starts[0] and "mpid 42" in starts[0]
    dev1 = [line for line in ends if " dev-1 " in line]
    # First close by the watermark (timeout), then the reopened session's close, revision 1.
    assert [("rev 0" in e, "rev 1" in e) for e in dev1] == [(True, False), (False, True)]
    first, revised = dev1
    assert " idle " in first and " idle " in revised
    # 00:00:00 -> 00:12:05, background 00:01:00 -> foreground 00:03:00.
    assert re.search(r"\b12m 05s  fg\s+10m 05s\s+6 events\s+2 screens\s+rev 0", first)
    assert 'plan="pro"' in first
    assert re.search(r"\b20m 00s  fg\s+18m 00s\s+7 events\s+2 screens\s+rev 1", revised)
    assert revised.startswith("2026-01-01T00:20:00+00:00  END")
    # Aligned columns: the session number sits at the same place on every line.
    assert len({line.index("#") for line in lines}) == 1
    assert "tail: " in err and "from the beginning" in err


@pytest.mark.integration
async def test_tail_events_and_dead_letters_human(topics: dict[str, Any]) -> None:
    n_dead = len(_values(topics, DEAD_LETTERS))
    n_events = sum(len(codec.loads(v).get("events", [None])) for v in _values(topics, EVENTS))
    (rc, out, err), (rc2, dead, err2) = await asyncio.gather(
        _tail(topics, "events", "--from-beginning", "--max", str(len(_values(topics, EVENTS)))),
        _tail(topics, "dead-letters", "--from-beginning", "--max", str(n_dead)),
    )
    assert rc == 0, err
    lines = out.splitlines()
    assert len(lines) == n_events  # one line per event of each batch
    assert re.match(
        r"2026-01-01T00:00:00\+00:00  dev-1\s+session_start\s+[0-9A-F]{8}\s+-$", lines[0]
    )
    assert re.match(
        r"2026-01-01T00:00:00\+00:00  dev-1\s+application_state_transition\s+initialized"
        r"\s+[0-9A-F]{8}\s+#1$",
        lines[1],
    )
    assert re.match(
        r"2026-01-01T00:00:01\+00:00  dev-1\s+screen_view\s+Home\s+\S{8}\s+#2$", lines[2]
    )
    assert any(re.search(r"session_end\s+12m 05s", line) for line in lines)
    assert len({line.index("dev-") for line in lines}) == 1

    assert rc2 == 0, err2
    dlines = dead.splitlines()
    assert len(dlines) == n_dead
    assert re.search(r"invalid_json\s+test/0@5\s+unexpected character.*\{not json$", dlines[0])
    assert re.search(
        r"bad_timestamp\s+test/0@6\s+timestamp missing or out of range\s+\{", dlines[1]
    )
    assert '"mp_deviceid":"dev-3"' in dlines[1]


@pytest.mark.integration
async def test_tail_follows_from_the_end_and_stops_cleanly_on_ctrl_c(
    topics: dict[str, Any],
) -> None:
    args = [sys.executable, "-m", "sessionizer", "tail", "sessions", "--broker", topics["url"]]
    proc = await asyncio.create_subprocess_exec(
        *args,
        env=topics["env"],
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stderr is not None and proc.stdout is not None
        ready = await asyncio.wait_for(proc.stderr.readline(), 60)
        assert b"from now" in ready
        new = codec.dumps(
            {
                "record": "session_start",
                "session_uuid": "00000000-0000-5000-8000-000000000000",
                "session_id": 1,
                "app": "com.example.new",
                "device": "dev-new",
                "mpid": 7,
                "start_unixtime_ms": T0,
                "session_number": 3,
                "previous_session_uuid": None,
            }
        )
        p = AIOKafkaProducer(bootstrap_servers=topics["url"].removeprefix("kafka://"))
        await p.start()
        try:
            await p.send_and_wait(topics["names"][SESSIONS], new, key=b"k")
        finally:
            await p.stop()
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        # Only what arrived after it started: the older records are not printed.
        assert line.decode().startswith("2026-01-01T00:00:00+00:00  START  dev-new ")
        proc.send_signal(signal.SIGINT)
        rc = await asyncio.wait_for(proc.wait(), 20)
        rest = (await proc.stderr.read()).decode()
        assert rc == 0, rest
        assert "Traceback" not in rest
        assert await proc.stdout.read() == b""
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.mark.integration
async def test_tail_missing_topic_is_one_line_exit_1(topics: dict[str, Any]) -> None:
    t = dict(topics, env={**topics["env"], "SESSIONIZER_TOPIC_SESSIONS": "no-such-topic-x"})
    rc, out, err = await _tail(t, "sessions")
    assert rc == 1
    assert out == ""
    assert err.strip() == f"sessionizer: topic no-such-topic-x does not exist on {topics['url']}"


def test_format_duration() -> None:
    assert format_duration(0) == "0s"
    assert format_duration(850) == "850ms"
    assert format_duration(45_000) == "45s"
    assert format_duration(12 * MIN + 5 * SEC) == "12m 05s"
    assert format_duration(62 * MIN + 5 * SEC) == "1h 02m 05s"
    assert format_duration((51 * 60 + 4) * MIN) == "2d 03h 04m"
    assert format_duration(None) == "-"
    assert format_duration(True) == "-"


def test_format_time_is_iso_local(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    try:
        assert format_time(T0) == "2026-01-01T00:00:00+00:00"
        assert format_time(None) == "-"
    finally:
        monkeypatch.undo()
        time.tzset()
