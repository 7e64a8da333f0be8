"""``sessionizer produce``: JSONL files or the synthetic workload into the raw-events topic.

Records are keyed by device (§1.2) so that one device's records stay in one
partition and in order; records that do not decode go with a null key and are
dead-lettered by the worker. Sends are not awaited one by one: the producer
batches (``linger_ms``) and the delivery futures are gathered in chunks.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterable, Callable, Iterable
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import MessageSizeTooLargeError

from .. import codec
from ..exits import Failed, run_main
from ..kafka.clients import client_options, ensure_topics
from ..run.task import device_key
from ..settings import Settings

__all__ = ["Progress", "TokenBucket", "count_and_key", "produce_records", "producer_options"]

log = logging.getLogger(__name__)

# Delivery futures gathered at once: bounds memory and surfaces errors early.
CHUNK = 1000
PROGRESS_EVERY = 0.25  # seconds

Progress = Callable[[int, int], None]  # (records, events) so far


class TokenBucket:
    """Allows ``rate`` tokens a second on average, in bursts of at most ``burst``.

    Sleeps on the event loop when empty; never busy-waits. Sleeps are at least
    ``min_sleep`` so that high rates cost a few wake-ups a second, not one per token.
    """

    def __init__(
        self,
        rate: float,
        burst: float | None = None,
        *,
        min_sleep: float = 0.005,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.burst = max(1.0, burst if burst is not None else rate * 2 * min_sleep)
        self.min_sleep = min_sleep
        self._clock = clock
        self._tokens = self.burst
        self._last = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now

    async def acquire(self, n: float = 1.0) -> None:
        self._refill()
        while self._tokens < min(n, self.burst):
            await asyncio.sleep(max(self.min_sleep, (n - self._tokens) / self.rate))
            self._refill()
        self._tokens -= n  # may go negative for n > burst: later calls wait it off


def count_and_key(value: bytes) -> tuple[bytes | None, int]:
    """The record key (device) and its number of events; (None, 0) when it does not decode."""
    try:
        obj = codec.loads(value)
    except codec.JSONDecodeError:
        return None, 0
    if type(obj) is not dict:
        return None, 0
    events = obj.get("events")
    n = len(events) if type(events) is list else (1 if "event_type" in obj else 0)
    return device_key(obj), n


def producer_options(settings: Settings) -> dict[str, Any]:
    return {
        **client_options(settings),
        "linger_ms": 5,
        "max_batch_size": 512 * 1024,
        "acks": 1,
    }


async def produce_records(
    settings: Settings,
    records: Iterable[bytes] | AsyncIterable[bytes],
    rate: float | None = None,
    *,
    progress: Progress | None = None,
    create_topics: bool = True,
) -> int:
    """Send ``records`` (record values) to the raw-events topic; return how many were sent.

    ``rate`` caps events per second (a record with none counts as one). ``progress``
    is called with the acknowledged (records, events) after every chunk, and at least
    every ``PROGRESS_EVERY`` seconds while records flow. A record the producer refuses
    (too large) is logged and skipped.
    """
    if create_topics:
        await ensure_topics(settings)
    topic = settings.topics.raw_events
    producer = AIOKafkaProducer(**producer_options(settings))
    bucket = TokenBucket(rate) if rate else None
    sent = events = 0
    pending: list[asyncio.Future[Any]] = []
    pending_events = 0
    last_flush = time.monotonic()

    async def flush() -> None:
        nonlocal sent, events, pending_events, last_flush
        if pending:
            await asyncio.gather(*pending)
        sent += len(pending)
        events += pending_events
        pending.clear()
        pending_events = 0
        last_flush = time.monotonic()
        if progress is not None:
            progress(sent, events)

    async def send(value: bytes) -> None:
        nonlocal pending_events
        key, n = count_and_key(value)
        if bucket is not None:
            await bucket.acquire(max(n, 1))
        try:
            pending.append(await producer.send(topic, value, key=key))
        except MessageSizeTooLargeError:
            log.warning("skipped a record of %d bytes: too large for the producer", len(value))
            return
        pending_events += n
        # Slow sources (rate limit, live traffic) must not hold progress back a whole chunk.
        if len(pending) >= CHUNK or time.monotonic() - last_flush >= PROGRESS_EVERY:
            await flush()

    try:
        await producer.start()
        if isinstance(records, AsyncIterable):
            async for value in records:
                await send(value)
        else:
            for value in records:
                await send(value)
        await flush()
    finally:
        await producer.stop()
    return sent


# --------------------------------------------------------------------------- command line


# `produce --live` without --rate, in events per second (the demo's default).
LIVE_RATE = 50.0


def _source(
    path: str | None,
    n_events: int | None,
    devices: int | None,
    seed: int,
    *,
    live: bool = False,
    rate: float | None = None,
) -> Any:
    if live:
        # Stamped with the wall clock as they happen, in real time (the worker's timeout
        # means what it says); paced by the devices, so --rate picks how many there are.
        from .traffic import LiveTraffic, devices_for_rate

        n = devices if devices is not None else devices_for_rate(rate or LIVE_RATE, 1.0)
        return LiveTraffic(n, speed=1.0, seed=seed).records()
    if path is not None:
        from ..run.files import read_lines

        return read_lines(path)
    from .workload import generate

    kw: dict[str, Any] = {"seed": seed}
    if devices is not None:
        kw["devices"] = devices
    return generate(n_events or 0, **kw)


async def _produce_with_bar(
    settings: Settings,
    records: Iterable[bytes] | AsyncIterable[bytes],
    rate: float | None,
    total_events: int | None,
) -> tuple[int, int]:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    done = [0, 0]
    with Progress(
        TextColumn("[bold]producing[/] → {task.fields[topic]}"),
        BarColumn(),
        TextColumn("{task.fields[records]:,} records, {task.completed:,.0f} events"),
        TextColumn("{task.fields[eps]:,.0f} events/s"),
        TimeElapsedColumn(),
        transient=True,
    ) as bar:
        task = bar.add_task(
            "produce", total=total_events, topic=settings.topics.raw_events, records=0, eps=0.0
        )

        def progress(records: int, events: int) -> None:
            done[0], done[1] = records, events
            speed = bar.tasks[task].speed or 0.0
            bar.update(task, completed=events, records=records, eps=speed)

        await produce_records(settings, records, rate, progress=progress)
    return done[0], done[1]


async def _produce_quiet(
    settings: Settings, records: Iterable[bytes] | AsyncIterable[bytes], rate: float | None
) -> tuple[int, int]:
    done = [0, 0]

    def progress(records: int, events: int) -> None:
        done[0], done[1] = records, events

    await produce_records(settings, records, rate, progress=progress)
    return done[0], done[1]


def run(
    settings: Settings,
    path: str | None,
    n_events: int | None,
    *,
    rate: float | None = None,
    devices: int | None = None,
    seed: int = 1,
    view: bool | None = None,
    live: bool = False,
) -> int:
    """The ``produce`` command: returns the exit code after printing a one-line summary."""
    import sys

    if view is None:
        view = sys.stdout.isatty()
    # Failures end in our one-line message; aiokafka's own log would repeat it.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    records = _source(path, n_events, devices, seed, live=live, rate=rate)
    started = time.monotonic()
    limit = None if live else rate  # live traffic keeps its own pace
    if view:
        coro = _produce_with_bar(settings, records, limit, n_events)
    else:
        coro = _produce_quiet(settings, records, limit)
    done = run_main(coro, f"cannot produce to {settings.broker_url}")
    if isinstance(done, Failed):
        return done.code
    n, events = done
    secs = max(time.monotonic() - started, 1e-9)
    print(
        f"produced {n:,} records ({events:,} events) to {settings.topics.raw_events} "
        f"in {secs:.1f} s ({n / secs:,.0f} records/s, {events / secs:,.0f} events/s)",
        flush=True,
    )
    return 0
