"""`sessionizer produce` and `sessionizer demo` against a real broker."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from sessionizer import codec, procs
from sessionizer.core.engine import identity
from sessionizer.procs import free_port
from sessionizer.settings import load_settings
from sessionizer.tools.demo import LiveTraffic
from sessionizer.tools.produce import TokenBucket, produce_records
from sessionizer.tools.workload import generate

ENDED = re.compile(r"(\d+) ended")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


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
    # --rate counts events, as the demo's does (issue 20); the first burst is free.
    assert elapsed >= (400 - 20) / 100
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
        self.port = free_port()
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
            procs.kill(self.proc)
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
        procs.kill(demo.proc)
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
        procs.kill(demo.proc)
    out = demo.output()
    assert rc == 0, out
    assert "demo: ran" in out
    assert demo.leftovers() == [], out


# --------------------------------------------------------------------------- stopping


def _stat(pid: int) -> tuple[int, int, str, int] | None:
    """(ppid, pgid, state, start time) of a live or zombie process, else None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rpartition(")")[2].split()  # the name may hold spaces and parentheses
    return int(fields[1]), int(fields[2]), fields[0], int(fields[19])


def _descendants(root: int) -> dict[int, tuple[int, int]]:
    """pid -> (pgid, start time) of every process below ``root``."""
    children: dict[int, list[int]] = defaultdict(list)
    stats = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (st := _stat(int(name))) is not None:
            stats[int(name)] = st
            children[st[0]].append(int(name))
    found: dict[int, tuple[int, int]] = {}
    todo = list(children[root])
    while todo:
        pid = todo.pop()
        found[pid] = (stats[pid][1], stats[pid][3])
        todo += children[pid]
    return found


def _survivors(procs: dict[int, tuple[int, int]], demo_pgid: int) -> dict[int, str]:
    """Those of ``procs`` still running, and anything else left in their process groups."""
    groups = {pgid for pgid, _ in procs.values()} - {demo_pgid}
    alive = {}
    for name in os.listdir("/proc"):
        if not name.isdigit() or (st := _stat(int(name))) is None or st[2] == "Z":
            continue
        pid = int(name)
        mine = pid in procs and procs[pid][1] == st[3]  # the same process, not a reused pid
        if mine or st[1] in groups:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            alive[pid] = f"group {st[1]}: {cmd}"
    return alive


class StoppableDemo:
    """`sessionizer demo` with its output on a pipe (summary lines) or a pseudo-terminal
    (the live view) that this test reads, and can close."""

    def __init__(self, *, terminal: bool = False, tmpdir: Path | None = None) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIONIZER_")}
        if tmpdir is not None:
            env["TMPDIR"] = str(tmpdir)  # where its temporary directory goes
        cmd = [sys.executable, "-m", "sessionizer", "demo", "--port", "0"]
        cmd += ["--rate", "20", "--seed", "5"] + ([] if terminal else ["--no-view"])
        self.stdout: Any = None
        if terminal:
            self.fd, tty = pty.openpty()
            fcntl.ioctl(tty, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
            out: Any = tty
        else:
            out = subprocess.PIPE
        self.proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        if terminal:
            os.close(tty)
        else:
            assert self.proc.stdout is not None
            self.stdout = self.proc.stdout
            self.fd = self.stdout.fileno()
        self.text = ""
        self.closed = False

    def read_until(self, pred: Callable[[str], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not pred(self.text) and time.monotonic() < deadline:
            ready, _, _ = select.select([self.fd], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(self.fd, 65536)
                except OSError:  # EIO: the terminal's other side is gone
                    chunk = b""
                if not chunk:
                    break
                self.text += ANSI.sub("", chunk.decode(errors="replace"))
        return pred(self.text)

    def close_output(self) -> None:
        if not self.closed:
            self.closed = True
            if self.stdout is not None:
                self.stdout.close()
            else:
                os.close(self.fd)

    def kill(self) -> None:
        procs.kill(self.proc)
        self.close_output()


def _stop_and_check(demo: StoppableDemo, how: str) -> None:
    """Stops a running demo ``how``; asserts it exits quickly, 0, leaving no process behind."""
    started: dict[int, tuple[int, int]] = {}
    survivors: dict[int, str] = {}
    try:
        running = demo.read_until(lambda text: "worker running" in text, timeout=90)
        started = _descendants(demo.proc.pid)
        assert running, demo.text
        cmds = " ".join(Path(f"/proc/{p}/cmdline").read_text() for p in started)
        assert "tansu" in cmds and "worker" in cmds, cmds  # both seen, so both checked
        t0 = time.monotonic()
        if how in ("stdout closed", "terminal closed"):
            demo.close_output()
        if how != "stdout closed":
            demo.proc.send_signal(
                signal.SIGHUP if how == "terminal closed" else signal.Signals[how]
            )
        if not demo.closed:
            demo.read_until(lambda text: False, timeout=40)  # drain to the end
        rc = demo.proc.wait(40)
        elapsed = time.monotonic() - t0
        deadline = time.monotonic() + 3  # a SIGKILL takes a moment to land
        while (survivors := _survivors(started, demo.proc.pid)) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        demo.kill()
        for pid in {**survivors, **_survivors(started, demo.proc.pid)}:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)  # leave nothing behind for the next test
    assert survivors == {}, demo.text
    assert rc == 0, demo.text
    assert elapsed < 20, (elapsed, demo.text)
    if not demo.closed:
        assert f"demo: {how}, stopping the worker" in demo.text, demo.text
        assert "demo: ran" in demo.text


@pytest.mark.integration
@pytest.mark.parametrize("how", ["SIGTERM", "SIGHUP", "SIGINT", "stdout closed"])
def test_piped_demo_stops_everything_it_started(how: str) -> None:
    """`make run | tee demo.log`: every way it stops ends the worker's group and the broker."""
    _stop_and_check(StoppableDemo(), how)


@pytest.mark.integration
def test_live_view_stops_everything_when_its_terminal_closes() -> None:
    """The live view's terminal window closed: SIGHUP, and every write fails (EIO)."""
    _stop_and_check(StoppableDemo(terminal=True), "terminal closed")


@pytest.mark.integration
def test_a_sigkilled_demo_leaves_no_process_and_no_directory(tmp_path: Path) -> None:
    """No clean-up code of the demo runs on SIGKILL: the kernel and a watchdog do it."""
    demo = StoppableDemo(tmpdir=tmp_path)
    started: dict[int, tuple[int, int]] = {}
    survivors: dict[int, str] = {}
    try:
        running = demo.read_until(lambda text: "worker running" in text, timeout=90)
        started = _descendants(demo.proc.pid)
        assert running, demo.text
        cmds = " ".join(Path(f"/proc/{p}/cmdline").read_text() for p in started)
        assert "tansu" in cmds and "worker" in cmds, cmds
        assert [p.name[:16] for p in tmp_path.iterdir()] == ["sessionizer-demo"]
        demo.proc.kill()
        demo.proc.wait(10)
        deadline = time.monotonic() + 10  # the kernel's signal and the watchdog take a moment
        while time.monotonic() < deadline and (
            (survivors := _survivors(started, demo.proc.pid)) or any(tmp_path.iterdir())
        ):
            time.sleep(0.1)
    finally:
        demo.kill()
        for pid in {**survivors, **_survivors(started, demo.proc.pid)}:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert survivors == {}, demo.text
    assert list(tmp_path.iterdir()) == []


@pytest.mark.integration
def test_a_sigkilled_broker_command_takes_the_broker_with_it() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIONIZER_")}
    cmd = [sys.executable, "-m", "sessionizer", "broker", "--port", str(free_port())]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env, start_new_session=True)
    started: dict[int, tuple[int, int]] = {}
    survivors: dict[int, str] = {}
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip(), "the broker did not start"
        started = _descendants(proc.pid)
        cmds = " ".join(Path(f"/proc/{p}/cmdline").read_text() for p in started)
        assert "tansu" in cmds, cmds
        proc.kill()
        proc.wait(10)
        deadline = time.monotonic() + 10
        while (survivors := _survivors(started, proc.pid)) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        procs.kill(proc)
        for pid in {**survivors, **_survivors(started, proc.pid)}:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert survivors == {}


# --------------------------------------------------------------------------- a user's broker


async def _topics(bootstrap: str) -> set[str]:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


@pytest.mark.integration
async def test_demo_on_a_users_broker_keeps_to_its_own_topics_and_group(broker: Any) -> None:
    """`demo --broker URL`: nothing of it reaches the live topics; its own go when it stops."""
    before = await _topics(broker.bootstrap)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIONIZER_")}
    # A user's own settings name the live pipeline; the demo must not use them.
    env["SESSIONIZER_APP_ID"] = "sessionizer"
    cmd = [sys.executable, "-m", "sessionizer", "demo", "--broker", broker.url]
    cmd += ["--duration", "30", "--no-view", "--rate", "20", "--seed", "3"]
    proc = await asyncio.to_thread(
        subprocess.run, cmd, env=env, capture_output=True, text=True, timeout=150
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    m = re.search(r"app id (sessionizer-demo-[0-9a-f]{8}),", out)
    assert m, out
    prefix = m.group(1)
    assert f"{prefix}.raw-events" in out and f"group {prefix}" in out, out
    # Its worker's start-up line: the partitions it owns and where its web server is.
    assert re.search(
        rf"demo: sessionizer worker ready: partitions \[[0-9, ]+\] of {re.escape(prefix)}"
        r"\.raw-events; web http://127\.0\.0\.1:\d+",
        out,
    ), out
    assert "demo: deleted its topics" in out, out
    after = await _topics(broker.bootstrap)
    assert after - before == set(), "the demo left topics behind, or wrote to live ones"
    assert not {"raw-events", "sessions", "sessionized-events"} & (after - before)
