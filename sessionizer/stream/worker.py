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
import time
from collections.abc import Mapping, Sequence
from typing import Any

import faust
from faust.types import EventT

from .. import codec
from ..core.engine import Engine
from ..core.model import DEAD_LETTERS, SESSIONS
from ..offline import tune_gc
from .kafka import ControlReader
from .metrics import Metrics
from .sender import BatchSender

log = logging.getLogger("sessionizer.worker")

MARKER = b"\x00marker"


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


class PartitionRunner:
    """The engine of one source partition and what the worker knows about it."""

    __slots__ = ("applied", "engine", "last_rx_wall", "lock", "partition", "src", "wm_at_rx")

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
        self.last_rx_wall = wall_ms()
        self.wm_at_rx = engine.watermark


class Pipeline:
    """Wires the pure engine to Faust: batches in, outputs and state out."""

    def __init__(self, app: faust.App, settings: Any, table: Any, source: Any) -> None:
        self.app = app
        self.settings = settings
        self.table = table
        self.source = source
        t = settings.topics
        self.out_topics = (t.sessionized_events, t.sessions, t.dead_letters)
        self.control: dict[str, bool] = {}
        self.control_reader = ControlReader(settings, self.control)
        self.runners: dict[int, PartitionRunner] = {}
        self.live = True  # R22 wall-clock advancement; replay turns it off
        self.repartitioned = bool(settings.repartition)
        self.raw_topic = settings.topics.raw_events
        self.batches = 0
        self.last_batch_ms = 0.0
        self.shutdown_task: asyncio.Future[None] | None = None
        self.metrics = Metrics()
        self._sender: BatchSender | None = None

    # ------------------------------------------------------------ state

    def _key(self, partition: int, key: str) -> bytes:
        return f"{partition}:{key}".encode()

    def _new_engine(self) -> Engine:
        eng = Engine(self.settings.engine, loads=codec.loads, dumps=codec.dumps, track_dirty=True)
        eng.control = self.control
        return eng

    def runner(self, partition: int) -> PartitionRunner:
        r = self.runners.get(partition)
        if r is None:
            r = self.runners[partition] = self._rebuild(partition)
        return r

    def _rebuild(self, partition: int) -> PartitionRunner:
        """The deadline index and engine of a partition, from the recovered table."""
        eng = self._new_engine()
        prefix = f"{partition}:".encode()
        applied = -1
        src: dict[int, int] = {}
        data = self.table.data
        n = 0
        for k, v in list(data.items()):
            if not k.startswith(prefix) or v is None:
                continue
            name = k[len(prefix) :]
            if name == MARKER:
                marker = codec.loads(v)
                applied = marker["offset"]
                eng.watermark = marker["watermark"]
                src = {int(q): o for q, o in marker.get("src", {}).items()}
            else:
                eng.restore_key(name.decode(), codec.loads(v))
                n += 1
        log.info(
            "partition %d: restored %d keys, applied through offset %d, watermark %d",
            partition,
            n,
            applied,
            eng.watermark,
        )
        return PartitionRunner(partition, eng, applied, src)

    def drop(self, partitions: Sequence[int]) -> None:
        for p in partitions:
            r = self.runners.pop(p, None)
            if r is not None:
                self.metrics.retire(r.engine.counts)  # counters never go down

    # ------------------------------------------------------------ batches

    async def process(self, events: Sequence[EventT]) -> None:
        if not events:
            return
        started = time.perf_counter()
        p = events[0].message.partition
        r = self.runner(p)
        async with r.lock:
            eng = r.engine
            now = wall_ms()
            applied = r.applied
            process = eng.process_record
            first = events[0].message.offset
            if first > applied + 1:
                log.warning("partition %d: input jumps from offset %d to %d", p, applied, first)
            for ev in events:
                m = ev.message
                if m.offset <= applied:
                    continue  # already in the recovered state
                applied = m.offset
                if self.repartitioned:
                    origin = _origin(m.headers)
                    if origin is not None:
                        q, off, ts = origin
                        if off <= r.src.get(q, -1):
                            continue  # the router sent it twice
                        r.src[q] = off
                        process(m.value, m.key, self.raw_topic, q, off, ts, now, m.offset)
                        continue
                ts = _record_ts_ms(m.timestamp)
                process(m.value, m.key, m.topic, p, m.offset, ts, now, m.offset)
            r.applied = applied
            r.last_rx_wall = now
            r.wm_at_rx = eng.watermark
            eng.expire()
            await self._publish(r)
        self.batches += 1
        elapsed = time.perf_counter() - started
        self.last_batch_ms = elapsed * 1000
        self.metrics.batch_seconds.observe(elapsed)

    async def tick(self) -> None:
        """R22: a partition idle for idle_timeout moves its watermark by wall-clock time."""
        if not self.live:
            return
        now = wall_ms()
        idle = self.settings.idle_timeout_ms
        for r in list(self.runners.values()):
            if r.wm_at_rx <= 0 or now - r.last_rx_wall < idle:
                continue
            async with r.lock:
                target = r.wm_at_rx + (now - r.last_rx_wall)
                if target > r.engine.watermark:
                    r.engine.advance_watermark(target)
                    r.engine.expire()
                    await self._publish(r)

    def sender(self) -> BatchSender:
        if self._sender is None:
            # Faust's own aiokafka producer: same connection, settings and credentials.
            self._sender = BatchSender(self.app.producer._ensure_producer())
        return self._sender

    async def _publish(self, r: PartitionRunner) -> None:
        eng = r.engine
        topics = self.out_topics
        dumps = codec.dumps
        send = self.sender().send
        out = eng.take_output()
        observe = self.metrics.session_seconds.observe
        for topic, _key, value in out:
            if topic == SESSIONS and value["record"] == "session_end" and not value["revision"]:
                observe(value["session_duration_ms"] / 1000)
        # Dead letters keep the source record's key bytes; other keys are text.
        await send(
            [
                (
                    topics[topic],
                    key if topic == DEAD_LETTERS or key is None else key.encode(),
                    dumps(value),
                    None,
                )
                for topic, key, value in out
            ]
        )
        # Outputs are acknowledged: now the state may say they were applied.
        p = r.partition
        changelog = self.table.changelog_topic.get_topic_name()
        data = self.table.data
        state = []
        for key in eng.take_dirty():
            tkey = self._key(p, key)
            snap = eng.snapshot_key(key)
            value = None if snap is None else dumps(snap)
            if value is None:
                data.pop(tkey, None)
            else:
                data[tkey] = value
            state.append((changelog, tkey, value, p))
        await send(state)
        # The marker goes last and alone: recovery reads the changelog up to its
        # end offset, and some brokers (Tansu) report a batch's base offset + 1
        # as the end, so a marker sharing a batch could hide the states before it.
        marker_value: dict[str, Any] = {"offset": r.applied, "watermark": eng.watermark}
        if r.src:
            marker_value["src"] = {str(q): o for q, o in r.src.items()}
        marker = dumps(marker_value)
        mkey = self._key(p, "\x00marker")
        data[mkey] = marker
        await send([(changelog, mkey, marker, p)])


def build_app(settings: Any, *, web: bool = True) -> faust.App:
    """The Faust app of the worker; all payloads are bytes we encode with orjson."""
    from ..broker import FAUST_TUNING, install_leave_group_fix

    install_leave_group_fix()
    from .security import faust_credentials, redact_logs

    sec = settings.security
    if sec.sasl_password is not None:
        redact_logs(sec.sasl_password.reveal())  # never in any log line, whoever logs

    store = "memory://" if settings.store == "memory" else "rocksdb://"
    app = faust.App(
        settings.app_id,
        broker=[f"kafka://{h}" for h in settings.broker_hosts],
        broker_credentials=faust_credentials(sec),
        store=store,
        datadir=str(settings.data_dir),
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        key_serializer="raw",
        value_serializer="raw",
        processing_guarantee=settings.processing_guarantee,
        web_enabled=web,
        web_port=settings.web_port,
        web_bind=settings.web_host,
        web_host=settings.web_host,
        consumer_auto_offset_reset="earliest",
        autodiscover=False,
        # Outputs go out as whole batches (BatchSender); room for a batch's worth
        # per partition, and a short linger for what Faust itself sends.
        producer_max_batch_size=1 << 20,
        producer_linger=0.005,
        **FAUST_TUNING,
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
        "state",
        default=None,
        partitions=settings.partitions,
        key_type=bytes,
        value_type=bytes,
    )
    pipe = Pipeline(app, settings, table, source)

    @app.on_rebalance_complete.connect
    async def resume_after_markers(app: faust.App, **kwargs: Any) -> None:
        """Resume each assigned partition right after its marker.

        Runs after the table is recovered and before the streams seek to the
        committed offsets (on every rebalance, whether or not anything was
        recovered). Faust's committed offset may be ahead of the recovered state:
        a stopping worker acks the batch it was cancelled in. So the committed
        offset is set to the marker + 1 — or to the start when no state was ever
        written — and nothing is lost; records at or below a key's own applied
        position are skipped, so nothing is applied twice.
        """
        name = engine_input.get_topic_name()
        offsets = {}
        for tp in app.consumer.assignment():
            if tp.topic == name:
                # Build the engine now, not at the first batch: a partition taken
                # over with no new input must still close sessions as time passes (R22).
                pipe.drop([tp.partition])  # keeps its counts in the metrics
                offsets[tp] = pipe.runner(tp.partition).applied + 1
        if offsets:
            # Faust's own commit path to its consumer thread; it commits exactly these.
            await app.consumer._commit(offsets)

    app.sessionizer = pipe  # type: ignore[attr-defined]
    batch_size = settings.batch_size
    within = settings.batch_within_ms / 1000

    engine_input = source
    if settings.repartition:
        # Re-key by device so that one device's records meet in one partition and
        # one engine; the origin header keeps dead letters and dedupe exact.
        engine_input = app.topic(
            f"{settings.app_id}-repartition",
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

    @app.agent(engine_input, isolated_partitions=True, name="sessionize")
    async def sessionize(stream: Any) -> None:
        await pipe.control_reader.ready.wait()
        async for events in stream.take_events(batch_size, within=within):
            await pipe.process(events)

    @app.timer(interval=1.0)
    async def idle_partitions() -> None:
        await pipe.tick()

    @app.task
    async def start_control_reader() -> None:
        await pipe.control_reader.start()

    @app.on_partitions_revoked.connect
    async def on_revoked(app: faust.App, revoked: Any, **kwargs: Any) -> None:
        name = engine_input.get_topic_name()
        pipe.drop([tp.partition for tp in revoked if tp.topic == name])

    @app.on_before_shutdown.connect
    def on_shutdown(app: faust.App, **kwargs: Any) -> None:
        pipe.shutdown_task = asyncio.ensure_future(pipe.control_reader.stop())

    if web:
        from .web import register

        register(app, pipe, engine_input.get_topic_name())
    tune_gc()
    return app
