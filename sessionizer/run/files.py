"""process-file: JSONL files through the same engine, no broker (SPEC §9)."""

from __future__ import annotations

import gc
import gzip
import os
import sys
import time
from collections.abc import Iterable, Iterator
from itertools import count, repeat
from pathlib import Path
from typing import IO, Any, cast

from .. import codec
from ..core.config import EngineConfig
from ..core.engine import Engine
from ..core.model import TOPIC_NAMES, Counts
from .encode import OutputEncoder, Record
from .task import PartitionTask, SourceRecord


def _open(path: str) -> IO[bytes]:
    if path == "-":
        return sys.stdin.buffer
    if path.endswith(".gz"):
        return cast(IO[bytes], gzip.open(path, "rb"))
    return open(path, "rb", buffering=1 << 20)


def read_lines(path: str) -> Iterator[bytes]:
    """Record values, one a line; blank lines are skipped (not records)."""
    f = _open(path)
    try:
        # One line at a time keeps each record warm in the CPU cache until parsed.
        for line in f:
            if line[-1:] == b"\n":
                line = line[:-2] if line[-2:-1] == b"\r" else line[:-1]
            if line:
                yield line
    finally:
        if f is not sys.stdin.buffer:
            f.close()


def source_name(path: str) -> str:
    return "stdin" if path == "-" else os.path.basename(path)


class FileSink:
    """Writes each output topic to DIR/<topic>.jsonl (``None``: to the null device)."""

    def __init__(self, out_dir: str | Path | None) -> None:
        self.encoder = OutputEncoder(TOPIC_NAMES, line=True)
        if out_dir is None:
            paths = [Path(os.devnull)] * len(TOPIC_NAMES)
        else:
            d = Path(out_dir)
            d.mkdir(parents=True, exist_ok=True)
            paths = [d / f"{name}.jsonl" for name in TOPIC_NAMES]
        self.files = [open(p, "wb", buffering=1 << 20) for p in paths]  # noqa: SIM115
        # One buffered write per record: cheaper than collecting and joining.
        self._writes = dict(zip(TOPIC_NAMES, [f.write for f in self.files], strict=True))

    def write(self, records: list[Record]) -> None:
        writes = self._writes
        for topic, _key, value, _partition in records:
            writes[topic](value)

    def close(self) -> None:
        for f in self.files:
            f.close()


def tune_gc() -> None:
    """Many long-lived session objects and many short-lived event dicts: freeze
    what start-up made and collect young objects less often, so full
    collections do not rescan every session again and again."""
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)


def file_records(path: str) -> Iterator[SourceRecord]:
    """A file's records as source records: offset = the record's line among the
    non-blank lines, no key, no timestamp, no headers."""
    # zip builds the tuples in C: no generator frame of its own per record.
    return zip(count(), repeat(None), read_lines(path), repeat(None), repeat(None))


def run(
    engine: Engine,
    inputs: Iterable[str],
    sink: FileSink,
    *,
    keep_open: bool = False,
    now_ms: int | None = None,
) -> Counts:
    """All inputs are one partition (§9) of one engine; expiry runs after every
    record. Dead letters name a record's file (topic) and line (offset)."""
    tune_gc()
    now = int(time.time() * 1000) if now_ms is None else now_ms
    task = PartitionTask(engine, sink.encoder, "-", 0)
    for path in inputs:
        task = PartitionTask(engine, sink.encoder, source_name(path), 0)
        task.step(file_records(path), sink, now)
    return task.finish(sink, keep_open=keep_open)


def process_files(
    inputs: list[str],
    out_dir: str | Path,
    config: EngineConfig | None = None,
    *,
    keep_open: bool = False,
    now_ms: int | None = None,
) -> tuple[Engine, Counts]:
    engine = Engine(config or EngineConfig(), loads=codec.loads, dumps=codec.dumps)
    sink = FileSink(out_dir)
    try:
        counts = run(engine, inputs, sink, keep_open=keep_open, now_ms=now_ms)
    finally:
        sink.close()
    return engine, counts


def state_stats(engine: Engine) -> dict[str, Any]:
    """Bytes of snapshot per key and per open session, as the worker would store them."""
    total = 0
    n_open = 0
    for key in engine.state_keys():
        st = engine.key_state(key)
        assert st is not None
        total += len(key) + len(codec.dumps(st.snapshot()))
        if st.open is not None:
            n_open += 1
    n_keys = engine.key_count()
    return {
        "keys": n_keys,
        "open_sessions": n_open,
        "state_bytes": total,
        "bytes_per_key": round(total / n_keys, 1) if n_keys else 0.0,
        "bytes_per_open_session": round(total / n_open, 1) if n_open else 0.0,
    }
