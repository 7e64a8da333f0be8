"""The sessionizer worker with counters on its fetch, batch and send path (for bench-stream).

    python bench/worker_probe.py OUT.json worker --loglevel info

Runs ``sessionizer worker`` unchanged, with timing wrappers around:

* Faust's fetch from its consumer thread (``AIOKafkaConsumerThread.getmany``):
  records per call and seconds per call (the wait for the thread's fetch);
* the worker's batches (``Pipeline.process``): records and partitions per
  batch, seconds inside, and the gap before it (the agent waiting in
  ``take_events`` for Faust to deliver);
* ``Pipeline._publish`` and each ``BatchSender.send`` (messages per call,
  seconds until the broker acknowledged): the round trips a batch waits on.

Writes a summary to OUT.json when the worker exits (bench-stream stops it with
SIGTERM). Nothing in ``sessionizer`` is changed; the wrappers cost a few
microseconds per call, and calls are per fetch and per batch, not per record.
"""

from __future__ import annotations

import atexit
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

STATS: dict[str, list[float]] = {}
_last_end = [0.0]


def note(name: str, value: float) -> None:
    STATS.setdefault(name, []).append(value)


def timed(cls: Any, attr: str, name: str, size: Any = None) -> None:
    """Wraps the coroutine method ``cls.attr``: seconds per call and ``size(args, result)``."""
    orig = getattr(cls, attr)

    async def wrapper(self: Any, *args: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        result = await orig(self, *args, **kw)
        note(f"{name}.seconds", time.perf_counter() - t0)
        if size is not None:
            for key, value in size(args, result).items():
                note(f"{name}.{key}", value)
        return result

    setattr(cls, attr, wrapper)


def install() -> None:
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    from sessionizer.kafka.sender import BatchSender
    from sessionizer.stream.worker import Pipeline

    timed(
        AIOKafkaConsumerThread,
        "getmany",
        "fetch",
        lambda a, r: {"records": sum(len(v) for v in r.values()), "partitions": len(r)},
    )
    timed(Pipeline, "_publish", "publish")
    timed(BatchSender, "send", "send", lambda a, r: {"messages": len(a[0])})

    orig = Pipeline.process

    async def process(self: Any, events: Any) -> None:
        t0 = time.perf_counter()
        if _last_end[0]:
            note("batch.wait_before", t0 - _last_end[0])
        note("batch.records", len(events))
        note("batch.partitions", len({ev.message.partition for ev in events}))
        await orig(self, events)
        _last_end[0] = time.perf_counter()
        note("batch.seconds", _last_end[0] - t0)

    Pipeline.process = process  # type: ignore[method-assign]


def summary() -> dict[str, dict[str, float]]:
    out = {}
    for name, values in sorted(STATS.items()):
        v = sorted(values)
        out[name] = {
            "n": len(v),
            "sum": sum(v),
            "mean": sum(v) / len(v),
            "p50": v[len(v) // 2],
            "p90": v[int(len(v) * 0.9)],
            "max": v[-1],
        }
    return out


def main() -> None:
    dest = Path(sys.argv[1])

    def dump() -> None:
        tmp = dest.with_suffix(".tmp")
        tmp.write_text(json.dumps(summary(), indent=1))
        tmp.replace(dest)

    def every_second() -> None:  # also when the worker ends without running atexit
        while True:
            time.sleep(1)
            dump()

    atexit.register(dump)
    threading.Thread(target=every_second, daemon=True).start()
    install()
    from sessionizer.cli import main as cli

    sys.argv = ["sessionizer", *sys.argv[2:]]
    cli()


if __name__ == "__main__":
    main()
