"""The worker's input reader: whole fetches, no per-record objects.

Faust hands a stream one event at a time: per record a message and an event
object, two tasks and an ``asyncio.wait`` in its drain loop, sensors and an
ack (docs/performance.md measured that path at about two thirds of the
worker's CPU). Here the worker's own aiokafka consumer, with no group, reads
the partitions the group gave it in whole fetches and hands each partition's
records to the pipeline. Faust keeps the group, the assignment, the tables,
the timers and the web server; it is told not to fetch the input topic
(``compat.exclude_from_fetch``).

The reader's position is the state's: it is set to the partition's marker + 1
whenever the assignment changes, and only this reader applies records, so a
fetch continues the state (an offset gap is the log's own: transaction
markers, compaction). The task skips anything at or below the marker all the
same. The group's committed offsets follow the state
(``Worker.commit_progress``) so that lag tools see progress.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Protocol

from aiokafka import AIOKafkaConsumer, TopicPartition

from ..kafka.clients import reader_options
from ..run.task import SourceRecord
from ..settings import Settings
from .compat import has_leader

log = logging.getLogger("sessionizer.worker")

#: How long a stop waits for the last transaction (exactly once).
STOP_FLUSH_S = 10.0


class Target(Protocol):
    """What the reader needs of the worker's pipeline."""

    @property
    def generation(self) -> int:
        """Changes whenever the assignment does (revoke or assign)."""

    @property
    def assigned(self) -> set[int]:
        """The partitions this worker owns and may process now."""

    def resume_offset(self, partition: int) -> int | None:
        """Where the state says the partition resumes (marker + 1); None if not ours."""

    async def apply(self, partition: int, recs: Sequence[SourceRecord]) -> None: ...

    def batch_done(self, started: float) -> None: ...

    async def flush_due(self, *, now: bool = False) -> None:
        """Writes what waits for its transaction interval (exactly once); ``now``:
        whatever waits, at a stop."""


class DirectReader:
    """Reads ``topic``'s assigned partitions and applies them through ``target``."""

    def __init__(self, settings: Settings, topic: str, target: Target) -> None:
        self.settings = settings
        self.topic = topic
        self.target = target
        self._consumer: AIOKafkaConsumer | None = None
        self.stopping = False  # set by stop(): what run() raises from now on is expected
        self._busy = asyncio.Lock()  # held while a fetch is applied

    def highwater(self, partition: int) -> int | None:
        """The offset after the partition's last record, as of the last fetch."""
        c = self._consumer
        if c is None:
            return None
        try:
            hw = c.highwater(TopicPartition(self.topic, partition))
        except Exception:  # not assigned (any more)
            return None
        return None if hw is None else int(hw)

    def leaderless(self) -> list[int]:
        """Assigned partitions that have no leader now (a broker down, no replica in sync)."""
        c = self._consumer
        if c is None:
            return []
        return sorted(tp.partition for tp in c.assignment() if not has_leader(c, tp))

    async def run(self) -> None:
        s = self.settings
        # Committed records only, whatever the guarantee: an aborted record of a
        # transactional producer (ours under exactly once, or a user's) is not input.
        c = AIOKafkaConsumer(
            **reader_options(s),
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=4 << 20,
            fetch_max_wait_ms=s.batch_within_ms,
        )
        self._consumer = c  # before start: a stop meanwhile closes it
        await c.start()
        target = self.target
        generation: int | None = None
        tps: list[TopicPartition] = []
        while not self.stopping:
            if target.generation != generation:
                generation = target.generation
                tps = self._reassign(c)
            if not tps:
                await asyncio.sleep(0.05)  # no assignment yet, or rebalancing
                continue
            fetched = await c.getmany(timeout_ms=s.batch_within_ms, max_records=s.batch_size)
            if not fetched:
                async with self._busy:
                    if not self.stopping:
                        await target.flush_due()
                continue
            async with self._busy:
                if self.stopping:
                    return
                started = time.perf_counter()
                for tp, msgs in fetched.items():
                    if target.generation != generation:
                        break  # reassigned meanwhile: re-read from the state's position
                    await target.apply(
                        tp.partition,
                        [(m.offset, m.key, m.value, m.timestamp, m.headers) for m in msgs],
                    )
                target.batch_done(started)
                await target.flush_due()

    def _reassign(self, c: AIOKafkaConsumer) -> list[TopicPartition]:
        offsets = {}
        for p in sorted(self.target.assigned):
            offset = self.target.resume_offset(p)
            if offset is not None:
                offsets[TopicPartition(self.topic, p)] = offset
        c.assign(list(offsets))
        for tp, offset in offsets.items():
            c.seek(tp, offset)
        return list(offsets)

    async def stop(self) -> None:
        """Lets the fetch being applied finish (its state and marker written), then closes."""
        self.stopping = True
        async with self._busy:
            try:
                # Bounded: a broker down must not hold the stop (the next owner redoes it).
                await asyncio.wait_for(self.target.flush_due(now=True), STOP_FLUSH_S)
            except Exception as exc:  # TimeoutError too: the next owner redoes it
                log.warning("stop: the last transaction was not written: %r", exc)
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
