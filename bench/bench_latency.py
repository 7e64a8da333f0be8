"""End-to-end latency of one worker: a record produced -> its sessionized event
visible to a read_committed consumer, at_least_once against exactly_once.

    python bench/bench_latency.py [--records 200] [--gap-ms 50] [--interval 100ms]

One Apache Kafka node; per guarantee a fresh worker (4 partitions), then one
record at a time (a screen view of its own device) every ``--gap-ms``, each
timed from just before its send to when its sessionized event is read.
Prints p50, p90, p99 and max per guarantee and the difference: what exactly
once adds (its transaction interval, docs/performance.md).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from sessionizer import codec
from sessionizer.kafka.clients import READ_COMMITTED, topic_partitions
from sessionizer.testing import T0, batch, screen
from sessionizer.testing.harness import Names, WorkerProc, running
from sessionizer.tools.apache_kafka import KafkaCluster, kafka_version

PARTITIONS = 4


async def measure(
    bootstrap: str, work: Path, guarantee: str, n: int, gap_s: float, interval: str
) -> list[float]:
    names = Names(f"lat-{guarantee[:3]}-{uuid.uuid4().hex[:6]}")
    env = {
        "SESSIONIZER_PROCESSING_GUARANTEE": guarantee,
        "SESSIONIZER_TRANSACTION_INTERVAL": interval,
    }
    worker = WorkerProc(bootstrap, names, work, partitions=PARTITIONS, env=env, tag=guarantee)
    out: dict[str, float] = {}
    sent: dict[str, float] = {}
    async with running(worker):
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, isolation_level=READ_COMMITTED, enable_auto_commit=False
        )
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0, acks="all")
        await consumer.start()
        await producer.start()
        try:
            tps = await topic_partitions(consumer, names.topics["sessionized_events"], tries=100)
            consumer.assign(tps)
            await consumer.seek_to_end(*tps)
            for tp in tps:
                await consumer.position(tp)  # the end, fixed before the first send

            async def read() -> None:
                while len(out) < n:
                    got = await consumer.getmany(timeout_ms=50)
                    now = time.perf_counter()
                    for msgs in got.values():
                        for m in msgs:
                            dev = codec.loads(m.value).get("mp_deviceid")
                            if dev in sent and dev not in out:
                                out[dev] = now - sent[dev]

            reader = asyncio.create_task(read())
            for i in range(n):
                dev = f"lat-{i}"
                value = codec.dumps(batch(dev, screen(T0 + i * 1000)))
                sent[dev] = time.perf_counter()
                await producer.send_and_wait(names.topics["raw_events"], value, key=dev.encode())
                await asyncio.sleep(gap_s)
            await asyncio.wait_for(reader, 60)
        finally:
            await producer.stop()
            await consumer.stop()
    return [out[d] * 1000 for d in sent]


def summary(ms: list[float]) -> str:
    q = statistics.quantiles(ms, n=100)
    return f"p50 {q[49]:6.1f} ms  p90 {q[89]:6.1f} ms  p99 {q[98]:6.1f} ms  max {max(ms):6.1f} ms"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=200)
    ap.add_argument("--gap-ms", type=float, default=50.0)
    ap.add_argument("--interval", default="100ms", help="transaction_interval (exactly once)")
    a = ap.parse_args(argv)
    with (
        tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp,
        KafkaCluster(nodes=1, base_dir=Path(tmp) / "kafka") as kafka,
    ):
        print(f"Apache Kafka {kafka_version()}, {a.records} records, one every {a.gap_ms:g} ms")
        res = {}
        for g in ("at_least_once", "exactly_once"):
            res[g] = asyncio.run(
                measure(kafka.bootstrap, Path(tmp), g, a.records, a.gap_ms / 1000, a.interval)
            )
            print(f"{g:14} {summary(res[g])}")
        added = statistics.median(res["exactly_once"]) - statistics.median(res["at_least_once"])
        print(f"exactly once adds {added:.1f} ms at the median (transaction_interval {a.interval})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
