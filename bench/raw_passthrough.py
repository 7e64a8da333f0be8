"""The raw pipeline of bench_stream.py: the ceiling for a Python Kafka client.

    python bench/raw_passthrough.py SPEC

SPEC is JSON: ``{"bootstrap", "in", "out", "group", "records"}``. An aiokafka group
consumer reads ``in``, each record goes through ``orjson.loads`` and ``orjson.dumps``
to ``out`` (same key), each fetch is committed once sent; it stops after ``records``.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import orjson


async def raw_passthrough(spec: dict[str, Any]) -> None:
    """The child: group consumer -> orjson.loads -> orjson.dumps -> producer, until ``records``."""
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    loads, dumps, bad = orjson.loads, orjson.dumps, orjson.JSONDecodeError
    out = spec["out"]
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
    seen = 0
    try:
        while seen < spec["records"]:
            batches = await consumer.getmany(timeout_ms=500, max_records=5000)
            futs = []
            for msgs in batches.values():
                seen += len(msgs)
                for m in msgs:
                    try:
                        obj = loads(m.value)
                    except bad:
                        continue
                    futs.append(await producer.send(out, dumps(obj), key=m.key))
            await asyncio.gather(*futs)
            if batches:
                await consumer.commit()
    finally:
        await consumer.stop()
        await producer.stop()


if __name__ == "__main__":
    asyncio.run(raw_passthrough(json.loads(sys.argv[1])))
