"""Plain aiokafka helpers: connection options, topic creation, a control-topic reader."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from .. import codec
from ..core.config import ConfigError
from ..settings import Settings
from ..stream.compat import Broker, detect_broker, refresh_metadata

log = logging.getLogger(__name__)
_T = TypeVar("_T")

#: The worker's state table; Faust names its changelog ``{app_id}-state-changelog``.
STATE_TABLE = "state"
#: How long start-up retries what a broker fault makes fail (a dead node in the metadata).
START_RETRY_S = 60.0


def client_options(settings: Settings) -> dict[str, Any]:
    """aiokafka connection options (bootstrap + security) from settings."""
    from .security import aiokafka_options

    opts: dict[str, Any] = {"bootstrap_servers": ",".join(settings.broker_hosts)}
    sec = getattr(settings, "security", None)
    if sec is not None:
        opts.update(aiokafka_options(sec))
    return opts


#: Every consumer of ours that reads outputs or state reads committed records only: an
#: aborted transaction's records are never shown, replayed or forwarded. Without
#: transactions it changes nothing (the last stable offset is the high watermark),
#: on Apache Kafka and on the embedded broker alike (docs/broker.md).
READ_COMMITTED = "read_committed"


def reader_options(settings: Settings) -> dict[str, Any]:
    """``client_options`` for a consumer of outputs or state: committed records only."""
    return {**client_options(settings), "isolation_level": READ_COMMITTED}


async def reached(consumer: AIOKafkaConsumer, tp: TopicPartition, end: int) -> bool:
    """Has ``consumer`` read ``tp`` up to ``end``? By its position, never by the last
    record it got: a transaction's commit marker (and an aborted transaction) takes
    offsets that no consumer receives, so the last record's offset + 1 can stay below
    ``end`` for good, while the position moves past them."""
    position: int = await consumer.position(tp)
    return position >= end


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    compacted: bool = False


def topic_specs(settings: Settings) -> list[TopicSpec]:
    t = settings.topics
    n = settings.partitions
    return [
        TopicSpec(t.raw_events, n),
        TopicSpec(t.sessionized_events, n),
        # Keyed by session_uuid: compaction keeps the latest revision of each session.
        TopicSpec(t.sessions, n, compacted=True),
        TopicSpec(t.dead_letters, n),
        TopicSpec(t.opt_out_control, n, compacted=True),
        # Keyed by device, like sessionized-events (docs/integrations.md).
        *(TopicSpec(t.integration(name), n) for name in settings.integrations),
    ]


def repartition_topic(settings: Settings) -> str:
    return f"{settings.app_id}-repartition"


def worker_topic_specs(settings: Settings) -> list[TopicSpec]:
    """Every topic a worker uses: the product's and Faust's own (which Faust does not
    declare itself: ``topic_allow_declare=False``, so creation retries broker faults)."""
    n = settings.partitions
    return [
        *topic_specs(settings),
        TopicSpec(f"{settings.app_id}-{STATE_TABLE}-changelog", n, compacted=True),
        TopicSpec(f"{settings.app_id}-__assignor-__leader", 1),
        *([TopicSpec(repartition_topic(settings), n)] if settings.repartition else []),
    ]


async def retrying(what: str, attempt: Callable[[], Awaitable[_T]]) -> _T:
    """``attempt()`` again while it fails with a retriable Kafka error, for START_RETRY_S:
    a broker that just died is still in everyone's metadata for a while."""
    deadline = time.monotonic() + START_RETRY_S
    delay = 0.5
    while True:
        try:
            return await attempt()
        except KafkaError as exc:
            if not exc.retriable or time.monotonic() > deadline:
                raise
            log.warning("%s failed (%s); retrying in %.1f s", what, exc, delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 5.0)


async def prepare_broker(settings: Settings) -> tuple[Broker, list[str]]:
    """The worker's start-up against its broker: which broker it is, and its topics."""
    broker = await retrying("broker detection", lambda: detect_broker(client_options(settings)))
    check_guarantee(settings, broker)  # before anything is created
    specs = worker_topic_specs(settings)
    created = await retrying("topic creation", lambda: ensure_topics(settings, specs))
    return broker, created


def check_guarantee(settings: Settings, broker: Broker) -> None:
    """ConfigError when ``broker`` cannot give ``processing_guarantee``: refused at
    start-up, not by a transactional producer failing halfway."""
    if settings.processing_guarantee == "exactly_once" and not broker.transactions:
        raise ConfigError(
            settings.label("processing_guarantee"),
            f"exactly_once needs Kafka transactions, which {broker.name} does not "
            "support; use at_least_once there, or Apache Kafka",
        )


async def ensure_topics(
    settings: Settings, specs: Iterable[TopicSpec] | None = None, *, timeout_s: float = 30.0
) -> list[str]:
    """Creates the topics that are missing; returns the names it created."""
    specs = list(specs if specs is not None else topic_specs(settings))
    admin = AIOKafkaAdminClient(**client_options(settings), request_timeout_ms=10_000)
    await asyncio.wait_for(admin.start(), timeout_s)
    created: list[str] = []
    try:
        existing = set(await admin.list_topics())
        new = [
            NewTopic(
                s.name,
                s.partitions,
                settings.replication_factor,
                topic_configs={"cleanup.policy": "compact"} if s.compacted else {},
            )
            for s in specs
            if s.name not in existing
        ]
        if new:
            with contextlib.suppress(TopicAlreadyExistsError):  # another worker won the race
                await admin.create_topics(new)
            created = [t.name for t in new]
    finally:
        await admin.close()
    return created


async def topic_partitions(
    consumer: AIOKafkaConsumer, topic: str, *, tries: int = 50
) -> list[TopicPartition]:
    """The topic's partitions; a new topic's metadata can take a moment to appear."""
    parts = consumer.partitions_for_topic(topic)
    for _ in range(tries):
        if parts:
            break
        await asyncio.sleep(0.1)
        await refresh_metadata(consumer)
        parts = consumer.partitions_for_topic(topic)
    return [TopicPartition(topic, p) for p in sorted(parts or ())]


class ControlReader:
    """R19: every worker reads the whole compacted opt-out-control topic (a global table).

    A group-less consumer from the beginning; ``control`` is the dict the engines
    share, so an entry applies to every record processed after it is read.
    """

    def __init__(self, settings: Settings, control: dict[str, bool]) -> None:
        self.settings = settings
        self.control = control
        self.ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._consumer: AIOKafkaConsumer | None = None

    async def start(self) -> None:
        topic = self.settings.topics.opt_out_control
        c = AIOKafkaConsumer(
            **reader_options(self.settings),
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        # Known before it starts, so a stop during start-up (SIGTERM) closes it.
        self._consumer = c
        await c.start()
        tps = await topic_partitions(c, topic)
        c.assign(tps)
        await c.seek_to_beginning(*tps)
        ends = await c.end_offsets(tps) if tps else {}
        self._task = asyncio.create_task(self._run(ends))

    async def _run(self, ends: dict[TopicPartition, int]) -> None:
        c = self._consumer
        assert c is not None
        pending = dict(ends)
        while True:
            for tp, end in list(pending.items()):
                if await reached(c, tp, end):
                    del pending[tp]
            if not pending and not self.ready.is_set():
                self.ready.set()
            batches = await c.getmany(timeout_ms=500, max_records=1000)
            for msgs in batches.values():
                for m in msgs:
                    self.apply(m.key, m.value)

    def failure(self) -> str | None:
        """Why the reader stopped, if it did (it runs until the worker stops)."""
        t = self._task
        if t is None or not t.done():
            return None
        if t.cancelled():
            return "cancelled"
        exc = t.exception()
        return "stopped" if exc is None else f"{type(exc).__name__}: {exc}"

    def apply(self, key: bytes | None, value: bytes | None) -> None:
        if key is None:
            return
        name = key.decode("utf-8", "replace")
        if value is None:
            self.control.pop(name, None)
            return
        try:
            flag = codec.loads(value).get("opted_out")
        except Exception:
            flag = None
        if type(flag) is bool:
            self.control[name] = flag
        else:
            log.warning("ignoring malformed opt-out-control entry for %r", name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            await self._consumer.stop()
