"""`sessionizer produce` and `sessionizer demo` against a real broker."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from sessionizer import codec
from sessionizer.core.engine import identity
from sessionizer.demo import LiveTraffic
from sessionizer.produce import TokenBucket, produce_records
from sessionizer.settings import load_settings
from sessionizer.workload import generate

ENDED = re.compile(r"(\d+) ended")


def _settings(broker: Any, unique: Callable[[str], str]) -> Any:
    env = {"SESSIONIZER_TOPIC_RAW_EVENTS": unique("raw")}
    return load_settings(None, env=env, broker_url=broker.url, partitions=4)


async def _read_back(settings: Any, n: int, timeout: float = 30.0) -> list[Any]:
    c = AIOKafkaConsumer(
        bootstrap_servers=",".join(settings.broker_hosts), enable_auto_commit=False
    )
    await c.start()
    try:
        topic = settings.topics.raw_events
        tps = [TopicPartition(topic, p) for p in range(settings.partitions)]
        c.assign(tps)
        await c.seek_to_beginning(*tps)
        got: list[Any] = []
        deadline = time.monotonic() + timeout
        while len(got) < n and time.monotonic() < deadline:
            for msgs in (await c.getmany(timeout_ms=500)).values():
                got += msgs
        return got
    finally:
        await c.stop()


@pytest.mark.integration
async def test_produce_records_keys_by_device(broker: Any, unique: Callable[[str], str]) -> None:
    settings = _settings(broker, unique)
    records = list(generate(3000, devices=25, seed=3, bad_rate=0.05))
    assert await produce_records(settings, records) == len(records)

    got = await _read_back(settings, len(records))
    assert sorted(m.value for m in got) == sorted(records)
    partitions: dict[bytes | None, set[int]] = defaultdict(set)
    by_key: dict[bytes | None, list[bytes]] = defaultdict(list)
    for m in sorted(got, key=lambda m: (m.partition, m.offset)):
        try:
            ident = identity(codec.loads(m.value))
        except codec.JSONDecodeError:
            ident = None
        assert m.key == (None if ident is None else ident[1].encode())
        partitions[m.key].add(m.partition)
        by_key[m.key].append(m.value)
    assert len([k for k in by_key if k is not None]) == 25
    for key, values in by_key.items():
        if key is not None:
            # One partition per device, in the order produced.
            assert len(partitions[key]) == 1
            mine = set(values)
            assert values == [r for r in records if r in mine]


@pytest.mark.integration
async def test_produce_records_rate_limit(broker: Any, unique: Callable[[str], str]) -> None:
    settings = _settings(broker, unique)
    seen: list[tuple[int, int]] = []
    started = time.monotonic()
    n = await produce_records(
        settings,
        generate(400, devices=5, seed=4),
        rate=100,
        progress=lambda r, e: seen.append((r, e)),
    )
    elapsed = time.monotonic() - started
    assert n > 20
    assert elapsed >= (n - 10) / 100  # the first burst is free
    assert seen[-1] == (n, 400)


async def test_token_bucket_paces_without_busy_waiting() -> None:
    bucket = TokenBucket(200.0)
    started = time.monotonic()
    cpu = time.process_time()
    for _ in range(100):
        await bucket.acquire()
    assert 0.4 <= time.monotonic() - started < 2.0
    assert time.process_time() - cpu < 0.3


async def test_live_traffic_is_stamped_with_the_wall_clock() -> None:
    # A huge speed-up makes every record due at once.
    traffic = LiveTraffic(30, speed=1e7, seed=5, bad_rate=0.0)
    now_ms = int(time.time() * 1000)
    records = []
    async for value in traffic.records():
        records.append(codec.loads(value))
        if len(records) == 200:
            break
    devices = {identity(r)[1] for r in records}
    assert 1 < len(devices) <= 30
    for r in records:
        for ev in r["events"]:
            assert now_ms - 1000 <= ev["data"]["timestamp_unixtime_ms"] <= now_ms + 60_000


# --------------------------------------------------------------------------- the demo


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _processes_mentioning(*needles: str) -> list[str]:
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if any(n in cmd for n in needles):
            found.append(f"{pid}: {cmd}")
    return found


class Demo:
    """`sessionizer demo` as a subprocess, its output collected line by line."""

    def __init__(self, *args: str) -> None:
        self.port = _free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIONIZER_")}
        cmd = [sys.executable, "-m", "sessionizer", "demo", "--port", str(self.port), *args]
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, pred: Callable[[str], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            if any(pred(line) for line in list(self.lines)):
                return True
            time.sleep(0.2)
        return any(pred(line) for line in list(self.lines))

    def wait(self, timeout: float) -> int:
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            raise
        self._reader.join(5)
        return rc

    def leftovers(self) -> list[str]:
        m = re.search(r"app id (\S+),", self.output())
        needles = [f"127.0.0.1:{self.port}"] + ([m.group(1)] if m else [])
        deadline = time.monotonic() + 5
        while (found := _processes_mentioning(*needles)) and time.monotonic() < deadline:
            time.sleep(0.2)
        return found


def _ended(line: str) -> int:
    m = ENDED.search(line)
    return int(m.group(1)) if m else 0


@pytest.mark.integration
def test_demo_shows_ended_sessions_and_stops_on_ctrl_c() -> None:
    demo = Demo("--duration", "60", "--no-view", "--seed", "11")
    try:
        shown = demo.wait_for(lambda line: _ended(line) > 0, timeout=70)
        if demo.proc.poll() is None:
            demo.proc.send_signal(signal.SIGINT)
        rc = demo.wait(timeout=40)
    finally:
        if demo.proc.poll() is None:
            os.killpg(demo.proc.pid, signal.SIGKILL)
    out = demo.output()
    assert shown, out
    assert rc == 0, out
    final = [line for line in demo.lines if line.startswith("demo: ran")]
    assert final and _ended(final[-1]) > 0, out
    assert "sessions started" in final[-1]
    assert demo.leftovers() == [], out
    m = re.search(r"log (\S+)/worker\.log", out)
    assert m and not Path(m.group(1)).exists(), "the demo's temporary directory is removed"


@pytest.mark.integration
def test_demo_stops_by_itself_after_duration() -> None:
    demo = Demo("--duration", "4", "--no-view", "--rate", "20")
    try:
        rc = demo.wait(timeout=60)
    finally:
        if demo.proc.poll() is None:
            os.killpg(demo.proc.pid, signal.SIGKILL)
    out = demo.output()
    assert rc == 0, out
    assert "demo: ran" in out
    assert demo.leftovers() == [], out
