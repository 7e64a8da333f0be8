"""Drives real worker processes against a real broker: the integration tests and bench/.

Test scaffolding, never imported by the worker itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable
from pathlib import Path
from typing import Any

import aiohttp
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from .. import codec, procs
from ..core.engine import MIN_TS
from ..kafka.clients import READ_COMMITTED, topic_partitions
from ..procs import free_port
from ..run.task import route_key
from . import MIN, T0, batch, custom, launch, opt_out, screen, set_attr

__all__ = [
    "CLOCKS_PER_PARTITION",
    "CLOCK_APP",
    "Names",
    "WorkerProc",
    "clock_records",
    "device_key",
    "final_sessions",
    "http_get",
    "max_event_ts",
    "optout_device",
    "produce",
    "produce_clocks",
    "read_all",
    "running",
    "until",
    "without_clocks",
]

CLOCK_APP = "zz.clock"
MAX_VALID_TS = 4_102_444_800_000  # 2100-01-01: above it, a bad (µs) timestamp

ROLES = (
    "raw_events",
    "sessionized_events",
    "sessions",
    "dead_letters",
    "opt_out_control",
    "integrations",  # the base name: topics <prefix>-integrations.<destination>
)


class Names:
    """Unique topic names and group id for one test."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.app_id = f"{prefix}-app"
        self.topics = {role: f"{prefix}-{role.replace('_', '-')}" for role in ROLES}

    def env(self) -> dict[str, str]:
        env = {f"SESSIONIZER_TOPIC_{r.upper()}": t for r, t in self.topics.items()}
        env["SESSIONIZER_APP_ID"] = self.app_id
        return env


class WorkerProc:
    """``python -m sessionizer worker`` (``argv``, run in ``cwd``) as a ``procs`` child."""

    def __init__(
        self,
        bootstrap: str,
        names: Names,
        log_dir: Path,
        *,
        partitions: int = 4,
        env: dict[str, str] | None = None,
        tag: str = "w",
        loglevel: str = "info",
        cwd: Path | None = None,
    ) -> None:
        self.log_path = log_dir / f"{names.prefix}-{tag}.log"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("SESSIONIZER_")},
            **names.env(),
            "SESSIONIZER_BROKER_URL": f"kafka://{bootstrap}",
            "SESSIONIZER_PARTITIONS": str(partitions),
            "SESSIONIZER_WEB_PORT": str(free_port()),
            "SESSIONIZER_DATA_DIR": str(log_dir / f"{names.prefix}-{tag}-data"),
            "SESSIONIZER_BATCH_WITHIN": "50ms",
            **(env or {}),
        }
        self.argv = [sys.executable, "-m", "sessionizer", "worker", "--loglevel", loglevel]
        self.cwd = cwd  # `python -m` puts it first on sys.path: a copy of the package there wins
        self.proc: subprocess.Popen[bytes] | None = None
        self.web_port = int(self.env["SESSIONIZER_WEB_PORT"])

    def start(self) -> None:
        self.proc = procs.spawn(self.argv, self.log_path, env=self.env, cwd=self.cwd)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def wait_ready(self, timeout: float = 120.0) -> float:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if "Worker]: Ready" in self.log():
                return time.monotonic() - t0
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited early:\n{self.log()[-3000:]}")
            await asyncio.sleep(0.2)
        raise AssertionError(f"worker not ready in {timeout}s:\n{self.log()[-3000:]}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            procs.kill(self.proc)

    def terminate(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            procs.stop(self.proc, timeout=timeout)
        return self.proc.returncode


def device_key(value: bytes) -> bytes | None:
    """The device key producers that key by device give a raw record."""
    key: bytes | None = route_key(None, value)
    return key


@contextlib.asynccontextmanager
async def running(
    *workers: WorkerProc,
    timeout: float = 120.0,
    clean: bool | Collection[WorkerProc] = True,
    stop_timeout: float = 30.0,
) -> AsyncIterator[list[float]]:
    """Starts ``workers`` and waits until each is ready (yields the seconds each took);
    on the way out, stops those still running. ``clean``: the workers (True: all) that
    must then have exited with 0, checked when the body went through."""
    for w in workers:
        w.start()
    try:
        yield list(await asyncio.gather(*(w.wait_ready(timeout) for w in workers)))
    finally:
        codes = [w.terminate(stop_timeout) for w in workers]
    checked = workers if clean is True else () if clean is False else clean
    for w, code in zip(workers, codes, strict=True):
        assert w not in checked or code == 0, w.log()[-3000:]


async def produce(
    bootstrap: str,
    topic: str,
    records: Iterable[bytes | tuple[bytes | None, bytes]],
    *,
    partition: int | None = None,
    key_fn: Callable[[bytes], bytes | None] = device_key,
) -> dict[int, int]:
    """Sends records, a value keyed by ``key_fn(value)`` or a (key, value) pair; returns
    each partition's end offset (last offset + 1).

    The ends come from the acknowledgements, not from ListOffsets, which Tansu
    under-reports (docs/broker.md).
    """
    p = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, max_batch_size=1 << 20, acks=1)
    await asyncio.wait_for(p.start(), 30)
    ends: dict[int, int] = {}

    def done(metas: list[Any]) -> None:
        for m in metas:
            if m.offset + 1 > ends.get(m.partition, 0):
                ends[m.partition] = m.offset + 1

    try:
        futs = []
        for r in records:
            key, value = r if isinstance(r, tuple) else (key_fn(r), r)
            futs.append(await p.send(topic, value, key=key, partition=partition))
            if len(futs) >= 5000:  # a bounded number in flight: bench/ sends millions
                done(await asyncio.gather(*futs))
                futs.clear()
        done(await asyncio.gather(*futs))
    finally:
        await p.stop()
    return ends


async def produce_clocks(
    bootstrap: str, topic: str, clocks: Iterable[bytes], partitions: int
) -> None:
    """``clock_records`` each to its own partition: record ``i`` to ``i % partitions``."""
    for i, clock in enumerate(clocks):
        await produce(bootstrap, topic, [clock], partition=i % partitions)


async def read_all(
    bootstrap: str,
    topics: list[str],
    *,
    until: Callable[[dict[str, list[Any]]], bool],
    timeout: float = 120.0,
    raise_on_timeout: bool = True,
    raw: bool = False,
) -> dict[str, list[Any]]:
    """Reads topics from the beginning until ``until(result)`` holds or timeout."""
    c = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level=READ_COMMITTED,  # what the outputs' consumers are told to use
    )
    await c.start()
    out: dict[str, list[Any]] = {t: [] for t in topics}
    try:
        tps = [tp for t in topics for tp in await topic_partitions(c, t, tries=100)]
        c.assign(tps)
        await c.seek_to_beginning(*tps)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            batch = await c.getmany(timeout_ms=300)
            for tp, msgs in batch.items():
                if raw:  # (partition, key, value bytes), e.g. for an internal topic
                    out[tp.topic].extend((tp.partition, m.key, m.value) for m in msgs)
                else:
                    out[tp.topic].extend((m.key, codec.loads(m.value)) for m in msgs)
            if until(out):
                return out
        if not raise_on_timeout:
            return out
        raise AssertionError(
            f"condition not met in {timeout}s; have "
            + ", ".join(f"{t}: {len(v)}" for t, v in out.items())
        )
    finally:
        await c.stop()


async def http_get(port: int, path: str, host: str = "127.0.0.1") -> tuple[int, Any]:
    """(status, body): JSON bodies decoded, others as text."""
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as s,
        s.get(f"http://{host}:{port}{path}") as r,
    ):
        body = await r.text()
        return r.status, codec.loads(body) if "json" in r.content_type else body


async def until(probe: Callable[[], Awaitable[Any]], what: str, timeout: float = 90.0) -> Any:
    """Polls ``await probe()`` until it returns a truthy value, or fails after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = await probe()
        except aiohttp.ClientError as exc:
            last = exc
        else:
            if last:
                return last
        await asyncio.sleep(0.3)
    raise AssertionError(f"{what} not reached in {timeout}s; last: {last!r}")


def without_clocks(finals: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Final sessions less those of ``clock_records``' devices."""
    return {u: r for u, r in finals.items() if r["app"] != CLOCK_APP}


def final_sessions(records: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Highest revision of each session_end, without the revision counter."""
    best: dict[str, dict[str, Any]] = {}
    for r in records:
        if r.get("record") != "session_end":
            continue
        cur = best.get(r["session_uuid"])
        if cur is None or r["revision"] >= cur["revision"]:
            best[r["session_uuid"]] = r
    return {u: {k: v for k, v in r.items() if k != "revision"} for u, r in best.items()}


# --------------------------------------------------------------------------- workloads


def optout_device(seed: int) -> list[bytes]:
    """A device's three records: it opts out mid-session and back in (R17/R18)."""
    d = f"optout-{seed}"
    return [
        codec.dumps(batch(d, launch(T0), screen(T0 + 1000), set_attr(T0 + 2000, "tier", "gold"))),
        codec.dumps(batch(d, opt_out(T0 + 3000), custom(T0 + 4000))),
        codec.dumps(batch(d, opt_out(T0 + 5000, False), custom(T0 + 6000))),
    ]


def max_event_ts(values: Iterable[bytes]) -> int:
    """The latest valid event timestamp in these records (bad ones left out)."""
    hi = 0
    for v in values:
        try:
            obj = codec.loads(v)
        except codec.JSONDecodeError:
            continue
        evs = obj.get("events") if type(obj) is dict else None
        for ev in evs if type(evs) is list else ():
            data = ev.get("data") if type(ev) is dict else None
            ts = data.get("timestamp_unixtime_ms") if type(data) is dict else None
            if type(ts) is int and MIN_TS <= ts < MAX_VALID_TS and ts > hi:
                hi = ts
    return hi


# Clock devices per partition: the quorum that moves a watermark far ahead (R26).
CLOCKS_PER_PARTITION = 3


def clock_records(last_ts: int, partitions: int) -> list[bytes]:
    """Far-future records of CLOCKS_PER_PARTITION devices for each partition (record
    ``i`` for partition ``i % partitions``): they move every partition's watermark past
    every deadline, so live and offline close the same sessions the same way."""
    return [
        codec.dumps(batch(f"clock-{p}-{j}", custom(last_ts + 24 * 60 * MIN), app=CLOCK_APP))
        for j in range(CLOCKS_PER_PARTITION)
        for p in range(partitions)
    ]
