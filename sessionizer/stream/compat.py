"""All the worker takes from Faust and aiokafka beyond their public, typed API.

One home for the tuning, the patches (LeaveGroup on a broker that numbers
generations from 0; a topic Faust must not fetch) and the private calls
(committing chosen offsets, the raw aiokafka producer, typed signal and timer
registration). They were checked
against the pinned versions only: ``check_versions()`` refuses others at
start-up, so an upgrade is a deliberate change of this module.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import warnings
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import faust
from faust.types import TP

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


async def commit(app: faust.App, offsets: Mapping[TP, int]) -> None:
    """Commit exactly these offsets through Faust's consumer thread."""
    await app.consumer._commit(offsets)  # type: ignore[attr-defined]


async def seek(app: faust.App, offsets: Mapping[TP, int]) -> None:
    """Points the stream's consumer at these offsets, 0 included.

    Faust's "Seek stream partitions to committed offsets" after a rebalance
    calls aiokafka's ``seek_to_committed``, which skips a committed offset of 0
    (``if offset and offset > 0``): a partition taken over with nothing applied
    kept the position its fetcher had reached during recovery, past records
    Faust then dropped, and sat at the end until a new record arrived.
    """
    for tp, offset in offsets.items():
        await app.consumer.seek(tp, offset)


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


def raw_producer(app: faust.App) -> Any:
    """Faust's own aiokafka producer: same connection, settings and credentials."""
    return app.producer._ensure_producer()  # type: ignore[attr-defined]


def connect(signal: Any, receiver: Callable[..., Awaitable[None]]) -> None:
    """Registers an async receiver on one of the app's signals."""
    signal.connect(receiver)


def timer(app: faust.App, seconds: float, fn: Callable[[], Awaitable[None]]) -> None:
    app.timer(interval=seconds)(fn)


def task(app: faust.App, fn: Callable[[], Awaitable[None]]) -> None:
    app.task(fn)


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
