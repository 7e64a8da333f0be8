"""Rebalance warnings that need nothing done are info, not warnings (docs/operations.md)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from sessionizer.stream.logs import install_quiet_rebalance

HEARTBEAT = "aiokafka.consumer.group_coordinator"


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def root() -> Iterator[Collect]:
    handler, root = Collect(), logging.getLogger()
    level = root.level
    root.addHandler(handler)
    install_quiet_rebalance()
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def _log(logger: str, level: int, message: str) -> None:
    logging.getLogger(logger).log(level, message, "g1")


def test_rebalance_warnings_are_not_shown_at_the_default_level(root: Collect) -> None:
    logging.getLogger().setLevel(logging.WARNING)
    _log(HEARTBEAT, logging.WARNING, "Heartbeat failed for group %s because it is rebalancing")
    _log(
        "faust.transport.drivers.aiokafka",
        logging.WARNING,
        "[^--Consumer]: exception performing seek when flow not active IllegalStateError: %s",
    )
    _log(HEARTBEAT, logging.WARNING, "Heartbeat session expired - marking coordinator dead %s")
    _log(HEARTBEAT, logging.ERROR, "Error in group coordinator %s: because it is rebalancing")
    # Other problems still are, whatever their logger.
    assert [(r.levelname, r.getMessage()) for r in root.records] == [
        ("WARNING", "Heartbeat session expired - marking coordinator dead g1"),
        ("ERROR", "Error in group coordinator g1: because it is rebalancing"),
    ]


def test_with_loglevel_info_they_are_shown_as_info(root: Collect) -> None:
    logging.getLogger().setLevel(logging.INFO)
    _log(HEARTBEAT, logging.WARNING, "Heartbeat failed for group %s because it is rebalancing")
    assert [(r.levelname, r.getMessage()) for r in root.records] == [
        ("INFO", "Heartbeat failed for group g1 because it is rebalancing")
    ]
