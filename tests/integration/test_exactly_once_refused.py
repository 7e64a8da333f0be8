"""exactly_once on the embedded broker, which has no transactions (docs/broker.md):
the worker refuses it at start-up with one line naming the setting, exit 2, and
creates nothing; on Apache Kafka the same settings get past that check."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from sessionizer.kafka.clients import prepare_broker
from sessionizer.settings import load_settings
from sessionizer.testing.harness import Names

pytestmark = pytest.mark.integration


async def test_the_worker_refuses_exactly_once_on_the_embedded_broker(
    embedded_broker: Any, unique: Callable[[str], str], tmp_path: Path
) -> None:
    names = Names(unique("eos"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIONIZER_")}
    env.update(names.env(), SESSIONIZER_PROCESSING_GUARANTEE="exactly_once")
    args = ["worker", "--broker", embedded_broker.url, "--web-port", "0"]
    res = subprocess.run(
        [sys.executable, "-m", "sessionizer", *args, "--data-dir", str(tmp_path / "data")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert res.returncode == 2, res.stderr
    assert res.stderr.splitlines() == [
        "sessionizer: invalid setting processing_guarantee "
        "(SESSIONIZER_PROCESSING_GUARANTEE): exactly_once needs Kafka transactions, which "
        "Tansu (embedded development broker) does not support; use at_least_once there, "
        "or Apache Kafka"
    ]
    admin = AIOKafkaAdminClient(bootstrap_servers=embedded_broker.bootstrap)
    await admin.start()
    try:
        created = set(await admin.list_topics()) & set(names.topics.values())
    finally:
        await admin.close()
    assert created == set()


async def test_kafka_passes_the_check(kafka: Any, unique: Callable[[str], str]) -> None:
    names = Names(unique("eos"))
    settings = load_settings(
        env={**names.env(), "SESSIONIZER_PROCESSING_GUARANTEE": "exactly_once"},
        broker_url=kafka.url,
    )
    broker, created = await prepare_broker(settings)
    assert broker.transactions
    assert settings.topics.raw_events in created
