"""The partition task: one input partition's engine and how far it got.

Every runner goes through it: ``process-file`` and ``replay`` (bounded input,
no broker) and the worker (live input, state in a changelog). A task owns

* the partition's :class:`~sessionizer.core.engine.Engine`;
* its :class:`Marker`: the highest input offset whose effects are in the
  state, the watermark and the R26 clock beside it; the processed offset
  travels with the state (as in Quix Streams' ``PartitionTransaction``);
* the step rule: bounded runners expire after every record (:meth:`step`),
  the worker after each batch (:meth:`feed`).

:meth:`checkpoint` hands over what one unit of writing holds: the encoded
outputs, then the changed keys' snapshots, then the marker. How they are
written (in that order with acknowledgements in between, or in one Kafka
transaction) is the writer's business (``sessionizer.stream.commit``); the
task itself does no I/O and reads no clock: ``now_ms`` comes in.

A source record has one shape everywhere, :data:`SourceRecord`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from .. import codec
from ..core.engine import Engine, identity
from ..core.model import SESSIONS, Counts
from .encode import OutputEncoder, Record

__all__ = [
    "NO_MARKER",
    "Checkpoint",
    "Marker",
    "PartitionTask",
    "Sink",
    "SourceRecord",
    "device_key",
    "origin_header",
    "parse_origin",
    "route_key",
]

# (offset, key, value, timestamp ms or None, headers) of one input record of
# the task's partition; headers are a broker's (name, bytes) pairs, or None.
SourceRecord = tuple[int, Any, Any, int | None, Any]

#: Repartitioned input: the header in which the router keeps where a record came from.
ORIGIN_HEADER = "sessionizer-origin"


def origin_header(partition: int, offset: int, timestamp: int | None) -> tuple[str, bytes]:
    """The router's header for a raw record at ``partition``/``offset``."""
    return ORIGIN_HEADER, f"{partition}:{offset}:{'' if timestamp is None else timestamp}".encode()


def parse_origin(headers: Any) -> tuple[int, int, int | None] | None:
    """(raw partition, raw offset, raw timestamp ms) of a repartitioned record."""
    pairs = headers.items() if isinstance(headers, Mapping) else headers or ()
    for name, value in pairs:
        if name == ORIGIN_HEADER:
            try:
                q, off, ts = value.decode().split(":")
                return int(q), int(off), int(ts) if ts else None
            except (AttributeError, ValueError):
                return None  # not the router's: the record counts as its own
    return None


def device_key(obj: Any) -> bytes | None:
    """The record key of a decoded raw record: its device (§1.2), or None."""
    ident = identity(obj) if type(obj) is dict else None
    return None if ident is None else ident[1].encode()


def route_key(key: Any, value: Any) -> Any:
    """Repartitioning: a raw record's new key, its device; its own key when it has none."""
    try:
        obj = codec.loads(value)
    except Exception:  # not JSON (or not bytes): the engine dead-letters it
        return key
    return device_key(obj) or key


@dataclass(frozen=True)
class Marker:
    """How far a partition's state got; written last, with (or after) the state."""

    offset: int  # highest input offset whose effects are in the state; -1: none
    watermark: int
    src: dict[int, int] = field(default_factory=dict)  # repartitioned: raw partition -> offset
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


NO_MARKER = Marker(-1, 0)


@dataclass(frozen=True)
class Checkpoint:
    """One unit of writing: outputs first, then state, then the marker."""

    outputs: list[Record]
    state: list[tuple[str, Any]]  # (session key, snapshot or None: forgotten)
    marker: Marker
    durations_ms: list[int]  # of the sessions it ends (revisions left out), for metrics


class Sink(Protocol):
    """Where a bounded task's records go: files, or a producer's buffer."""

    @property
    def encoder(self) -> OutputEncoder: ...

    def write(self, records: list[Record]) -> None:
        """Writes the encoded records of one engine step, in order."""


class PartitionTask:
    """One input partition through one engine."""

    __slots__ = ("applied", "encoder", "engine", "origin_topic", "partition", "src", "topic")

    def __init__(
        self,
        engine: Engine,
        encoder: OutputEncoder,
        topic: str,
        partition: int,
        *,
        marker: Marker = NO_MARKER,
        origin_topic: str | None = None,
    ) -> None:
        self.engine = engine
        self.encoder = encoder
        self.topic = topic
        self.partition = partition
        self.applied = marker.offset
        # Repartitioned input (``origin_topic``: the raw topic): raw partition ->
        # highest raw offset applied, so a router that re-sends after a crash
        # cannot apply a record twice; dead letters name the raw record.
        self.src: dict[int, int] = dict(marker.src)
        self.origin_topic = origin_topic

    @classmethod
    def restore(
        cls,
        engine: Engine,
        encoder: OutputEncoder,
        topic: str,
        partition: int,
        marker: Marker,
        snapshots: Iterable[tuple[str, Any]],
        *,
        origin_topic: str | None = None,
    ) -> PartitionTask:
        """The task as its last checkpoint left it; returns with the keys restored."""
        engine.restore(snapshots, marker.watermark, marker.clock)
        return cls(engine, encoder, topic, partition, marker=marker, origin_topic=origin_topic)

    @property
    def next_offset(self) -> int:
        """Where the partition's input resumes."""
        return self.applied + 1

    def step(self, records: Iterable[SourceRecord], sink: Sink, now_ms: int) -> None:
        """Bounded input: each record, then expiry; each step's records to ``sink``.

        ``now_ms`` only bounds timestamps from the future (§1.3): one value per run.
        """
        engine = self.engine
        process = engine.process_record
        advance = engine.advance
        take = engine.take_output
        encode = self.encoder.records
        write = sink.write
        topic, partition = self.topic, self.partition
        for offset, key, value, ts, _headers in records:
            process(value, key, topic, partition, offset, ts, now_ms)
            advance()
            out = take()
            if out:
                write(encode(out, engine))

    def finish(self, sink: Sink, *, keep_open: bool = False) -> Counts:
        """End of input (§9), the last step; returns the engine's counts."""
        engine = self.engine
        engine.end_of_input(keep_open=keep_open)
        out = engine.take_output()
        if out:
            sink.write(self.encoder.records(out, engine))
        return engine.counts

    def feed(self, records: Iterable[SourceRecord], now_ms: int) -> bool:
        """Live input: the records past the marker, in offset order, then expiry.

        Returns whether any record was new. A record already in the state (at or
        below the marker; a router's re-send) is skipped: applying twice is what
        the marker exists to prevent. A null value (tombstone) is an empty record,
        dead-lettered as invalid JSON.
        """
        engine = self.engine
        process = engine.process_record
        topic, partition = self.topic, self.partition
        origin = self.origin_topic
        applied = self.applied
        start = applied
        for offset, key, value, ts, headers in records:
            if offset <= applied:
                continue
            applied = offset
            if value is None:
                value = b""
            if origin is not None:
                where = parse_origin(headers)
                if where is not None:
                    q, raw_offset, raw_ts = where
                    if raw_offset <= self.src.get(q, -1):
                        continue  # the router sent it twice
                    self.src[q] = raw_offset
                    process(value, key, origin, q, raw_offset, raw_ts, now_ms, offset)
                    continue
            process(value, key, topic, partition, offset, ts, now_ms, offset)
        if applied == start:
            return False
        self.applied = applied
        engine.advance()
        return True

    def advance(self, watermark: int) -> bool:
        """Moves the watermark (R22, an idle partition); whether it made outputs."""
        if watermark <= self.engine.watermark:
            return False
        self.engine.advance(watermark)
        return self.engine.has_pending()

    def checkpoint(self) -> Checkpoint:
        """What the state gained since the last checkpoint, to be written in this order."""
        eng = self.engine
        out = eng.take_output()
        durations = [
            v["session_duration_ms"]
            for t, _k, v in out
            if t == SESSIONS and v["record"] == "session_end" and not v["revision"]
        ]
        outputs = self.encoder.records(out, eng)
        snapshot = eng.snapshot_key
        state = [(key, snapshot(key)) for key in eng.take_dirty()]
        marker = Marker(self.applied, eng.watermark, dict(self.src), eng.clock_state())
        return Checkpoint(outputs, state, marker, durations)
