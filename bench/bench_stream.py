"""Stream benchmark: the sessionizer worker against raw aiokafka and naive Faust.

    python bench/bench_stream.py [--events 300000] [--partitions 8] [--naive-events 30000]

One broker (the embedded one, else tansu on a loopback port), one synthetic
workload, three pipelines, each over its own freshly pre-produced input topic
(records keyed by device) so that each measures consumption throughput:

* **raw passthrough** — an aiokafka group consumer, ``orjson.loads`` and
  ``orjson.dumps`` of every record, an aiokafka producer; the ceiling.
* **naive Faust** — ``bench/naive_faust.py``: per-event ``await topic.send()``
  and a per-event table write; the "Faust per-event tax" reference. It is slow,
  so it runs on a prefix of the workload (``--naive-events``), once.
* **sessionizer** — ``python -m sessionizer worker`` (``--worker-cmd`` for A/B).

Every pipeline runs as its own process and is timed the same way, from the
outside: from the broker timestamp (CreateTime) of its first output record to
that of its last one, where "last" is bounded by the moment its consumer
group's committed offsets reach the end of the input (the completion signal).
Start-up and group join are not in the rate; they are reported as "ready"
(process start to first output). The rate counts the events inside the input
records (~8 a record); it gates PASS/FAIL (exit status 1 below ``--target``).

Also shown: the rate between the outputs that carry 10 % and 90 % of the
events (steady state: without the first batch and the tail, where a few
partitions finish last and wait on fetches of the finished ones), and the CPU
the pipeline's process and the broker used while it ran (Linux /proc). The
machine is shared and small: ``--reps N`` keeps the best of N interleaved runs.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import itertools
import json
import os
import random
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
TARGET_EPS = 50_000
PORT_RANGE = (38000, 38999)  # loopback ports this bench may listen on
# Fallback when sessionizer.broker is missing (or --tansu): $SESSIONIZER_BROKER_BIN, else this.
TANSU = Path(os.environ.get("SESSIONIZER_BROKER_BIN") or "/root/.calfkit/bin/tansu-v0.6.0-510f3e2")

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


# ------------------------------------------------------------------ workload


@dataclass
class Workload:
    values: list[bytes]
    keys: list[bytes | None]
    counts: list[int]  # events inside each record

    @property
    def events(self) -> int:
        return sum(self.counts)

    def prefix(self, events: int) -> Workload:
        """The first records that together hold at least ``events`` events."""
        total = 0
        for i, n in enumerate(self.counts):
            total += n
            if total >= events:
                return Workload(self.values[: i + 1], self.keys[: i + 1], self.counts[: i + 1])
        return self


def record_events(obj: Any) -> int:
    if type(obj) is not dict:
        return 0
    ev = obj.get("events")
    return len(ev) if type(ev) is list else int("event_type" in obj)


def build_workload(events: int, devices: int, apps: int, seed: int) -> Workload:
    """The same records as bench-core and ``sessionizer produce --generate``, keyed by device."""
    from sessionizer.core.engine import identity
    from sessionizer.workload import generate

    w = Workload([], [], [])
    for value in generate(events, devices=devices, apps=apps, seed=seed):
        try:
            obj = orjson.loads(value)
        except orjson.JSONDecodeError:
            obj = None
        ident = identity(obj) if type(obj) is dict else None
        w.values.append(value)
        w.keys.append(None if ident is None else ident[1].encode())
        w.counts.append(record_events(obj))
    return w


# ------------------------------------------------------------------ processes


def free_port() -> int:
    """A free loopback port inside PORT_RANGE."""
    ports = list(range(PORT_RANGE[0], PORT_RANGE[1] + 1))
    random.shuffle(ports)
    for port in ports:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {PORT_RANGE}")


_CHILDREN: list[Child] = []  # everything started, stopped again in main() whatever happens


class Child:
    """A subprocess in its own process group, its output in a log file."""

    def __init__(self, name: str, cmd: list[str], log_path: Path, env: dict[str, str]) -> None:
        self.name = name
        self.cmd = cmd
        self.log_path = log_path
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0  # wall clock (time.time), comparable with broker timestamps

    def start(self) -> Child:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.cmd,
                cwd=ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C on the terminal reaches us only; we stop it
            )
        self.started = time.time()
        _CHILDREN.append(self)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def exited(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, timeout: float = 15.0, sig: int = signal.SIGTERM) -> None:
        """Signal the group, wait up to ``timeout``, then SIGKILL it."""
        p = self.proc
        if p is None or p.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, sig)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(5)


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
BROKER_PID: list[int] = []  # the broker's pid when this bench started it (CPU accounting)


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds of a live process (Linux /proc), else None."""
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK
    except (OSError, IndexError, ValueError):
        return None


def cpu_share(samples: list[tuple[float, float | None]], t0: float, t1: float) -> float | None:
    """Cores used between wall times t0 and t1, from (wall, cpu seconds) samples."""
    pts = [(t, c) for t, c in samples if c is not None]
    if t1 <= t0 or len(pts) < 2:
        return None

    def at(t: float) -> float:
        if t <= pts[0][0]:
            return pts[0][1]
        for (ta, ca), (tb, cb) in itertools.pairwise(pts):
            if ta <= t <= tb:
                return ca + (cb - ca) * (t - ta) / (tb - ta) if tb > ta else cb
        return pts[-1][1]

    return (at(t1) - at(t0)) / (t1 - t0)


def child_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SESSIONIZER_", "NAIVE_"))}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def wait_tcp(host: str, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"broker not listening on {host}:{port} after {timeout:.0f} s")


@contextlib.contextmanager
def broker(work: Path, url: str | None, use_tansu: bool) -> Iterator[tuple[str, str]]:
    """(bootstrap, description) of a broker that lives as long as the block."""
    if url:
        yield url.removeprefix("kafka://"), "given"
        return
    port = free_port()
    embedded: Any = None
    if not use_tansu:
        try:
            from sessionizer.broker import EmbeddedBroker as embedded
        except ImportError:
            embedded = None
    if embedded is not None:
        with embedded(host="127.0.0.1", port=port) as b:
            BROKER_PID[:] = [b.pid] if getattr(b, "pid", None) else []
            yield b.bootstrap, f"sessionizer.broker.EmbeddedBroker at {b.bootstrap}"
        return
    if not TANSU.exists():
        raise RuntimeError(f"no sessionizer.broker and no {TANSU}: give --broker")
    listen = f"tcp://127.0.0.1:{port}"
    tansu = Child(
        "broker",
        [
            str(TANSU),
            "broker",
            "--listener-url",
            listen,
            "--advertised-listener-url",
            listen,
            "--storage-engine",
            "memory://tansu/",
        ],
        work / "broker.log",
        child_env({}),
    ).start()
    try:
        wait_tcp("127.0.0.1", port, 30)
        BROKER_PID[:] = [tansu.pid]
        yield f"127.0.0.1:{port}", f"tansu at 127.0.0.1:{port} (memory)"
    finally:
        tansu.stop(5)


# ------------------------------------------------------------------ kafka helpers


@dataclass
class Produced:
    ends: dict[int, int]  # partition -> end offset
    offsets: dict[int, list[int]] = field(default_factory=dict)  # partition -> record offsets
    cum_events: dict[int, list[int]] = field(default_factory=dict)  # events through each offset

    def events_before(self, committed: dict[int, int]) -> int:
        """Events inside the records below the committed offsets."""
        n = 0
        for p, off in committed.items():
            offs = self.offsets.get(p)
            if offs and off > 0:
                i = bisect.bisect_left(offs, off)
                if i:
                    n += self.cum_events[p][i - 1]
        return n


async def create_topics(bootstrap: str, names: list[str], partitions: int) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    await asyncio.wait_for(admin.start(), 30)
    try:
        with contextlib.suppress(TopicAlreadyExistsError):
            await asyncio.wait_for(
                admin.create_topics([NewTopic(n, partitions, 1) for n in names]), 30
            )
    finally:
        await admin.close()


async def produce(bootstrap: str, topic: str, w: Workload, timeout: float) -> Produced:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=5, max_batch_size=512 * 1024, acks=1
    )
    await asyncio.wait_for(producer.start(), 30)
    metas: list[Any] = []
    try:

        async def run() -> None:
            futs = []
            for value, key in zip(w.values, w.keys, strict=True):
                futs.append(await producer.send(topic, value, key=key))
                if len(futs) >= 2000:
                    metas.extend(await asyncio.gather(*futs))
                    futs.clear()
            metas.extend(await asyncio.gather(*futs))

        await asyncio.wait_for(run(), timeout)
    finally:
        await producer.stop()
    out = Produced({})
    for meta, n in zip(metas, w.counts, strict=True):
        p = meta.partition
        out.ends[p] = max(out.ends.get(p, 0), meta.offset + 1)
        offs = out.offsets.setdefault(p, [])
        cum = out.cum_events.setdefault(p, [])
        offs.append(meta.offset)
        cum.append((cum[-1] if cum else 0) + n)
    for p, offs in out.offsets.items():  # offsets come back in order per partition; be sure
        if offs != sorted(offs):
            pairs = sorted(zip(offs, out.cum_events[p], strict=True))
            out.offsets[p] = [o for o, _ in pairs]
    return out


async def committed_offsets(admin: Any, group: str, tps: list[Any]) -> dict[int, int]:
    # Explicit partitions: tansu drops the connection on the "all partitions" form.
    res = await asyncio.wait_for(admin.list_consumer_group_offsets(group, partitions=tps), 10)
    return {tp.partition: max(0, om.offset) for tp, om in res.items()}


@dataclass
class Outputs:
    records: dict[str, int] = field(default_factory=dict)
    first_ms: int | None = None
    last_ms: int | None = None  # of records stamped no later than the completion signal
    events: int = 0  # events inside the counted topic's records (see read_outputs)
    single_events: int = 0
    # (CreateTime, events) of count_topic's records: how far the pipeline had got, when
    progress: list[tuple[int, int]] = field(default_factory=list)

    def steady_seconds(self, lo: float = 0.1, hi: float = 0.9) -> float | None:
        """Seconds between the outputs that carry the lo and hi fractions of the events."""
        if not self.progress:
            return None
        marks = sorted(self.progress)
        total = sum(n for _, n in marks)
        t_lo = t_hi = None
        seen = 0
        for ts, n in marks:
            seen += n
            if t_lo is None and seen >= lo * total:
                t_lo = ts
            if seen >= hi * total:
                t_hi = ts
                break
        if t_lo is None or t_hi is None or t_hi <= t_lo:
            return None
        return (t_hi - t_lo) / 1000


async def _partitions(c: Any, topic: str) -> list[Any]:
    from aiokafka import TopicPartition

    parts = c.partitions_for_topic(topic)
    for _ in range(50):
        if parts:
            break
        await c._client.force_metadata_update()
        await asyncio.sleep(0.1)
        parts = c.partitions_for_topic(topic)
    return [TopicPartition(topic, p) for p in sorted(parts or ())]


async def read_outputs(
    bootstrap: str,
    topics: list[str],
    count_topic: str | None,
    until_ms: int,
    timeout: float,
    *,
    counted: tuple[str, ...] = (),
    quiet_s: float = 1.0,
    single_weight: int = 0,
) -> Outputs:
    """Everything now in ``topics``: counts and first/last CreateTime.

    ``count_topic``'s records are parsed: events inside batches are counted in
    ``events``, single events (one record per event) in ``single_events``; their
    timestamps, weighted by events (a single event weighs ``single_weight``), make
    ``progress``. ``counted`` topics (e.g. a changelog) are only counted, not timed.

    The writers have stopped, so a topic is read once its end offsets are
    reached and nothing more arrives for ``quiet_s``. End offsets alone are not
    enough: tansu 0.6 answers ListOffsets(latest) with the last *batch's* base
    offset + 1, short of the true end by the rest of that batch.
    """
    from aiokafka import AIOKafkaConsumer

    c = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=100,
        fetch_max_bytes=16 * 1024 * 1024,
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    await asyncio.wait_for(c.start(), 30)
    out = Outputs({t: 0 for t in (*topics, *counted)})
    timed = set(topics)
    try:
        tps = []
        for t in (*topics, *counted):
            tps += await _partitions(c, t)
        if not tps:
            return out
        c.assign(tps)
        await c.seek_to_beginning(*tps)
        ends = await asyncio.wait_for(c.end_offsets(tps), 30)  # lower bounds (see above)
        pos = {tp: 0 for tp in tps}
        deadline = time.monotonic() + timeout
        last_data = time.monotonic()
        while True:
            now = time.monotonic()
            if now > deadline:
                raise TimeoutError(f"reading outputs: not done after {timeout:.0f} s")
            if now - last_data >= quiet_s and all(pos[tp] >= ends[tp] for tp in tps):
                break
            batches = await c.getmany(timeout_ms=200, max_records=20_000)
            if batches:
                last_data = time.monotonic()
            for tp, msgs in batches.items():
                out.records[tp.topic] += len(msgs)
                pos[tp] = msgs[-1].offset + 1
                if tp.topic not in timed:
                    continue
                parse = tp.topic == count_topic
                for m in msgs:
                    ts = m.timestamp
                    if out.first_ms is None or ts < out.first_ms:
                        out.first_ms = ts
                    if ts <= until_ms and (out.last_ms is None or ts > out.last_ms):
                        out.last_ms = ts
                    if parse:
                        try:
                            obj = orjson.loads(m.value)
                        except orjson.JSONDecodeError:
                            continue
                        if type(obj) is dict and type(obj.get("events")) is list:
                            n = len(obj["events"])
                            out.events += n
                        else:
                            n = single_weight
                            out.single_events += 1
                        if n and ts <= until_ms:
                            out.progress.append((ts, n))
    finally:
        await c.stop()
    return out


# ------------------------------------------------------------------ measurement


@dataclass
class Result:
    name: str
    events: int  # input events offered
    ok: bool = False
    note: str = ""
    ready_s: float | None = None  # process start -> first output
    seconds: float | None = None  # first output -> last output
    commit_s: float | None = None  # first output -> committed offsets at the end
    done_events: int | None = None  # events committed (== events when it finished)
    steady_s: float | None = None  # between the outputs at 10 % and 90 % of the events
    cpu: float | None = None  # cores the pipeline's process used, first to last output
    broker_cpu: float | None = None  # cores the broker used meanwhile
    outputs: Outputs | None = None
    log: str = ""

    @property
    def steady_eps(self) -> float | None:
        if not self.steady_s or not self.ok:
            return None
        return 0.8 * self.events / self.steady_s

    @property
    def eps(self) -> float | None:
        if not self.seconds or self.done_events is None:
            return None
        return self.done_events / self.seconds


async def run_pipeline(
    res: Result,
    child: Child,
    *,
    bootstrap: str,
    group: str,
    in_topic: str,
    out_topics: list[str],
    count_topic: str | None,
    counted: tuple[str, ...] = (),
    single_weight: int = 0,
    produced: Produced,
    ready_timeout: float,
    run_timeout: float,
    on_started: Any = None,
    poll: float = 0.1,
) -> None:
    """Start ``child`` and wait for its group to commit the whole input (bounded)."""
    from aiokafka import TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    tps = [TopicPartition(in_topic, p) for p in sorted(produced.ends)]
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    await asyncio.wait_for(admin.start(), 30)
    child.start()
    extra: list[Child] = list(on_started(child) if on_started else [])
    done_at: float | None = None
    progress_at: float | None = None  # first commit progress
    last: dict[int, int] = {}
    last_change = time.time()
    cpu: list[tuple[float, float | None]] = []
    bcpu: list[tuple[float, float | None]] = []
    broker_pid = BROKER_PID[0] if BROKER_PID else None
    try:
        while True:
            rc = child.exited()  # before the offsets: a child that exits after committing is done
            now = time.time()
            cpu.append((now, cpu_seconds(child.pid)))
            bcpu.append((now, cpu_seconds(broker_pid)))
            try:
                cur = await committed_offsets(admin, group, tps)
            except Exception:  # the group may not exist yet
                cur = {}
            if cur != last:
                last, last_change = cur, now
                if progress_at is None and any(cur.values()):
                    progress_at = now
            if all(cur.get(p, 0) >= end for p, end in produced.ends.items()):
                done_at = now
                res.ok = True
                break
            if rc is not None:
                res.note = f"exited with status {rc}"
                break
            if progress_at is None and now - child.started > ready_timeout:
                res.note = f"no progress {ready_timeout:.0f} s after start"
                break
            if progress_at is not None and now - progress_at > run_timeout:
                res.note = f"timeout: stopped after {run_timeout:.0f} s of processing"
                break
            await asyncio.sleep(poll)
    finally:
        await admin.close()
        for x in extra:
            x.stop(15, signal.SIGINT)  # py-spy writes its profile on SIGINT
        child.stop(15)
    res.log = child.log_tail()
    if res.ok:
        res.done_events = res.events
    else:
        res.done_events = produced.events_before(last)
        done_at = last_change  # partial: rate up to the last commit we saw
    until_ms = int((done_at or time.time()) * 1000) + 1
    out = await read_outputs(
        bootstrap,
        out_topics,
        count_topic,
        until_ms,
        120,
        counted=counted,
        single_weight=single_weight,
    )
    res.outputs = out
    res.steady_s = out.steady_seconds()
    if out.first_ms is not None:
        res.ready_s = out.first_ms / 1000 - child.started
        if out.last_ms is not None and out.last_ms > out.first_ms:
            res.seconds = (out.last_ms - out.first_ms) / 1000
        if done_at is not None:
            res.commit_s = done_at - out.first_ms / 1000
        if out.last_ms is not None:
            t0, t1 = out.first_ms / 1000, out.last_ms / 1000
            res.cpu, res.broker_cpu = cpu_share(cpu, t0, t1), cpu_share(bcpu, t0, t1)
    if res.ok and res.seconds is None:
        res.ok = False
        res.note = res.note or "no output records"


# ------------------------------------------------------------------ raw passthrough child


async def raw_passthrough(spec: dict[str, Any]) -> dict[str, Any]:
    """aiokafka group consumer -> orjson.loads -> orjson.dumps -> aiokafka producer."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    loads, dumps, decode_error = orjson.loads, orjson.dumps, orjson.JSONDecodeError
    out_topic = spec["out"]
    ends = {int(p): e for p, e in spec["ends"].items()}
    consumer = AIOKafkaConsumer(
        spec["in"],
        bootstrap_servers=spec["bootstrap"],
        group_id=spec["group"],
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=spec["bootstrap"], linger_ms=5, max_batch_size=512 * 1024, acks=1
    )
    await producer.start()
    await consumer.start()
    records = events = 0
    t_first: float | None = None
    pos: dict[int, int] = {}
    deadline = time.monotonic() + spec["timeout"]
    try:
        while any(pos.get(p, 0) < e for p, e in ends.items()):
            if time.monotonic() > deadline:
                raise TimeoutError("raw passthrough did not finish")
            batches = await consumer.getmany(timeout_ms=500, max_records=5000)
            if not batches:
                continue
            if t_first is None:
                t_first = time.perf_counter()
            send = producer.send
            futs = []
            for tp, msgs in batches.items():
                for m in msgs:
                    try:
                        obj = loads(m.value)
                    except decode_error:
                        continue
                    # Partitioned by key like the worker's outputs (aiokafka's murmur2).
                    futs.append(await send(out_topic, dumps(obj), key=m.key))
                    records += 1
                    events += record_events(obj)
                pos[tp.partition] = msgs[-1].offset + 1
            await asyncio.gather(*futs)
            await consumer.commit()
    finally:
        await consumer.stop()
        await producer.stop()
    elapsed = time.perf_counter() - (t_first or time.perf_counter())
    return {"records": records, "events": events, "elapsed_s": round(elapsed, 6)}


# ------------------------------------------------------------------ report


def _fmt(v: float | None, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def _out_desc(r: Result) -> str:
    o = r.outputs
    if o is None:
        return ""
    parts = [f"{_short(t)} {n:,}" for t, n in o.records.items()]
    if o.events:
        parts[0] += f" ({o.events:,} events in batches, {o.single_events:,} single)"
    return ", ".join(parts)


def _short(topic: str) -> str:
    # bench-<run>-<pipeline>-<role>: the role is what the reader needs.
    for role in ("sessionized-events", "sessions", "dead-letters", "out", "changelog"):
        if topic.endswith("-" + role):
            return role
    return topic


def _role_env(topics: dict[str, str]) -> dict[str, str]:
    return {role.upper().replace("-", "_"): name for role, name in topics.items()}


def best(runs: list[Result]) -> Result:
    """The fastest finished run; else the first one (to show why it failed)."""
    ok = [r for r in runs if r.ok and r.eps is not None]
    return max(ok, key=lambda r: r.eps or 0.0) if ok else runs[0]


def report(
    console: Any, results: dict[str, list[Result]], target: float, w_events: int, reps: int
) -> bool:
    from rich.table import Table

    by = {name: best(runs) for name, runs in results.items()}
    raw = by.get("raw passthrough")
    raw_eps = raw.eps if raw and raw.ok else None
    title = f"bench-stream: {w_events:,} events (naive Faust on a prefix)"
    table = Table(title=title + (f", best of {reps}" if reps > 1 else ""))
    table.add_column("pipeline")
    table.add_column("events", justify="right")
    table.add_column("ready (s)", justify="right")
    table.add_column("first→last output (s)", justify="right")
    table.add_column("events/s", justify="right")
    table.add_column("events/s 10-90 %", justify="right")
    if reps > 1:
        table.add_column("every run (events/s)")
    table.add_column("ratio to raw", justify="right")
    table.add_column("→ committed (s)", justify="right")
    table.add_column("CPU (cores) proc/broker", justify="right")
    table.add_column("outputs / note")
    for name, r in by.items():
        eps = r.eps
        ratio = eps / raw_eps if eps and raw_eps else None
        note = _out_desc(r) if r.ok else f"[red]{r.note or 'failed'}[/] " + _out_desc(r)
        row = [
            r.name,
            f"{(r.done_events if not r.ok and r.done_events is not None else r.events):,}",
            _fmt(r.ready_s, ".1f"),
            _fmt(r.seconds, ".2f"),
            _fmt(eps, ",.0f"),
            _fmt(r.steady_eps, ",.0f"),
        ]
        if reps > 1:
            row.append(" ".join(_fmt(x.eps, ",.0f") if x.ok else "FAILED" for x in results[name]))
        cpu = f"{_fmt(r.cpu, '.2f')} / {_fmt(r.broker_cpu, '.2f')}"
        row += [_fmt(ratio, ".3f"), _fmt(r.commit_s, ".2f"), cpu, note]
        table.add_row(*row)
    console.print(table)
    ses = by.get("sessionizer")
    ses_eps = ses.eps if ses and ses.ok else None
    passed = ses_eps is not None and ses_eps >= target
    verdict = "[green]PASS[/]" if passed else "[red]FAIL[/]"
    console.print(
        f"sessionizer worker: {_fmt(ses_eps, ',.0f')} events/s; target {target:,.0f} → {verdict}"
    )
    naive = by.get("naive Faust")

    def num(r: Result | None) -> str:
        return "n/a" if r is None or r.eps is None else f"{r.eps:.0f}"

    ratio = ses_eps / raw_eps if ses_eps and raw_eps else None
    fields = {
        "raw": num(raw),
        "naive_faust": num(naive),
        "sessionizer": num(ses),
        "ratio": "n/a" if ratio is None else f"{ratio:.3f}",
        "sessionizer_steady": _fmt(ses.steady_eps if ses else None, ".0f"),
        "target": f"{target:.0f}",
        "pass": str(passed).lower(),
        "events": str(w_events),
        "naive_events": str(naive.events) if naive else "n/a",
        "ready_s": _fmt(ses.ready_s if ses else None, ".1f"),
        "reps": str(reps),
    }
    # One line for scripts: grep '^BENCH_STREAM '
    print("BENCH_STREAM " + " ".join(f"{k}={v}" for k, v in fields.items()), flush=True)
    return passed


# ------------------------------------------------------------------ main


async def bench(
    args: argparse.Namespace, w: Workload, bootstrap: str, work: Path, console: Any
) -> dict[str, list[Result]]:
    """Every pipeline ``--reps`` times, interleaved (naive Faust once); results by pipeline."""
    run_id = f"bench-{int(time.time()) % 1_000_000}-{os.getpid() % 10_000}"
    results: dict[str, list[Result]] = {}
    kw: dict[str, Any] = {"bootstrap": bootstrap, "ready_timeout": args.ready_timeout}
    skip = set(args.skip)

    async def prepare(name: str, wl: Workload, topics: list[str]) -> Produced:
        await create_topics(bootstrap, topics, args.partitions)
        t0 = time.perf_counter()
        produced = await produce(bootstrap, topics[0], wl, timeout=300)
        console.print(
            f"[dim]{name}: produced {len(wl.values):,} records ({wl.events:,} events) "
            f"to {topics[0]} in {time.perf_counter() - t0:.1f} s[/]"
        )
        return produced

    def done(r: Result) -> None:
        results.setdefault(r.name, []).append(r)
        status = "ok" if r.ok else f"[red]{r.note}[/]"
        console.print(
            f"{r.name}: {_fmt(r.eps, ',.0f')} events/s over {_fmt(r.seconds, '.2f')} s "
            f"({_fmt(r.steady_eps, ',.0f')} events/s 10-90 %), "
            f"ready after {_fmt(r.ready_s, '.1f')} s, CPU {_fmt(r.cpu, '.2f')} cores "
            f"(broker {_fmt(r.broker_cpu, '.2f')}) — {status}"
        )
        if not r.ok and r.log:
            console.print(f"[dim]{r.name} log tail:[/]\n{r.log}", markup=False, highlight=False)

    async def raw(run: str) -> None:
        t_in, t_out = f"{run}-raw-in", f"{run}-raw-out"
        produced = await prepare("raw passthrough", w, [t_in, t_out])
        spec = {
            "bootstrap": bootstrap,
            "in": t_in,
            "out": t_out,
            "group": f"{run}-raw",
            "ends": produced.ends,
            "timeout": args.ready_timeout + args.timeout,
        }
        child = Child(
            "raw",
            [sys.executable, str(Path(__file__)), "--raw-child", json.dumps(spec)],
            work / f"{run}-raw.log",
            child_env({}),
        )
        r = Result("raw passthrough", w.events)
        await run_pipeline(
            r,
            child,
            group=spec["group"],
            in_topic=t_in,
            out_topics=[t_out],
            count_topic=t_out,
            produced=produced,
            run_timeout=args.timeout,
            **kw,
        )
        done(r)

    async def naive(run: str) -> None:
        nw = w.prefix(args.naive_events)
        t_in, t_out = f"{run}-naive-in", f"{run}-naive-out"
        produced = await prepare("naive Faust", nw, [t_in, t_out])
        app_id = f"{run}-naive"
        env = child_env(
            {
                "NAIVE_BROKER_URL": f"kafka://{bootstrap}",
                "NAIVE_APP_ID": app_id,
                "NAIVE_TOPIC_IN": t_in,
                "NAIVE_TOPIC_OUT": t_out,
                "NAIVE_PARTITIONS": str(args.partitions),
                "NAIVE_WEB_PORT": str(free_port()),
                "NAIVE_DATA_DIR": str(work / f"{run}-naive-data"),
            }
        )
        child = Child(
            "naive",
            [sys.executable, str(ROOT / "bench" / "naive_faust.py"), "worker", "-l", "info"],
            work / f"{run}-naive.log",
            env,
        )
        r = Result("naive Faust", nw.events)
        await run_pipeline(
            r,
            child,
            group=app_id,
            in_topic=t_in,
            out_topics=[t_out],
            count_topic=t_out,
            counted=(f"{app_id}-event-counts-changelog",),
            single_weight=1,  # one output record per event
            produced=produced,
            run_timeout=args.naive_timeout,
            **kw,
        )
        done(r)

    async def sessionizer(run: str) -> None:
        roles = ("raw-events", "sessionized-events", "sessions", "dead-letters", "opt-out-control")
        topics = {role: f"{run}-ses-{role}" for role in roles}
        produced = await prepare(
            "sessionizer", w, [topics["raw-events"], topics["sessionized-events"]]
        )
        app_id = f"{run}-ses"
        env = child_env(
            {
                "SESSIONIZER_BROKER_URL": f"kafka://{bootstrap}",
                "SESSIONIZER_APP_ID": app_id,
                "SESSIONIZER_PARTITIONS": str(args.partitions),
                "SESSIONIZER_WEB_PORT": str(free_port()),
                "SESSIONIZER_DATA_DIR": str(work / f"{run}-sessionizer-data"),
                **{f"SESSIONIZER_TOPIC_{k}": v for k, v in _role_env(topics).items()},
                **dict(kv.split("=", 1) for kv in args.worker_env),
            }
        )
        cmd = [sys.executable, "-m", "sessionizer", "worker", "--loglevel", "info"]
        child = Child(
            "sessionizer",
            shlex.split(args.worker_cmd) if args.worker_cmd else cmd,
            work / f"{run}-sessionizer.log",
            env,
        )

        def profile(c: Child) -> list[Child]:
            if not args.py_spy or "sessionizer" in results:  # the first run only
                return []
            dest = Path(args.py_spy).resolve()
            fmt = {".svg": "flamegraph", ".json": "speedscope"}.get(dest.suffix, "raw")
            spy = ROOT / ".venv" / "bin" / "py-spy"
            cmd = [str(spy if spy.exists() else "py-spy"), "record", "--pid", str(c.pid)]
            cmd += ["--output", str(dest), "--format", fmt, "--rate", "200", "--nonblocking"]
            console.print(f"[dim]py-spy → {dest} ({fmt})[/]")
            return [Child("py-spy", cmd, work / "py-spy.log", child_env({})).start()]

        r = Result("sessionizer", w.events)
        await run_pipeline(
            r,
            child,
            group=app_id,
            in_topic=topics["raw-events"],
            out_topics=[topics["sessionized-events"], topics["sessions"], topics["dead-letters"]],
            count_topic=topics["sessionized-events"],
            counted=(f"{app_id}-state-changelog",),
            produced=produced,
            run_timeout=args.timeout,
            on_started=profile,
            **kw,
        )
        done(r)

    for rep in range(args.reps):
        run = f"{run_id}-r{rep + 1}"
        if args.reps > 1:
            console.print(f"[bold]rep {rep + 1}/{args.reps}[/]")
        if "raw" not in skip:
            await raw(run)
        if "naive" not in skip and rep == 0:
            await naive(run)
        if "sessionizer" not in skip:
            await sessionizer(run)
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--events", type=int, default=300_000)
    ap.add_argument("--naive-events", type=int, default=30_000, help="naive Faust's prefix")
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--reps", type=int, default=1, help="runs of each pipeline; best counts")
    ap.add_argument("--devices", type=int, default=5000)
    ap.add_argument("--apps", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--target", type=float, default=TARGET_EPS, help="worker events/s to pass")
    ap.add_argument("--ready-timeout", type=float, default=180, help="start-up + group join (s)")
    ap.add_argument("--timeout", type=float, default=300, help="processing bound (s)")
    ap.add_argument("--naive-timeout", type=float, default=120, help="naive Faust's bound (s)")
    ap.add_argument("--skip", action="append", default=[], choices=("raw", "naive", "sessionizer"))
    ap.add_argument("--broker", default=None, help="use this broker (host:port) instead")
    ap.add_argument("--tansu", action="store_true", help="tansu even if sessionizer.broker exists")
    ap.add_argument("--worker-env", action="append", default=[], metavar="K=V")
    ap.add_argument(
        "--worker-cmd", default=None, help="instead of python -m sessionizer worker (A/B builds)"
    )
    ap.add_argument("--py-spy", default=None, metavar="FILE", help="profile the worker (.svg)")
    ap.add_argument("--out", default=None, help="keep logs here (default: a temp dir)")
    ap.add_argument("--raw-child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.raw_child:
        result = asyncio.run(raw_passthrough(json.loads(args.raw_child)))
        print(json.dumps(result), flush=True)
        return 0

    from rich.console import Console

    console = Console()
    if not console.is_terminal:
        console = Console(width=200)  # make/CI pipes: keep the table on one line a row
    for kv in args.worker_env:
        if "=" not in kv:
            ap.error(f"--worker-env wants K=V, got {kv!r}")

    # SIGTERM (CI cancel) unwinds like Ctrl-C, so every child and the broker are stopped.
    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)

    t0 = time.perf_counter()
    w = build_workload(args.events, args.devices, args.apps, args.seed)
    size = sum(map(len, w.values))
    console.print(
        f"workload: {len(w.values):,} records, {w.events:,} events, {size / 1e6:.1f} MB "
        f"(generated in {time.perf_counter() - t0:.1f} s); {args.partitions} partitions"
    )

    tmp = None
    if args.out:
        work = Path(args.out).resolve()
        work.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.mkdtemp(prefix="bench-stream-")
        work = Path(tmp)
    keep = True  # logs of a failed or interrupted run are kept
    try:
        with broker(work, args.broker, args.tansu) as (bootstrap, desc):
            console.print(f"broker: {desc}")
            try:
                results = asyncio.run(bench(args, w, bootstrap, work, console))
            finally:
                for child in reversed(_CHILDREN):  # workers before the broker
                    if child.name != "broker":
                        child.stop(10)
        keep = not all(r.ok for runs in results.values() for r in runs)
        passed = report(console, results, args.target, w.events, args.reps)
    except KeyboardInterrupt:
        console.print("[red]interrupted[/]: subprocesses and broker stopped")
        return 130
    finally:
        for child in reversed(_CHILDREN):
            child.stop(5)
        if tmp and not keep:
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp:
            console.print(f"[dim]logs kept in {work}[/]")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
