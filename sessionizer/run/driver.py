"""The one driving loop of bounded inputs: ``process-file`` and ``replay``.

A :class:`Driver` runs one engine over one source partition's records in
order. Time is event time only: after every record the engine advances (R21
expiry at the new watermark); no wall clock moves the watermark (R22 is for a
live partition). At the end, :meth:`Driver.finish` closes what is still open
(``end_of_input``) unless ``keep_open``.

One step is one record and the expiry after it: its outputs are encoded right
away by the sink's ``OutputEncoder`` (``sessionizer.run.encode``, the encoder of
the worker too) and handed to ``sink.write``. The worker drives its engines
itself (marker, gap reads, batches and wall-clock time are its own) through
the same engine surface and the same encoder.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from ..core.engine import Engine
from ..core.model import Counts
from .encode import OutputEncoder, Record

__all__ = ["Driver", "Sink", "SourceRecord"]

# (value, key, topic, partition, offset, timestamp ms or None) of one source record.
SourceRecord = tuple[bytes, Any, str, int, int, int | None]


class Sink(Protocol):
    """Where a driver's records go: files, or a producer's buffer."""

    @property
    def encoder(self) -> OutputEncoder: ...

    def write(self, records: list[Record]) -> None:
        """Writes the encoded records of one engine step, in order."""


class Driver:
    """One engine over one source partition's records; records out to ``sink``."""

    __slots__ = ("engine", "now_ms", "sink")

    def __init__(self, engine: Engine, sink: Sink, *, now_ms: int) -> None:
        self.engine = engine
        self.sink = sink
        # Only bounds timestamps from the future (§1.3): the same for a whole run.
        self.now_ms = now_ms

    def feed(self, records: Iterable[SourceRecord]) -> None:
        """Each record, then expiry; each step's records go to the sink."""
        engine = self.engine
        process = engine.process_record
        advance = engine.advance
        take = engine.take_output
        encode = self.sink.encoder.records
        write = self.sink.write
        now = self.now_ms
        for value, key, topic, partition, offset, ts in records:
            process(value, key, topic, partition, offset, ts, now)
            advance()
            out = take()
            if out:
                write(encode(out, engine))

    def finish(self, *, keep_open: bool = False) -> Counts:
        """End of input (§9), the last step; returns the engine's counts."""
        engine = self.engine
        engine.end_of_input(keep_open=keep_open)
        out = engine.take_output()
        if out:
            self.sink.write(self.sink.encoder.records(out, engine))
        return engine.counts
