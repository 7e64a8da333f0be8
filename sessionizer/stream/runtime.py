"""What the worker needs of a stream framework: one small seam, one adapter.

The worker (``stream/worker.py``) is written against these protocols only;
``stream/compat.py`` implements them on Faust (``FaustRuntime``), and is the
only module that touches Faust's or aiokafka's internals.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Protocol

Hook = Callable[[], Awaitable[None]]
PartitionsHook = Callable[[set[int]], Awaitable[None]]


class LocalStore(Protocol):
    """The state table's local store, by partition (memory or RocksDB)."""

    def put(self, partition: int, key: bytes, value: bytes | None) -> None:
        """Sets ``key`` (None: deletes it)."""

    def get(self, partition: int, key: bytes) -> bytes | None: ...

    def items(self, partition: int) -> Iterable[tuple[bytes, bytes | None]]:
        """Every entry of the partition's store (a memory store: of all partitions)."""

    def persisted(self, partition: int, changelog_offset: int) -> None:
        """Records how far the changelog of ``partition`` is in the store: a restart
        of a durable store reads the changelog only from there."""


class Runtime(Protocol):
    """Group membership, clients, store, timers and web server of one worker."""

    @property
    def input_topic(self) -> str:
        """The topic whose partitions the group assigns (raw or repartitioned)."""

    @property
    def changelog(self) -> str:
        """The state table's changelog topic."""

    @property
    def store(self) -> LocalStore: ...

    @property
    def url(self) -> str:
        """Where other workers and operators reach this worker's web server."""

    @property
    def rebalancing(self) -> bool: ...

    @property
    def joined(self) -> bool:
        """The worker had an assignment at least once."""

    def assigned(self) -> set[int]:
        """The input partitions the group gave this worker (empty while rebalancing)."""

    def owner_url(self, partition: int) -> str | None:
        """The web URL of the worker that owns ``partition`` of the state, if known."""

    def recovered_offset(self, partition: int) -> int | None:
        """The last changelog offset of ``partition`` in the local store after its
        recovery, if known."""

    def on_assign(self, hook: PartitionsHook) -> None:
        """Runs with the new assignment's input partitions once their state is recovered."""

    def on_revoke(self, hook: PartitionsHook) -> None: ...

    def before_stop(self, hook: Hook) -> None:
        """Runs first when the worker stops, while the store and producer still work."""

    def on_shutdown(self, hook: Hook) -> None:
        """Runs last, before the event loop closes."""

    def producer(self) -> Any:
        """The worker's aiokafka producer (connection, settings and credentials shared)."""

    async def commit(self, offsets: Mapping[int, int]) -> None:
        """Commits input-topic offsets for the group (lag tools read them)."""

    def every(self, seconds: float, fn: Hook) -> None: ...

    def task(self, fn: Hook) -> None:
        """Runs ``fn`` once the worker started; it may run for as long as the worker."""

    async def crash(self, exc: BaseException) -> None:
        """Stops the worker after a failure of its own, exiting non-zero."""

    @property
    def http_client(self) -> Any:
        """An aiohttp client session (forwarding web requests to another worker)."""


class MemoryStore:
    """A LocalStore in a dict, all partitions together (as Faust's memory store)."""

    def __init__(self) -> None:
        self.data: dict[bytes, bytes] = {}

    def put(self, partition: int, key: bytes, value: bytes | None) -> None:
        if value is None:
            self.data.pop(key, None)
        else:
            self.data[key] = value

    def get(self, partition: int, key: bytes) -> bytes | None:
        return self.data.get(key)

    def items(self, partition: int) -> Iterable[tuple[bytes, bytes | None]]:
        return list(self.data.items())

    def persisted(self, partition: int, changelog_offset: int) -> None:
        pass


class BareRuntime:
    """A Runtime without a group or a framework: a fixed assignment, the given
    producer, hooks run by hand. For tests and benchmarks of the worker's loop."""

    def __init__(
        self, producer: Any, *, input_topic: str = "raw-events", changelog: str = "changelog"
    ) -> None:
        self._producer = producer
        self._input = input_topic
        self._changelog = changelog
        self._store = MemoryStore()
        self.committed: dict[int, int] = {}

    @property
    def input_topic(self) -> str:
        return self._input

    @property
    def changelog(self) -> str:
        return self._changelog

    @property
    def store(self) -> MemoryStore:
        return self._store

    @property
    def url(self) -> str:
        return "http://localhost"

    @property
    def rebalancing(self) -> bool:
        return False

    @property
    def joined(self) -> bool:
        return True

    def assigned(self) -> set[int]:
        return set()

    def owner_url(self, partition: int) -> str | None:
        return None

    def recovered_offset(self, partition: int) -> int | None:
        return None

    def on_assign(self, hook: PartitionsHook) -> None:
        pass

    def on_revoke(self, hook: PartitionsHook) -> None:
        pass

    def before_stop(self, hook: Hook) -> None:
        pass

    def on_shutdown(self, hook: Hook) -> None:
        pass

    def producer(self) -> Any:
        return self._producer

    async def commit(self, offsets: Mapping[int, int]) -> None:
        self.committed.update(offsets)

    def every(self, seconds: float, fn: Hook) -> None:
        pass

    def task(self, fn: Hook) -> None:
        pass

    async def crash(self, exc: BaseException) -> None:
        raise exc

    @property
    def http_client(self) -> Any:
        return None
