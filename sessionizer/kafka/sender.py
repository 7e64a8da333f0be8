"""Batched sends: one aiokafka record batch per topic partition, one future per batch.

Faust's ``producer.send`` costs a future, sensor calls and a murmur2 hash in
pure Python per message; a batch of outputs pays those once per partition.
A message without a partition goes where ``encode.partition_for`` says (the
key's murmur2 hash; a keyless one by its value's, never a random partition).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from ..run.encode import Message, partition_for, record_hash

__all__ = ["BatchSender", "Message"]

_HASH_CACHE_MAX = 200_000


class BatchSender:
    def __init__(self, producer: Any) -> None:
        self.producer = producer  # an aiokafka AIOKafkaProducer
        self._partitions: dict[str, int] = {}
        self._hash: dict[bytes, int] = {}

    async def _count(self, topic: str) -> int:
        n = self._partitions.get(topic)
        if n is None:
            n = self._partitions[topic] = len(await self.producer.partitions_for(topic))
        return n

    def _partition(self, key: bytes | None, value: bytes | None, n: int) -> int:
        if key is None:
            return partition_for(None, value, n)
        h = self._hash.get(key)
        if h is None:
            if len(self._hash) >= _HASH_CACHE_MAX:
                self._hash.clear()
            h = self._hash[key] = record_hash(key)
        return h % n  # = partition_for(key, value, n)

    async def send(self, messages: Iterable[Message]) -> list[Any]:
        """Sends in order per partition and returns once the broker acknowledged all:
        each batch's ``RecordMetadata`` (its base offset), in the order sent."""
        groups: dict[tuple[str, int], list[tuple[bytes | None, bytes | None]]] = {}
        for topic, key, value, partition in messages:
            if partition is None:
                partition = self._partition(key, value, await self._count(topic))
            groups.setdefault((topic, partition), []).append((key, value))
        producer = self.producer
        futures = []
        for (topic, partition), items in groups.items():
            batch = producer.create_batch()
            for key, value in items:
                if batch.append(key=key, value=value, timestamp=None) is None:
                    batch.close()
                    futures.append(await producer.send_batch(batch, topic, partition=partition))
                    batch = producer.create_batch()
                    if batch.append(key=key, value=value, timestamp=None) is None:
                        raise ValueError(f"a record for {topic} exceeds the producer's batch size")
            batch.close()
            futures.append(await producer.send_batch(batch, topic, partition=partition))
        if not futures:
            return []
        return list(await asyncio.gather(*futures))
