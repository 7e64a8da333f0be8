"""Fixtures for tests against a real broker: Apache Kafka, or yours.

The `broker` fixture is one Apache Kafka node (sessionizer/tools/apache_kafka.py) for
the whole session. Set SESSIONIZER_TEST_BROKER=host:port (or kafka://host:port)
to run the suite against an existing Kafka instead, or =embedded for the
embedded development broker. Without Java the Kafka tests are skipped with one
line, except in CI (CI=true), where that is a failure.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from sessionizer.tools.apache_kafka import KafkaCluster, KafkaUnavailable
from sessionizer.tools.broker import BrokerUnavailable, EmbeddedBroker

ENV_TEST_BROKER = "SESSIONIZER_TEST_BROKER"


@dataclass(frozen=True)
class ExternalBroker:
    """A broker someone else runs: same `.bootstrap` and `.url` as the others."""

    bootstrap: str

    @property
    def url(self) -> str:
        return f"kafka://{self.bootstrap}"


def external_bootstrap() -> str | None:
    value = os.environ.get(ENV_TEST_BROKER, "").strip()
    return value.removeprefix("kafka://") or None


_SKIPPED_BECAUSE: set[str] = set()


def unavailable(reason: str) -> None:
    """Skips the test, or fails it in CI: there a broker that cannot start is a defect."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI: {reason}", pytrace=False)
    _SKIPPED_BECAUSE.add(reason)
    pytest.skip(reason)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    # One line for the whole run, not one per skipped test.
    for reason in sorted(_SKIPPED_BECAUSE):
        terminalreporter.write_line(f"integration tests skipped: {reason}", yellow=True)


def running_kafka(nodes: int) -> Iterator[KafkaCluster]:
    """A fresh Kafka of ``nodes`` nodes while the fixture lasts (or a skip: `unavailable`)."""
    try:
        cluster = KafkaCluster(nodes=nodes).start()
    except KafkaUnavailable as err:
        unavailable(f"Apache Kafka cannot run here: {err}; see docs/broker.md#apache-kafka")
        raise AssertionError("unreachable") from None
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def kafka() -> Iterator[KafkaCluster]:
    """One Apache Kafka node (combined KRaft broker and controller) for the session."""
    yield from running_kafka(1)


@pytest.fixture(scope="session")
def embedded_broker() -> Iterator[EmbeddedBroker]:
    """The embedded development broker, for the paths that use it (demo, `broker`)."""
    try:
        embedded = EmbeddedBroker().start()
    except BrokerUnavailable as err:
        unavailable(str(err))
        raise AssertionError("unreachable") from None
    try:
        yield embedded
    finally:
        embedded.stop()


@pytest.fixture(scope="session")
def broker(
    request: pytest.FixtureRequest,
) -> Iterator[KafkaCluster | EmbeddedBroker | ExternalBroker]:
    """The broker the integration tests run on; tests keep apart through unique names."""
    bootstrap = external_bootstrap()
    if bootstrap == "embedded":
        yield request.getfixturevalue("embedded_broker")
    elif bootstrap:
        yield ExternalBroker(bootstrap)
    else:
        yield request.getfixturevalue("kafka")


@pytest.fixture
def unique(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """`unique("events")` -> a topic or group name no other test (or earlier run) uses."""
    # Kafka names allow [A-Za-z0-9._-] only; test ids carry brackets and more.
    test = re.sub(r"[^A-Za-z0-9._-]+", "-", request.node.name)[:80]

    def make(name: str) -> str:
        return f"{name}-{test}-{uuid.uuid4().hex[:8]}"

    return make
