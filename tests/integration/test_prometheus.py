"""The dashboard against a real Prometheus: every panel's query returns sane data.

A real Prometheus (Debian's 2.42, .ci/install-prometheus) on loopback scrapes a
live worker and a live forwarder every second while traffic stamped now flows
through them: sessions that start and end, an opt-out, bad records, and a fake
Snowplow collector that rejects some requests and fails others, so that every
series the dashboard plots moves. Each target of
deploy/grafana/dashboards/sessionizer.json is then evaluated through the HTTP
API: each must return data, and no value may be absurd (NaN, a negative rate,
an event-time lag of years). The alert rules (deploy/alerts.yml) are loaded
too, and must evaluate without error on the real metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import shutil
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from sessionizer import codec, procs
from sessionizer.procs import free_port
from sessionizer.stream.web import device_partition
from sessionizer.testing import batch, custom, launch, opt_out, screen, session_end
from sessionizer.testing.harness import Names, WorkerProc, device_key, produce, running

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(400),
    pytest.mark.skipif(
        shutil.which("prometheus") is None,
        reason="prometheus is not installed (.ci/install-prometheus)",
    ),
]

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "sessionizer.json"
ALERTS = ROOT / "deploy" / "alerts.yml"
PARTITIONS = 4
IDLE = 3  # a partition no record goes to: it has no watermark to export
# Grafana's $__rate_interval is at least four scrape intervals; 1 s scrapes here.
RATE_INTERVAL = "20s"
RUNNER = """
import asyncio, json, sys
from sessionizer.integrations.forward import ForwardConfig, forward
cfg = ForwardConfig(**json.loads(sys.argv[1]))
sys.exit(asyncio.run(forward(cfg)))
"""


class Collector:
    """A Snowplow collector that rejects every 4th request (dead letters, failed)
    and answers every 5th with a 503 (retried); the rest it takes."""

    def __init__(self) -> None:
        self.requests = 0

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        self.requests += 1
        if self.requests % 4 == 0:
            return web.Response(status=400, text="bad payload")
        if self.requests % 5 == 0:
            return web.Response(status=503, text="busy")
        return web.Response(status=200, text="ok")


@contextlib.asynccontextmanager
async def serve(handler: Callable[[web.Request], Any]) -> AsyncIterator[int]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    finally:
        await runner.cleanup()


def busy(name: str) -> str:
    """A device named after ``name`` whose records do not go to partition IDLE."""
    for j in range(100):
        device = f"{name}.{j}"
        key = device_key(codec.dumps(batch(device, custom(0))))
        if key is not None and device_partition(key, PARTITIONS) != IDLE:
            return device
    raise AssertionError("no device name found")


def traffic(i: int) -> list[bytes]:
    """One round of records stamped now: a session that starts and ends, one left
    open, an opt-out, a bad timestamp and an undecodable record."""
    now = time.time_ns() // 1_000_000
    a, b, c, d = (busy(f"prom-{i}-{x}") for x in "abcd")
    recs = [
        batch(a, launch(now - 3000), screen(now - 2000), custom(now - 1000)),
        batch(a, session_end(now)),
        batch(b, launch(now - 500), screen(now)),
        batch(c, launch(now - 800), opt_out(now - 400), custom(now)),
        batch(d, custom(now), custom(5)),  # bad_timestamp
    ]
    return [*(codec.dumps(r) for r in recs), b"{not json"]


def panel_queries() -> list[tuple[str, str, str]]:
    """(panel title, refId, PromQL) of every dashboard target."""
    dash = json.loads(DASHBOARD.read_text())
    return [
        (p["title"], t["refId"], t["expr"].replace("$__rate_interval", RATE_INTERVAL))
        for p in dash["panels"]
        for t in p["targets"]
    ]


def absurd(title: str, expr: str, values: list[float]) -> str | None:
    """Why these values cannot be right for this panel; None when they can."""
    if not all(math.isfinite(v) for v in values):
        return f"not finite: {values}"
    if any(v < 0 for v in values) and "time()" not in expr:
        return f"negative: {values}"
    if "watermark" in expr and not all(-60 < v < 3600 for v in values):
        return f"event time behind the wall clock by {values} s (data stamped now)"
    if ("duration" in expr or "seconds" in expr) and not all(v <= 86_400 for v in values):
        return f"more than a day: {values}"
    if "lag" in expr and not all(v < 1_000_000 for v in values):
        return f"lag of {values} records"
    return None


async def query(session: aiohttp.ClientSession, port: int, expr: str) -> list[float]:
    async with session.get(f"http://127.0.0.1:{port}/api/v1/query", params={"query": expr}) as r:
        body = await r.json()
    assert body["status"] == "success", (expr, body)
    return [float(s["value"][1]) for s in body["data"]["result"]]


def prometheus_config(path: Path, worker_port: int, forward_port: int) -> None:
    path.write_text(
        json.dumps(  # YAML is a superset of JSON
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(ALERTS)],
                "scrape_configs": [
                    {
                        "job_name": "sessionizer",
                        "static_configs": [{"targets": [f"127.0.0.1:{worker_port}"]}],
                    },
                    {
                        "job_name": "sessionizer-forward",
                        "static_configs": [{"targets": [f"127.0.0.1:{forward_port}"]}],
                    },
                ],
            }
        )
    )


async def test_every_dashboard_panel_returns_sane_data_from_real_prometheus(
    broker: Any, tmp_path: Path
) -> None:
    names = Names(f"prom-{uuid.uuid4().hex[:8]}")
    worker = WorkerProc(
        broker.bootstrap,
        names,
        tmp_path,
        partitions=PARTITIONS,
        env={"SESSIONIZER_INTEGRATIONS": "snowplow", "SESSIONIZER_IDLE_TIMEOUT": "2s"},
    )
    collector = Collector()
    forward_port, prom_port = free_port(), free_port()
    procs_started: list[Any] = []
    async with running(worker, clean=False):
        try:
            async with serve(collector.handle) as collector_port:
                cfg = {
                    "name": "snowplow",
                    "client": {"bootstrap_servers": broker.bootstrap},
                    "topic": f"{names.topics['integrations']}.snowplow",
                    "dead_letters_topic": names.topics["dead_letters"],
                    "group_id": f"{names.prefix}-forward",
                    "endpoint": f"http://127.0.0.1:{collector_port}",
                    "api_key": None,
                    "batch_size": 5,
                    "timeout_s": 5.0,
                    "max_backoff_s": 0.2,
                    "web_port": forward_port,
                    "progress_s": 1.0,
                }
                fwd_log = tmp_path / "forward.log"
                procs_started.append(
                    procs.spawn([sys.executable, "-c", RUNNER, json.dumps(cfg)], fwd_log)
                )
                config = tmp_path / "prometheus.yml"
                prometheus_config(config, worker.web_port, forward_port)
                prom_log = tmp_path / "prometheus.log"
                procs_started.append(
                    procs.spawn(
                        [
                            "prometheus",
                            f"--config.file={config}",
                            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                            f"--web.listen-address=127.0.0.1:{prom_port}",
                        ],
                        prom_log,
                    )
                )
                await check_panels(broker, names, prom_port, worker, [fwd_log, prom_log])
        finally:
            for p in procs_started:
                if p.poll() is None:
                    procs.stop(p, timeout=20)


async def check_panels(
    broker: Any, names: Names, prom_port: int, worker: WorkerProc, logs: list[Path]
) -> None:
    queries = panel_queries()
    assert len(queries) >= 20
    last: dict[tuple[str, str], str] = {}
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as s:
        deadline = time.monotonic() + 150
        i = 0
        while True:
            # Traffic keeps flowing while the panels are read: rates over the last
            # RATE_INTERVAL need increases in it.
            await produce(broker.bootstrap, names.topics["raw_events"], traffic(i))
            i += 1
            await asyncio.sleep(0.5)
            last.clear()
            for title, ref, expr in queries:
                try:
                    values = await query(s, prom_port, expr)
                except aiohttp.ClientError as exc:
                    last[(title, ref)] = f"Prometheus not answering: {exc!r}"
                    continue
                why = absurd(title, expr, values) if values else "no data"
                if why is not None:
                    last[(title, ref)] = f"{expr}: {why}"
            if not last:
                break
            if time.monotonic() > deadline:
                tails = "\n".join(p.read_text(errors="replace")[-1500:] for p in logs)
                raise AssertionError(
                    "panels without sane data:\n"
                    + "\n".join(f"  {t} [{r}]: {w}" for (t, r), w in last.items())
                    + f"\n{tails}\n{worker.log()[-1500:]}"
                )
        # The partition with no data exports no watermark (not 0: a 56-year lag).
        assert await query(s, prom_port, f'sessionizer_applied_offset{{partition="{IDLE}"}}')
        assert await query(s, prom_port, f'sessionizer_watermark_ms{{partition="{IDLE}"}}') == []
        assert min(await query(s, prom_port, "sessionizer_watermark_ms")) > 1e12
        # The alert rules evaluate on the real metrics without error.
        rules: list[dict[str, Any]] = []
        while time.monotonic() < deadline + 30:
            async with s.get(f"http://127.0.0.1:{prom_port}/api/v1/rules") as r:
                groups = (await r.json())["data"]["groups"]
            rules = [rule for g in groups for rule in g["rules"]]
            if rules and all(rule["health"] == "ok" for rule in rules):
                break
            await asyncio.sleep(0.5)
        assert len(rules) >= 10
        assert all(rule["health"] == "ok" for rule in rules), [
            (rule["name"], rule["health"], rule.get("lastError")) for rule in rules
        ]
