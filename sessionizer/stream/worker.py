"""The worker: one partition task per input partition, state in a changelog table.

The direct reader (``reader.py``) hands each assigned partition's fetched
records to :meth:`Worker.apply`; the partition's task (``run/task.py``) applies
them and the writer (``commit.py``) writes its checkpoint: outputs, the touched
keys' snapshots, and the marker "applied through input offset X" with the
watermark. The state, not the group's committed offset, says where a
partition resumes: the reader seeks to marker + 1 whenever the assignment
changes, and records at or below the marker are skipped, so nothing is applied
twice. The group's committed offsets follow the state for lag tools.

Everything framework-specific is behind ``runtime.Runtime`` (on Faust:
``compat.FaustRuntime``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from .. import codec
from ..core.engine import Engine
from ..integrations import Options
from ..kafka.clients import STATE_TABLE, ControlReader, client_options, repartition_topic
from ..kafka.sender import BatchSender
from ..run.encode import OutputEncoder
from ..run.files import tune_gc
from ..run.task import Checkpoint, PartitionTask, SourceRecord, origin_header, route_key
from ..settings import Settings
from .commit import AcknowledgedWriter, Fenced, TransactionalWriter, Writer
from .compat import KAFKA, Broker, FaustRuntime
from .logs import install_quiet_rebalance, limit_repeats
from .metrics import Metrics
from .reader import DirectReader
from .runtime import Runtime
from .store import StateStore

log = logging.getLogger("sessionizer.worker")


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


#: Exactly once: a fenced partition still assigned this long after is taken back
#: (more than a session timeout plus a rejoin: a real zombie has lost it by then).
RETAKE_AFTER_MS = 30_000

FAULT_ENV = "SESSIONIZER_TEST_FAULT"


def _test_fault() -> tuple[str, bytes] | None:
    """For the integration tests only: ``KIND:TEXT`` fails on records containing TEXT.

    ``agent`` fails the worker's own loop (crash-only: the worker exits non-zero);
    ``record`` fails inside the engine, late in the record, after it changed the
    key (the record must become an internal_error and change nothing); ``txn``
    (exactly once) waits 3 s inside the transaction whose outputs hold TEXT.
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


class Slot:
    """A partition's task and what the worker knows about it."""

    __slots__ = (
        "closed",
        "committed_wall",
        "last_rx_wall",
        "lock",
        "pending",
        "progress_wall",
        "task",
        "wm_at_rx",
    )

    def __init__(self, task: PartitionTask) -> None:
        self.task = task
        self.lock = asyncio.Lock()
        self.closed = False  # revoked: its partition belongs to the next owner now
        self.last_rx_wall = self.progress_wall = self.committed_wall = wall_ms()
        self.wm_at_rx = task.engine.watermark
        self.pending = False  # applied records not checkpointed yet (exactly once)

    # What metrics and the web views read of a partition (metrics.RunnerView).
    @property
    def applied(self) -> int:
        return self.task.applied

    @property
    def engine(self) -> Engine:
        return self.task.engine


class Worker:
    """The partition tasks of one worker, driven by its reader and its timer."""

    def __init__(self, settings: Settings, runtime: Runtime) -> None:
        self.settings = settings
        self.runtime = runtime
        self.store = StateStore(runtime.store, runtime.changelog)
        t = settings.topics
        # The encoder of replay and process-file; it also writes integrations.<name>.
        self.encoder = OutputEncoder(
            (t.sessionized_events, t.sessions, t.dead_letters),
            integrations={n: t.integration(n) for n in settings.integrations},
            options=Options.of(settings),
        )
        self.control: dict[str, bool] = {}
        self.control_reader = ControlReader(settings, self.control)
        self.runners: dict[int, Slot] = {}
        # Input partitions of the current assignment; empty while rebalancing.
        self.assigned: set[int] = set()
        self.generation = 0  # changes with the assignment (the reader re-seeks)
        self.input_topic = runtime.input_topic
        self.reader = DirectReader(settings, self.input_topic, self)
        self._committed: dict[int, int] = {}  # offsets committed per partition
        self.origin_topic = t.raw_events if settings.repartition else None
        self.batches = 0
        self.last_batch_ms = 0.0
        self.metrics = Metrics()
        self._announced: set[int] | None = None
        self.fault = _test_fault()
        self.agent_failure: str | None = None  # why the input loop stopped, if it did
        self.exactly_once = settings.processing_guarantee == "exactly_once"
        self.txn: TransactionalWriter | None = None
        self.fenced: dict[int, int] = {}  # partition -> wall ms it was fenced (exactly once)
        self._writer: Writer | None = None
        if self.exactly_once:
            self.txn = self._writer = TransactionalWriter(
                client_options(settings),
                self.store,
                group=settings.app_id,
                input_topic=self.input_topic,
            )
            if self.fault is not None and self.fault[0] == "txn":
                self.txn.pause_on = self.fault[1]

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

    def runner(self, partition: int) -> Slot | None:
        """The partition's slot; its task restored from the table once it is safe to read.

        None while the partition is not ours or a rebalance (and its table
        recovery) is under way: the table may not hold the latest state yet.
        """
        r = self.runners.get(partition)
        if r is None and partition in self.assigned:
            r = self.runners[partition] = self._restore(partition)
        return r

    def _restore(self, partition: int) -> Slot:
        marker, snapshots = self.store.load(partition)
        task = PartitionTask.restore(
            self._new_engine(),
            self.encoder,
            self.input_topic,
            partition,
            marker,
            snapshots,
            origin_topic=self.origin_topic,
        )
        log.info(
            "partition %d: restored %d keys, applied through offset %d, watermark %d",
            partition,
            task.engine.key_count(),
            marker.offset,
            task.engine.watermark,
        )
        return Slot(task)

    async def assign(self, partitions: set[int]) -> None:
        """The group's new assignment, after its table recovery; tasks come lazily."""
        changed = partitions != self.assigned or self._announced is None
        if self.txn is not None:
            # The last owner is fenced (its open transaction aborted) before this
            # worker reads the partitions' state.
            await self.txn.take_over(partitions, self.runtime)
            self.fenced.clear()  # the group's word is newer
        self.assigned = set(partitions)
        self.generation += 1
        if changed and self._announced != self.assigned:
            self._announced = set(self.assigned)
            # One line at any log level: what this worker owns and where to ask it.
            print(
                f"sessionizer worker ready: partitions {sorted(self.assigned)} of "
                f"{self.input_topic}; web {self.runtime.url}",
                file=sys.stderr,
                flush=True,
            )

    async def revoke(self, partitions: set[int]) -> None:
        """Stops the partitions' tasks: an in-flight batch finishes first, none starts."""
        self.assigned.difference_update(partitions)
        self.generation += 1
        for p in partitions:
            self._committed.pop(p, None)
            r = self.runners.pop(p, None)
            if r is not None:
                async with r.lock:
                    r.closed = True
                self.metrics.retire(r.engine.counts)  # counters never go down
            if self.txn is not None:
                await self.txn.close(p)  # unwritten work goes: the next owner redoes it

    def drop(self, partitions: Sequence[int]) -> None:
        for p in partitions:
            r = self.runners.pop(p, None)
            if r is not None:
                r.closed = True
                self.metrics.retire(r.engine.counts)

    # ------------------------------------------------------------ input

    async def apply(self, partition: int, recs: Sequence[SourceRecord]) -> None:
        """One partition's fetched records, in offset order: the task skips what the
        state already holds, applies the rest, and its checkpoint is written."""
        r = self.runner(partition)
        if r is None:
            return  # not ours (any more): its owner resumes from the state
        async with r.lock:
            if r.closed:
                return
            if self.fault is not None:
                self._check_fault(recs)
            now = wall_ms()
            if not r.task.feed(recs, now):
                return  # nothing new
            r.last_rx_wall = r.progress_wall = now
            r.wm_at_rx = r.engine.watermark
            if self.exactly_once:
                r.pending = True  # one transaction per interval: flush_due writes it
                return
            await self._checkpoint(r)

    async def flush_due(self, *, now: bool = False) -> None:
        """Exactly once: writes the checkpoints whose transaction interval is over
        (``now``: every one, at a stop)."""
        if not self.exactly_once:
            return
        interval = 0 if now else self.settings.transaction_interval_ms
        now_ms = wall_ms()
        due = [
            r
            for r in list(self.runners.values())
            if r.pending and now_ms - r.committed_wall >= interval
        ]
        # Each partition has its own producer: their commits' round trips overlap.
        await asyncio.gather(*(self._flush(r) for r in due))

    async def _flush(self, r: Slot) -> None:
        async with r.lock:
            if r.pending and not r.closed:
                await self._checkpoint(r)

    def resume_offset(self, partition: int) -> int | None:
        """Where the partition resumes (marker + 1); None if it is not ours now."""
        r = self.runner(partition)
        return None if r is None else r.task.next_offset

    def highwater(self, partition: int) -> int | None:
        """The offset after the partition's last input record, as last fetched."""
        return self.reader.highwater(partition)

    async def commit_progress(self) -> None:
        """The group's committed offsets follow the state, for lag tools (recovery
        itself resumes from the marker, whatever was committed)."""
        offsets = {}
        for p, r in list(self.runners.items()):
            nxt = r.task.next_offset
            if not r.closed and self._committed.get(p) != nxt:
                offsets[p] = nxt
        if not offsets:
            return
        try:
            await self.runtime.commit(offsets)
        except Exception as exc:  # rebalancing: the next tick commits again
            log.debug("commit of %s failed: %r", offsets, exc)
            return
        self._committed.update(offsets)

    def batch_done(self, started: float) -> None:
        self.batches += 1
        elapsed = time.perf_counter() - started
        self.last_batch_ms = elapsed * 1000
        self.metrics.batch_seconds.observe(elapsed)

    def _check_fault(self, recs: Sequence[SourceRecord]) -> None:
        kind, text = self.fault or ("", b"")
        if kind == "agent" and any(text in (v or b"") for _o, _k, v, _t, _h in recs):
            raise RuntimeError("injected fault in the worker (SESSIONIZER_TEST_FAULT)")

    async def tick(self) -> None:
        """R22: a partition idle for idle_timeout moves its watermark by wall-clock time."""
        if not self.exactly_once:  # else the offsets commit with each transaction
            await self.commit_progress()
        else:
            await self._retake_fenced()
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
                # Only what recovery needs: an idle partition whose clock moved
                # but closed nothing writes nothing (no marker a second forever).
                # A restore then starts from the last written watermark, and R22
                # moves it on again from the wall clock.
                if r.task.advance(r.wm_at_rx + (now - r.last_rx_wall)):
                    await self._checkpoint(r)

    async def _retake_fenced(self) -> None:
        """A partition fenced while the group still gives it to this worker, long
        after a zombie would have been told: the fence was a transaction timeout
        (a stall), not a newer owner, so this worker takes it back."""
        if not self.fenced or self.txn is None:
            return
        now = wall_ms()
        mine = self.runtime.assigned()
        due = [p for p, t in self.fenced.items() if now - t > RETAKE_AFTER_MS and p in mine]
        if due:
            await self.txn.take_over(due, self.runtime)
            for p in due:
                del self.fenced[p]
            self.assigned.update(due)
            self.generation += 1

    async def _checkpoint(self, r: Slot) -> None:
        cp: Checkpoint = r.task.checkpoint()
        p = r.task.partition
        try:
            await self.writer().write(p, cp)
        except Fenced:
            # A zombie: the partition has a newer owner, which redoes what this
            # worker applied since its last transaction. Give it up until the
            # group assigns it again (restoring it here would fence the owner).
            log.warning("partition %d: fenced by a newer owner; giving it up", p)
            self.fenced[p] = wall_ms()
            self.assigned.discard(p)
            self.generation += 1
            self.drop([p])
            return
        r.pending = False
        r.committed_wall = wall_ms()
        observe = self.metrics.session_seconds.observe
        for ms in cp.durations_ms:
            observe(ms / 1000)

    def writer(self) -> Writer:
        if self._writer is None:
            self._writer = AcknowledgedWriter(BatchSender(self.runtime.producer()), self.store)
        return self._writer

    # ------------------------------------------------------------ lifecycle

    async def read_input(self) -> None:
        await self.control_reader.ready.wait()
        try:
            await self.reader.run()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not self.reader.stopping:  # else: its consumer was closed by the stop
                # Crash-only: a worker never runs half-dead. Its state is in the
                # changelog; the restarted worker (or another) resumes from it.
                self.agent_failure = f"{type(exc).__name__}: {exc}"
                log.critical("the engine loop failed, stopping the worker: %r", exc)
                await self.runtime.crash(exc)

    async def stop(self) -> None:
        # The reader stopped already, first of all (Runtime.before_stop).
        await self.control_reader.stop()
        if self.txn is not None:
            await self.txn.close_all()

    def transactions(self) -> tuple[int, int] | None:
        return None if self.txn is None else (self.txn.committed, self.txn.aborted)

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


def build_app(settings: Settings, *, web: bool = True, broker: Broker = KAFKA) -> Any:
    """The worker on ``broker`` (compat.detect_broker), as a Faust app; all payloads
    are bytes we encode with orjson."""
    install_quiet_rebalance()
    runtime = FaustRuntime(
        settings,
        broker=broker,
        table_name=STATE_TABLE,
        repartition_topic=repartition_topic(settings) if settings.repartition else None,
        route_key=route_key,
        origin=origin_header,
        web=web,
        transactional=settings.processing_guarantee == "exactly_once",
    )
    worker = Worker(settings, runtime)
    runtime.on_assign(worker.assign)
    runtime.on_revoke(worker.revoke)
    runtime.before_stop(worker.reader.stop)
    runtime.on_shutdown(worker.stop)  # no consumer is left unclosed
    runtime.task(worker.control_reader.start)
    runtime.task(worker.read_input)
    runtime.every(1.0, worker.tick)
    app = runtime.app
    app.sessionizer = worker  # type: ignore[attr-defined]
    if web:
        from .web import register

        register(runtime, worker)
    limit_repeats("aiokafka")  # a broker outage: one line per kind of failure, not 40 a second
    tune_gc()
    return app
