"""Fixtures for tests against a real broker: the embedded one, or yours.

Set SESSIONIZER_TEST_BROKER=host:port (or kafka://host:port) to run the suite
against an existing Kafka instead of starting the embedded broker.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from sessionizer.broker import BrokerUnavailable, EmbeddedBroker

ENV_TEST_BROKER = "SESSIONIZER_TEST_BROKER"


@dataclass(frozen=True)
class ExternalBroker:
    """A broker someone else runs: same `.bootstrap` and `.url` as EmbeddedBroker."""

    bootstrap: str

    @property
    def url(self) -> str:
        return f"kafka://{self.bootstrap}"


def external_bootstrap() -> str | None:
    value = os.environ.get(ENV_TEST_BROKER, "").strip()
    return value.removeprefix("kafka://") or None


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker | ExternalBroker]:
    """One broker for the whole session; tests keep apart through unique names."""
    bootstrap = external_bootstrap()
    if bootstrap:
        yield ExternalBroker(bootstrap)
        return
    try:
        embedded = EmbeddedBroker().start()
    except BrokerUnavailable as err:
        pytest.skip(str(err))
    try:
        yield embedded
    finally:
        embedded.stop()


@pytest.fixture
def unique(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """`unique("events")` -> a topic or group name no other test (or earlier run) uses."""
    # Kafka names allow [A-Za-z0-9._-] only; test ids carry brackets and more.
    test = re.sub(r"[^A-Za-z0-9._-]+", "-", request.node.name)[:80]

    def make(name: str) -> str:
        return f"{name}-{test}-{uuid.uuid4().hex[:8]}"

    return make
