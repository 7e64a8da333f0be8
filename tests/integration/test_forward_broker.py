"""The forwarder on the real broker: SIGKILLed in the middle of a topic and
restarted, it loses nothing (at-least-once: offsets committed only after the
destination acknowledged) and every event it sends again carries the same
dedup id, with the same bytes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from sessionizer import codec
from sessionizer.integrations import translate
from sessionizer.testing import run
from sessionizer.testing.harness import produce
from sessionizer.tools import workload

pytestmark = pytest.mark.integration

KEY = "amp-key"
RUNNER = """
import asyncio, json, sys
from sessionizer.integrations.forward import ForwardConfig, forward
cfg = ForwardConfig(**json.loads(sys.argv[1]))
sys.exit(asyncio.run(forward(cfg)))
"""


class Amplitude:
    """/2/httpapi, a little slow, so that a kill lands in the middle."""

    def __init__(self) -> None:
        self.received: list[bytes] = []  # each event's canonical bytes
        self.requests = 0

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        assert request.path == "/2/httpapi" and body["api_key"] == KEY
        await asyncio.sleep(0.05)
        self.requests += 1
        if self.requests % 7 == 0:
            return web.json_response({"code": 503}, status=503)
        self.received += [codec.dumps(e) for e in body["events"]]
        return web.json_response({"code": 200, "events_ingested": len(body["events"])})


def start(cfg: dict[str, Any], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as f:
        return subprocess.Popen(
            [sys.executable, "-c", RUNNER, json.dumps(cfg)],
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


async def wait_for(cond: Callable[[], bool], timeout: float, what: str, log: Path) -> None:
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"{what} not in {timeout}s:\n{log.read_text()[-3000:]}")
        await asyncio.sleep(0.1)


async def exited(proc: subprocess.Popen[bytes], timeout: float) -> int | None:
    """The exit code, waited for without blocking the loop: the fake destination
    lives on it, and a forwarder stopping with a request in flight needs its answer
    (a blocking ``proc.wait`` starved it, and the forwarder retried until killed)."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return proc.poll()


async def test_forward_sigkill_restart_loses_nothing_and_keeps_dedup_ids(
    broker: Any, unique: Callable[[str], str], tmp_path: Path
) -> None:
    res = run(list(workload.generate(600, devices=12, seed=5, late_rate=0.1)))
    outs = [("sessionized-events", None, e) for e in res.events]
    outs += [("sessions", None, s) for s in res.sessions]
    records, dead = translate("amplitude", outs)
    assert dead == [] and len(records) > 400
    topic, dl_topic = unique("integrations.amplitude"), unique("dead-letters")
    await produce(
        broker.bootstrap,
        topic,
        [codec.dumps(p) for _k, p in records],
        key_fn=lambda v: codec.loads(v)["device_id"].encode(),
    )

    fake = Amplitude()
    app = web.Application()
    app.router.add_post("/{tail:.*}", fake.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    cfg = {
        "name": "amplitude",
        "client": {"bootstrap_servers": broker.bootstrap},
        "topic": topic,
        "dead_letters_topic": dl_topic,
        "group_id": unique("forward"),
        "endpoint": f"http://127.0.0.1:{port}",
        "api_key": KEY,
        "batch_size": 25,
        "timeout_s": 5.0,
        "max_backoff_s": 0.2,
        "poll_records": 200,  # several requests per poll: offsets follow each request
        "progress_s": 1.0,
    }
    log = tmp_path / "forward.log"
    want = {json.dumps(p, sort_keys=True) for _k, p in records}
    proc = start(cfg, log)
    try:
        await wait_for(lambda: len(fake.received) >= len(records) // 3, 120, "a third", log)
        os.killpg(proc.pid, signal.SIGKILL)
        await exited(proc, 10)
        first = len(fake.received)
        assert first < len(records), "the kill came too late to test anything"

        proc = start(cfg, log)

        def unique_ids() -> set[str]:
            return {codec.loads(b)["insert_id"] for b in fake.received}

        await wait_for(lambda: len(unique_ids()) >= len(records), 120, "every record", log)
        os.killpg(proc.pid, signal.SIGTERM)
        assert await exited(proc, 30) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        await runner.cleanup()

    got = [codec.loads(b) for b in fake.received]
    # nothing lost
    assert {json.dumps(p, sort_keys=True) for p in got} == want
    # every duplicate (resent after the kill) has the same dedup id and the same bytes
    by_id: dict[str, set[bytes]] = {}
    for b in fake.received:
        by_id.setdefault(codec.loads(b)["insert_id"], set()).add(b)
    assert all(len(v) == 1 for v in by_id.values())
    assert len(by_id) == len(records)
    # Offsets were committed after each acknowledged request: the kill re-sent at most
    # the request in flight (a commit per poll re-sent up to 200 records).
    assert len(fake.received) - len(records) <= cfg["batch_size"]
    assert "forward amplitude: sent" in log.read_text()  # the progress line
