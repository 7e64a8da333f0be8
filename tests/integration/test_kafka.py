"""What differs on Apache Kafka: broker detection, Kafka's own group tool, a replicated
cluster losing the broker that leads the worker's input (docs/broker.md)."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from conftest import running_kafka, unavailable

from sessionizer import codec
from sessionizer.stream.compat import KAFKA, TANSU, detect_broker
from sessionizer.testing import T0, batch, custom, launch, screen
from sessionizer.testing.harness import (
    Names,
    WorkerProc,
    http_get,
    produce,
    read_all,
    running,
    until,
)
from sessionizer.tools.apache_kafka import KafkaCluster, sweep_stale
from sessionizer.tools.broker import EmbeddedBroker

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

PARTITIONS = 4


def _records(n: int, tag: str) -> list[bytes]:
    return [
        codec.dumps(batch(f"{tag}-{i}", launch(T0 + i), screen(T0 + i + 500), custom(T0 + i + 900)))
        for i in range(n)
    ]


async def test_the_broker_is_detected_once_kafka_and_tansu_apart(
    kafka: KafkaCluster, embedded_broker: EmbeddedBroker
) -> None:
    assert await detect_broker({"bootstrap_servers": kafka.bootstrap}) is KAFKA
    assert await detect_broker({"bootstrap_servers": embedded_broker.bootstrap}) is TANSU
    # Faust's recovery check stays on wherever end offsets are exact.
    assert KAFKA.faust_settings()["recovery_consistency_check"] is True
    assert TANSU.faust_settings()["recovery_consistency_check"] is False


async def test_kafkas_group_tool_shows_the_worker_and_its_lag_going_to_zero(
    kafka: KafkaCluster, tmp_path: Path
) -> None:
    names = Names(f"grp-{uuid.uuid4().hex[:8]}")
    w = WorkerProc(kafka.bootstrap, names, tmp_path, partitions=PARTITIONS)
    async with running(w):
        recs = _records(200, "grp")
        await produce(kafka.bootstrap, names.topics["raw_events"], recs)
        topic = names.topics["raw_events"]

        def lags() -> dict[int, str]:
            out = kafka.describe_group(names.app_id)
            rows = [ln.split() for ln in out.splitlines() if ln.split()[1:2] == [topic]]
            # GROUP TOPIC PARTITION CURRENT-OFFSET LOG-END-OFFSET LAG CONSUMER-ID ...
            return {int(r[2]): r[5] for r in rows}

        async def caught_up() -> dict[int, str] | None:
            got = await asyncio.to_thread(lags)
            return got if len(got) == PARTITIONS and set(got.values()) == {"0"} else None

        await until(caught_up, "lag 0 on every input partition in kafka-consumer-groups", 120)
        members = await asyncio.to_thread(kafka.describe_group, names.app_id, "--members")
        # One member (the worker), with the input partitions among its assignment.
        rows = [ln for ln in members.splitlines() if ln.startswith(names.app_id)]
        assert len(rows) == 1, members
        assert re.search(rf"{re.escape(topic)}:0,1,2,3\b", members), members


@pytest.fixture(scope="module")
def kafka3() -> Iterator[KafkaCluster]:
    """Three Kafka nodes: replication factor 3, min.insync.replicas 2."""
    yield from running_kafka(3)


async def _create(bootstrap: str, topics: list[NewTopic]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(topics)
    finally:
        await admin.close()


async def test_health_names_a_partition_without_leader_and_the_worker_recovers_alone(
    kafka3: KafkaCluster, tmp_path: Path
) -> None:
    """The input lives on broker 3 alone (no replica elsewhere): while it is down the
    input has no leader and /health says so; it comes back and processing goes on, with
    no restart of the worker. Outputs and state are replicated 3 ways (acks=all)."""
    names = Names(f"lead-{uuid.uuid4().hex[:8]}")
    raw = names.topics["raw_events"]
    await _create(
        kafka3.bootstrap,
        [NewTopic(raw, -1, -1, replica_assignments={p: [3] for p in range(PARTITIONS)})],
    )
    env = {"SESSIONIZER_REPLICATION_FACTOR": "3"}
    w = WorkerProc(kafka3.bootstrap, names, tmp_path, partitions=PARTITIONS, env=env)
    async with running(w):
        try:
            first = _records(40, "before")
            await produce(kafka3.bootstrap, raw, first)
            out = names.topics["sessionized_events"]
            await read_all(kafka3.bootstrap, [out], until=lambda r: len(r[out]) >= 2 * len(first))

            kafka3.kill(3)

            async def leaderless() -> Any:
                status, body = await http_get(w.web_port, "/health")
                named = [p for p in body["problems"] if "no leader" in p]
                return body if status == 503 and len(named) == PARTITIONS else None

            health = await until(leaderless, "/health naming every leaderless partition", 90)
            assert health["ready"] is False
            assert w.proc is not None and w.proc.poll() is None  # alive, waiting

            kafka3.restart(3)

            async def healthy() -> Any:
                status, body = await http_get(w.web_port, "/health")
                return body if status == 200 and body["ready"] else None

            await until(healthy, "/health ready again after the broker came back", 120)
            later = _records(40, "after")
            await produce(kafka3.bootstrap, raw, later)

            def both(r: dict[str, list[Any]]) -> bool:
                devices = {k for k, _ in r[out] if k is not None}
                return {f"after-{i}".encode() for i in range(40)} <= devices

            await read_all(kafka3.bootstrap, [out], until=both, timeout=120)
            assert "Traceback" not in w.log(), w.log()[-3000:]
        finally:  # the broker back before the worker stops
            if kafka3.node(3).proc is None:
                kafka3.restart(3)


def test_a_sigkilled_owner_leaves_no_jvm_and_its_directory_is_swept(tmp_path: Path) -> None:
    """The JVMs die with the process that started them, even on SIGKILL (PDEATHSIG);
    the next cluster started on this machine removes the dead owner's directory."""
    script = (
        "import os, sys\n"
        "from sessionizer.tools.apache_kafka import KafkaCluster\n"
        "k = KafkaCluster(nodes=1).start()\n"
        "print(k.members[0].proc.pid, k.base_dir, flush=True)\n"
        "sys.stdin.read()\n"
    )
    owner = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert owner.stdout is not None
        line = owner.stdout.readline().split()
        if not line:
            unavailable("Apache Kafka did not start in the owner process")
        jvm, base = int(line[0]), Path(line[1])
        assert Path(f"/proc/{jvm}").exists() and base.is_dir()
        owner.kill()
        owner.wait(10)
        deadline = time.monotonic() + 30
        while Path(f"/proc/{jvm}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not Path(f"/proc/{jvm}").exists(), "the JVM outlived its SIGKILLed owner"
        assert base.is_dir()  # nobody removed it yet: the owner died without a word
        sweep_stale(base.parent)
        assert not base.exists()
    finally:
        owner.kill()
