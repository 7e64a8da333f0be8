"""How a partition task's checkpoint reaches the broker.

At least once (any broker, :class:`AcknowledgedWriter`): the outputs, then the
changed keys' snapshots, then the marker alone, each acknowledged before the
next is sent. A crash in between leaves outputs whose state was not written:
the next owner applies the same records again and writes byte-identical
duplicates (R0, R12); the state is never ahead of what the outputs say, and
records at or below the marker are never applied twice.

Exactly once (Kafka, :class:`TransactionalWriter`): all of it in one
transaction per partition, with the group's input offset.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import ProducerFenced

from ..kafka.sender import BatchSender
from ..run.task import Checkpoint
from .compat import producer_fenced
from .runtime import Runtime
from .store import StateStore

log = logging.getLogger("sessionizer.worker")


class Writer(Protocol):
    async def write(self, partition: int, checkpoint: Checkpoint) -> None:
        """Writes one checkpoint of ``partition``; returns once it is durable."""


class AcknowledgedWriter:
    """Outputs, state, marker: three acknowledged sends (at least once)."""

    def __init__(self, sender: BatchSender, store: StateStore) -> None:
        self.sender = sender
        self.store = store

    async def write(self, partition: int, checkpoint: Checkpoint) -> None:
        send = self.sender.send
        store = self.store
        await send(checkpoint.outputs)
        # Outputs are acknowledged: now the state may say they were applied.
        state = store.key_records(partition, checkpoint.state)
        await send(state)
        store.written(state)
        marker = [store.marker_record(partition, checkpoint.marker)]
        acked = await send(marker)
        store.written(marker, acked[-1].offset)


class Fenced(Exception):
    """A newer owner of the partition took over its transactions: this worker is a
    zombie for that partition and must give it up (its checkpoint was aborted)."""

    def __init__(self, partition: int) -> None:
        super().__init__(f"partition {partition}: fenced by a newer owner")
        self.partition = partition


#: A transaction left open this long is aborted by the broker; a checkpoint takes
#: 10-30 ms. read_committed readers of its partitions wait at most this long (plus
#: the broker's 10 s clean-up interval) when a worker hangs mid-transaction.
TRANSACTION_TIMEOUT_MS = 10_000


class TransactionalWriter:
    """Exactly once (Kafka): per input partition, one transactional producer, and one
    transaction per checkpoint holding its outputs, state and marker, and the
    group's input offset. All of it becomes visible to read_committed readers at
    once, or none of it.

    The transactional id is the partition's (``{app}-{input topic}-{partition}``,
    the same on every worker): the next owner's producer start fences the last
    one's and aborts its open transaction, so a paused or partitioned zombie can
    write nothing more (Kafka's EOS v1). The local store gets the state only once
    the transaction is committed.
    """

    def __init__(
        self, options: dict[str, Any], store: StateStore, *, group: str, input_topic: str
    ) -> None:
        self.options = options
        self.store = store
        self.group = group
        self.input_topic = input_topic
        self._producers: dict[int, tuple[AIOKafkaProducer, BatchSender]] = {}
        self.committed = 0  # transactions, for /metrics and the chaos report
        self.aborted = 0
        # Integration tests only (SESSIONIZER_TEST_FAULT=txn:TEXT): a checkpoint
        # whose outputs hold TEXT waits inside its transaction, to be SIGSTOPped there.
        self.pause_on: bytes | None = None

    def transactional_id(self, partition: int) -> str:
        return f"{self.group}-{self.input_topic}-{partition}"

    async def take_over(self, partitions: Iterable[int], runtime: Runtime) -> None:
        """Fences the last owner of each partition, then completes its local state
        with what that owner committed after the recovery read the changelog (a
        zombie's commit in between: without this, records it applied would be
        applied again, their outputs twice)."""
        new = [p for p in sorted(partitions) if p not in self._producers]
        for p in new:
            await self.open(p)
        if not new:
            return
        start = {}
        for p in new:
            recovered = runtime.recovered_offset(p)
            start[p] = 0 if recovered is None else recovered + 1
        found = await read_committed_tail(self.options, self.store.changelog, start)
        for p, records in found.items():
            for key, value in records:
                self.store.local.put(p, key, value)
            if records:
                log.warning(
                    "partition %d: %d state records committed by the last owner after "
                    "recovery; applied",
                    p,
                    len(records),
                )

    async def open(self, partition: int) -> None:
        """Starts the partition's producer: fences every earlier one of its id.

        Call before the partition's state is read: a zombie's transaction is
        aborted (or committed) by then, so the state read is final.
        """
        if partition in self._producers:
            return
        producer = AIOKafkaProducer(
            **self.options,
            transactional_id=self.transactional_id(partition),
            transaction_timeout_ms=TRANSACTION_TIMEOUT_MS,
            # One checkpoint's records of a partition in one batch: a transaction
            # pays its round trips once, not once per 16 KiB.
            max_batch_size=1 << 20,
            linger_ms=0,
            # A transaction's first send to a partition right after the last
            # commit is refused until its markers are written (CONCURRENT_
            # TRANSACTIONS, a few ms): retry soon, as the Java client does.
            retry_backoff_ms=20,
        )
        try:
            await producer.start()
        except BaseException:  # a rebalance cancelled the assignment, a broker fault
            await producer.stop()
            raise
        self._producers[partition] = producer, BatchSender(producer)

    async def _pause(self, partition: int, checkpoint: Checkpoint) -> None:
        text = self.pause_on or b""
        if any(text in value for _t, _k, value, _p in checkpoint.outputs):
            self.pause_on = None
            print(f"test fault: partition {partition} waits inside its transaction", flush=True)
            await asyncio.sleep(3.0)

    async def close(self, partition: int) -> None:
        """Stops the partition's producer (an open transaction is aborted by the next owner)."""
        entry = self._producers.pop(partition, None)
        if entry is not None:
            await entry[0].stop()

    async def close_all(self) -> None:
        for p in list(self._producers):
            await self.close(p)

    async def write(self, partition: int, checkpoint: Checkpoint) -> None:
        await self.open(partition)
        producer, sender = self._producers[partition]
        store = self.store
        state = store.key_records(partition, checkpoint.state)
        marker = [store.marker_record(partition, checkpoint.marker)]
        try:
            await producer.begin_transaction()
            # The marker first: in one transaction the order does not matter, and
            # a transaction that wrote anything then holds one (chaos counts the
            # aborted ones by their markers). Its own batch: its offset for the store.
            acked = await sender.send(marker)
            await sender.send(checkpoint.outputs + state)
            if self.pause_on is not None:
                await self._pause(partition, checkpoint)
            offsets = {TopicPartition(self.input_topic, partition): checkpoint.marker.offset + 1}
            await producer.send_offsets_to_transaction(offsets, self.group)
            await producer.commit_transaction()
        except Exception as exc:
            self.aborted += 1
            fenced = isinstance(exc, ProducerFenced) or producer_fenced(producer)
            await self.close(partition)  # its next producer's start aborts what is open
            if fenced:
                raise Fenced(partition) from exc
            raise
        self.committed += 1
        store.written(state)
        store.written(marker, acked[-1].offset)


async def read_committed_tail(
    options: dict[str, Any], topic: str, start: Mapping[int, int]
) -> dict[int, list[tuple[bytes, bytes | None]]]:
    """(key, value) of the committed records of each partition from ``start`` to its
    end; done by position: a transaction's last offset is a marker no record has."""
    consumer = AIOKafkaConsumer(
        **options, enable_auto_commit=False, isolation_level="read_committed"
    )
    await consumer.start()
    try:
        tps = {p: TopicPartition(topic, p) for p in start}
        consumer.assign(list(tps.values()))
        ends = await consumer.end_offsets(list(tps.values()))
        out: dict[int, list[tuple[bytes, bytes | None]]] = {}
        for p, tp in tps.items():
            consumer.seek(tp, start[p])
            got: list[tuple[bytes, bytes | None]] = []
            while await consumer.position(tp) < ends[tp]:
                batch = await consumer.getmany(tp, timeout_ms=500)
                got += [(m.key, m.value) for m in batch.get(tp, ()) if m.key is not None]
            out[p] = got
        return out
    finally:
        await consumer.stop()
