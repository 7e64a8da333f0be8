"""Chaos run (issue #7 D): workers killed and restarted under steady traffic.

    python bench/chaos.py [--seed 1] [--seeds 5] [--events 100000] [--workers 3] [--store rocksdb]
    python bench/chaos.py --kafka-nodes 3 --broker-faults     # `make chaos-brokers`

For each seed, with a fresh Apache Kafka (one node by default, sessionizer/tools/apache_kafka.py;
``--embedded`` for the development broker, ``--broker`` for yours), fresh topics and a
fresh app id:

1. ``--workers`` workers (``python -m sessionizer worker``) join one group on
   ``--partitions`` partitions.
2. A realistic workload (``sessionizer.tools.workload.generate``: bad records and
   late batches included, plus a device that opts out and back in) is produced
   at a steady rate over ``--duration`` seconds, keyed by device.
3. Meanwhile workers get SIGKILL or SIGTERM at random and are restarted after
   a random pause; at least one worker is SIGKILLed while it recovers its
   table (right after it logs that it recovers, before it logs that it is
   ready), one 0-300 ms after a restart made it ready (while the group works
   off the backlog), and once all workers are SIGKILLed at the same moment.
   With ``--broker-faults`` (three nodes, replication factor 3, min.insync.replicas 2,
   producers at acks=all with idempotence), the brokers fail too, one at a time: the
   leader of the busiest input partitions is SIGKILLed, a broker is SIGSTOPped past
   its session timeout and SIGCONTed, the active controller is SIGKILLed, and each
   comes back; workers must ride through all of it without a restart.
4. After the traffic, every worker is (re)started, far-future "clock"
   records of 3 devices per partition (a quorum, R26) move every watermark
   past every deadline, and the
   outputs are read until they equal what process-file makes of the same input
   (``sessionizer.testing``'s engine, records in production order, so in the
   same order per partition):

   * final sessions: the highest revision of each session_end, without the
     revision field, must be equal;
   * sessionized events: the same set (duplicates are allowed: at-least-once;
     they are counted); synthesized session_end events are checked only for
     the final revision of each session, since earlier revisions depend on
     when the watermark moved;
   * dead letters: the same set of (reason, payload).

Per seed it prints the kills (signal, worker, time, phase), the duplicates,
the time to settle and PASS/FAIL with a diff summary (each difference with the
partition, offset and send time of the input record behind it); the exit
status is 1 when a seed fails (a worker that exits on its own fails it too).
Worker logs go to a temporary directory whose path is printed; a passing
seed's logs are removed unless ``--keep-logs``. The workers run a copy of the
``sessionizer`` package taken at start-up, so edits made to the tree during a
run do not mix versions (``--live-code`` to skip it, ``--code DIR`` to run a
patched copy). Worker phases come from the log lines of Faust's recovery
("Highwater for active changelog partitions", "Restoring state from changelog
topics...", "Done reading from changelog topics", "Restore complete!",
"Worker ready").
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from sessionizer import codec, procs
from sessionizer.core.config import EngineConfig
from sessionizer.core.engine import Engine
from sessionizer.core.model import DEAD_LETTERS, EVENTS, SESSIONS
from sessionizer.kafka.clients import topic_partitions
from sessionizer.run.task import route_key
from sessionizer.stream.logs import limit_repeats
from sessionizer.testing import NOW
from sessionizer.testing.harness import (
    CLOCK_APP,
    CLOCKS_PER_PARTITION,
    Names,
    WorkerProc,
    clock_records,
    max_event_ts,
    optout_device,
)
from sessionizer.tools.apache_kafka import (
    KafkaCluster,
    KafkaUnavailable,
    java_available,
    lib_dir,
)
from sessionizer.tools.broker import EmbeddedBroker
from sessionizer.tools.workload import generate

ROOT = Path(__file__).resolve().parent.parent

# Lines of a worker's log (Faust's and ours) that tell what it is doing; the
# phase at a moment is the label of the latest of them.
PHASE_MARKERS: tuple[tuple[str, str], ...] = (
    ("[^Worker]: Starting", "starting"),
    ("(Re-)joining group", "joining"),
    ("Setting newly assigned partitions", "assigned"),
    ("Highwater for active changelog partitions", "recovering"),
    ("Restoring state from changelog topics", "recovering"),
    ("Done reading from changelog topics", "recovering"),
    ("Restore complete!", "recovered, resetting offsets"),
    ("Worker ready", "running"),
    ("[^Worker]: Stopping", "stopping"),
)
# A kill "during recovery" fires on one of these, and must land before "Worker ready".
RECOVERY_TRIGGERS = (
    "Highwater for active changelog partitions",
    "Restoring state from changelog topics",
    "Done reading from changelog topics",
    "Restore complete!",
)
READY_LINE = "Worker ready"
FIRST_READY_LINE = "[^Worker]: Ready"
GAP_LINE = "missing records from the broker"  # the worker completed a gap in its input
GAP_RE = re.compile(r"read (\d+) missing records from the broker")
LOG_PATTERNS = (  # counted in every worker log after a run
    "Traceback",
    "[ERROR]",
    "[CRITICAL]",
    "input jumps from offset",
    GAP_LINE,
    "Recovery rebalancing again",
    "Restarting Recovery",
)


def log(msg: str) -> None:
    print(msg, flush=True)


# ------------------------------------------------------------------ workload


def workload(
    seed: int, events: int, devices: int, bad_rate: float, late_rate: float
) -> list[bytes]:
    recs = list(
        generate(events, devices=devices, apps=3, seed=seed, bad_rate=bad_rate, late_rate=late_rate)
    )
    # A device that opts out mid-session and back in (R17/R18), spread over the run.
    for i, rec in enumerate(optout_device(seed)):
        recs.insert((i + 1) * len(recs) // 4, rec)
    return recs


# ------------------------------------------------------------------ expected and observed

EvKey = tuple[str, bytes]  # (output key = device, event bytes)


def _is_clock(key: str | None) -> bool:
    return key is not None and key.startswith("clock-")


def _events_of(rec: dict[str, Any]) -> list[dict[str, Any]]:
    evs = rec.get("events")
    return evs if type(evs) is list else [rec]


class View:
    """What the outputs say, in the form the comparison needs; fed record by record."""

    def __init__(self) -> None:
        self.records: Counter[str] = Counter()
        self.best: dict[str, dict[str, Any]] = {}  # session_uuid -> highest-revision end
        self.starts: Counter[bytes] = Counter()  # session_start records
        self.events: Counter[EvKey] = Counter()  # forwarded + synthesized session_start
        self.ends: set[EvKey] = set()  # synthesized session_end events
        self.ends_seen: Counter[EvKey] = Counter()
        self.last_end: dict[str, EvKey] = {}  # session_uuid -> latest session_end event
        self.dead: Counter[tuple[str, str]] = Counter()
        self.sessions_raw: Counter[bytes] = Counter()

    def add(self, kind: int, key: str | None, value: dict[str, Any]) -> None:
        self.records[str(kind)] += 1
        if kind == SESSIONS:
            if value.get("app") == CLOCK_APP:
                return
            self.sessions_raw[codec.dumps(value)] += 1
            if value.get("record") == "session_start":
                self.starts[codec.dumps(value)] += 1
            elif value.get("record") == "session_end":
                cur = self.best.get(value["session_uuid"])
                if cur is None or value["revision"] >= cur["revision"]:
                    self.best[value["session_uuid"]] = value
        elif kind == EVENTS:
            if _is_clock(key):
                return
            dev = key or "?"
            for ev in _events_of(value):
                k = (dev, codec.dumps(ev))
                if ev.get("event_type") == "session_end" and "session_duration_ms" in (
                    ev.get("data") or {}
                ):
                    self.ends.add(k)
                    self.ends_seen[k] += 1
                    self.last_end[ev["data"]["session_uuid"]] = k
                else:
                    self.events[k] += 1
        elif kind == DEAD_LETTERS:
            self.dead[(value["reason"], value["payload"])] += 1

    def finals(self) -> dict[str, dict[str, Any]]:
        return {u: {k: v for k, v in r.items() if k != "revision"} for u, r in self.best.items()}


@dataclass
class Expected:
    view: View
    finals: dict[str, dict[str, Any]]
    final_ends: set[EvKey]
    origin: dict[EvKey, list[int]]  # forwarded event -> input record indices
    session_origin: dict[str, int]  # session_uuid -> input index of its first record
    dead_origin: dict[tuple[str, str], int]


def expected(recs: list[bytes]) -> Expected:
    """process-file's result on ``recs`` (what ``sessionizer.testing.run`` does),
    with the input record that caused each output."""
    eng = Engine(EngineConfig(), loads=codec.loads, dumps=codec.dumps)
    view = View()
    origin: dict[EvKey, list[int]] = defaultdict(list)
    session_origin: dict[str, int] = {}
    dead_origin: dict[tuple[str, str], int] = {}

    def take(i: int) -> None:
        for topic, key, value in eng.take_output():
            v = codec.loads(codec.dumps(value))  # exactly what a consumer reads
            view.add(topic, key if topic != DEAD_LETTERS else None, v)
            if topic == EVENTS and not _is_clock(key):
                for ev in _events_of(v):
                    origin[(key, codec.dumps(ev))].append(i)
            elif topic == SESSIONS:
                session_origin.setdefault(v["session_uuid"], i)
            elif topic == DEAD_LETTERS:
                dead_origin.setdefault((v["reason"], v["payload"]), i)

    for i, value in enumerate(recs):
        eng.process_record(value, None, "chaos", 0, i, None, NOW)
        eng.expire()
        take(i)
    eng.close_all()
    take(len(recs) - 1)
    final_ends = {k for u, k in view.last_end.items()}
    return Expected(view, view.finals(), final_ends, dict(origin), session_origin, dead_origin)


MARKER = b":\x00marker"  # the partition markers' key suffix (stream/store.py)


@dataclass
class Verdict:
    ok: bool
    lines: list[str]
    duplicates: dict[str, int]


def compare(exp: Expected, got: View) -> Verdict:
    lines: list[str] = []
    want_f, got_f = exp.finals, got.finals()
    missing_s = sorted(set(want_f) - set(got_f))
    extra_s = sorted(set(got_f) - set(want_f))
    differ_s = sorted(u for u in set(want_f) & set(got_f) if want_f[u] != got_f[u])
    if missing_s or extra_s or differ_s:
        lines.append(
            f"final sessions: {len(want_f)} expected, {len(got_f)} live: "
            f"{len(missing_s)} missing, {len(extra_s)} extra, {len(differ_s)} differ"
        )
    want_e, got_e = exp.view.events, got.events
    missing_e = {k: n - got_e.get(k, 0) for k, n in want_e.items() if got_e.get(k, 0) < n}
    extra_e = {k: n for k, n in got_e.items() if k not in want_e}
    if missing_e or extra_e:
        lines.append(
            f"sessionized events: {sum(want_e.values())} expected, "
            f"{sum(missing_e.values())} missing, {sum(extra_e.values())} unexpected"
        )
    missing_end = exp.final_ends - got.ends
    if missing_end:
        lines.append(
            f"final session_end events: {len(missing_end)} of {len(exp.final_ends)} missing"
        )
    want_d, got_d = set(exp.view.dead), set(got.dead)
    if want_d != got_d:
        lines.append(
            f"dead letters: {len(want_d)} expected, {len(want_d - got_d)} missing, "
            f"{len(got_d - want_d)} unexpected"
        )
    want_st, got_st = set(exp.view.starts), set(got.starts)
    if want_st != got_st:
        lines.append(
            f"session_start records: {len(want_st - got_st)} missing, "
            f"{len(got_st - want_st)} unexpected"
        )
    dups = {
        "events": sum(max(0, n - want_e.get(k, 0)) for k, n in got_e.items() if k in want_e),
        "session_end events": sum(got.ends_seen.values()) - len(got.ends),
        "session records": sum(got.sessions_raw.values()) - len(got.sessions_raw),
        "dead letters": sum(
            max(0, n - exp.view.dead[k]) for k, n in got.dead.items() if k in exp.view.dead
        ),
    }
    return Verdict(not lines, lines, dups)


def explain(
    exp: Expected,
    got: View,
    where: Callable[[int], str],
    limit: int = 5,
) -> list[str]:
    """Examples for a failed comparison, each with the input record behind it."""
    out: list[str] = []
    want_f, got_f = exp.finals, got.finals()
    missing_s = [u for u in want_f if u not in got_f]
    differ_s = [u for u in want_f if u in got_f and want_f[u] != got_f[u]]
    extra_s = [u for u in got_f if u not in want_f]
    for u in missing_s[:limit]:
        r = want_f[u]
        out.append(
            f"  missing session {u} {r['app']}/{r['device']} #{r['session_number']} "
            f"reason={r['end_reason']} events={r['event_count']} "
            f"(first record {where(exp.session_origin.get(u, -1))})"
        )
    for u in differ_s[:limit]:
        a, b = want_f[u], got_f[u]
        diffs = ", ".join(
            f"{k}: {a.get(k)!r} != live {b.get(k)!r}"
            for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k)
        )
        out.append(
            f"  session {u} {a['app']}/{a['device']} #{a['session_number']} differs: {diffs} "
            f"(first record {where(exp.session_origin.get(u, -1))})"
        )
    for u in extra_s[:limit]:
        r = got_f[u]
        out.append(
            f"  unexpected session {u} {r['app']}/{r['device']} #{r['session_number']} "
            f"start={r['start_unixtime_ms']} reason={r['end_reason']}"
        )
    want_e, got_e = exp.view.events, got.events
    missing_e = [k for k, n in want_e.items() if got_e.get(k, 0) < n]
    if missing_e:
        by_part: Counter[str] = Counter()
        for k in missing_e:
            idx = exp.origin.get(k, [-1])[0]
            by_part[where(idx).split(" ")[0]] += 1
        out.append(
            "  missing events by partition: "
            + ", ".join(f"{q} x{n}" for q, n in sorted(by_part.items()))
        )
        for k in missing_e[:limit]:
            out.append(_event_line("missing", k, f"(record {where(exp.origin.get(k, [-1])[0])})"))
    extra_e = [k for k in got_e if k not in want_e]
    for k in extra_e[:limit]:
        out.append(_event_line("unexpected", k))
    want_d, got_d = set(exp.view.dead), set(got.dead)
    for reason, payload in sorted(want_d - got_d)[:limit]:
        out.append(
            f"  missing dead letter {reason} (record {where(exp.dead_origin[(reason, payload)])}) "
            f"{payload[:80]!r}"
        )
    for reason, payload in sorted(got_d - want_d)[:limit]:
        out.append(f"  unexpected dead letter {reason} {payload[:80]!r}")
    return out


def _event_line(what: str, k: EvKey, where: str = "") -> str:
    ev = codec.loads(k[1])
    d = ev.get("data") or {}
    session = "" if where else f" session={d.get('session_uuid')}"
    return (
        f"  {what} event {k[0]} {ev.get('event_type')} ts={d.get('timestamp_unixtime_ms')}"
        f"{session} event_num={d.get('event_num')}{' ' + where if where else ''}"
    )


def duplicate_examples(
    exp: Expected, got: View, where: Callable[[int], str], limit: int = 3
) -> list[str]:
    """A few of the outputs that came more often than process-file makes them."""
    out = []
    want_e = exp.view.events
    dup_e = [(k, n - want_e[k]) for k, n in got.events.items() if n > want_e.get(k, n)]
    for k, extra in dup_e[:limit]:
        ev = codec.loads(k[1])
        d = ev.get("data") or {}
        out.append(
            f"    duplicate event x{extra}: {k[0]} {ev.get('event_type')} "
            f"ts={d.get('timestamp_unixtime_ms')} (record {where(exp.origin.get(k, [-1])[0])})"
        )
    want_d = exp.view.dead
    dup_d = [(k, n - want_d[k]) for k, n in got.dead.items() if n > want_d.get(k, n)]
    for (reason, payload), extra in dup_d[:limit]:
        idx = exp.dead_origin.get((reason, payload), -1)
        out.append(f"    duplicate dead letter x{extra}: {reason} (record {where(idx)})")
    return out


# ------------------------------------------------------------------ workers


class LogTail:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.text = ""
        self._pos = 0

    def poll(self) -> str:
        try:
            with open(self.path, "rb") as f:
                f.seek(self._pos)
                chunk = f.read()
        except FileNotFoundError:
            return ""
        self._pos += len(chunk)
        new = chunk.decode("utf-8", "replace")
        self.text += new
        return new

    def phase(self) -> str:
        self.poll()
        best, label = -1, "starting"
        for marker, name in PHASE_MARKERS:
            i = self.text.rfind(marker)
            if i > best:
                best, label = i, name
        return label


@dataclass
class Kill:
    t: float
    sig: str
    target: str
    phase: str
    note: str = ""


def snapshot_code(dest: Path) -> Path:
    """A copy of the sessionizer package, so that every worker of a run runs the
    same code while the tree is being edited."""
    shutil.copytree(
        ROOT / "sessionizer", dest / "sessionizer", ignore=shutil.ignore_patterns("__pycache__")
    )
    return dest


def code_version() -> str:
    git = ["git", "--no-optional-locks", "-C", str(ROOT)]
    try:
        head = subprocess.run(
            [*git, "log", "-1", "--format=%h %s"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            [*git, "status", "--porcelain", "--", "sessionizer"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.split("\n")
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git)"
    changed = [line[3:] for line in dirty if line.strip()]
    return f"HEAD {head[:90]}" + (
        f"; uncommitted changes in {', '.join(changed)}" if changed else "; clean"
    )


class Slot:
    """One worker position in the group; each (re)start is a new process and log."""

    def __init__(self, run: Run, idx: int) -> None:
        self.run = run
        self.idx = idx
        self.gen = 0
        self.worker: WorkerProc | None = None
        self.tail: LogTail | None = None
        self.busy = False  # a kill/restart sequence owns it
        self.expected_exit = True
        self.logs: list[Path] = []

    @property
    def tag(self) -> str:
        return f"w{self.idx}.{self.gen}"

    def alive(self) -> bool:
        w = self.worker
        return w is not None and w.proc is not None and w.proc.poll() is None

    def start(self) -> None:
        self.gen += 1
        r = self.run
        # A snapshot of the package in ``cwd`` (r.code) wins over the tree being edited.
        # Each worker slot keeps its data directory across restarts, as on one machine:
        # a RocksDB store outlives a kill.
        env = {
            "SESSIONIZER_STORE": r.args.store,
            "SESSIONIZER_REPLICATION_FACTOR": str(r.replication),
            "SESSIONIZER_DATA_DIR": str(r.log_dir / f"{r.names.prefix}-w{self.idx}-data"),
        }
        if r.args.exactly_once:
            env["SESSIONIZER_PROCESSING_GUARANTEE"] = "exactly_once"
        self.worker = WorkerProc(
            r.bootstrap,
            r.names,
            r.log_dir,
            partitions=r.args.partitions,
            env=env,
            tag=self.tag,
            cwd=r.code,
        )
        self.worker.start()
        self.expected_exit = False
        self.tail = LogTail(self.worker.log_path)
        self.logs.append(self.worker.log_path)

    def phase(self) -> str:
        return self.tail.phase() if self.tail else "down"

    def ready(self) -> bool:
        if not self.alive() or self.tail is None:
            return False
        phase = self.tail.phase()  # reads what the log has gained
        return FIRST_READY_LINE in self.tail.text and phase == "running"

    def signal(self, sig: signal.Signals) -> None:
        self.expected_exit = True
        assert self.worker is not None and self.worker.proc is not None
        procs.signal_group(self.worker.proc, sig)

    async def wait_exit(self, timeout: float) -> int | None:
        assert self.worker is not None and self.worker.proc is not None
        return await procs.wait_async(self.worker.proc, timeout)


class Run:
    """One seed."""

    def __init__(
        self,
        args: argparse.Namespace,
        seed: int,
        bootstrap: str,
        log_dir: Path,
        code: Path | None = None,
        kafka: KafkaCluster | None = None,
    ) -> None:
        self.args = args
        self.code = code
        self.kafka = kafka  # ours to fail (--broker-faults)
        self.replication = kafka.replication if kafka is not None else 1
        self.broker_faults: list[str] = []
        self.seed = seed
        self.rng = random.Random(seed)
        self.bootstrap = bootstrap
        self.log_dir = log_dir
        self.names = Names(f"chaos-{seed}-{uuid.uuid4().hex[:6]}")
        self.slots = [Slot(self, i) for i in range(args.workers)]
        self.kills: list[Kill] = []
        self.anomalies: list[str] = []
        self.txns: tuple[int, int] | None = None  # (committed, aborted), exactly once
        self.t0 = time.monotonic()  # traffic start, reset later
        self.tasks: set[asyncio.Task[None]] = set()
        self.traffic_done = False
        self.sent_at: list[float] = []
        self.meta: list[tuple[int, int]] = []  # input index -> (partition, offset)

    def now(self) -> float:
        return time.monotonic() - self.t0

    def spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # -------------------------------------------------------------- kills

    def _record(self, slot: Slot, sig: str, phase: str, note: str = "") -> Kill:
        k = Kill(round(self.now(), 1), sig, slot.tag, phase, note)
        self.kills.append(k)
        log(f"  t={k.t:6.1f}s {sig:7} {slot.tag:6} phase={phase}{' ' + note if note else ''}")
        return k

    async def stop(self, slot: Slot, sig: signal.Signals, note: str = "") -> None:
        phase = slot.phase()
        slot.signal(sig)
        k = self._record(slot, sig.name, phase, note)
        if sig == signal.SIGKILL:
            await slot.wait_exit(10)
            return
        t = time.monotonic()
        rc = await slot.wait_exit(30)
        if rc is None:
            slot.signal(signal.SIGKILL)
            await slot.wait_exit(10)
            k.note += " (no exit in 30 s: SIGKILLed)"
            self.anomalies.append(f"{slot.tag} did not stop within 30 s of SIGTERM")
        else:
            k.note += f" (exit {rc} after {time.monotonic() - t:.1f}s)"
            if rc != 0:
                self.anomalies.append(f"{slot.tag} exited {rc} on SIGTERM")

    async def kill_and_restart(self, slot: Slot, sig: signal.Signals, pause: float) -> None:
        slot.busy = True
        try:
            await self.stop(slot, sig)
            await asyncio.sleep(pause)
            slot.start()
        finally:
            slot.busy = False

    async def kill_in_recovery(self, slot: Slot, pause: float, trigger: str) -> None:
        """SIGKILL, restart, and SIGKILL again as soon as the new process recovers."""
        slot.busy = True
        try:
            if slot.alive():
                await self.stop(slot, signal.SIGKILL, "(before the recovery kill)")
            for attempt in range(3):
                await asyncio.sleep(pause)
                slot.start()
                assert slot.tail is not None
                tail = slot.tail
                triggers = RECOVERY_TRIGGERS[RECOVERY_TRIGGERS.index(trigger) :]
                deadline = time.monotonic() + 90
                hit = None
                while time.monotonic() < deadline and slot.alive():
                    tail.poll()
                    hit = next((t for t in triggers if t in tail.text), None)
                    if hit is not None or READY_LINE in tail.text:
                        break
                    await asyncio.sleep(0.003)
                if hit is None:
                    self.anomalies.append(
                        f"{slot.tag}: no recovery line to kill on (attempt {attempt + 1})"
                    )
                    continue
                slot.signal(signal.SIGKILL)
                await slot.wait_exit(10)
                tail.poll()
                at = tail.text.find(hit)
                landed = READY_LINE not in tail.text[at:]
                self._record(
                    slot,
                    "SIGKILL",
                    "recovering" if landed else "running",
                    f"(recovery kill on {hit!r}: "
                    + ("before ready)" if landed else "LANDED AFTER READY, retrying)"),
                )
                if landed:
                    break
            await asyncio.sleep(self.rng.uniform(1, 6))
            slot.start()
        finally:
            slot.busy = False

    async def kill_in_catchup(self, slot: Slot, pause: float) -> None:
        """SIGKILL, restart, and SIGKILL again 0-300 ms after the new process is ready,
        while the group works off what piled up during the rebalance."""
        slot.busy = True
        try:
            if slot.alive():
                await self.stop(slot, signal.SIGKILL, "(before the catch-up kill)")
            await asyncio.sleep(pause)
            slot.start()
            assert slot.tail is not None
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline and slot.alive():
                if READY_LINE in slot.tail.poll() or READY_LINE in slot.tail.text:
                    break
                await asyncio.sleep(0.01)
            if slot.alive() and READY_LINE in slot.tail.text:
                delay = self.rng.uniform(0, 0.3)
                await asyncio.sleep(delay)
                phase = slot.phase()
                slot.signal(signal.SIGKILL)
                self._record(
                    slot, "SIGKILL", phase, f"(catch-up kill {delay * 1000:.0f} ms after ready)"
                )
                await slot.wait_exit(10)
            else:
                self.anomalies.append(f"{slot.tag}: not ready within 90 s for the catch-up kill")
            await asyncio.sleep(self.rng.uniform(1, 6))
            slot.start()
        finally:
            slot.busy = False

    async def kill_all(self, pauses: list[float]) -> None:
        # Every worker: wait for the other kill sequences to finish (the plan waits
        # for this one), then preferably for all of them to be processing.
        t = time.monotonic()
        while time.monotonic() - t < 60 and any(s.busy for s in self.slots):
            await asyncio.sleep(0.1)
        t = time.monotonic()
        while time.monotonic() - t < 20 and not all(s.ready() for s in self.slots):
            await asyncio.sleep(0.1)
        targets = [s for s in self.slots if s.alive() and not s.busy]
        for s in targets:
            s.busy = True
        phases = [s.phase() for s in targets]
        for s in targets:
            s.signal(signal.SIGKILL)
        note = f"(all at once: {len(targets)} of {len(self.slots)})"
        for s, ph in zip(targets, phases, strict=True):
            self._record(s, "SIGKILL", ph, note)
        for s in targets:
            await s.wait_exit(10)

        async def back(s: Slot, pause: float) -> None:
            await asyncio.sleep(pause)
            s.start()
            s.busy = False

        await asyncio.gather(*(back(s, p) for s, p in zip(targets, pauses, strict=False)))

    async def candidates(self, wait: float) -> list[Slot]:
        """Live, unowned workers that are running, waiting up to ``wait`` s for one;
        else the live unowned ones whatever their phase."""
        deadline = time.monotonic() + wait
        while True:
            free = [s for s in self.slots if s.alive() and not s.busy]
            running = [s for s in free if s.ready()]
            if running or time.monotonic() > deadline or self.traffic_done:
                return running or free
            await asyncio.sleep(0.2)

    async def chaos(self, duration: float) -> None:
        """Kills on a plan drawn from the seed: a recovery kill, a catch-up kill and an
        all-at-once kill at random moments, and single SIGKILL/SIGTERMs in between."""
        rng = self.rng
        plan: list[tuple[float, str]] = [
            (rng.uniform(0.12, 0.3) * duration, "recovery"),
            (rng.uniform(0.35, 0.5) * duration, "catch-up"),
            (rng.uniform(0.5, 0.65) * duration, "all"),
        ]
        fixed = [m for m, _ in plan]
        t = rng.uniform(4, 10)
        while t < duration - 8:
            if all(abs(t - m) > 6 for m in fixed):
                plan.append((t, "single"))
            t += rng.expovariate(1 / self.args.kill_gap)
        plan.sort()
        trigger = rng.choice(RECOVERY_TRIGGERS)
        for at, what in plan:
            await asyncio.sleep(max(0.0, at - self.now()))
            if self.traffic_done:
                break
            if what == "single":
                x = rng.random()
                pause = rng.uniform(0.5, 8)
                # Preferably a worker that is processing, not one still joining.
                cands = await self.candidates(20)
                if not cands:
                    continue
                target = rng.choice(cands)
                if x < 0.2:
                    self.spawn(self.kill_in_catchup(target, pause))
                else:
                    sig = signal.SIGKILL if x < 0.6 else signal.SIGTERM
                    self.spawn(self.kill_and_restart(target, sig, pause))
            elif what == "catch-up":
                cands = await self.candidates(20)
                if cands:
                    self.spawn(self.kill_in_catchup(rng.choice(cands), rng.uniform(0.5, 4)))
            elif what == "recovery":
                cands = [s for s in self.slots if not s.busy]
                if cands:
                    self.spawn(
                        self.kill_in_recovery(rng.choice(cands), rng.uniform(0.5, 4), trigger)
                    )
            else:
                await self.kill_all([rng.uniform(0.5, 8) for _ in self.slots])

    # -------------------------------------------------------------- broker faults

    def _fault(self, what: str) -> None:
        line = f"t={self.now():6.1f}s {what}"
        self.broker_faults.append(line)
        log(f"  {line}")

    async def _healed(self, timeout: float = 90.0) -> None:
        """Every node back in every ISR, so the next fault leaves min.insync.replicas."""
        assert self.kafka is not None
        t = time.monotonic()
        while time.monotonic() - t < timeout:
            with contextlib.suppress(Exception):
                if not await asyncio.to_thread(self.kafka.under_replicated):
                    return
            await asyncio.sleep(1.0)
        self.anomalies.append(f"partitions still under-replicated {timeout:.0f}s after a fault")

    async def broker_chaos(self, duration: float) -> None:
        """One broker fault at a time: leader kill, pause past the session timeout,
        controller kill; each broker comes back and the cluster heals before the next."""
        k = self.kafka
        assert k is not None
        rng = random.Random(self.seed * 7919)
        topic = self.names.topics["raw_events"]
        plan = [
            (rng.uniform(0.1, 0.2) * duration, "leader"),
            (rng.uniform(0.4, 0.5) * duration, "pause"),
            (rng.uniform(0.7, 0.8) * duration, "controller"),
        ]
        for at, what in plan:
            await asyncio.sleep(max(0.0, at - self.now()))
            if what == "leader":
                leaders = Counter((await asyncio.to_thread(k.leaders, topic)).values())
                node, n = leaders.most_common(1)[0]
                k.kill(node)
                self._fault(f"SIGKILL broker {node} (leader of {n} input partitions)")
                await asyncio.sleep(rng.uniform(5, 12))
            elif what == "pause":
                node = rng.choice([m.node_id for m in k.members])
                k.pause(node)
                self._fault(f"SIGSTOP broker {node}")
                await asyncio.sleep(rng.uniform(14, 20))  # broker.session.timeout.ms = 9 s
                k.resume(node)
                self._fault(f"SIGCONT broker {node}")
            else:
                node = await asyncio.to_thread(k.active_controller)
                k.kill(node)
                self._fault(f"SIGKILL broker {node} (the active controller)")
                await asyncio.sleep(rng.uniform(5, 12))
            if what != "pause":
                await asyncio.to_thread(k.restart, node)
                self._fault(f"broker {node} restarted")
            await self._healed()
            self._fault("all partitions fully replicated again")

    async def monitor(self) -> None:
        while True:
            for s in self.slots:
                if s.worker is not None and not s.expected_exit and not s.alive():
                    rc = s.worker.proc.poll() if s.worker.proc else None
                    s.expected_exit = True
                    tail = s.tail.text[-1500:] if s.tail else ""
                    self.anomalies.append(f"{s.tag} exited on its own with {rc}: ...{tail}")
                    log(f"  t={self.now():6.1f}s {s.tag} EXITED ON ITS OWN (rc={rc})")
                    if not s.busy:
                        s.start()
            await asyncio.sleep(0.5)

    async def stop_all(self) -> None:
        """SIGTERM every live worker at once; a non-zero exit is reported."""
        live = [s for s in self.slots if s.alive()]
        for s in live:
            s.signal(signal.SIGTERM)
        for s in live:
            rc = await s.wait_exit(30)
            if rc is None:
                s.signal(signal.SIGKILL)
                await s.wait_exit(10)
                self.anomalies.append(f"{s.tag} did not stop within 30 s of the final SIGTERM")
            elif rc != 0:
                self.anomalies.append(f"{s.tag} exited {rc} on the final SIGTERM")

    async def wait_all_ready(self, timeout: float) -> float:
        t = time.monotonic()
        while time.monotonic() - t < timeout:
            if all(s.ready() for s in self.slots):
                return time.monotonic() - t
            await asyncio.sleep(0.2)
        states = ", ".join(f"{s.tag}={s.phase() if s.alive() else 'down'}" for s in self.slots)
        raise RuntimeError(f"workers not ready in {timeout:.0f}s: {states}")

    # -------------------------------------------------------------- traffic

    async def create_topics(self) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            await admin.create_topics(
                [NewTopic(self.names.topics["raw_events"], self.args.partitions, self.replication)]
            )
        finally:
            await admin.close()

    async def traffic(self, recs: list[bytes], duration: float) -> None:
        topic = self.names.topics["raw_events"]
        p = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap, linger_ms=5, acks="all", enable_idempotence=True
        )
        await p.start()
        futs = []
        try:
            n, i = len(recs), 0
            while i < n:
                target = min(n, int(n * self.now() / duration) + 1)
                while i < target:
                    v = recs[i]
                    futs.append(await p.send(topic, v, key=route_key(None, v)))
                    self.sent_at.append(self.now())
                    i += 1
                await asyncio.sleep(0.05)
            md = await asyncio.gather(*futs)
        finally:
            await p.stop()
        self.meta = [(m.partition, m.offset) for m in md]

    async def send_clocks(self, clocks: list[bytes]) -> None:
        p = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all", enable_idempotence=True)
        await p.start()
        try:
            topic = self.names.topics["raw_events"]
            parts = len(clocks) // CLOCKS_PER_PARTITION  # record i: partition i % parts
            for i, v in enumerate(clocks):
                m = await (await p.send(topic, v, key=route_key(None, v), partition=i % parts))
                self.meta.append((m.partition, m.offset))
        finally:
            await p.stop()

    def where(self, idx: int) -> str:
        if not 0 <= idx < len(self.meta):
            return "p? @?"
        part, off = self.meta[idx]
        at = self.sent_at[idx] if idx < len(self.sent_at) else float("nan")
        return f"p{part} @{off} (sent t={at:.1f}s)"

    async def transactions(self) -> tuple[int, int]:
        """(committed, aborted) transactions of the run: each one writes one marker
        to the state changelog, so the markers read committed are the committed
        transactions, and the rest of all markers the aborted ones."""
        changelog = f"{self.names.app_id}-state-changelog"
        counts = []
        for level in ("read_committed", "read_uncommitted"):
            c = AIOKafkaConsumer(
                bootstrap_servers=self.bootstrap,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                isolation_level=level,
            )
            await c.start()
            try:
                tps = await topic_partitions(c, changelog)
                c.assign(tps)
                ends = await c.end_offsets(tps)
                await c.seek_to_beginning(*tps)
                n = 0
                while any([await c.position(tp) < ends[tp] for tp in tps]):
                    got = await c.getmany(timeout_ms=500, max_records=50_000)
                    n += sum(
                        1 for msgs in got.values() for m in msgs if m.key and m.key.endswith(MARKER)
                    )
                counts.append(n)
            finally:
                await c.stop()
        return counts[0], counts[1] - counts[0]

    async def committed(self) -> dict[int, int]:
        c = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, group_id=self.names.app_id, enable_auto_commit=False
        )
        await c.start()
        try:
            topic = self.names.topics["raw_events"]
            out = {}
            for part in range(self.args.partitions):
                out[part] = await c.committed(TopicPartition(topic, part)) or 0
            return out
        finally:
            await c.stop()

    def ends(self) -> dict[int, int]:
        out: dict[int, int] = {}
        for part, off in self.meta:
            out[part] = max(out.get(part, 0), off + 1)
        return out

    # -------------------------------------------------------------- settle

    async def settle(self, exp: Expected, timeout: float, quiet: float) -> tuple[View, float, bool]:
        topics = {
            self.names.topics["sessionized_events"]: EVENTS,
            self.names.topics["sessions"]: SESSIONS,
            self.names.topics["dead_letters"]: DEAD_LETTERS,
        }
        c = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=4 << 20,
            isolation_level="read_committed",  # what a downstream consumer should read
        )
        await c.start()
        view = View()
        t = time.monotonic()
        try:
            tps = [tp for topic in topics for tp in await topic_partitions(c, topic, tries=100)]
            c.assign(tps)
            await c.seek_to_beginning(*tps)
            last_new = time.monotonic()
            last_check = 0.0
            dirty = True
            while True:
                got = await c.getmany(timeout_ms=300, max_records=20000)
                for tp, msgs in got.items():
                    kind = topics[tp.topic]
                    for m in msgs:
                        key = None if m.key is None else m.key.decode("utf-8", "replace")
                        view.add(kind, key, codec.loads(m.value))
                if got:
                    last_new = time.monotonic()
                    dirty = True
                now = time.monotonic()
                if dirty and now - last_check > 1.0 and not got:
                    last_check, dirty = now, False
                    if compare(exp, view).ok:
                        return view, now - t, True
                if now - t > timeout:
                    return view, now - t, False
                if now - last_new > quiet and all(s.ready() for s in self.slots):
                    com, ends = await self.committed(), self.ends()
                    if all(com.get(q, 0) >= e for q, e in ends.items()):
                        return view, now - t, False
        finally:
            await c.stop()

    # -------------------------------------------------------------- one seed

    async def main(self) -> bool:
        a = self.args
        recs = workload(self.seed, a.events, a.devices, a.bad_rate, a.late_rate)
        n_events = a.events + 9  # the opt-out script's events
        clocks = clock_records(max_event_ts(recs), a.partitions)
        t = time.monotonic()
        exp = expected(recs + clocks)
        log(
            f"seed {self.seed}: {len(recs)} records, {n_events} events "
            f"({len(exp.finals)} sessions, {len(exp.view.dead)} dead letters expected; "
            f"offline run {time.monotonic() - t:.1f}s); group {self.names.app_id}"
        )
        await self.create_topics()
        for s in self.slots:
            s.start()
        mon = asyncio.ensure_future(self.monitor())
        try:
            ready = await self.wait_all_ready(120)
            log(
                f"  {len(self.slots)} workers (store={a.store}) ready after {ready:.1f}s; "
                f"traffic for {a.duration:.0f}s"
            )
            self.t0 = time.monotonic()
            chaos = None if a.no_chaos else asyncio.ensure_future(self.chaos(a.duration))
            faults = None
            if a.broker_faults:
                faults = asyncio.ensure_future(self.broker_chaos(a.duration))
            await self.traffic(recs, a.duration)
            self.traffic_done = True
            log(f"  t={self.now():6.1f}s traffic done: {len(recs)} records sent")
            if chaos is not None:
                await chaos
            if faults is not None:
                await faults
            while self.tasks:
                await asyncio.gather(*list(self.tasks))
            for s in self.slots:
                if not s.alive():
                    s.start()
            ready = await self.wait_all_ready(150)
            log(f"  t={self.now():6.1f}s all workers ready (+{ready:.1f}s); clock records sent")
            await self.send_clocks(clocks)
            view, took, ok = await self.settle(exp, a.settle_timeout, a.quiet)
            verdict = compare(exp, view)
            if not verdict.ok:
                self.committed_snapshot = (await self.committed(), self.ends())
        finally:
            mon.cancel()
            await self.stop_all()
        if self.args.exactly_once:
            self.txns = await self.transactions()
            d = verdict.duplicates
            dups = d["events"] + d["session records"] + d["dead letters"]
            if dups:
                verdict.ok = False
                verdict.lines.append(f"exactly once: {dups} records written more than once")
        self.report(exp, view, verdict, took, ok, n_events)
        return verdict.ok and not [x for x in self.anomalies if "on its own" in x]

    def report(
        self, exp: Expected, view: View, verdict: Verdict, took: float, ok: bool, n_events: int
    ) -> None:
        kinds = Counter(k.sig for k in self.kills)
        rec_kills = sum(
            1 for k in self.kills if "recovery kill" in k.note and k.phase == "recovering"
        )
        all_kills = len({k.t for k in self.kills if "all at once" in k.note})
        d = verdict.duplicates
        if not self.args.no_chaos and not (rec_kills and all_kills):
            self.anomalies.append(
                f"chaos incomplete: {rec_kills} kill(s) during recovery, "
                f"{all_kills} of all workers at once"
            )
        log(f"--- seed {self.seed} ---")
        log(f"  events {n_events}, records {len(self.meta)}, partitions {self.args.partitions}")
        log(
            f"  kills {len(self.kills)}: "
            + ", ".join(f"{n} {s}" for s, n in sorted(kinds.items()))
            + f"; in recovery {rec_kills}; all-at-once {all_kills}"
        )
        for k in self.kills:
            note = f" {k.note}" if k.note else ""
            log(f"    t={k.t:6.1f}s {k.sig:7} {k.target:6} {k.phase}{note}")
        if self.broker_faults:
            log(f"  broker faults ({self.replication} replicas, min.insync.replicas 2):")
            for line in self.broker_faults:
                log(f"    {line}")
        log(
            f"  duplicates: events {d['events']}, session records {d['session records']}, "
            f"dead letters {d['dead letters']}; identical session_end events sent again "
            f"{d['session_end events']} (revisions included)"
        )
        for line in duplicate_examples(exp, view, self.where):
            log(line)
        if self.txns is not None:
            log(f"  transactions: {self.txns[0]} committed, {self.txns[1]} aborted")
        settle = f"{took:.1f}s" if ok else f"not settled (gave up after {took:.1f}s)"
        log(f"  time to settle after the clock records: {settle}")
        counts = self.log_counts()
        gaps = counts.pop("records read from the broker", 0)
        if gaps:
            log(
                f"  gaps: the stream resumed past the recovered state {counts.get(GAP_LINE, 0)} "
                f"times; the worker read {gaps} skipped records from the broker"
            )
        if counts:
            log("  worker logs: " + ", ".join(f"{p!r} x{n}" for p, n in counts.items()))
        for a in self.anomalies:
            log(f"  anomaly: {a}")
        if verdict.ok:
            log(f"  PASS (seed {self.seed})")
        else:
            log(f"  FAIL (seed {self.seed})")
            for line in verdict.lines:
                log(f"  {line}")
            for line in explain(exp, view, self.where):
                log(line)
            com, ends = self.committed_snapshot
            if com:
                log(
                    "  committed/end offsets: "
                    + ", ".join(f"p{q} {com.get(q)}/{e}" for q, e in sorted(ends.items()))
                )
            log(f"  logs: {self.log_dir}")

    committed_snapshot: tuple[dict[int, int], dict[int, int]] = ({}, {})

    def log_counts(self) -> dict[str, int]:
        out: Counter[str] = Counter()
        for s in self.slots:
            for path in s.logs:
                with contextlib.suppress(OSError):
                    text = path.read_text(errors="replace")
                    for pat in LOG_PATTERNS:
                        if pat in text:
                            out[pat] += text.count(pat)
                    for m in GAP_RE.finditer(text):
                        out["records read from the broker"] += int(m.group(1))
        return dict(out)


@dataclass
class Outcome:
    seed: int
    ok: bool
    seconds: float
    log_dir: Path
    kills: int = 0


async def run_seed(args: argparse.Namespace, seed: int, base: Path, code: Path | None) -> Outcome:
    log_dir = base / f"seed-{seed}"
    log_dir.mkdir(parents=True, exist_ok=True)
    t = time.monotonic()
    broker: EmbeddedBroker | KafkaCluster | None = None
    kafka = None
    if args.broker:
        bootstrap = args.broker.removeprefix("kafka://")
    elif args.embedded:
        broker = EmbeddedBroker(log_path=log_dir / "broker.log").start()
        bootstrap = broker.bootstrap
    else:
        broker = kafka = KafkaCluster(nodes=args.kafka_nodes, base_dir=log_dir / "kafka")
        kafka.start()
        bootstrap = kafka.bootstrap
        log(f"  Apache Kafka, {args.kafka_nodes} node(s): {bootstrap}")
    run = Run(args, seed, bootstrap, log_dir, code, kafka)
    try:
        ok = await run.main()
    except Exception as err:  # a harness failure is a failed seed, with its logs
        log(f"  FAIL (seed {seed}): {type(err).__name__}: {err}")
        log(f"  logs: {log_dir}")
        ok = False
    finally:
        if broker is not None:
            broker.stop()
    return Outcome(seed, ok, time.monotonic() - t, log_dir, len(run.kills))


async def amain(args: argparse.Namespace) -> int:
    if not (args.broker or args.embedded):
        try:
            if reason := java_available():
                raise KafkaUnavailable(reason)
            lib_dir()
        except KafkaUnavailable as err:
            # `make test` on a machine without Java: one line; in CI a failure.
            log(f"chaos skipped: Apache Kafka cannot run here: {err}")
            return 1 if os.environ.get("CI", "").lower() in ("1", "true", "yes") else 0
    base = Path(args.log_dir or tempfile.mkdtemp(prefix="sessionizer-chaos-"))
    base.mkdir(parents=True, exist_ok=True)
    log(f"chaos: worker logs in {base}")
    log(f"code: {code_version()}")
    code = None
    if args.code:
        code = Path(args.code).resolve()
        if not (code / "sessionizer" / "__main__.py").is_file():
            log(f"chaos: {code} holds no sessionizer package")
            return 2
        log(f"  workers run the package in {code / 'sessionizer'} (--code)")
    elif not args.live_code:
        code = snapshot_code(base / "code")
        log(f"  workers run a snapshot of it: {code / 'sessionizer'}")
    outcomes = []
    for seed in range(args.seed, args.seed + args.seeds):
        o = await run_seed(args, seed, base, code)
        outcomes.append(o)
        log(f"  seed {seed} took {o.seconds:.0f}s")
        if o.ok and not args.keep_logs:
            shutil.rmtree(o.log_dir, ignore_errors=True)
    log("=== chaos summary ===")
    for o in outcomes:
        log(
            f"  seed {o.seed}: {'PASS' if o.ok else 'FAIL'} ({o.kills} kills, {o.seconds:.0f}s)"
            + ("" if o.ok else f" logs: {o.log_dir}")
        )
    failed = [o for o in outcomes if not o.ok]
    if not failed and not args.keep_logs:
        shutil.rmtree(base, ignore_errors=True)
    return 1 if failed else 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=1, help="first seed (default 1)")
    ap.add_argument("--seeds", type=int, default=1, help="number of seeds run in sequence")
    ap.add_argument("--events", type=int, default=100_000, help="events per seed (default 100k)")
    ap.add_argument("--devices", type=int, default=3000)
    ap.add_argument("--bad-rate", type=float, default=0.01)
    ap.add_argument("--late-rate", type=float, default=0.02)
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument(
        "--store", choices=("memory", "rocksdb"), default="memory", help="the workers' table store"
    )
    ap.add_argument("--duration", type=float, default=100.0, help="seconds of traffic")
    ap.add_argument("--kill-gap", type=float, default=15.0, help="mean seconds between kills")
    ap.add_argument("--settle-timeout", type=float, default=150.0)
    ap.add_argument(
        "--quiet",
        type=float,
        default=20.0,
        help="give up early when no output came for this long and all input is committed",
    )
    ap.add_argument("--no-chaos", action="store_true", help="same run without kills (baseline)")
    ap.add_argument(
        "--exactly-once",
        action="store_true",
        help="workers with processing_guarantee=exactly_once: any duplicate fails the seed",
    )
    ap.add_argument("--broker", help="host:port of a running Kafka instead of a fresh one")
    ap.add_argument(
        "--embedded", action="store_true", help="the embedded development broker (Tansu)"
    )
    ap.add_argument(
        "--kafka-nodes", type=int, choices=(1, 3), default=1, help="nodes of the fresh Kafka"
    )
    ap.add_argument(
        "--broker-faults",
        action="store_true",
        help="kill, pause and restart brokers too (needs --kafka-nodes 3)",
    )
    ap.add_argument("--log-dir", help="where worker logs go (default: a new temporary directory)")
    ap.add_argument("--keep-logs", action="store_true", help="keep the logs of passing seeds")
    ap.add_argument(
        "--code",
        metavar="DIR",
        help="run the workers from DIR/sessionizer (e.g. a patched copy) instead of a snapshot",
    )
    ap.add_argument(
        "--live-code",
        action="store_true",
        help="workers import the tree as it is when each starts, not a snapshot taken at the start",
    )
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.broker_faults and (args.kafka_nodes != 3 or args.broker or args.embedded):
        print("chaos: --broker-faults needs a fresh three-node Kafka (--kafka-nodes 3)")
        return 2
    # SIGTERM exits like Ctrl-C does: workers and broker are stopped on the way out.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    limit_repeats("aiokafka")  # our own clients' retries while a broker is down
    return asyncio.run(amain(args))


if __name__ == "__main__":
    sys.exit(main())
