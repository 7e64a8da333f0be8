"""``sessionizer replay``: backfill from the raw topic with the engine of process-file.

A plain aiokafka consumer (no Faust, no consumer group, nothing committed, so
the live worker is never disturbed) reads every partition of the raw topic
from its start offset to the end offset captured when the replay started (or
to ``--until``), **one partition after another in partition order**, into
one engine per partition (as the worker keeps them: each partition has its
own watermark, R20), driven by the loop of ``process-file``
(``sessionizer.run.driver``); this fixed order makes two runs byte-identical. Time
is event time only (no R22 wall-clock advancement): expiry runs after every
record, and at the end the sessions still open close with ``end_of_input``
unless ``keep_open``.

Console opt-outs (R19) apply to replays too: the opt-out-control topic is read
whole before the first raw record.

Outputs go to ``output_prefix`` + each output topic name, and, with the
setting ``integrations``, ``output_prefix`` + each ``integrations.<name>``
topic (created when missing), encoded by the encoder of the worker and ``process-file``
(``sessionizer.run.encode``): the same keys, values and partitions (a null-keyed
dead letter goes to a partition chosen from a hash of its value), so even
partitions are the same in two runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import re
import sys
import time
from collections.abc import AsyncGenerator, Iterable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from .. import codec
from ..core.engine import Engine
from ..core.model import Counts
from ..integrations import Options
from ..kafka.clients import (
    ControlReader,
    TopicSpec,
    client_options,
    ensure_topics,
    reached,
    reader_options,
)
from ..kafka.sender import BatchSender
from ..settings import Settings
from ..tools.produce import producer_options
from .encode import Message, OutputEncoder, Record
from .task import PartitionTask, SourceRecord

__all__ = [
    "DEFAULT_PREFIX",
    "ReplayError",
    "check_prefix",
    "integration_topics",
    "offsets_for_time",
    "output_topics",
    "parse_time_ms",
    "read_range",
    "replay",
    "true_end_offsets",
]

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "backfill."
FETCH_RECORDS = 2000  # records per getmany
SEND_CHUNK = 5000  # outputs handed to the producer at once
STALL_TIMEOUT_S = 60.0  # no record for this long while records are due: give up
LINE_EVERY_S = 5.0  # progress lines when not on a terminal
_TOPIC_RE = re.compile(r"[A-Za-z0-9._-]*")


class ReplayError(Exception):
    """A replay that cannot go on; the message is one line for the user."""


# --------------------------------------------------------------------------- times


def parse_since_ms(text: str, now_ms: int) -> int:
    """``--since`` / ``--until`` of replay and report: a duration back from ``now_ms``
    (``30m``, ``1h``, ``7d``), else a time (:func:`parse_time_ms`). Raises ValueError."""
    from ..settings import parse_duration_ms

    back = None if text.strip().isdigit() else parse_duration_ms(text.strip())
    if back is not None:
        return now_ms - back
    try:
        return parse_time_ms(text)
    except ValueError:
        raise ValueError(
            f"cannot read {text!r}: give a duration back from now (30m, 1h, 7d), "
            "ISO-8601 (2026-01-01T10:00:00Z) or epoch milliseconds"
        ) from None


def parse_time_ms(text: str) -> int:
    """``TIME`` of ``--since`` / ``--until``: epoch milliseconds or ISO-8601.

    ``1767225600000``, ``2026-01-01``, ``2026-01-01T10:00``,
    ``2026-01-01T10:00:00.250Z``, ``2026-01-01T10:00:00+02:00``. A time
    without a zone is UTC. Raises ValueError when it is neither.
    """
    s = text.strip()
    if re.fullmatch(r"[0-9]{1,16}", s):
        return int(s)
    if s[-1:] in ("Z", "z"):
        s = s[:-1] + "+00:00"
    try:
        t = dt.datetime.fromisoformat(s)
    except ValueError:
        raise ValueError(
            f"cannot read {text!r} as a time: give ISO-8601 (2026-01-01T10:00:00Z) "
            "or epoch milliseconds"
        ) from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.timezone.utc)
    return int(t.timestamp() * 1000)


# --------------------------------------------------------------------------- topics


def output_topics(settings: Settings, prefix: str) -> list[str]:
    """Output topic names in engine order (events, sessions, dead letters)."""
    t = settings.topics
    return [prefix + t.sessionized_events, prefix + t.sessions, prefix + t.dead_letters]


def integration_topics(settings: Settings, prefix: str) -> dict[str, str]:
    """Destination -> its topic, for the destinations of the setting ``integrations``."""
    return {n: prefix + settings.topics.integration(n) for n in settings.integrations}


def written_topics(settings: Settings, prefix: str) -> list[str]:
    """Every topic ``replay`` writes: the §7 outputs', then each integration's."""
    return [*output_topics(settings, prefix), *integration_topics(settings, prefix).values()]


def check_prefix(settings: Settings, prefix: str) -> None:
    """Raises ValueError when ``prefix`` makes a bad topic name or hits an input topic."""
    if not _TOPIC_RE.fullmatch(prefix):
        raise ValueError(f"must be characters of a-z A-Z 0-9 . _ - only, got {prefix!r}")
    inputs = {settings.topics.raw_events, settings.topics.opt_out_control}
    for name in [*output_topics(settings, prefix), *integration_topics(settings, prefix).values()]:
        if len(name) > 249:
            raise ValueError(f"makes the topic name {name[:40]}... longer than 249 characters")
        if name in inputs:
            raise ValueError(f"would write to the input topic {name}")


async def _partitions(
    settings: Settings, topics: list[str], wait_s: float = 10.0
) -> dict[str, list[int]]:
    """Partition ids of each topic, [] for a topic that does not exist.

    From the metadata of all topics: asking for named ones could create them on
    a broker that creates topics on first use.
    """
    admin = AIOKafkaAdminClient(**client_options(settings))
    await admin.start()
    try:
        deadline = time.monotonic() + wait_s
        while True:
            described = {d["topic"]: d for d in await admin.describe_topics()}
            found = {
                t: sorted(p["partition"] for p in described[t]["partitions"])
                if t in described
                else []
                for t in topics
            }
            # A topic that exists without partitions yet is still being created.
            if all(found[t] or t not in described for t in topics):
                return found
            if time.monotonic() >= deadline:
                return found
            await asyncio.sleep(0.1)
    finally:
        await admin.close()


# --------------------------------------------------------------------------- offsets


async def _fetch_from(
    consumer: AIOKafkaConsumer, tp: TopicPartition, offset: int, timeout_s: float = 10.0
) -> list[Any]:
    """The records of one fetch at ``offset`` (empty when none came in time, or when
    only a commit marker or an aborted transaction's records lie there)."""
    consumer.seek(tp, offset)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = await consumer.getmany(tp, timeout_ms=500)
        msgs = got.get(tp)
        if msgs:
            return list(msgs)
        if await consumer.position(tp) > offset:
            return []  # the fetch moved past offsets that hold no record for us
    return []


async def true_end_offsets(
    consumer: AIOKafkaConsumer,
    tps: Iterable[TopicPartition],
    starts: dict[TopicPartition, int] | None = None,
) -> dict[TopicPartition, int]:
    """Each partition's end offset (last offset + 1), correct on the embedded broker too.

    The embedded broker (Tansu) answers ListOffsets(latest) with the base
    offset of the partition's last record *batch* + 1, not the last offset + 1,
    so ``end_offsets()`` alone would miss all but the first record of the last
    batch. When the reported end is above the start, we fetch once at
    reported - 1: the true end is the highest offset of that fetch + 1. On a
    real Kafka that is the reported end itself (unless records were appended
    in the meantime, which then are simply included; or reported - 1 is a
    commit marker, which the fetch passes without a record). The partitions
    must be assigned to ``consumer``; read with read_committed, the end is the
    last stable offset.
    """
    tps = list(tps)
    if not tps:
        return {}
    reported = await consumer.end_offsets(tps)
    if starts is None:
        starts = await consumer.beginning_offsets(tps)
    ends: dict[TopicPartition, int] = {}
    for tp in tps:
        end = reported[tp]
        if end > starts[tp]:
            msgs = await _fetch_from(consumer, tp, end - 1)
            if msgs:
                end = max(end, max(m.offset for m in msgs) + 1)
        ends[tp] = end
    return ends


async def _record_at(consumer: AIOKafkaConsumer, tp: TopicPartition, offset: int) -> Any:
    for m in await _fetch_from(consumer, tp, offset):
        if m.offset >= offset:
            return m if m.offset == offset else None
    return None


async def offsets_for_time(
    consumer: AIOKafkaConsumer,
    tps: list[TopicPartition],
    t: int,
    starts: dict[TopicPartition, int],
    ends: dict[TopicPartition, int],
) -> dict[TopicPartition, int | None]:
    """The first offset whose record timestamp is >= ``t``, per partition, or None: scan.

    Asks the broker (``offsets_for_times``) and checks its answer with two
    fetches: the record at the answered offset must carry the timestamp the
    broker named and be at or after ``t``, the record before it before ``t``.
    The embedded broker (Tansu) fails that check: it answers offset 0 (with a
    timestamp that is no record's) for any ``t``, and offset 0 with timestamp
    -1 for a time after every record. A partition whose answer fails is given
    None, and the replay finds its boundary by scanning record timestamps
    instead (reading from the partition's start, skipping records until the
    first one at or after ``t``; stopping at the first one at or after
    ``--until``), which gives the same offsets as Kafka's time index.
    """
    live = [tp for tp in tps if ends[tp] > starts[tp]]
    out: dict[TopicPartition, int | None] = {tp: starts[tp] for tp in tps if tp not in live}
    if not live:
        return out
    try:
        answers = await consumer.offsets_for_times(dict.fromkeys(live, t))
    except Exception as exc:  # an old or partial broker: scan
        log.info("offsets_for_times failed (%s): scanning timestamps", exc)
        answers = {}
    for tp in live:
        lo, hi = starts[tp], ends[tp]
        ans = answers.get(tp, ...)
        found: int | None = None
        if ans is None:
            # No record at or after t: the end, if the last record agrees.
            last = await _record_at(consumer, tp, hi - 1)
            found = hi if last is not None and last.timestamp < t else None
        elif ans is not ... and lo <= ans.offset < hi and ans.timestamp >= t:
            rec = await _record_at(consumer, tp, ans.offset)
            ok = rec is not None and rec.timestamp == ans.timestamp
            if ok and ans.offset > lo:
                prev = await _record_at(consumer, tp, ans.offset - 1)
                ok = prev is not None and prev.timestamp < t
            found = ans.offset if ok else None
        if found is None:
            log.info("%s: offsets_for_times(%d) unusable: scanning timestamps", tp, t)
        out[tp] = found
    return out


# --------------------------------------------------------------------------- progress


@dataclass
class _Part:
    tp: TopicPartition
    start: int  # first offset read
    end: int  # first offset not read
    skip_before: int | None = None  # scan: skip records until one with ts >= this
    stop_at: int | None = None  # scan: stop at the first record with ts >= this
    done: int = 0  # records read (skipped ones too)

    @property
    def total(self) -> int:
        return self.end - self.start


class _Progress:
    """Progress over the replay window only: a rich bar per partition on a terminal
    (stderr), else a line now and then.

    A partition's window is known up front when the broker found its bounds; when
    they are found by scanning timestamps, it is known once the partition is done.
    Records read only to find the window are not counted as replayed.
    """

    def __init__(self, parts: list[_Part], enabled: bool) -> None:
        self.parts = parts
        self.enabled = enabled
        self.bar: Any = None
        self.tasks: dict[int, Any] = {}
        self.replayed: dict[int, int] = {}
        self.finished: set[int] = set()
        self.t0 = time.monotonic()
        self.last_line = self.t0
        if enabled and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            self.bar = Progress(
                TextColumn("[bold]replay[/] {task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]:>9,.0f} records/s"),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            for p in parts:
                window = self.window(p)
                if window != 0:  # an empty window gets no bar
                    self.tasks[p.tp.partition] = self.bar.add_task(
                        f"{p.tp.topic}[{p.tp.partition}]", total=window, rate=0.0
                    )

    @staticmethod
    def _scanned(part: _Part) -> bool:
        return part.skip_before is not None or part.stop_at is not None

    def window(self, part: _Part) -> int | None:
        """Records in the partition's window, None while a timestamp scan is finding it."""
        if part.tp.partition in self.finished:
            return self.replayed.get(part.tp.partition, 0)
        return None if self._scanned(part) else part.total

    def __enter__(self) -> _Progress:
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()
        if self.enabled and exc_type is None and not sum(self.replayed.values()):
            print("replay: no records in the window", file=sys.stderr, flush=True)

    def update(self, part: _Part, finished: bool = False, replayed: int | None = None) -> None:
        """``replayed``: records of ``part`` through the engine so far (default: all read)."""
        p = part.tp.partition
        if replayed is None:
            replayed = 0 if self._scanned(part) and not finished else part.done
        self.replayed[p] = replayed
        if finished:
            self.finished.add(p)
        if not self.enabled:
            return
        if self.bar is not None:
            task = self.tasks.get(p)
            if task is None:
                return
            if finished and not replayed:
                self.bar.remove_task(task)
                del self.tasks[p]
                return
            # At the end the total too: a scan found the window, or --until stopped early.
            total = replayed if finished else self.window(part)
            self.bar.update(task, total=total, completed=replayed)
            self.bar.update(task, rate=self.bar.tasks[task].speed or 0.0)
            return
        now = time.monotonic()
        if (finished and replayed) or (not finished and now - self.last_line >= LINE_EVERY_S):
            self.last_line = now
            print(self.line(part, now), file=sys.stderr, flush=True)

    def line(self, part: _Part, now: float) -> str:
        secs = max(now - self.t0, 1e-9)
        p = part.tp.partition
        replayed = self.replayed.get(p, 0)
        window = self.window(part)
        if window is None:
            here = f"{replayed:,} records (read {part.done:,}/{part.total:,} to find the window)"
        else:
            here = f"{replayed:,}/{window:,} records"
        done = sum(self.replayed.values())
        rate = done / secs
        windows = [self.window(q) for q in self.parts]
        if any(w is None for w in windows):
            return (
                f"replay: {part.tp.topic}[{p}] {here}; all {done:,} records so far, "
                f"{rate:,.0f} records/s"
            )
        total = sum(w or 0 for w in windows)
        eta = f"{(total - done) / rate:,.0f} s" if rate > 0 and done < total else "-"
        return (
            f"replay: {part.tp.topic}[{p}] {here}; all {done:,}/{total:,} records, "
            f"{rate:,.0f} records/s, ETA {eta}"
        )


# --------------------------------------------------------------------------- outputs


class _Output:
    """Hands engine outputs to the producer in chunks, one chunk in flight at a time.

    The driver's sink: records encoded by the shared ``OutputEncoder``,
    partitioned by the sender (``encode.partition_for``).
    """

    def __init__(
        self,
        producer: AIOKafkaProducer,
        topics: list[str],
        integrations: dict[str, str] | None = None,
        options: Options | None = None,
    ) -> None:
        self.sender = BatchSender(producer)
        self.producer = producer
        self.encoder = OutputEncoder(topics, integrations=integrations, options=options)
        self.buf: list[Message] = []
        self.inflight: asyncio.Task[list[Any]] | None = None

    def write(self, records: list[Record]) -> None:
        self.buf += records

    async def maybe_send(self) -> None:
        if len(self.buf) >= SEND_CHUNK:
            await self.send()

    async def send(self) -> None:
        """Waits for the previous chunk, then starts this one (order per partition holds)."""
        await self.wait()
        if self.buf:
            chunk, self.buf = self.buf, []
            self.inflight = asyncio.ensure_future(self.sender.send(chunk))

    async def wait(self) -> None:
        if self.inflight is not None:
            task, self.inflight = self.inflight, None
            await task

    async def flush(self) -> None:
        await self.send()
        await self.wait()
        await self.producer.flush()

    def cancel(self) -> None:
        if self.inflight is not None:
            self.inflight.cancel()


# --------------------------------------------------------------------------- replay


async def read_range(
    consumer: AIOKafkaConsumer, tp: TopicPartition, start: int, end: int
) -> AsyncGenerator[tuple[list[Any], int], None]:
    """Records of ``tp`` in ``[start, end)``, a fetch at a time, with the position after it.

    Done when the consumer's position reaches ``end`` (``kafka.reached``: a
    transaction's commit marker is an offset no record comes from). Ends early
    when the log itself ends before ``end`` (the fetch's last stable offset or
    high watermark, which the embedded broker reports correctly); gives up when
    the position does not move for STALL_TIMEOUT_S.
    """
    if end <= start:
        return
    consumer.seek(tp, start)
    position = start
    last = time.monotonic()
    while not await reached(consumer, tp, end):
        got = await consumer.getmany(tp, timeout_ms=500, max_records=FETCH_RECORDS)
        msgs = got.get(tp, [])
        moved = await consumer.position(tp)
        if moved > position:
            last = time.monotonic()
        elif not msgs:
            log_end = consumer.last_stable_offset(tp)
            if log_end is None:
                log_end = consumer.highwater(tp)
            if log_end is not None and moved >= log_end:
                return
            if time.monotonic() - last > STALL_TIMEOUT_S:
                raise ReplayError(
                    f"{tp.topic}[{tp.partition}]: no records after offset {position} for "
                    f"{STALL_TIMEOUT_S:.0f} s, expected up to {end}"
                )
            continue
        position = moved
        if msgs and msgs[-1].offset >= end:
            msgs = [m for m in msgs if m.offset < end]
        if msgs:
            yield msgs, min(position, end)


async def _read_control(
    consumer: AIOKafkaConsumer, settings: Settings, partitions: list[int]
) -> dict[str, bool]:
    """R19: the whole opt-out-control topic as the engine's control dict."""
    topic = settings.topics.opt_out_control
    control: dict[str, bool] = {}
    tps = [TopicPartition(topic, p) for p in partitions]
    if not tps:
        return control
    reader = ControlReader(settings, control)  # only for its parsing of entries
    consumer.assign(tps)
    starts = await consumer.beginning_offsets(tps)
    ends = await true_end_offsets(consumer, tps, starts)
    for tp in tps:
        async for msgs, _position in read_range(consumer, tp, starts[tp], ends[tp]):
            for m in msgs:
                reader.apply(m.key, m.value)
    return control


async def _plan(
    consumer: AIOKafkaConsumer,
    settings: Settings,
    partitions: list[int],
    since_ms: int | None,
    until_ms: int | None,
) -> list[_Part]:
    tps = [TopicPartition(settings.topics.raw_events, p) for p in partitions]
    consumer.assign(tps)
    starts = await consumer.beginning_offsets(tps)
    ends = await true_end_offsets(consumer, tps, starts)
    parts = {tp: _Part(tp, starts[tp], ends[tp]) for tp in tps}
    if since_ms is not None:
        for tp, off in (await offsets_for_time(consumer, tps, since_ms, starts, ends)).items():
            if off is None:
                parts[tp].skip_before = since_ms
            else:
                parts[tp].start = off
    if until_ms is not None:
        for tp, off in (await offsets_for_time(consumer, tps, until_ms, starts, ends)).items():
            if off is None:
                parts[tp].stop_at = until_ms
            else:
                parts[tp].end = max(parts[tp].start, off)
    return [parts[tp] for tp in tps]


async def replay(
    settings: Settings,
    *,
    since_ms: int | None = None,
    until_ms: int | None = None,
    output_prefix: str = DEFAULT_PREFIX,
    keep_open: bool = False,
    progress: bool = True,
    now_ms: int | None = None,
) -> Counts:
    """Replay the raw topic into ``output_prefix`` + each output topic (and
    integration topic); return the counts.

    ``since_ms`` None means from the beginning; records are those from the first
    offset whose Kafka timestamp is >= ``since_ms`` to the first offset whose
    timestamp is >= ``until_ms`` (or the end captured at start). ``now_ms`` (the
    wall clock at start by default) only bounds future event timestamps (§1.3).
    Raises ReplayError (one line) when the raw topic does not exist.
    """
    check_prefix(settings, output_prefix)
    now = int(time.time() * 1000) if now_ms is None else now_ms
    topics = output_topics(settings, output_prefix)
    integrations = integration_topics(settings, output_prefix)
    t = settings.topics
    consumer = AIOKafkaConsumer(
        **reader_options(settings),
        group_id=None,  # no group, nothing committed: the live worker never notices
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    counts = Counts()
    try:
        await consumer.start()
        found = await _partitions(settings, [t.raw_events, t.opt_out_control])
        if not found[t.raw_events]:
            raise ReplayError(f"topic {t.raw_events} does not exist on {settings.broker_url}")
        n = settings.partitions
        await ensure_topics(
            settings,
            [
                TopicSpec(topics[0], n),
                TopicSpec(topics[1], n, compacted=True),
                TopicSpec(topics[2], n),
                *(TopicSpec(name, n) for name in integrations.values()),
            ],
        )
        producer = AIOKafkaProducer(**{**producer_options(settings), "acks": "all"})
        try:
            await producer.start()
            control = await _read_control(consumer, settings, found[t.opt_out_control])
            parts = await _plan(consumer, settings, found[t.raw_events], since_ms, until_ms)
            out = _Output(producer, topics, integrations, Options.of(settings))
            try:
                with _Progress(parts, progress) as bar:
                    for part in parts:
                        counts.add(
                            await _replay_partition(
                                consumer, settings, control, part, out, bar, now, keep_open
                            )
                        )
                    await out.flush()
            finally:
                out.cancel()  # only after a failure: flush() leaves nothing in flight
        finally:
            await producer.stop()
    finally:
        await consumer.stop()
    return counts


async def _replay_partition(
    consumer: AIOKafkaConsumer,
    settings: Settings,
    control: dict[str, bool],
    part: _Part,
    out: _Output,
    bar: _Progress,
    now: int,
    keep_open: bool,
) -> Counts:
    """The records of ``part`` through a new engine, to its end of input; outputs
    are handed to ``out`` (not flushed). Returns the partition's counts.

    One engine per partition, as in the worker: each partition has its own
    watermark (R20), so one partition's time never expires another's sessions
    early.
    """
    engine = Engine(settings.engine, loads=codec.loads, dumps=codec.dumps, control=control)
    task = PartitionTask(engine, out.encoder, part.tp.topic, part.tp.partition)
    await _feed_partition(consumer, task, part, out, bar, now)
    return task.finish(out, keep_open=keep_open)


async def _feed_partition(
    consumer: AIOKafkaConsumer,
    task: PartitionTask,
    part: _Part,
    out: _Output,
    bar: _Progress,
    now: int,
) -> None:
    tp = part.tp
    if part.end <= part.start:
        bar.update(part, finished=True, replayed=0)
        return
    consumer.assign([tp])
    counts = task.engine.counts
    skip_before = part.skip_before
    stop_at = part.stop_at
    end = part.end
    batches = read_range(consumer, tp, part.start, end)
    async with contextlib.aclosing(batches):
        async for msgs, position in batches:
            recs: list[SourceRecord] = []
            for m in msgs:
                ts = m.timestamp if m.timestamp is not None and m.timestamp >= 0 else None
                if skip_before is not None:
                    if ts is None or ts < skip_before:
                        continue
                    skip_before = None  # Kafka's semantics: from the first record at or after
                if stop_at is not None and ts is not None and ts >= stop_at:
                    end = m.offset
                    break
                # A null value (tombstone) is an empty record: dead-lettered as invalid_json.
                value = m.value if m.value is not None else b""
                recs.append((m.offset, m.key, value, ts, None))
            task.step(recs, out, now)
            part.done = min(position, end) - part.start
            await out.maybe_send()
            if end < part.end:
                break
            bar.update(part, replayed=counts.records_in)
    part.end = end
    part.done = part.total
    bar.update(part, finished=True, replayed=counts.records_in)


# --------------------------------------------------------------------------- command


def summary(counts: Counts, topics: list[str], secs: float) -> str:
    c = counts.as_dict()
    ended = ", ".join(f"{k} {v:,}" for k, v in c["sessions_ended"].items() if v)
    dead = sum(c["dead_letters"].values())
    rate = c["records_in"] / max(secs, 1e-9)
    return (
        f"replayed {c['records_in']:,} records ({c['events_in']:,} events) in {secs:.1f} s "
        f"({rate:,.0f} records/s): {c['events_forwarded']:,} events forwarded, "
        f"{c['sessions_started']:,} sessions started, ended: {ended or 'none'}, "
        f"{c['sessions_revised']:,} revised, {dead:,} dead letters -> {', '.join(topics)}"
    )


def run(
    settings: Settings,
    *,
    since_ms: int | None,
    until_ms: int | None,
    output_prefix: str,
    keep_open: bool,
) -> int:
    """The ``replay`` command: counts as one JSON line on stdout, a summary on stderr."""
    from ..exits import Failed, run_main
    from .files import tune_gc

    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    tune_gc()
    started = time.monotonic()
    counts = run_main(
        replay(
            settings,
            since_ms=since_ms,
            until_ms=until_ms,
            output_prefix=output_prefix,
            keep_open=keep_open,
        ),
        f"replay failed on {settings.broker_url}",
        own=(ReplayError,),
    )
    if isinstance(counts, Failed):
        return counts.code
    sys.stdout.buffer.write(codec.dumps_line(counts.as_dict()))
    sys.stdout.flush()
    topics = written_topics(settings, output_prefix)
    print(summary(counts, topics, time.monotonic() - started), file=sys.stderr, flush=True)
    return 0
