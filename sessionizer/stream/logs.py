"""Quiet by default: what the Kafka client and Faust log is cut to what needs an operator.

* A rebalance's routine warnings become info (``install_quiet_rebalance``).
* Repeated messages are limited (``limit_repeats``): while a broker is down,
  aiokafka logs "Unable connect to node …" and "Failed fetch messages from …" at
  ERROR for every retry of every consumer and producer (about 40 lines a second
  per worker, measured in `make chaos-brokers`). The first occurrence of each
  message is what an operator needs; the rest are counted, and the count goes
  out with the next occurrence after the window.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable

__all__ = ["RepeatFilter", "install_quiet_rebalance", "limit_repeats"]

_NUMBERS = re.compile(r"\d+")


class RepeatFilter(logging.Filter):
    """Lets a warning or error through at most once per ``window_s`` (messages that differ
    only in their numbers are the same message); says how many it held back."""

    def __init__(self, window_s: float = 30.0, clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.window_s = window_s
        self.clock = clock
        self._seen: dict[tuple[str, int, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True  # what --loglevel info asked for, every time
        try:
            text = record.getMessage()
        except Exception:  # a malformed call: let logging report it as usual
            return True
        key = (record.name, record.levelno, _NUMBERS.sub("N", text))
        now = self.clock()
        last = self._seen.get(key)
        if last is not None and now - last[0] < self.window_s:
            self._seen[key] = (last[0], last[1] + 1)
            return False
        held = last[1] if last is not None else 0
        self._seen[key] = (now, 0)
        if held:
            record.msg = f"{text} ({held} more like it in the last {self.window_s:g} s)"
            record.args = None
        return True


def limit_repeats(prefix: str = "aiokafka", window_s: float = 30.0) -> RepeatFilter:
    """Puts one RepeatFilter on every logger under ``prefix`` (import the library first:
    a logger's filters do not apply to its children's records)."""
    flt = RepeatFilter(window_s)
    names = [n for n in logging.Logger.manager.loggerDict if n.split(".")[0] == prefix]
    for name in {prefix, *names}:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RepeatFilter) for f in logger.filters):
            logger.addFilter(flt)
    return flt


# Warnings every rebalance brings, and that need nothing done (the consumer
# rejoins, the seek is retried after the assignment): by logger, what the message holds.
_REBALANCE_NOISE = {
    "aiokafka.consumer.group_coordinator": ("because it is rebalancing",),
    "faust.transport.consumer": ("exception performing seek when flow not active",),
    "faust.transport.drivers.aiokafka": ("exception performing seek when flow not active",),
}


class _RebalanceNoise(logging.Filter):
    """Turns the rebalance warnings into info: shown with --loglevel info, not by default."""

    def __init__(self, marks: tuple[str, ...]) -> None:
        super().__init__()
        self.marks = marks

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.WARNING:
            return True
        message = record.getMessage()
        if not any(mark in message for mark in self.marks):
            return True
        record.levelno, record.levelname = logging.INFO, "INFO"
        return logging.getLogger(record.name).isEnabledFor(logging.INFO)


def install_quiet_rebalance() -> None:
    """At the default log level a rebalance prints the ready lines only. Idempotent."""
    for name, marks in _REBALANCE_NOISE.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _RebalanceNoise) for f in logger.filters):
            logger.addFilter(_RebalanceNoise(marks))
