"""Drives real worker processes against a real broker for the integration tests."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from sessionizer import codec
from sessionizer.core.engine import identity

ROLES = ("raw_events", "sessionized_events", "sessions", "dead_letters", "opt_out_control")


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
    def __init__(
        self,
        bootstrap: str,
        names: Names,
        log_dir: Path,
        *,
        partitions: int = 4,
        env: dict[str, str] | None = None,
        tag: str = "w",
    ) -> None:
        self.log_path = log_dir / f"{names.prefix}-{tag}.log"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("SESSIONIZER_")},
            **names.env(),
            "SESSIONIZER_BROKER_URL": f"kafka://{bootstrap}",
            "SESSIONIZER_PARTITIONS": str(partitions),
            "SESSIONIZER_WEB_PORT": str(_free_port()),
            "SESSIONIZER_DATA_DIR": str(log_dir / f"{names.prefix}-{tag}-data"),
            "SESSIONIZER_BATCH_WITHIN": "50ms",
            **(env or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.web_port = int(self.env["SESSIONIZER_WEB_PORT"])

    def start(self) -> None:
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sessionizer", "worker", "--loglevel", "info"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

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
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def device_key(value: bytes) -> bytes | None:
    try:
        ident = identity(codec.loads(value))
    except Exception:
        return None
    return None if ident is None else ident[1].encode()


async def produce(
    bootstrap: str,
    topic: str,
    values: Iterable[bytes],
    *,
    partition: int | None = None,
    key_fn: Any = device_key,
) -> int:
    p = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await p.start()
    n = 0
    try:
        futs = []
        for v in values:
            futs.append(await p.send(topic, v, key=key_fn(v), partition=partition))
            n += 1
        await asyncio.gather(*futs)
    finally:
        await p.stop()
    return n


async def read_all(
    bootstrap: str,
    topics: list[str],
    *,
    until: Any,
    timeout: float = 120.0,
    raise_on_timeout: bool = True,
    raw: bool = False,
) -> dict[str, list[Any]]:
    """Reads topics from the beginning until ``until(result)`` holds or timeout."""
    c = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await c.start()
    out: dict[str, list[Any]] = {t: [] for t in topics}
    try:
        tps = []
        for t in topics:
            parts = None
            for _ in range(100):
                parts = c.partitions_for_topic(t)
                if parts:
                    break
                await c._client.force_metadata_update()
                await asyncio.sleep(0.1)
            tps += [TopicPartition(t, p) for p in sorted(parts or ())]
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
