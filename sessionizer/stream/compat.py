"""The worker's runtime on Faust: the one adapter, and the brokers' quirks.

The worker (``stream/worker.py``) needs a group's assignment and revocation
events, a producer, a commit for lag tools, a local store, timers, tasks and a
web server (:class:`~sessionizer.stream.runtime.Runtime`). :class:`FaustRuntime`
gives them on Faust, and this module is the one home of everything taken from
Faust and aiokafka beyond their public API: the tuning, the patches (LeaveGroup
on a broker that numbers generations from 0; a topic Faust must not fetch) and
the private calls. ``tests/test_layout.py`` keeps private access here. They
were checked against the pinned versions only: ``check_versions()`` refuses
others at start-up, so an upgrade is a deliberate change of this module.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import warnings
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import faust
from faust.types import TP

from ..settings import Security, Settings

#: The versions this module was checked against (pyproject.toml pins the same).
PINNED = {"faust-streaming": "0.15.3", "aiokafka": "0.14.0"}

#: Faust settings for any broker; see docs/broker.md.
FAUST_TUNING: dict[str, Any] = {
    # Tansu holds every JoinGroup for ceil(session_timeout / 2): Faust's 60 s
    # default made a worker wait 30 s before its first event. 10 s is aiokafka's
    # own default; on a real Kafka it also moves a dead worker's partitions sooner.
    "broker_session_timeout": 10.0,
    # Keep heartbeats at most a third of the session timeout, as Kafka advises.
    "broker_heartbeat_interval": 3.0,
}


@dataclass(frozen=True)
class Broker:
    """What differs between the brokers the worker runs on, found once at start-up."""

    name: str
    #: ListOffsets(latest) is the offset after the last record (Tansu: after the
    #: last batch's first record).
    exact_end_offsets: bool
    #: Idempotent and transactional producers from aiokafka work.
    transactions: bool
    #: Group generations start at 0 (Kafka: 1), so aiokafka skips LeaveGroup on
    #: shutdown unless install_leave_group_fix() is in place.
    generations_from_zero: bool

    def faust_settings(self) -> dict[str, Any]:
        # Faust's recovery check (ConsistencyError when a changelog's end offset is
        # below what was read of it) is right wherever end offsets are exact; on
        # Tansu it stopped a worker taking over a partition it had read as a standby.
        return {**FAUST_TUNING, "recovery_consistency_check": self.exact_end_offsets}


KAFKA = Broker("Apache Kafka", True, transactions=True, generations_from_zero=False)
TANSU = Broker("Tansu (embedded development broker)", False, False, generations_from_zero=True)

_CREATE_PARTITIONS = 37  # ApiVersions key: every Kafka since 1.0 has it, Tansu does not


async def detect_broker(options: Mapping[str, Any]) -> Broker:
    """The broker behind these aiokafka connection options, from its ApiVersions answer
    (any node that answers: a dead one stays in the metadata for a while)."""
    from aiokafka import AIOKafkaClient
    from aiokafka.errors import NodeNotReadyError

    client = AIOKafkaClient(**options)
    try:
        await client.bootstrap()
        for node in client.cluster.brokers():
            conn = await client._get_conn(node.nodeId)
            if conn is not None:
                versions: Mapping[int, Any] = conn._versions
                return KAFKA if _CREATE_PARTITIONS in versions else TANSU
    finally:
        await client.close()
    raise NodeNotReadyError("no broker of the cluster answered")


class WorkerApp(faust.App):
    """Faust's app with a hook that runs first when it stops.

    Faust stops its consumer and then its tables before it sends
    ``on_before_shutdown``; a reader of Faust's own (the direct input reader)
    must finish its batch and stop before that, while the tables and the
    producer still work.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.before_stop: list[Callable[[], Awaitable[None]]] = []

    async def on_stop(self) -> None:
        for hook in self.before_stop:
            await hook()
        await super().on_stop()


def check_versions() -> str | None:
    """One line naming each package whose installed version is not the pinned one."""
    wrong = []
    for name, pinned in PINNED.items():
        try:
            have = version(name)
        except PackageNotFoundError:
            have = "missing"
        if have != pinned:
            wrong.append(f"{name} {have} (expected {pinned})")
    if not wrong:
        return None
    return (
        "the worker relies on internals of these exact versions: "
        + ", ".join(wrong)
        + "; install the versions pinned in pyproject.toml"
    )


def install_leave_group_fix() -> None:
    """Make aiokafka leave the group on shutdown when Tansu numbered the generation 0.

    aiokafka sends LeaveGroup only when `generation > 0`; Kafka's generations
    start at 1, Tansu's at 0. Without a LeaveGroup, Tansu keeps the stopped
    member until its session times out, so the next start of the same group
    waits about 2 x session timeout (see docs/broker.md). LeaveGroup carries no
    generation, so the fix is a no-op on a real Kafka. Idempotent.
    """
    from aiokafka.consumer.group_coordinator import GroupCoordinator

    original = GroupCoordinator._maybe_leave_group
    if getattr(original, "_sessionizer_fix", False):
        return

    async def _maybe_leave_group(self: Any) -> None:
        if self.generation == 0 and self.member_id:
            self.generation = 1  # only to pass aiokafka's `> 0` guard
        await original(self)

    _maybe_leave_group._sessionizer_fix = True  # type: ignore[attr-defined]
    GroupCoordinator._maybe_leave_group = _maybe_leave_group


def exclude_from_fetch(app: faust.App, topic: str) -> None:
    """Faust's fetcher leaves ``topic`` alone; the group still assigns its partitions.

    Faust fetches the partitions it counts as active: all assigned ones, less
    those paused, plus those resumed after recovery or a full buffer. The
    topic's partitions are kept out of each of these, so its records reach no
    stream (the direct reader reads them, sessionizer/stream/reader.py).
    """
    consumer: Any = app.consumer

    def keep(tps: Any) -> set[TP]:
        return {tp for tp in tps if tp.topic != topic}

    set_active, resume, buffer_drop = (
        consumer._set_active_tps,
        consumer.resume_partitions,
        consumer.on_buffer_drop,
    )

    def _set_active_tps(tps: Any) -> Any:
        return set_active(keep(tps))

    def resume_partitions(tps: Any) -> None:
        resume(keep(tps))

    def on_buffer_drop(tp: TP) -> None:
        if tp.topic != topic:
            buffer_drop(tp)

    consumer._set_active_tps = _set_active_tps
    consumer.resume_partitions = resume_partitions
    consumer.on_buffer_drop = on_buffer_drop


def has_leader(consumer: Any, tp: TP) -> bool:
    """False while the consumer's latest metadata gives the partition no leader."""
    leader = consumer._client.cluster.leader_for_partition(tp)
    return leader is None or leader >= 0  # None: not in the metadata yet


#: How long a crashed worker may take to stop before it exits anyway.
CRASH_GRACE_S = 15.0


def _hard_exit(code: int, grace_s: float) -> None:  # pragma: no cover - ends the process
    logging.getLogger("sessionizer.worker").critical(
        "the worker did not stop within %g s of its crash; exiting with code %d", grace_s, code
    )
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stderr.flush()
    os._exit(code)


async def crash(app: faust.App, exc: BaseException, *, grace_s: float = CRASH_GRACE_S) -> None:
    """Stop the worker after a failure in its own loop, and make sure it exits non-zero.

    Faust's graceful stop first waits for every event taken from a stream to be
    acknowledged (``stream_wait_empty``); the failed agent never acknowledges its
    batch, so that wait could last forever (it did, in CI). A crashed worker has
    nothing in flight worth waiting for — the state's marker decides where its
    successor resumes — so the wait is skipped, and a timer thread ends the
    process with code 1 should the stop hang anywhere else.
    """
    with warnings.catch_warnings():  # "reconfiguring late": exactly the intent here
        warnings.simplefilter("ignore")
        app.conf.stream_wait_empty = False
    watchdog = threading.Timer(grace_s, _hard_exit, (1, grace_s))
    watchdog.daemon = True
    watchdog.start()
    await app.crash(exc)


class FaustTableStore:
    """The state table's local store by partition (runtime.LocalStore).

    The worker writes the changelog itself, one batch per partition, so it
    writes the local store directly too: by partition, which a RocksDB store
    needs (Faust's ``table[key] = value`` takes the partition from the event
    being processed, and a timer has none).
    """

    def __init__(self, table: Any) -> None:
        self.table = table
        self.data: Any = table.data
        # Faust's RocksDB store keeps one database per partition.
        self._by_partition = hasattr(self.data, "_db_for_partition")

    def _db(self, partition: int) -> Any:
        return self.data._db_for_partition(partition)

    def put(self, partition: int, key: bytes, value: bytes | None) -> None:
        if self._by_partition:
            db = self._db(partition)
            if value is None:
                db.delete(key)
            else:
                db.put(key, value)
        elif value is None:
            self.data.pop(key, None)
        else:
            self.data[key] = value

    def get(self, partition: int, key: bytes) -> bytes | None:
        if self._by_partition:
            value: bytes | None = self._db(partition).get(key)
            return value
        return self.data.get(key)  # type: ignore[no-any-return]

    def items(self, partition: int) -> Iterable[tuple[bytes, bytes | None]]:
        if self._by_partition:
            return self._db(partition).items()  # type: ignore[no-any-return]
        return list(self.data.items())

    def persisted(self, partition: int, changelog_offset: int) -> None:
        # Faust sets it only for what it wrote or recovered itself; a memory
        # store keeps nothing across restarts and ignores it.
        if self._by_partition:
            tp = TP(self.table.changelog_topic.get_topic_name(), partition)
            self.data.set_persisted_offset(tp, changelog_offset)


class FaustRuntime:
    """The worker's runtime (``runtime.Runtime``) on one Faust app.

    Faust keeps the group (assignment of the input topic, co-partitioned with
    the state table), the table and its recovery from the changelog, timers and
    the web server. It does not fetch the input topic: the worker's direct
    reader does (``stream/reader.py``); its agent only keeps the topic in the
    group's subscription.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        broker: Broker,
        table_name: str,
        repartition_topic: str | None,
        route_key: Callable[[bytes | None, bytes | None], bytes | None],
        origin: Callable[[int, int, int | None], tuple[str, bytes]],
        web: bool = True,
        transactional: bool = False,
    ) -> None:
        if broker.generations_from_zero:
            install_leave_group_fix()
        if broker.transactions:
            # Committed records only, on every broker that has transactions: the
            # router's input and the table's recovery never see an aborted one.
            install_read_committed()
        from ..kafka.security import redact_logs

        sec = settings.security
        if sec.sasl_password is not None:
            redact_logs(sec.sasl_password.reveal())  # never in any log line, whoever logs
        self.settings = settings
        app = self.app = WorkerApp(
            settings.app_id,
            broker=[f"kafka://{h}" for h in settings.broker_hosts],
            broker_credentials=credentials(sec),
            store="memory://" if settings.store == "memory" else "rocksdb://",
            datadir=str(settings.data_dir),
            topic_partitions=settings.partitions,
            topic_replication_factor=settings.replication_factor,
            table_standby_replicas=settings.table_standby_replicas,
            key_serializer="raw",
            value_serializer="raw",
            web_enabled=web,
            web_port=settings.web_port,
            web_bind=settings.web_host,
            web_host=settings.web_host,
            canonical_url=settings.web_url,  # never 0.0.0.0: other workers forward to it
            consumer_auto_offset_reset="earliest",
            autodiscover=False,
            # The worker creates every topic itself at start-up (kafka.clients.
            # worker_topic_specs), retrying broker faults; Faust's own creation
            # gave up on a dead node.
            topic_allow_declare=False,
            # Outputs go out as whole batches (BatchSender); room for a batch's
            # worth per partition, and a short linger for what Faust itself sends.
            producer_max_batch_size=1 << 20,
            producer_linger=0.005,
            **broker.faust_settings(),
        )
        raw = app.topic(
            settings.topics.raw_events,
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
            partitions=settings.partitions,
        )
        self.table: Any = app.Table(
            table_name,
            default=None,
            partitions=settings.partitions,
            key_type=bytes,
            value_type=bytes,
        )
        self._store = FaustTableStore(self.table)
        engine_input = raw
        if repartition_topic is not None:
            engine_input = app.topic(
                repartition_topic,
                key_type=bytes,
                value_type=bytes,
                key_serializer="raw",
                value_serializer="raw",
                partitions=settings.partitions,
                internal=True,
            )
            self._route(raw, repartition_topic, route_key, origin)
        self._input = engine_input.get_topic_name()

        @app.agent(engine_input, name="sessionize")
        async def subscribe(stream: Any) -> None:
            # Keeps the input topic in the group's subscription; nothing is
            # delivered (exclude_from_fetch), the direct reader reads it.
            async for _ in stream:
                pass

        exclude_from_fetch(app, self._input)
        self._nudge: asyncio.Task[None] | None = None
        if transactional:  # the worker writes its changelog in transactions
            # From the first assignment on: app tasks start only once the worker
            # is ready, and its first recovery is what would never end.
            async def start_nudge(app: faust.App, assigned: Any, **kwargs: Any) -> None:
                if self._nudge is None:
                    self._nudge = asyncio.ensure_future(self._end_recovery_at_markers())

            async def stop_nudge(app: faust.App, **kwargs: Any) -> None:
                if self._nudge is not None:
                    self._nudge.cancel()

            _connect(app.on_partitions_assigned, start_nudge)
            _connect(app.on_before_shutdown, stop_nudge)

    async def _end_recovery_at_markers(self) -> None:
        """Ends the recovery of changelogs whose last offset is a transaction marker.

        Faust's recovery runs until the last offset read reaches the highwater
        (end offset - 1), and a marker is never delivered, so it would wait
        forever on a transactional changelog. Faust itself moves past it only
        under its own exactly-once mode (``detect_aborted_tx``), which would also
        give it transactional producers of its own and read highwaters that are
        -1 before a partition's first fetch (an empty table, measured). The same
        rule here: once the consumer's position is past the highwater, what is
        left were markers. Recovery then ends at Faust's next idle poll (5 s).
        """
        tables: Any = self.app.tables
        rec = tables.recovery
        queue = tables.changelog_queue
        quiet: dict[Any, tuple[int, int]] = {}  # tp -> (offset read, polls seen unchanged)
        while True:
            await asyncio.sleep(0.5)
            if not rec.in_recovery:
                quiet.clear()
                continue
            for tps, highwaters, offsets in (
                (rec.active_tps, rec.active_highwaters, rec.active_offsets),
                (rec.standby_tps, rec.standby_highwaters, rec.standby_offsets),
            ):
                for tp in list(tps):
                    hw, off = highwaters.get(tp), offsets.get(tp)
                    if hw is None or hw < 0 or off is None or off >= hw:
                        quiet.pop(tp, None)
                        continue
                    # Records fetched may still be on their way to the table: only
                    # once nothing arrived for three polls in a row with the queue
                    # empty is what lies between the last record and the highwater
                    # known to be markers (or aborted records).
                    last, polls = quiet.get(tp, (off, 0))
                    polls = polls + 1 if last == off and queue.empty() else 0
                    quiet[tp] = (off, polls)
                    if polls < 3:
                        continue
                    try:
                        pos = await self.app.consumer.position(tp)
                    except Exception:  # reassigned meanwhile
                        continue
                    if pos is not None and pos > hw and queue.empty():
                        offsets[tp] = hw

    def _route(
        self,
        raw: Any,
        target: str,
        route_key: Callable[[bytes | None, bytes | None], bytes | None],
        origin: Callable[[int, int, int | None], tuple[str, bytes]],
    ) -> None:
        """Re-keys the raw topic into ``target`` (``repartition``), origin in a header."""
        app = self.app
        batch_size = self.settings.batch_size
        within = self.settings.batch_within_ms / 1000

        @app.agent(raw, name="repartition")
        async def repartition(stream: Any) -> None:
            producer = app.producer
            async for events in stream.take_events(batch_size, within=within):
                futures = []
                for ev in events:
                    m = ev.message
                    ts = None if m.timestamp is None else round(m.timestamp * 1000)
                    futures.append(
                        await producer.send(
                            target,
                            route_key(m.key, m.value),
                            m.value,
                            None,
                            m.timestamp,
                            [origin(m.partition, m.offset, ts)],
                        )
                    )
                await asyncio.gather(*futures)

    # ------------------------------------------------------------ runtime.Runtime

    @property
    def input_topic(self) -> str:
        return self._input

    @property
    def changelog(self) -> str:
        name: str = self.table.changelog_topic.get_topic_name()
        return name

    @property
    def store(self) -> FaustTableStore:
        return self._store

    @property
    def url(self) -> str:
        return str(self.app.conf.canonical_url)

    @property
    def rebalancing(self) -> bool:
        return bool(self.app.rebalancing)

    @property
    def joined(self) -> bool:
        return bool(self.app.rebalancing_count > 0)

    def assigned(self) -> set[int]:
        try:
            tps = self.app.assignor.assigned_actives()
        except Exception:  # no assignment yet
            return set()
        return {tp.partition for tp in tps if tp.topic == self._input}

    def owner_url(self, partition: int) -> str | None:
        try:
            meta = self.app.router.table_metadata(self.table.name)
        except Exception:  # no assignment yet
            return None
        changelog = self.changelog
        for url, tps in meta.items():
            if partition in tps.get(changelog, ()):
                return str(url)
        return None

    def recovered_offset(self, partition: int) -> int | None:
        tables: Any = self.app.tables
        offset = tables.recovery.active_offsets.get(TP(self.changelog, partition))
        return None if offset is None else int(offset)

    def on_assign(self, hook: Callable[[set[int]], Awaitable[None]]) -> None:
        async def receiver(app: faust.App, **kwargs: Any) -> None:
            # After the tables' recovery: the state may be read now.
            mine = {tp.partition for tp in app.consumer.assignment() if tp.topic == self._input}
            await hook(mine)

        _connect(self.app.on_rebalance_complete, receiver)

    def on_revoke(self, hook: Callable[[set[int]], Awaitable[None]]) -> None:
        async def receiver(app: faust.App, revoked: Any, **kwargs: Any) -> None:
            await hook({tp.partition for tp in revoked if tp.topic == self._input})

        _connect(self.app.on_partitions_revoked, receiver)

    def before_stop(self, hook: Callable[[], Awaitable[None]]) -> None:
        self.app.before_stop.append(hook)

    def on_shutdown(self, hook: Callable[[], Awaitable[None]]) -> None:
        async def receiver(app: faust.App, **kwargs: Any) -> None:
            await hook()

        _connect(self.app.on_before_shutdown, receiver)

    def producer(self) -> Any:
        return self.app.producer._ensure_producer()  # type: ignore[attr-defined]

    async def commit(self, offsets: Mapping[int, int]) -> None:
        tps = {TP(self._input, p): o for p, o in offsets.items()}
        await self.app.consumer._commit(tps)  # type: ignore[attr-defined]

    def every(self, seconds: float, fn: Callable[[], Awaitable[None]]) -> None:
        self.app.timer(interval=seconds)(fn)

    def task(self, fn: Callable[[], Awaitable[None]]) -> None:
        self.app.task(fn)

    async def crash(self, exc: BaseException) -> None:
        await crash(self.app, exc)

    @property
    def http_client(self) -> Any:
        return self.app.http_client


def install_read_committed() -> None:
    """Faust's consumer (the one that also recovers the tables) in read_committed,
    and nothing else of Faust's exactly-once mode: aborted state never reaches a
    table. Faust picks the level from ``consumer.in_transaction`` when it creates
    its aiokafka consumer; it is flipped for that call only. Idempotent."""
    from faust.transport.drivers import aiokafka as driver

    cls: Any = driver.AIOKafkaConsumerThread
    original = cls._create_worker_consumer
    if getattr(original, "_sessionizer_fix", False):
        return

    def _create_worker_consumer(self: Any, transport: Any) -> Any:
        consumer = self.consumer
        saved, consumer.in_transaction = consumer.in_transaction, True
        try:
            return original(self, transport)
        finally:
            consumer.in_transaction = saved

    _create_worker_consumer._sessionizer_fix = True  # type: ignore[attr-defined]
    cls._create_worker_consumer = _create_worker_consumer


def _connect(signal: Any, receiver: Callable[..., Awaitable[None]]) -> None:
    signal.connect(receiver)  # Faust's signal types do not admit keyword-only receivers


def credentials(security: Security) -> Any:
    """Faust's ``broker_credentials``: what its aiokafka driver turns into the options
    our own clients get (``kafka.security.aiokafka_options``).

    Faust maps ``SSLCredentials`` to SSL and ``SASLCredentials`` to
    SASL_PLAINTEXT, or to SASL_SSL when it has an ``ssl_context``, with the
    mechanism's name (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512) as aiokafka's
    ``sasl_mechanism``. Its repr shows the user name only.
    """
    from faust.auth import SASLCredentials, SSLCredentials

    from ..kafka.security import sasl_password, ssl_context

    if security.protocol == "PLAINTEXT":
        return None
    ctx = ssl_context(security)
    if not security.uses_sasl:
        return SSLCredentials(ctx)
    return SASLCredentials(
        username=security.sasl_username,
        password=sasl_password(security),
        ssl_context=ctx,
        mechanism=security.sasl_mechanism,
    )


def run_worker(app: faust.App, loglevel: str) -> None:
    """Runs the app's worker until it stops (signals handled by Faust)."""
    runner = faust.Worker(app, loglevel=loglevel, quiet=True, redirect_stdouts=False)
    if not runner.stdout.isatty():
        runner.spinner = None  # it writes its cursor escapes even into a file
    runner.execute_from_commandline()


def producer_fenced(producer: Any) -> bool:
    """Whether a transactional producer can no longer write: fenced by a newer one
    of its id, or its transaction timed out (aiokafka then raises AssertionError,
    not ProducerFenced, from the next begin or commit)."""
    return bool(producer._txn_manager.is_fatal_error())


async def refresh_metadata(consumer: Any) -> None:
    """Asks the broker for the consumer's topics' metadata again."""
    await consumer._client.force_metadata_update()
