"""Prometheus metrics of a worker, read from the engines when scraped.

The §7.4 counts live in each engine's ``Counts`` and only grow; an engine is
replaced when its partition is reassigned, so the counts of dropped engines are
kept in ``retired`` and added to the live ones: counters never go down. The
hot path pays for one histogram observation per batch, nothing per event.

What is read of the worker is the small :class:`WorkerView` protocol (the
worker's ``Worker`` is one), so this module does not depend on the worker.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..core.engine import Engine
from ..core.model import Counts
from .runtime import Runtime
from .store import StateStore


class RunnerView(Protocol):
    """One engine partition of a worker (``worker.Slot``)."""

    @property
    def applied(self) -> int:
        """Highest source offset whose effects are in the state; -1: none."""

    @property
    def engine(self) -> Engine: ...


class ControlView(Protocol):
    @property
    def ready(self) -> asyncio.Event:
        """Set once the opt-out control topic is read up to its end at start-up."""


class WorkerView(Protocol):
    """What metrics and /health read of a worker (``worker.Worker``)."""

    @property
    def runtime(self) -> Runtime:
        """Assignment and rebalancing state."""

    @property
    def runners(self) -> Mapping[int, RunnerView]:
        """The live engine partitions."""

    @property
    def store(self) -> StateStore: ...

    @property
    def control_reader(self) -> ControlView: ...

    def transactions(self) -> tuple[int, int] | None:
        """(committed, aborted) checkpoint transactions; None at least once."""

    @property
    def agent_failure(self) -> str | None:
        """Why the engine agent stopped; None while it runs."""

    def highwater(self, partition: int) -> int | None:
        """The offset after the input partition's last record, if known."""


PREFIX = "sessionizer_"

HELP = {
    "records_in": "Input records read.",
    "records_dead_lettered": "Input records dead-lettered whole (undecodable, no identity).",
    "records_opted_out": "Malformed records of an opted-out key, dropped.",
    "records_internal_error": "Records that failed unexpectedly (internal_error).",
    "events_in": "Decoded input events.",
    "events_forwarded": "Events forwarded to sessionized-events.",
    "events_control": "Events consumed as control (session_start/end, attributes, opt_out).",
    "events_opted_out": "Events dropped because their key opted out.",
    "events_dead_lettered": "Events dead-lettered.",
    "events_late": "Events forwarded as late, with null session fields.",
    "sessions_started": "Sessions started.",
    "sessions_revised": "Session records emitted again (revision > 0).",
    "sessions_ended": "Sessions ended, once per session, by end reason.",
    "dead_letters": "Dead letters by reason.",
}

BATCH_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def add_counts(into: dict[str, Any], counts: dict[str, Any]) -> None:
    """``into += counts`` for ``Counts.as_dict()`` shapes (ints and reason -> int dicts)."""
    for name, value in counts.items():
        if isinstance(value, dict):
            sub = into.setdefault(name, {})
            for reason, n in value.items():
                sub[reason] = sub.get(reason, 0) + n
        else:
            into[name] = into.get(name, 0) + value


# Seconds: from one-event sessions to a long day.
SESSION_BUCKETS = (0, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 43200, 86400)


@dataclass
class PartitionStats:
    partition: int
    applied: int  # highest source offset in the state, -1 for none
    watermark: int
    open_sessions: int | None  # None: no engine yet (nothing processed since assignment)
    keys: int | None
    lag: int | None  # None: highwater not known yet
    events_ahead: int = 0  # R26: events more than grace ahead of the watermark
    ahead_key: str = ""  # the session key of the latest of them ("" for none)
    ahead_ms: int = 0  # how far that one ran ahead of the watermark


class Metrics:
    """The worker's own registry: engine counts, per-partition gauges, batch latency."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.batch_seconds = Histogram(
            "sessionizer_batch_seconds",
            "Processing time of one batch of records, outputs and state writes included.",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.session_seconds = Histogram(
            "sessionizer_session_duration_seconds",
            "Duration of sessions at their first close (revision 0).",
            buckets=SESSION_BUCKETS,
            registry=self.registry,
        )
        self.retired: dict[str, Any] = {}
        self.retired_ahead = 0

    def retire(self, counts: Counts) -> None:
        """An engine is dropped (partition revoked): keep what it counted."""
        add_counts(self.retired, counts.as_dict())
        self.retired_ahead += counts.events_ahead

    def watch(self, pipe: WorkerView, topic: str) -> None:
        """Expose ``pipe``'s engines; ``topic`` is the topic the engines consume."""
        self.registry.register(_EngineCollector(self, pipe, topic))

    def totals(self, pipe: WorkerView) -> dict[str, Any]:
        out: dict[str, Any] = {}
        add_counts(out, self.retired)
        for r in list(pipe.runners.values()):
            add_counts(out, r.engine.counts.as_dict())
        return out


def partition_stats(pipe: WorkerView, topic: str) -> list[PartitionStats]:
    """Assigned engine partitions (and any live engine) with offsets, watermark and lag."""
    assigned = pipe.runtime.assigned()
    runners = dict(pipe.runners)
    out = []
    for p in sorted(assigned | set(runners)):
        r = runners.get(p)
        if r is not None:
            eng = r.engine
            applied, wm = r.applied, eng.watermark
            open_n: int | None = eng.open_sessions()
            keys: int | None = eng.key_count()
        else:
            # No batch since the assignment: what the state says was applied.
            marker = pipe.store.marker(p)
            applied, wm = marker.offset, marker.watermark
            open_n = keys = None
        stats = PartitionStats(p, applied, wm, open_n, keys, _lag(pipe.highwater(p), applied))
        if r is not None and r.engine.counts.events_ahead:
            eng = r.engine
            stats.events_ahead = eng.counts.events_ahead
            stats.ahead_key = eng.ahead_key
            stats.ahead_ms = max(0, eng.ahead_ts - eng.watermark)
        out.append(stats)
    return out


def _lag(highwater: int | None, applied: int) -> int | None:
    # highwater = the offset of the next record; approximate on brokers that
    # under-report end offsets of multi-record batches (Tansu, docs/broker.md).
    if highwater is None:
        return None
    return max(0, highwater - applied - 1)


def ready(pipe: WorkerView) -> bool:
    """Joined the group at least once, not rebalancing, and the opt-out topic read."""
    rt = pipe.runtime
    return rt.joined and not rt.rebalancing and pipe.control_reader.ready.is_set()


class _EngineCollector(Collector):
    def __init__(self, metrics: Metrics, pipe: WorkerView, topic: str) -> None:
        self.metrics = metrics
        self.pipe = pipe
        self.topic = topic

    def describe(self) -> Iterable[Metric]:
        return []  # dynamic: collected at scrape time only

    def collect(self) -> Iterator[Metric]:
        for name, value in self.metrics.totals(self.pipe).items():
            help_ = HELP.get(name, name.replace("_", " ") + ".")
            if isinstance(value, dict):
                fam = CounterMetricFamily(PREFIX + name, help_, labels=["reason"])
                for reason, n in sorted(value.items()):
                    fam.add_metric([reason], n)
            else:
                fam = CounterMetricFamily(PREFIX + name, help_, value=value)
            yield fam
        ahead = self.metrics.retired_ahead
        ahead += sum(r.engine.counts.events_ahead for r in list(self.pipe.runners.values()))
        yield CounterMetricFamily(
            PREFIX + "events_ahead",
            "Events more than grace ahead of their partition's watermark (R26), not moving it.",
            value=ahead,
        )

        gauges = {
            "watermark_ms": "Event-time watermark of the partition (ms since the epoch).",
            "open_sessions": "Open sessions in the partition's engine.",
            "state_keys": "Session keys held in the partition's engine.",
            "applied_offset": "Highest source offset whose effects are in the state.",
            "consumer_lag": "Records behind the highwater (approximate on the embedded broker).",
        }
        fams = {
            n: GaugeMetricFamily(PREFIX + n, h, labels=["partition"]) for n, h in gauges.items()
        }
        for s in partition_stats(self.pipe, self.topic):
            label = [str(s.partition)]
            if s.watermark > 0:  # 0: no event yet, not 1970 (a 56-year lag on the dashboard)
                fams["watermark_ms"].add_metric(label, s.watermark)
            fams["applied_offset"].add_metric(label, s.applied)
            if s.open_sessions is not None:
                fams["open_sessions"].add_metric(label, s.open_sessions)
            if s.keys is not None:
                fams["state_keys"].add_metric(label, s.keys)
            if s.lag is not None:
                fams["consumer_lag"].add_metric(label, s.lag)
        yield from fams.values()
        yield GaugeMetricFamily(
            PREFIX + "ready", "1 when the worker is ready (see /health).", value=ready(self.pipe)
        )
        txns = self.pipe.transactions()
        if txns is not None:  # exactly once
            fam = CounterMetricFamily(
                PREFIX + "transactions",
                "Checkpoint transactions by result (exactly once): committed, aborted.",
                labels=["result"],
            )
            fam.add_metric(["committed"], txns[0])
            fam.add_metric(["aborted"], txns[1])
            yield fam
        yield GaugeMetricFamily(
            PREFIX + "agent_running",
            "0 once the engine agent stopped on an error (the process lives on; see /health).",
            value=self.pipe.agent_failure is None,
        )
