"""The Faust worker: one engine per source partition, state in a changelog table.

Crash consistency ("offsets in the state", DESIGN.md): after a batch's outputs
are acknowledged by the broker, the touched keys' snapshots and a per-partition
marker "applied through source offset X" go to the table's changelog, and only
then are the source records acknowledged to Faust (which commits them). After
a crash the recovered state may be ahead of the committed offset, never
behind; records at or below the marker are skipped, so nothing is applied
twice. Outputs are at-least-once and duplicates are byte-identical (R0, R12).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

import faust
from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.types import EventT

from .. import codec
from ..core.engine import Engine
from ..core.model import SESSIONS
from ..integrations import Options
from ..kafka.clients import STATE_TABLE, ControlReader, client_options, repartition_topic
from ..run.encode import OutputEncoder
from ..run.files import tune_gc
from ..settings import Settings
from .compat import (
    KAFKA,
    Broker,
    WorkerApp,
    commit,
    connect,
    crash,
    exclude_from_fetch,
    install_leave_group_fix,
    raw_producer,
    seek,
    task,
    timer,
)
from .logs import install_quiet_rebalance, limit_repeats
from .metrics import Metrics
from .reader import DirectReader, Rec
from .sender import BatchSender
from .store import Marker, StateStore

log = logging.getLogger("sessionizer.worker")


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def _record_ts_ms(ts: float | None) -> int | None:
    # Faust hands record timestamps over as float seconds; back to integer ms.
    return None if ts is None else round(ts * 1000)


ORIGIN_HEADER = "sessionizer-origin"


def _origin(headers: Any) -> tuple[int, int, int | None] | None:
    """(raw partition, raw offset, raw timestamp ms) that the router put in the headers."""
    pairs = headers.items() if isinstance(headers, Mapping) else headers or ()
    for name, value in pairs:
        if name == ORIGIN_HEADER:
            q, off, ts = value.decode().split(":")
            return int(q), int(off), int(ts) if ts else None
    return None


def device_key(value: bytes) -> bytes | None:
    """The device a raw record belongs to (§1.2), or None when it has none."""
    from ..core.engine import identity

    try:
        obj = codec.loads(value)
    except Exception:
        return None
    ident = identity(obj) if type(obj) is dict else None
    return None if ident is None else ident[1].encode()


FAULT_ENV = "SESSIONIZER_TEST_FAULT"


def _test_fault() -> tuple[str, bytes] | None:
    """For the integration tests only: ``KIND:TEXT`` fails on records containing TEXT.

    ``agent`` fails the worker's own loop (crash-only: the worker exits non-zero);
    ``record`` fails inside the engine, late in the record, after it changed the
    key (the record must become an internal_error and change nothing).
    """
    raw = os.environ.get(FAULT_ENV)
    if not raw or ":" not in raw:
        return None
    kind, text = raw.split(":", 1)
    fault = kind, text.encode()
    if kind == "record":
        from .. import _native
        from ..core import engine as engine_mod

        if _native.compiled(engine_mod):  # its classes cannot be patched
            raise RuntimeError(f"{FAULT_ENV}=record needs {_native.PURE_ENV}=1")
        real = engine_mod._Record.flush

        def flush(rec: Any) -> None:
            if fault[1] in rec.value:
                raise RuntimeError("injected fault in the engine (SESSIONIZER_TEST_FAULT)")
            real(rec)

        engine_mod._Record.flush = flush  # type: ignore[method-assign, assignment]
    return fault


def _log_internal_error(exc: Exception, src: tuple[Any, str, int, int, int | None]) -> None:
    # One line per record (its dead letter carries the rest); counted in /metrics.
    _key, topic, partition, offset, _ts = src
    log.error(
        "internal_error: %s: %s at %s partition %d offset %d (dead-lettered, partition goes on)",
        type(exc).__name__,
        exc,
        topic,
        partition,
        offset,
    )


class PartitionRunner:
    """The engine of one source partition and what the worker knows about it."""

    __slots__ = (
        "applied",
        "closed",
        "engine",
        "last_rx_wall",
        "lock",
        "partition",
        "progress_wall",
        "src",
        "wm_at_rx",
    )

    def __init__(
        self, partition: int, engine: Engine, applied: int, src: dict[int, int] | None = None
    ) -> None:
        self.partition = partition
        self.engine = engine
        self.applied = applied  # highest source offset whose effects are in the state
        # Repartitioned input: raw partition -> highest raw offset applied, so a
        # router that re-sends after a crash cannot apply a record twice.
        self.src: dict[int, int] = src or {}
        self.lock = asyncio.Lock()
        self.closed = False  # revoked: its partition belongs to the next owner now
        self.last_rx_wall = self.progress_wall = wall_ms()
        self.wm_at_rx = engine.watermark


class GapReader:
    """Reads source records the stream did not deliver, straight from the broker.

    The state, not the group's committed offset, says where a partition resumes:
    whatever offset the consumer starts from after a crash or a rebalance, a
    batch that begins past ``applied + 1`` is completed from here first, so no
    record is ever skipped. A real gap (transaction markers, compaction) reads
    nothing and costs one fetch.
    """

    def __init__(self, settings: Settings, topic: str) -> None:
        self.settings = settings
        self.topic = topic
        self._consumer: AIOKafkaConsumer | None = None

    async def read(self, partition: int, start: int, end: int) -> list[Rec]:
        """The records with offsets in [start, end); a record at ``end`` exists."""
        c = self._consumer
        if c is None:
            c = AIOKafkaConsumer(
                **client_options(self.settings),
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                max_partition_fetch_bytes=8 << 20,
            )
            self._consumer = c  # before start: a stop meanwhile closes it
            await c.start()
        tp = TopicPartition(self.topic, partition)
        c.assign([tp])
        c.seek(tp, start)
        out: list[Rec] = []
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline:
            got = await c.getmany(tp, timeout_ms=500, max_records=10_000)
            for m in got.get(tp, ()):
                if m.offset >= end:
                    return out
                if m.offset >= start:
                    out.append((m.offset, m.key, m.value, m.timestamp, m.headers))
        raise RuntimeError(f"partition {partition}: could not read offsets {start}..{end - 1}")

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None


class Pipeline:
    """Wires the pure engine to Faust: batches in, outputs and state out."""

    def __init__(self, app: faust.App, settings: Settings, table: Any, source: Any) -> None:
        self.app = app
        self.settings = settings
        self.table = table
        self.store = StateStore(table)
        self.source = source
        t = settings.topics
        self.out_topics = (t.sessionized_events, t.sessions, t.dead_letters)
        # The encoder of replay and process-file; it also writes integrations.<name>.
        self.encoder = OutputEncoder(
            self.out_topics,
            integrations={n: t.integration(n) for n in settings.integrations},
            options=Options.of(settings),
        )
        self.control: dict[str, bool] = {}
        self.control_reader = ControlReader(settings, self.control)
        self.runners: dict[int, PartitionRunner] = {}
        # Engine partitions of the current assignment; empty while rebalancing.
        self.assigned: set[int] = set()
        self.generation = 0  # changes with the assignment (the direct reader re-seeks)
        self.reader: DirectReader | None = None  # input_reader = "direct"
        self._committed: dict[int, int] = {}  # direct reader: offsets committed per partition
        self.live = True  # R22 wall-clock advancement; replay turns it off
        self.repartitioned = bool(settings.repartition)
        self.raw_topic = settings.topics.raw_events
        self.input_topic = self.raw_topic
        self.gaps: GapReader | None = None
        self.batches = 0
        self.last_batch_ms = 0.0
        self.metrics = Metrics()
        self._announced: set[int] | None = None
        self.fault = _test_fault()
        self.agent_failure: str | None = None  # why the engine agent stopped, if it did
        self._sender: BatchSender | None = None

    # ------------------------------------------------------------ state

    def _new_engine(self) -> Engine:
        return Engine(
            self.settings.engine,
            loads=codec.loads,
            dumps=codec.dumps,
            track_dirty=True,
            on_internal_error=_log_internal_error,
            control=self.control,  # shared: the control reader keeps it up to date
        )

    def runner(self, partition: int) -> PartitionRunner | None:
        """The partition's runner; built from the recovered table once it is safe to read.

        None while the partition is not ours or a rebalance (and its table
        recovery) is under way: the table may not hold the latest state yet.
        """
        r = self.runners.get(partition)
        # ``assigned`` is set once the table is recovered and cleared on revoke;
        # Faust's own ``rebalancing`` flag can stay set after a superseded recovery.
        if r is None and partition in self.assigned:
            r = self.runners[partition] = self._rebuild(partition)
        return r

    def _rebuild(self, partition: int) -> PartitionRunner:
        """The deadline index and engine of a partition, from the recovered table."""
        eng = self._new_engine()
        marker, snapshots = self.store.load(partition)
        n = eng.restore(snapshots, marker.watermark, marker.clock)
        log.info(
            "partition %d: restored %d keys, applied through offset %d, watermark %d",
            partition,
            n,
            marker.offset,
            eng.watermark,
        )
        return PartitionRunner(partition, eng, marker.offset, dict(marker.src))

    async def assign(self, partitions: set[int]) -> None:
        """The group's new assignment, after its table recovery; runners come lazily."""
        changed = partitions != self.assigned or self._announced is None
        self.assigned = set(partitions)
        self.generation += 1
        if changed and self._announced != self.assigned:
            self._announced = set(self.assigned)
            # One line at any log level: what this worker owns and where to ask it.
            print(
                f"sessionizer worker ready: partitions {sorted(self.assigned)} of "
                f"{self.input_topic}; web {self.app.conf.canonical_url}",
                file=sys.stderr,
                flush=True,
            )

    async def revoke(self, partitions: Sequence[int]) -> None:
        """Stops the partitions' runners: an in-flight batch finishes first, none starts."""
        self.assigned.difference_update(partitions)
        self.generation += 1
        for p in partitions:
            self._committed.pop(p, None)
            r = self.runners.pop(p, None)
            if r is not None:
                async with r.lock:
                    r.closed = True
                self.metrics.retire(r.engine.counts)  # counters never go down

    def drop(self, partitions: Sequence[int]) -> None:
        for p in partitions:
            r = self.runners.pop(p, None)
            if r is not None:
                r.closed = True
                self.metrics.retire(r.engine.counts)

    # ------------------------------------------------------------ batches

    async def process(self, events: Sequence[EventT[Any]]) -> None:
        """A batch from Faust's stream: its records, partition by partition."""
        if not events:
            return
        started = time.perf_counter()
        by_partition: dict[int, list[Rec]] = {}
        for ev in events:
            m = ev.message
            recs = by_partition.get(m.partition)
            if recs is None:
                recs = by_partition[m.partition] = []
            recs.append((m.offset, m.key, m.value, _record_ts_ms(m.timestamp), m.headers))
        for p, recs in by_partition.items():
            await self.apply(p, recs)
        self.batch_done(started)

    async def apply(self, partition: int, recs: Sequence[Rec]) -> None:
        """One partition's records, in offset order, from Faust's stream or the direct
        reader: what the state already holds is skipped, what is missing is read first."""
        r = self.runner(partition)
        if r is None:
            return  # not ours (any more): its owner resumes from the state
        async with r.lock:
            if not r.closed:
                await self._apply(r, recs)

    def resume_offset(self, partition: int) -> int | None:
        """Where the partition resumes (marker + 1); None if it is not ours now."""
        r = self.runner(partition)
        return None if r is None else r.applied + 1

    def highwater(self, partition: int) -> int | None:
        """The offset after the partition's last input record, as last fetched."""
        if self.reader is not None:
            return self.reader.highwater(partition)
        try:
            hw = self.app.consumer.highwater(TopicPartition(self.input_topic, partition))
        except Exception:  # not assigned or not fetched yet
            return None
        return None if hw is None else int(hw)

    async def commit_progress(self) -> None:
        """Direct reader: the group's committed offsets follow the state, for lag tools
        (recovery itself resumes from the marker, whatever was committed)."""
        offsets = {}
        for p, r in list(self.runners.items()):
            if not r.closed and self._committed.get(p) != r.applied + 1:
                offsets[TopicPartition(self.input_topic, p)] = r.applied + 1
        if not offsets:
            return
        try:
            await commit(self.app, offsets)
        except Exception as exc:  # rebalancing: the next tick commits again
            log.debug("commit of %s failed: %r", offsets, exc)
            return
        for tp, off in offsets.items():
            self._committed[tp.partition] = off

    def batch_done(self, started: float) -> None:
        self.batches += 1
        elapsed = time.perf_counter() - started
        self.last_batch_ms = elapsed * 1000
        self.metrics.batch_seconds.observe(elapsed)

    async def _apply(self, r: PartitionRunner, recs: Sequence[Rec]) -> None:
        eng = r.engine
        now = wall_ms()
        nxt = r.applied + 1
        for off, key, value, ts, headers in recs:
            if off < nxt:
                continue  # already in the state
            if off > nxt:
                await self._fill_gap(r, nxt, off, now)
            self._one(r, off, key, value, ts, headers, now)
            nxt = off + 1
        if nxt - 1 == r.applied:
            return  # nothing new
        r.applied = nxt - 1
        r.last_rx_wall = r.progress_wall = now
        r.wm_at_rx = eng.watermark
        eng.advance()
        await self._publish(r)

    async def _fill_gap(self, r: PartitionRunner, start: int, end: int, now: int) -> None:
        if self.gaps is None:
            self.gaps = GapReader(self.settings, self.input_topic)
        recs = await self.gaps.read(r.partition, start, end)
        log.warning(
            "partition %d: the stream resumed at offset %d, the state at %d: "
            "read %d missing records from the broker",
            r.partition,
            end,
            start,
            len(recs),
        )
        self.metrics.gap_records.inc(len(recs))
        for off, key, value, ts, headers in recs:
            self._one(r, off, key, value, ts, headers, now)

    def _one(
        self,
        r: PartitionRunner,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        ts: int | None,
        headers: Any,
        now: int,
    ) -> None:
        if value is None:
            value = b""  # a tombstone on the input is not JSON: a dead letter
        if self.fault is not None and self.fault[1] in value:
            self._inject(r)
        if self.repartitioned:
            origin = _origin(headers)
            if origin is not None:
                q, off, raw_ts = origin
                if off <= r.src.get(q, -1):
                    return  # the router sent it twice
                r.src[q] = off
                r.engine.process_record(value, key, self.raw_topic, q, off, raw_ts, now, offset)
                return
        r.engine.process_record(value, key, self.input_topic, r.partition, offset, ts, now, offset)

    def _inject(self, r: PartitionRunner) -> None:
        kind = self.fault[0] if self.fault else ""
        if kind == "agent":
            raise RuntimeError("injected fault in the worker (SESSIONIZER_TEST_FAULT)")

    async def tick(self) -> None:
        """R22: a partition idle for idle_timeout moves its watermark by wall-clock time."""
        if self.reader is not None:
            await self.commit_progress()
        if not self.live:
            return
        now = wall_ms()
        idle = self.settings.idle_timeout_ms
        for p in sorted(self.assigned):
            self.runner(p)  # a partition taken over with no new input still expires
        for r in list(self.runners.values()):
            if r.wm_at_rx <= 0 or now - r.last_rx_wall < idle:
                continue
            async with r.lock:
                if r.closed:
                    continue
                target = r.wm_at_rx + (now - r.last_rx_wall)
                if target > r.engine.watermark:
                    r.engine.advance(target)
                    # Only what recovery needs: an idle partition whose clock moved
                    # but closed nothing writes nothing (no marker a second forever).
                    # A restore then starts from the last written watermark, and R22
                    # moves it on again from the wall clock.
                    if r.engine.has_pending():
                        await self._publish(r)

    async def stop(self) -> None:
        # The direct reader stopped already, first of all (WorkerApp.before_stop).
        await self.control_reader.stop()
        if self.gaps is not None:
            await self.gaps.stop()

    def problems(self, lag: Mapping[int, int | None]) -> list[str]:
        """Why this worker is not healthy (empty when it is): progress, not liveness."""
        out = []
        if self.agent_failure is not None:
            out.append(f"engine agent stopped: {self.agent_failure}")
        failure = self.control_reader.failure()
        if failure is not None:
            out.append(f"opt-out control reader stopped: {failure}")
        elif not self.control_reader.ready.is_set():
            out.append("opt-out control topic not read yet")
        if self.reader is not None:
            for p in self.reader.leaderless():
                out.append(f"partition {p}: no leader for {self.input_topic}-{p} (brokers down?)")
        now = wall_ms()
        stall = self.settings.stall_timeout_ms
        for p, r in sorted(self.runners.items()):
            behind = lag.get(p)
            if behind and now - r.progress_wall > stall:
                out.append(
                    f"partition {p}: {behind} records behind and no progress "
                    f"for {(now - r.progress_wall) // 1000} s"
                )
        return out

    def sender(self) -> BatchSender:
        if self._sender is None:
            self._sender = BatchSender(raw_producer(self.app))
        return self._sender

    async def _publish(self, r: PartitionRunner) -> None:
        eng = r.engine
        send = self.sender().send
        out = eng.take_output()
        observe = self.metrics.session_seconds.observe
        for topic, _key, value in out:
            if topic == SESSIONS and value["record"] == "session_end" and not value["revision"]:
                observe(value["session_duration_ms"] / 1000)
        await send(self.encoder.records(out, eng))
        # Outputs are acknowledged: now the state may say they were applied.
        p = r.partition
        store = self.store
        snapshot = eng.snapshot_key
        state = store.key_records(p, [(key, snapshot(key)) for key in eng.take_dirty()])
        await send(state)
        store.written(state)
        # The marker goes last and alone (StateStore.marker_record says why).
        clock = eng.clock_state()
        marker = [store.marker_record(p, Marker(r.applied, eng.watermark, r.src, clock))]
        acked = await send(marker)
        store.written(marker, acked[-1].offset)


def build_app(settings: Settings, *, web: bool = True, broker: Broker = KAFKA) -> faust.App:
    """The Faust app of the worker on ``broker`` (compat.detect_broker); all payloads are
    bytes we encode with orjson."""
    if broker.generations_from_zero:
        install_leave_group_fix()
    install_quiet_rebalance()
    from ..kafka.security import faust_credentials, redact_logs

    sec = settings.security
    if sec.sasl_password is not None:
        redact_logs(sec.sasl_password.reveal())  # never in any log line, whoever logs

    store = "memory://" if settings.store == "memory" else "rocksdb://"
    app = WorkerApp(
        settings.app_id,
        broker=[f"kafka://{h}" for h in settings.broker_hosts],
        broker_credentials=faust_credentials(sec),
        store=store,
        datadir=str(settings.data_dir),
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        table_standby_replicas=settings.table_standby_replicas,
        key_serializer="raw",
        value_serializer="raw",
        processing_guarantee=settings.processing_guarantee,
        web_enabled=web,
        web_port=settings.web_port,
        web_bind=settings.web_host,
        web_host=settings.web_host,
        canonical_url=settings.web_url,  # never 0.0.0.0: other workers forward to it
        consumer_auto_offset_reset="earliest",
        autodiscover=False,
        # The worker creates every topic itself at start-up (kafka.worker_topic_specs),
        # retrying broker faults; Faust's own creation gave up on a dead node.
        topic_allow_declare=False,
        # Outputs go out as whole batches (BatchSender); room for a batch's worth
        # per partition, and a short linger for what Faust itself sends.
        producer_max_batch_size=1 << 20,
        producer_linger=0.005,
        **broker.faust_settings(),
    )
    source = app.topic(
        settings.topics.raw_events,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=settings.partitions,
    )
    table = app.Table(
        STATE_TABLE,
        default=None,
        partitions=settings.partitions,
        key_type=bytes,
        value_type=bytes,
    )
    pipe = Pipeline(app, settings, table, source)

    async def resume_after_markers(app: faust.App, **kwargs: Any) -> None:
        """Hands the new assignment to the pipeline and points the group at the state.

        Runs after the table is recovered and before the streams seek to the
        committed offsets. The committed offset is only a hint (the pipeline
        completes any gap from the broker itself, see GapReader); setting it to
        marker + 1 makes the stream start where the state ends.
        """
        name = engine_input.get_topic_name()
        mine = {tp for tp in app.consumer.assignment() if tp.topic == name}
        await pipe.assign({tp.partition for tp in mine})
        offsets = {}
        for tp in mine:
            offsets[tp] = pipe.store.marker(tp.partition).offset + 1
        if offsets:
            await commit(app, offsets)
            await seek(app, offsets)  # Faust's own seek skips offset 0 (compat.seek)

    connect(app.on_rebalance_complete, resume_after_markers)

    app.sessionizer = pipe  # type: ignore[attr-defined]
    batch_size = settings.batch_size
    within = settings.batch_within_ms / 1000

    engine_input = source
    if settings.repartition:
        # Re-key by device so that one device's records meet in one partition and
        # one engine; the origin header keeps dead letters and dedupe exact.
        engine_input = app.topic(
            repartition_topic(settings),
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
            partitions=settings.partitions,
            internal=True,
        )

        @app.agent(source, name="repartition")
        async def repartition(stream: Any) -> None:
            producer = app.producer
            target = engine_input.get_topic_name()
            async for events in stream.take_events(batch_size, within=within):
                futures = []
                for ev in events:
                    m = ev.message
                    ts = _record_ts_ms(m.timestamp)
                    origin = f"{m.partition}:{m.offset}:{'' if ts is None else ts}".encode()
                    key = device_key(m.value) or m.key
                    futures.append(
                        await producer.send(
                            target, key, m.value, None, m.timestamp, [(ORIGIN_HEADER, origin)]
                        )
                    )
                await asyncio.gather(*futures)

    async def failed(exc: Exception) -> None:
        # Crash-only: a worker never runs half-dead. Its state is in the
        # changelog; the restarted worker (or another) resumes from it.
        pipe.agent_failure = f"{type(exc).__name__}: {exc}"
        log.critical("the engine loop failed, stopping the worker: %r", exc)
        await crash(app, exc)

    # One actor for all partitions (Faust's isolated-partition actors are cancelled
    # on revocation and count as crashes); the pipeline keeps an engine per partition.
    # With the direct reader, Faust delivers nothing to it: it only keeps the input
    # topic in the group's subscription.
    @app.agent(engine_input, name="sessionize")
    async def sessionize(stream: Any) -> None:
        await pipe.control_reader.ready.wait()
        try:
            async for events in stream.take_events(batch_size, within=within):
                await pipe.process(events)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await failed(exc)

    pipe.input_topic = engine_input.get_topic_name()
    if settings.input_reader == "direct":
        exclude_from_fetch(app, pipe.input_topic)
        reader = pipe.reader = DirectReader(settings, pipe.input_topic, pipe)

        async def read_input() -> None:
            await pipe.control_reader.ready.wait()
            try:
                await reader.run()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not reader.stopping:  # else: its consumer was closed by the worker's stop
                    await failed(exc)

        task(app, read_input)
        app.before_stop.append(reader.stop)

    timer(app, 1.0, pipe.tick)
    task(app, pipe.control_reader.start)

    async def on_revoked(app: faust.App, revoked: Any, **kwargs: Any) -> None:
        name = engine_input.get_topic_name()
        await pipe.revoke([tp.partition for tp in revoked if tp.topic == name])

    async def on_shutdown(app: faust.App, **kwargs: Any) -> None:
        # Awaited by Faust before its loop closes: no consumer is left unclosed.
        await pipe.stop()

    connect(app.on_partitions_revoked, on_revoked)
    connect(app.on_before_shutdown, on_shutdown)

    if web:
        from .web import register

        register(app, pipe, engine_input.get_topic_name())
    limit_repeats("aiokafka")  # a broker outage: one line per kind of failure, not 40 a second
    tune_gc()
    return app
