"""The Kafka client's repeated messages are limited (sessionizer/stream/logs.py)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from sessionizer.stream.logs import RepeatFilter, limit_repeats


def _record(msg: str, *args: object, name: str = "aiokafka.conn") -> logging.LogRecord:
    return logging.LogRecord(name, logging.ERROR, __file__, 1, msg, args, None)


def test_a_repeated_message_passes_once_per_window_then_says_how_many_were_held() -> None:
    now = [0.0]
    flt = RepeatFilter(30.0, clock=lambda: now[0])
    assert flt.filter(_record("Unable connect to node with id %d: %s", 3, "refused"))
    for i in range(40):  # the same message, other numbers: held back
        now[0] += 0.5
        assert not flt.filter(_record("Unable connect to node with id %d: %s", 3 + i, "refused"))
    now[0] = 31.0
    back = _record("Unable connect to node with id %d: %s", 3, "refused")
    assert flt.filter(back)
    assert back.getMessage().endswith("(40 more like it in the last 30 s)")
    # Another message, another logger or another level is another key.
    assert flt.filter(_record("Failed fetch messages from %d", 2))
    assert flt.filter(_record("Unable connect to node with id 1: x", name="aiokafka.client"))


@pytest.fixture
def limited() -> Iterator[RepeatFilter]:
    """``limit_repeats`` for one test: the filter leaves every logger afterwards (it would
    hold back the same message in another test)."""
    import aiokafka.conn  # noqa: F401  (its module logger exists)

    flt = limit_repeats("aiokafka", window_s=60.0)
    yield flt
    for name in ["aiokafka", *logging.Logger.manager.loggerDict]:
        logging.getLogger(name).removeFilter(flt)


def test_limit_repeats_reaches_every_aiokafka_logger(
    limited: RepeatFilter, caplog: pytest.LogCaptureFixture
) -> None:
    flt = limited
    assert flt in logging.getLogger("aiokafka.conn").filters
    assert limit_repeats("aiokafka") is not flt  # a second call adds no second filter
    assert sum(isinstance(f, RepeatFilter) for f in logging.getLogger("aiokafka.conn").filters) == 1
    log = logging.getLogger("aiokafka.conn")
    with caplog.at_level(logging.ERROR, logger="aiokafka.conn"):
        for i in range(10):
            log.error("Unable connect to node with id %d", i)
    assert len([r for r in caplog.records if r.name == "aiokafka.conn"]) == 1


def test_info_and_below_always_pass() -> None:
    flt = RepeatFilter(30.0, clock=lambda: 0.0)
    for _ in range(3):
        rec = _record("Heartbeat failed for group g1 because it is rebalancing")
        rec.levelno = logging.INFO
        assert flt.filter(rec)
