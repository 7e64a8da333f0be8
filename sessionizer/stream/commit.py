"""How a partition task's checkpoint reaches the broker.

At least once (any broker): the outputs, then the changed keys' snapshots,
then the marker alone, each acknowledged before the next is sent. A crash in
between leaves outputs whose state was not written: the next owner applies
the same records again and writes byte-identical duplicates (R0, R12); the
state is never ahead of what the outputs say, and records at or below the
marker are never applied twice.
"""

from __future__ import annotations

from typing import Protocol

from ..kafka.sender import BatchSender
from ..run.task import Checkpoint
from .store import StateStore


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
