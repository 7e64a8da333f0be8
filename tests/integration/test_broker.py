"""The broker the integration suite runs on: Kafka basics we rely on, and a clean stop."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from sessionizer.tools.broker import BrokerUnavailable, EmbeddedBroker, resolve_binary

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

PARTITIONS = 4


async def _create_topic(bootstrap: str, topic: NewTopic) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([topic])
    finally:
        await admin.close()


async def test_keyed_records_round_trip_through_a_consumer_group(
    broker: Any, unique: Callable[[str], str]
) -> None:
    topic, group = unique("events"), unique("group")
    await _create_topic(broker.bootstrap, NewTopic(topic, PARTITIONS, 1))
    sent = [(f"device-{i % 10}".encode(), f"event-{i}".encode()) for i in range(60)]

    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    await producer.start()
    try:
        for key, value in sent:
            await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()

    # A short session timeout keeps the group join short on the embedded broker,
    # which holds JoinGroup for half of it (docs/broker.md).
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=broker.bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=6000,
        heartbeat_interval_ms=2000,
    )
    await consumer.start()
    got: list[tuple[int, bytes, bytes]] = []
    try:
        deadline = time.monotonic() + 45
        while len(got) < len(sent) and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            got += [(tp.partition, m.key, m.value) for tp, ms in batch.items() for m in ms]
        assert consumer.assignment() == {TopicPartition(topic, p) for p in range(PARTITIONS)}
        await consumer.commit()
        committed = [await consumer.committed(TopicPartition(topic, p)) for p in range(PARTITIONS)]
    finally:
        await consumer.stop()

    assert sorted((k, v) for _, k, v in got) == sorted(sent)
    partitions_of: dict[bytes, int] = {}
    for partition, key, _ in got:
        assert partitions_of.setdefault(key, partition) == partition, "a key moved partition"
    assert len(set(partitions_of.values())) > 1, "all keys landed in one partition"
    for key in partitions_of:
        # Each key's records arrive in the order they were produced.
        assert [v for _, k, v in got if k == key] == [v for k, v in sent if k == key]
    assert sum(c or 0 for c in committed) == len(sent)


async def test_a_compacted_topic_can_be_created_and_keeps_tombstones(
    broker: Any, unique: Callable[[str], str]
) -> None:
    topic = unique("control")
    await _create_topic(
        broker.bootstrap, NewTopic(topic, 1, 1, topic_configs={"cleanup.policy": "compact"})
    )
    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
    await admin.start()
    try:
        [response] = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    finally:
        await admin.close()
    [resource] = response.resources
    configs = {entry[0]: entry[1] for entry in resource[4]}
    assert configs.get("cleanup.policy") == "compact"

    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b'{"opted_out": true}', key=b"app/device")
        await producer.send_and_wait(topic, None, key=b"app/device")  # tombstone
    finally:
        await producer.stop()

    tp = TopicPartition(topic, 0)
    consumer = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        records: list[Any] = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (not records or records[-1].value is not None):
            batch = await consumer.getmany(tp, timeout_ms=500)
            records += batch.get(tp, [])
    finally:
        await consumer.stop()
    # Compaction may or may not have run; the latest value must be the tombstone.
    assert records, "nothing read back"
    assert records[-1].key == b"app/device"
    assert records[-1].value is None


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _gone(pid: int) -> bool:
    # No /proc entry: exited *and* reaped, so no zombie either.
    return not os.path.exists(f"/proc/{pid}")


@pytest.mark.skipif(
    bool(os.environ.get("SESSIONIZER_TEST_BROKER")), reason="tests the embedded broker"
)
@pytest.mark.parametrize("how", ["stop", "kill"])
def test_the_embedded_broker_stops_cleanly(how: str) -> None:
    try:
        broker = EmbeddedBroker()
    except BrokerUnavailable as err:
        pytest.skip(str(err))
    with broker:
        pid, port = broker.pid, broker.port
        assert pid is not None and broker.running
        assert broker.bootstrap == f"127.0.0.1:{port}"
        assert broker.url == f"kafka://127.0.0.1:{port}"
        assert not _port_free(port)
        t0 = time.monotonic()
        getattr(broker, how)()
        assert time.monotonic() - t0 < 10
    assert not broker.running
    assert _gone(pid)
    assert _port_free(port)


def test_a_missing_binary_is_one_clear_line(tmp_path: Any) -> None:
    with pytest.raises(BrokerUnavailable) as err:
        resolve_binary(str(tmp_path / "no-such-tansu"))
    message = str(err.value)
    assert "\n" not in message
    assert "--broker" in message and "SESSIONIZER_BROKER_URL" in message
