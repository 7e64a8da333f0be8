"""Helpers shared by bench_stream.py and bench_state.py.

The workload (with its record keys), an embedded broker, topics, producing and
reading back, committed offsets, worker processes (``sessionizer.testing.harness``'s
``Names``, ``WorkerProc`` and ``produce``), CPU and memory of processes from Linux ``/proc``,
``/metrics`` scrapes and a py-spy profile summary.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import re
import sys
import time
import urllib.request
from collections.abc import Callable, Coroutine, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sessionizer.procs import free_port
from sessionizer.testing.harness import Names, WorkerProc, produce, running

ROOT = Path(__file__).resolve().parent.parent

__all__ = ["ROOT", "Names", "Worker", "free_port", "produce", "running"]


class Worker(WorkerProc):
    """The integration tests' worker process, with the worker's own batch defaults.

    ``wrapper``: run ``python WRAPPER... worker`` instead of ``python -m sessionizer
    worker`` (bench/worker_probe.py).
    """

    def __init__(self, *args: Any, wrapper: list[str] | None = None, **kw: Any) -> None:
        super().__init__(*args, **kw)
        del self.env["SESSIONIZER_BATCH_WITHIN"]  # the tests' setting, not the default
        if wrapper:
            self.argv = [sys.executable, *wrapper, *self.argv[3:]]  # python WRAPPER worker ...


# ------------------------------------------------------------------ workload


@dataclass
class Workload:
    values: list[bytes]
    keys: list[bytes | None]  # the device, as the worker's producers key records
    counts: list[int]  # events inside each record (0: undecodable)
    upload_ms: int | None = None  # the SDK upload interval that shaped it (None: default)

    @property
    def records(self) -> int:
        return len(self.values)

    @property
    def events(self) -> int:
        return sum(self.counts)

    @property
    def bytes(self) -> int:
        return sum(map(len, self.values))

    def prefix(self, events: int) -> Workload:
        """The first records that together hold at least ``events`` events."""
        total = n = 0
        while n < len(self.counts) and total < events:
            total += self.counts[n]
            n += 1
        return Workload(self.values[:n], self.keys[:n], self.counts[:n], self.upload_ms)


def _generate(events: int, devices: int, apps: int, seed: int, upload_ms: int | None) -> Workload:
    from sessionizer.tools.produce import count_and_key
    from sessionizer.tools.workload import generate

    w = Workload([], [], [], upload_ms)
    for value in generate(events, devices=devices, apps=apps, seed=seed, upload_ms=upload_ms):
        key, n = count_and_key(value)  # keyed as `sessionizer produce` keys it
        w.values.append(value)
        w.keys.append(key)
        w.counts.append(n)
    return w


DEFAULT_EPR = 7.8  # events per record of the generator's default upload intervals


def upload_interval(epr: float, events: int, devices: int, apps: int, seed: int) -> int | None:
    """The SDK upload interval (ms) that gives ``epr`` events per record, None: the default.

    Bisection on a sample that keeps events per device (what shapes the batches).
    """
    if epr >= DEFAULT_EPR - 0.3:
        return None
    sample = min(events, 60_000)
    devs = max(50, round(devices * sample / max(events, 1)))
    lo, hi = math.log(1_000), math.log(600_000)
    mid = (lo + hi) / 2
    for _ in range(10):
        mid = (lo + hi) / 2
        w = _generate(sample, devs, apps, seed, round(math.exp(mid)))
        got = w.events / max(1, w.records)
        if abs(got - epr) < 0.05:
            break
        lo, hi = (mid, hi) if got < epr else (lo, mid)
    return round(math.exp(mid))


def build_workload(
    events: int, epr: float, *, devices: int = 5000, apps: int = 3, seed: int = 1
) -> Workload:
    """``sessionizer.tools.workload.generate`` with ~``epr`` events per record, keyed by device."""
    return _generate(events, devices, apps, seed, upload_interval(epr, events, devices, apps, seed))


# ------------------------------------------------------------------ broker and topics


@contextlib.contextmanager
def embedded_broker(log_path: Path | None = None) -> Iterator[Any]:
    """The project's embedded broker (Tansu, memory storage) on a free loopback port."""
    from sessionizer.tools.broker import EmbeddedBroker

    with EmbeddedBroker(port=0, log_path=log_path) as b:
        yield b


async def create_topics(bootstrap: str, names: Iterable[str], partitions: int) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    await asyncio.wait_for(admin.start(), 30)
    try:
        with contextlib.suppress(TopicAlreadyExistsError):
            await admin.create_topics([NewTopic(n, partitions, 1) for n in names])
    finally:
        await admin.close()


async def read_timestamps(
    bootstrap: str, topics: list[str], *, quiet_s: float = 1.5, timeout: float = 300
) -> dict[str, list[int]]:
    """The CreateTime (ms) of every record now in ``topics``, whose writers have stopped.

    Read until the reported ends are reached and nothing came for ``quiet_s``
    (Tansu's ends are lower bounds).
    """
    from aiokafka import AIOKafkaConsumer

    from sessionizer.kafka.clients import READ_COMMITTED, reached, topic_partitions

    c = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level=READ_COMMITTED,
        fetch_max_wait_ms=100,
        fetch_max_bytes=32 << 20,
        max_partition_fetch_bytes=8 << 20,
    )
    await asyncio.wait_for(c.start(), 30)
    out: dict[str, list[int]] = {t: [] for t in topics}
    try:
        tps = [tp for t in topics for tp in await topic_partitions(c, t, tries=100)]
        if not tps:
            return out
        c.assign(tps)
        await c.seek_to_beginning(*tps)
        ends = await c.end_offsets(tps)
        deadline = time.monotonic() + timeout
        last_data = time.monotonic()
        left = set(tps)
        while time.monotonic() - last_data < quiet_s or left:
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topics}: not done after {timeout:.0f} s")
            got = await c.getmany(timeout_ms=200, max_records=50_000)
            if got:
                last_data = time.monotonic()
            for tp, msgs in got.items():
                out[tp.topic].extend(m.timestamp for m in msgs)
            left = {tp for tp in left if not await reached(c, tp, ends[tp])}
    finally:
        await c.stop()
    return out


async def wait_committed(
    bootstrap: str,
    group: str,
    topic: str,
    ends: dict[int, int],
    *,
    alive: Callable[[], str | None],
    timeout: float,
    poll: float = 0.2,
) -> float:
    """Waits until ``group`` committed every partition's end; returns that wall time.

    ``alive()`` returns why the pipeline cannot finish any more (it exited), or None.
    """
    from aiokafka import TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    tps = [TopicPartition(topic, p) for p in sorted(ends)]
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    await asyncio.wait_for(admin.start(), 30)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                # Explicit partitions: Tansu drops the connection on the "all" form.
                res = await asyncio.wait_for(
                    admin.list_consumer_group_offsets(group, partitions=tps), 10
                )
                cur = {tp.partition: om.offset for tp, om in res.items()}
            except Exception:  # the group may not exist yet
                cur = {}
            if all(cur.get(p, -1) >= end for p, end in ends.items()):
                return time.time()
            why = alive()
            if why is not None:
                raise RuntimeError(why)
            if time.monotonic() > deadline:
                raise TimeoutError(f"group {group}: input not committed after {timeout:.0f} s")
            await asyncio.sleep(poll)
    finally:
        await admin.close()


# ------------------------------------------------------------------ rates


@dataclass
class Rate:
    """A pipeline's rate, from the CreateTime of its output records."""

    records: int  # input records (and events) the outputs stand for
    events: int
    first_ms: int
    last_ms: int
    share: float  # outputs after the first millisecond with output, of all outputs

    @property
    def seconds(self) -> float:
        return (self.last_ms - self.first_ms) / 1000

    @property
    def records_per_s(self) -> float:
        # The outputs stamped at first_ms stand for input processed before the clock
        # started (a whole first batch for the worker): they are left out of the count.
        return self.records * self.share / self.seconds if self.seconds > 0 else 0.0

    @property
    def events_per_s(self) -> float:
        return self.records_per_s * self.events / max(1, self.records)


def rate(stamps: Iterable[int], records: int, events: int) -> Rate | None:
    ts = sorted(stamps)
    if len(ts) < 2 or ts[-1] <= ts[0]:
        return None
    at_first = sum(1 for t in ts if t == ts[0])
    return Rate(records, events, ts[0], ts[-1], (len(ts) - at_first) / len(ts))


# ------------------------------------------------------------------ processes (/proc)

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds of a process (all its threads), None if gone."""
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK
    except (OSError, IndexError, ValueError):
        return None


def machine_cpu() -> float:
    """CPU seconds all cores spent busy since boot (not idle, not iowait)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v[:8]) - v[3] - v[4]) / _TICK


def rss_bytes(pid: int) -> int | None:
    """Resident set size of a process (VmRSS), None if gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@dataclass
class CpuSampler:
    """Samples the CPU seconds of some processes and of the machine, for shares later."""

    pids: dict[str, int | None]
    samples: list[tuple[float, dict[str, float | None], float]] = field(default_factory=list)

    def sample(self) -> None:
        cpus = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self.samples.append((time.time(), cpus, machine_cpu()))

    async def run(self, every: float = 0.2) -> None:
        while True:
            self.sample()
            await asyncio.sleep(every)

    def cores(self, name: str | None, t0: float, t1: float) -> float | None:
        """Cores used by ``name`` (None: the whole machine) between wall times t0 and t1."""
        pts = [
            (t, m if name is None else c.get(name))
            for t, c, m in self.samples
            if (m if name is None else c.get(name)) is not None
        ]
        if t1 <= t0 or len(pts) < 2:
            return None

        def at(t: float) -> float:
            prev = pts[0]
            for cur in pts:
                if cur[0] >= t:
                    if cur[0] == prev[0]:
                        return float(cur[1])  # type: ignore[arg-type]
                    f = (t - prev[0]) / (cur[0] - prev[0])
                    return prev[1] + (cur[1] - prev[1]) * max(0.0, f)  # type: ignore[operator,no-any-return]
                prev = cur
            return float(pts[-1][1])  # type: ignore[arg-type]

        return (at(t1) - at(t0)) / (t1 - t0)


# ------------------------------------------------------------------ /metrics


def scrape(port: int, timeout: float = 30) -> tuple[str, float]:
    """The worker's /metrics text and the seconds the scrape took."""
    t0 = time.perf_counter()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as r:
        text = r.read().decode()
    return text, time.perf_counter() - t0


_SAMPLE = re.compile(r"^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)", re.M)


def metric(text: str, name: str) -> dict[str, float]:
    """``name``'s samples in a Prometheus text page, by label set."""
    return {m[2] or "": float(m[3]) for m in _SAMPLE.finditer(text) if m[1] == name}


def metric_sum(text: str, name: str) -> float:
    return sum(metric(text, name).values())


# ------------------------------------------------------------------ py-spy

# (category, pattern on py-spy's "function (file:line)" frames). A sample counts for
# the category of the frame nearest its leaf that matches one (engine work inside a
# send callback is engine work); generic frames (the event loop, sockets, aiokafka's
# connection) decide only when nothing specific does: a socket write under the
# producer's sender is a send. Without --native, C calls (orjson, socket writes)
# count for the Python line that made them.
PROFILE_CATEGORIES: tuple[tuple[str, str], ...] = (
    ("orjson (native frames)", r"orjson"),
    ("changelog writes (snapshots, store, marker)", r"snapshot|stream/state\.py|Marker"),
    ("engine (sessionizer/core)", r"sessionizer/core/"),
    ("output sends (BatchSender, aiokafka producer)", r"stream/sender\.py|aiokafka/producer/"),
    ("web: /metrics, /health", r"stream/web\.py|stream/metrics\.py|aiohttp/|prometheus_client"),
    ("input fetch (aiokafka's consumer, direct reader)", r"stream/reader\.py|aiokafka/consumer/"),
    ("Faust (its consumer thread, fetcher, streams, acks)", r"faust/|aiokafka/"),
    ("worker glue (sessionizer/stream: batching, _publish)", r"sessionizer/stream/"),
    ("asyncio event loop, selectors, mode", r"asyncio/|selectors\.py|mode/"),
)
_GENERIC = re.compile(r"asyncio/|selectors\.py|mode/|aiokafka/(conn|client)\.py|threading\.py")

Shares = list[tuple[str, float]]


def profile_summary(path: Path, top: int = 15) -> tuple[Shares, Shares]:
    """(category shares, leaf-frame shares) of a py-spy ``--format raw`` (collapsed) file."""
    pats = [(name, re.compile(p)) for name, p in PROFILE_CATEGORIES]
    cats: dict[str, int] = {}
    leaves: dict[str, int] = {}
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        count = int(n)
        total += count
        frames = stack.split(";")
        cat = "other"
        for generic in (False, True):
            for frame in reversed(frames):
                if generic or not _GENERIC.search(frame):
                    hit = next((name for name, pat in pats if pat.search(frame)), None)
                    if hit:
                        cat = hit
                        break
            if cat != "other":
                break
        cats[cat] = cats.get(cat, 0) + count
        leaf = re.sub(r":\d+\)$", ")", frames[-1])
        leaves[leaf] = leaves.get(leaf, 0) + count
    if not total:
        return [], []

    def share(d: dict[str, int]) -> Shares:
        return [(k, v / total) for k, v in sorted(d.items(), key=lambda kv: -kv[1])]

    return share(cats), share(leaves)[:top]


# ------------------------------------------------------------------ rounds


def run_rounds(
    prefix: str,
    out: str | None,
    rounds: Iterable[Any],
    one: Callable[[Any, Path, Any], Coroutine[Any, Any, Any]],
    report: Callable[[list[Any], Any], None],
    *,
    header: str | None = None,
) -> int:
    """Runs ``one(round, work, say)`` for each round (each with its own event loop),
    then ``report(results, say)``; logs and data stay in ``out`` when given."""
    import shutil
    import tempfile

    from rich.console import Console

    console = Console() if sys.stdout.isatty() else Console(width=200)
    work = Path(out or tempfile.mkdtemp(prefix=prefix)).resolve()
    work.mkdir(parents=True, exist_ok=True)
    if header:
        console.print(header)
    results = []
    try:
        for r in rounds:
            results.append(asyncio.run(one(r, work, console.print)))
    except KeyboardInterrupt:
        console.print(f"[red]interrupted[/]; logs in {work}")
        return 130
    report(results, console.print)
    if out:
        console.print(f"[dim]logs and data in {work}[/]")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0
