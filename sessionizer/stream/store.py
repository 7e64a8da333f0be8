"""The worker's state in its Faust table: one home for the changelog layout.

Each engine partition ``p`` keeps, in partition ``p`` of the table (and of its
changelog topic):

* ``b"p:<session key>"`` -> the key's snapshot (JSON), absent once forgotten;
* ``b"p:\\x00marker"`` -> ``{"offset", "watermark", "src"?, "clock"?}``: the
  partition's state holds the effects of every source record up to ``offset``
  (written last and alone, see docs/broker.md#end-offsets-and-what-depends-on-them);
  ``clock`` is the engine's R26 state beside the watermark.

The worker writes the changelog itself (one batch per partition), so it also
writes the local store directly: by partition, which is what a RocksDB store
needs (Faust's own ``store[key] = value`` takes the partition from the event
being processed, and there is none in a timer). Nothing outside this module
spells the layout: the worker and ``/sessions`` go through :class:`StateStore`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from faust.types import TP

from .. import codec
from ..run.encode import Message

MARKER_NAME = "\x00marker"


def state_key(partition: int, name: str) -> bytes:
    return f"{partition}:{name}".encode()


@dataclass(frozen=True)
class Marker:
    offset: int  # highest source offset whose effects are in the state; -1: none
    watermark: int
    src: dict[int, int]  # repartitioned input: raw partition -> highest raw offset
    clock: list[Any] | None = None  # Engine.clock_state(); None in older markers

    def encode(self) -> bytes:
        value: dict[str, Any] = {"offset": self.offset, "watermark": self.watermark}
        if self.src:
            value["src"] = {str(q): o for q, o in self.src.items()}
        if self.clock is not None:
            value["clock"] = self.clock
        return codec.dumps(value)

    @staticmethod
    def decode(raw: bytes) -> Marker:
        v = codec.loads(raw)
        src = {int(q): o for q, o in v.get("src", {}).items()}
        return Marker(v["offset"], v["watermark"], src, v.get("clock"))


NO_MARKER = Marker(-1, 0, {})


class StateStore:
    """Reads and writes one partition's entries in the table's local store."""

    def __init__(self, table: Any) -> None:
        self.table = table
        # Faust's RocksDB store keeps one database per partition.
        self._by_partition = hasattr(table.data, "_db_for_partition")

    def put(self, partition: int, key: bytes, value: bytes | None) -> None:
        if self._by_partition:
            db = self.table.data._db_for_partition(partition)
            if value is None:
                db.delete(key)
            else:
                db.put(key, value)
        elif value is None:
            self.table.data.pop(key, None)
        else:
            self.table.data[key] = value

    def get(self, partition: int, key: bytes) -> bytes | None:
        if self._by_partition:
            value: bytes | None = self.table.data._db_for_partition(partition).get(key)
            return value
        return self.table.data.get(key)  # type: ignore[no-any-return]

    def entries(self, partition: int) -> Iterator[tuple[str, bytes]]:
        """(name, value) of the partition's entries, the marker included."""
        prefix = f"{partition}:".encode()
        if self._by_partition:
            items = self.table.data._db_for_partition(partition).items()
        else:
            items = list(self.table.data.items())
        for k, v in items:
            if v is not None and k.startswith(prefix):
                yield k[len(prefix) :].decode(), v

    def marker(self, partition: int) -> Marker:
        raw = self.get(partition, state_key(partition, MARKER_NAME))
        return NO_MARKER if raw is None else Marker.decode(raw)

    def snapshot(self, partition: int, key: str) -> Any:
        """One session key's decoded snapshot in the local store, or None."""
        raw = self.get(partition, state_key(partition, key))
        return None if raw is None else codec.loads(raw)

    def load(self, partition: int) -> tuple[Marker, list[tuple[str, Any]]]:
        """The partition's marker and its keys' decoded snapshots, for ``Engine.restore``."""
        marker = NO_MARKER
        snapshots: list[tuple[str, Any]] = []
        for name, value in self.entries(partition):
            if name == MARKER_NAME:
                marker = Marker.decode(value)
            else:
                snapshots.append((name, codec.loads(value)))
        return marker, snapshots

    def changelog(self) -> str:
        name: str = self.table.changelog_topic.get_topic_name()
        return name

    def key_records(self, partition: int, snapshots: Iterable[tuple[str, Any]]) -> list[Message]:
        """The changelog records of each key's snapshot (None: the key is forgotten),
        in partition ``partition``; :meth:`written` puts them in the local store."""
        changelog = self.changelog()
        dumps = codec.dumps
        return [
            (changelog, state_key(partition, key), None if snap is None else dumps(snap), partition)
            for key, snap in snapshots
        ]

    def marker_record(self, partition: int, marker: Marker) -> Message:
        """The partition's marker as a changelog record.

        Send it last and alone, once the keys' records are acknowledged: recovery
        reads the changelog up to its end offset, and some brokers (Tansu) report
        a batch's base offset + 1 as the end, so a marker sharing a batch could
        hide the states before it.
        """
        return (self.changelog(), state_key(partition, MARKER_NAME), marker.encode(), partition)

    def written(self, records: Iterable[Message], offset: int | None = None) -> None:
        """Puts changelog records the broker acknowledged in the local store; with
        ``offset`` (an acknowledged marker's), records it as Faust's persisted
        changelog offset of the marker's partition.

        Only acknowledged records: the local store must never be ahead of the
        changelog, which another worker restores from. A RocksDB store survives a
        SIGKILL and recovery reads the changelog only from the persisted offset
        on, so a local entry the changelog lacks would stay, while a later marker
        in the changelog would tell the next owner of the partition that its
        records were applied.

        Faust sets the persisted offset only for what it wrote or recovered
        itself; the worker writes the changelog, so without it a clean restart
        re-reads every record (1M keys: ~195 s). A memory store keeps nothing
        across restarts (Faust ignores the offset).
        """
        last: int | None = None
        for _topic, key, value, partition in records:
            if key is None or partition is None:
                raise ValueError("a changelog record has a key and a partition")
            self.put(partition, key, value)
            last = partition
        if offset is not None and last is not None and self._by_partition:
            self.table.data.set_persisted_offset(TP(self.changelog(), last), offset)
