"""The worker's state in its Faust table: one home for the changelog layout.

Each engine partition ``p`` keeps, in partition ``p`` of the table (and of its
changelog topic):

* ``b"p:<session key>"`` -> the key's snapshot (JSON), absent once forgotten;
* ``b"p:\\x00marker"`` -> ``{"offset", "watermark", "src"?, "clock"?}``: the
  partition's state holds the effects of every source record up to ``offset``
  (written last and alone, see docs/broker.md#end-offsets-and-what-depends-on-them);
  ``clock`` is the engine's R26 state beside the watermark.

The worker writes the changelog itself (one batch per partition, or one
transaction), so it also writes the local store (``runtime.LocalStore``)
directly. Nothing outside this module spells the layout: the worker and
``/sessions`` go through :class:`StateStore`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from .. import codec
from ..run.encode import Message
from ..run.task import NO_MARKER, Marker
from .runtime import LocalStore

MARKER_NAME = "\x00marker"


def state_key(partition: int, name: str) -> bytes:
    return f"{partition}:{name}".encode()


class StateStore:
    """Reads and writes one partition's entries in the table's local store."""

    def __init__(self, local: LocalStore, changelog: str) -> None:
        self.local = local
        self.changelog = changelog

    def entries(self, partition: int) -> Iterator[tuple[str, bytes]]:
        """(name, value) of the partition's entries, the marker included."""
        prefix = f"{partition}:".encode()
        for k, v in self.local.items(partition):
            if v is not None and k.startswith(prefix):
                yield k[len(prefix) :].decode(), v

    def marker(self, partition: int) -> Marker:
        raw = self.local.get(partition, state_key(partition, MARKER_NAME))
        return NO_MARKER if raw is None else Marker.decode(raw)

    def snapshot(self, partition: int, key: str) -> Any:
        """One session key's decoded snapshot in the local store, or None."""
        raw = self.local.get(partition, state_key(partition, key))
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

    def key_records(self, partition: int, snapshots: Iterable[tuple[str, Any]]) -> list[Message]:
        """The changelog records of each key's snapshot (None: the key is forgotten),
        in partition ``partition``; :meth:`written` puts them in the local store."""
        changelog = self.changelog
        dumps = codec.dumps
        return [
            (changelog, state_key(partition, key), None if snap is None else dumps(snap), partition)
            for key, snap in snapshots
        ]

    def marker_record(self, partition: int, marker: Marker) -> Message:
        """The partition's marker as a changelog record.

        At least once, send it last and alone, once the keys' records are
        acknowledged: recovery reads the changelog up to its end offset, and
        some brokers (Tansu) report a batch's base offset + 1 as the end, so a
        marker sharing a batch could hide the states before it.
        """
        return (self.changelog, state_key(partition, MARKER_NAME), marker.encode(), partition)

    def written(self, records: Iterable[Message], offset: int | None = None) -> None:
        """Puts changelog records the broker acknowledged (or committed) in the local
        store; with ``offset`` (a written marker's), records it as the changelog
        offset the store holds.

        Only acknowledged records: the local store must never be ahead of the
        changelog, which another worker restores from. A RocksDB store survives a
        SIGKILL and recovery reads the changelog only from the persisted offset
        on, so a local entry the changelog lacks would stay, while a later marker
        in the changelog would tell the next owner of the partition that its
        records were applied. Without the offset a clean restart re-reads every
        record (1M keys: ~195 s).
        """
        last: int | None = None
        put = self.local.put
        for _topic, key, value, partition in records:
            if key is None or partition is None:
                raise ValueError("a changelog record has a key and a partition")
            put(partition, key, value)
            last = partition
        if offset is not None and last is not None:
            self.local.persisted(last, offset)
