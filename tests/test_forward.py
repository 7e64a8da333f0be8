"""The forwarder's delivery (sessionizer/integrations/forward.py) against local HTTP servers that
implement each destination's contract: paths, auth, body shape and limits, 429
with Retry-After, bursts of 5xx, slow responses, 4xx with per-record errors."""

from __future__ import annotations

import asyncio
import base64
import json
import random
import time
from functools import cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from jsonschema import Draft4Validator, Draft202012Validator

from sessionizer import codec
from sessionizer.integrations import NAMES, translate
from sessionizer.integrations.forward import (
    SPECS,
    ForwardConfig,
    ForwardConfigError,
    Forwarder,
    Item,
    Metrics,
    Sender,
    Stopped,
    from_settings,
    retry_after_s,
)
from sessionizer.testing import run
from sessionizer.tools import workload

SCHEMAS = Path(__file__).resolve().parent.parent / "schemas" / "integrations"
KEY = "secret-key"


@cache
def payloads(name: str) -> tuple[tuple[str, str], ...]:
    res = run(list(workload.generate(300, devices=6, seed=11, late_rate=0.1)))
    outs = [("sessionized-events", None, e) for e in res.events]
    outs += [("sessions", None, s) for s in res.sessions]
    out, dead = translate(name, outs)
    assert dead == []
    return tuple((k, codec.dumps(p).decode()) for k, p in out)


def items(name: str, n: int | None = None) -> list[Item]:
    got = []
    for i, (k, raw) in enumerate(payloads(name)):
        source = {"topic": f"integrations.{name}", "partition": 0, "offset": i, "timestamp": None}
        got.append(Item(json.loads(raw), k.encode(), source, raw))
    return got[:n] if n is not None else got


def dedup(name: str, p: dict[str, Any]) -> Any:
    if name == "amplitude":
        return p["insert_id"]
    if name == "mixpanel":
        return p["properties"]["$insert_id"]
    if name in ("segment", "rudderstack"):
        return p["messageId"]
    if name == "snowplow":
        return p["eid"]
    return json.dumps(p, sort_keys=True)  # ga4 has no dedup id: the body itself


class Fake:
    """One destination's API: checks each request as the real one would."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.plan: list[Any] = []  # per request: ("status", headers, body) | ("slow", s)
        self.received: list[dict[str, Any]] = []  # accepted items
        self.requests = 0
        self.reject: set[Any] = set()  # dedup ids answered with a per-record 400

    def _auth(self, request: web.Request) -> None:
        if self.name in ("mixpanel", "segment", "rudderstack"):
            want = "Basic " + base64.b64encode(f"{KEY}:".encode()).decode()
            assert request.headers["Authorization"] == want

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        raw = await request.read()
        self._auth(request)
        if self.plan:
            step = self.plan.pop(0)
            if step[0] == "slow":
                await asyncio.sleep(step[1])
            else:
                status, headers, body = step
                return web.Response(status=status, headers=headers, text=body)
        body = json.loads(raw)
        return self.accept(request, raw, body)

    def accept(self, request: web.Request, raw: bytes, body: Any) -> web.Response:
        n = self.name
        if n == "amplitude":
            assert request.path == "/2/httpapi" and body["api_key"] == KEY
            assert body["options"] == {"min_id_length": 1}
            events = body["events"]
            assert 1 <= len(events) <= 2000 and len(raw) <= 1_000_000
            bad = [i for i, e in enumerate(events) if e["insert_id"] in self.reject]
            if bad:
                return web.json_response(
                    {"code": 400, "error": "Request missing required field",
                     "events_with_invalid_fields": {"time": bad}}, status=400)  # fmt: skip
            self.received += events
            return web.json_response({"code": 200, "events_ingested": len(events)})
        if n == "mixpanel":
            assert request.path == "/import" and request.query["strict"] == "1"
            assert isinstance(body, list) and 1 <= len(body) <= 2000 and len(raw) <= 2_000_000
            failed = [
                {"index": i, "insert_id": e["properties"]["$insert_id"], "field": "properties.time",
                 "message": "invalid"}
                for i, e in enumerate(body) if e["properties"]["$insert_id"] in self.reject
            ]  # fmt: skip
            self.received += [
                e for i, e in enumerate(body) if i not in {f["index"] for f in failed}
            ]
            if failed:
                return web.json_response(
                    {"code": 400, "num_records_imported": len(body) - len(failed),
                     "status": "Bad Request", "failed_records": failed}, status=400)  # fmt: skip
            return web.json_response(
                {"code": 200, "num_records_imported": len(body), "status": "OK"}
            )
        if n in ("segment", "rudderstack"):
            assert request.path == "/v1/batch" and len(raw) <= 500_000
            assert all(len(json.dumps(c)) <= 32 * 1024 for c in body["batch"])
            if any(c["messageId"] in self.reject for c in body["batch"]):
                return web.json_response({"error": "invalid"}, status=400)
            self.received += body["batch"]
            return web.json_response({})
        if n == "snowplow":
            assert request.path == "/com.snowplowanalytics.snowplow/tp2"
            assert (
                body["schema"]
                == "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4"
            )
            payload_data().validate(body["data"])
            self.received += [{k: v for k, v in e.items() if k != "stm"} for e in body["data"]]
            return web.Response(status=200, text="ok")
        assert n == "ga4"
        assert request.path == "/mp/collect" and request.query["api_secret"] == KEY
        assert request.query["measurement_id"] == "G-TEST" and len(raw) <= 130_000
        assert 1 <= len(body["events"]) <= 25
        self.received.append(body)
        return web.Response(status=204)


@cache
def payload_data() -> Draft4Validator:
    return Draft4Validator(json.loads((SCHEMAS / "iglu-payload_data-1-0-4.json").read_text()))


class Server:
    def __init__(self, fake: Fake) -> None:
        self.fake = fake
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def __aenter__(self) -> Server:
        app = web.Application(client_max_size=4 << 20)
        app.router.add_post("/{tail:.*}", self.fake.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: Any) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


def config(name: str, url: str, **kw: Any) -> ForwardConfig:
    endpoint = url + ("/mp/collect?measurement_id=G-TEST" if name == "ga4" else "")
    base: dict[str, Any] = {
        "name": name,
        "client": {},
        "topic": f"integrations.{name}",
        "dead_letters_topic": "dead-letters",
        "group_id": "g",
        "endpoint": endpoint,
        "api_key": KEY,
        "batch_size": 0,
        "timeout_s": 2.0,
        "max_backoff_s": 0.2,
    }
    return ForwardConfig(**(base | kw))


async def deliver(
    name: str, its: list[Item], fake: Fake, *, clock: Any = None, **kw: Any
) -> tuple[list[Any], Sender, float]:
    async with Server(fake) as srv, aiohttp.ClientSession() as http:
        cfg = config(name, srv.url, **kw)
        extra = {"clock": clock} if clock else {}
        sender = Sender(cfg, http, Metrics(), rng=random.Random(1), **extra)
        t0 = time.monotonic()
        dead = await sender.deliver(its)
        return dead, sender, time.monotonic() - t0


@cache
def dead_letter_schema() -> Draft202012Validator:
    # The one schema of the dead-letters topic, where the forwarder writes them.
    return Draft202012Validator(
        json.loads((SCHEMAS.parent / "dead-letter.schema.json").read_text())
    )


@pytest.mark.parametrize("name", NAMES)
async def test_delivers_everything_within_limits(name: str) -> None:
    fake = Fake(name)
    its = items(name)
    # the real time: ga4's 72-hour rule would otherwise refuse the 2026 workload
    clock = (lambda: 1767225600000 + 3600_000) if name == "ga4" else None
    dead, sender, _ = await deliver(name, its, fake, clock=clock, batch_size=40)
    assert dead == []
    assert sorted(dedup(name, p) for p in fake.received) == sorted(
        dedup(name, it.payload) for it in its
    )
    # Counted in events: a GA4 body holds several.
    assert sender.sent == (len(_ga4_events(its_payloads(its))) if name == "ga4" else len(its))
    expect = len(its) if name == "ga4" else -(-len(its) // 40)
    assert fake.requests == expect


async def test_429_retry_after_5xx_burst_and_slow_responses_are_retried() -> None:
    fake = Fake("amplitude")
    fake.plan = [
        (429, {"Retry-After": "1"}, '{"code":429,"error":"Too many requests for some devices"}'),
        (500, {}, "oops"),
        (502, {}, "bad gateway"),
        (503, {}, "unavailable"),
        ("slow", 1.5),  # over timeout_s
    ]
    its = items("amplitude", 50)
    dead, sender, took = await deliver("amplitude", its, fake, timeout_s=0.5)
    assert dead == []
    # the slow request was taken after the client gave up: a duplicate, same insert_id
    assert len(fake.received) == 100 and fake.requests == 6
    assert {e["insert_id"] for e in fake.received} == {it.payload["insert_id"] for it in its}
    assert took >= 1.0  # Retry-After honoured (the backoff alone is capped at 0.2 s)
    m = sender.metrics.retried
    assert m.labels("amplitude", "429")._value.get() == 1
    assert m.labels("amplitude", "5xx")._value.get() == 3
    assert m.labels("amplitude", "timeout")._value.get() == 1
    assert sender.metrics.sent.labels("amplitude")._value.get() == 50


def test_backoff_is_exponential_capped_and_jittered() -> None:
    cfg = config("amplitude", "http://x", max_backoff_s=5.0)
    s = Sender(cfg, None, Metrics(), rng=random.Random(3))  # type: ignore[arg-type]
    delays = [s._backoff(a, None) for a in range(10)]
    for a, d in enumerate(delays):
        cap = min(5.0, 0.1 * 2**a)
        assert cap / 2 <= d <= cap
    assert s._backoff(0, 7.0) == 7.0
    assert retry_after_s("3") == 3.0
    assert retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert retry_after_s("soon") is None


@pytest.mark.parametrize("name", ["segment", "rudderstack", "snowplow"])
async def test_4xx_is_a_dead_letter_carrying_the_response(name: str) -> None:
    fake = Fake(name)
    fake.plan = [(400, {}, '{"error":"payload invalid"}')]
    its = items(name, 5)
    dead, sender, _ = await deliver(name, its, fake)
    assert len(dead) == 5 and fake.received == []
    for key, dl in dead:
        dead_letter_schema().validate(dl)
        assert key is not None
        assert dl["reason"] == "integration_rejected" and dl["response"]["status"] == 400
        assert dl["response"]["body"] == '{"error":"payload invalid"}'
        assert json.loads(dl["payload"]) in [it.payload for it in its]
    assert sender.metrics.failed.labels(name, "integration_rejected")._value.get() == 5


async def test_amplitude_400_rejects_only_the_named_events_and_resends_the_rest() -> None:
    fake = Fake("amplitude")
    its = items("amplitude", 20)
    fake.reject = {its[3].payload["insert_id"], its[7].payload["insert_id"]}
    dead, _, _ = await deliver("amplitude", its, fake)
    assert sorted(json.loads(d["payload"])["insert_id"] for _k, d in dead) == sorted(fake.reject)
    assert len(fake.received) == 18


async def test_mixpanel_400_partial_success() -> None:
    fake = Fake("mixpanel")
    its = items("mixpanel", 20)
    bad = its[5].payload["properties"]["$insert_id"]
    fake.reject = {bad}
    dead, sender, _ = await deliver("mixpanel", its, fake)
    assert [json.loads(d["payload"])["properties"]["$insert_id"] for _k, d in dead] == [bad]
    assert len(fake.received) == 19 and fake.requests == 1 and sender.sent == 19


async def test_413_splits_the_batch() -> None:
    fake = Fake("segment")
    fake.plan = [(413, {}, "too large")]
    dead, _, _ = await deliver("segment", items("segment", 10), fake)
    assert dead == [] and len(fake.received) == 10 and fake.requests == 3


def its_payloads(its: list[Item]) -> list[dict[str, Any]]:
    return [it.payload for it in its]


def _ga4_events(bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for b in bodies for e in b["events"]]


async def test_ga4_events_older_than_72_hours_are_dead_letters() -> None:
    its = items("ga4")
    ts = sorted(e["timestamp_micros"] // 1000 for it in its for e in it.payload["events"])
    now = ts[len(ts) // 2] + 72 * 3600_000  # half of them too old
    fake = Fake("ga4")
    dead, sender, _ = await deliver("ga4", its, fake, clock=lambda: now)
    sent = _ga4_events(fake.received)
    assert dead and sent
    assert len(sent) + len(dead) == len(ts)
    # One unit, events, for what was sent and what was dead-lettered, and why.
    assert (sender.sent, sender.failed) == (len(sent), len(dead))
    assert sender.failed_by == {"event older than GA4's 72 hours at send time": len(dead)}
    fw = Forwarder(config("ga4", "http://unused"))
    fw.sender, fw.committed = sender, len(ts)
    assert fw.summary() == (
        f"forward ga4: sent {len(sent)} events, retried 0 requests, dead-lettered {len(dead)} "
        f"events (event older than GA4's 72 hours at send time: {len(dead)}), "
        f"committed {len(ts)} events"
    )
    limit = (now - 72 * 3600_000 + 15 * 60_000) * 1000
    assert all(e["timestamp_micros"] >= limit for e in sent)
    for _k, d in dead:
        dead_letter_schema().validate(d)
        (old,) = json.loads(d["payload"])["events"]
        assert old["timestamp_micros"] < limit


def test_config_from_settings_and_its_errors() -> None:
    s = SimpleNamespace(
        broker_hosts=("127.0.0.1:9092",),
        topics=SimpleNamespace(dead_letters="dl"),
        forward_api_key=SimpleNamespace(reveal=lambda: "s3cr3t-xyz"),
    )
    cfg = from_settings(s, "amplitude")
    assert cfg.topic == "integrations.amplitude" and cfg.group_id == "sessionizer-forward-amplitude"
    assert cfg.dead_letters_topic == "dl" and cfg.key() == "s3cr3t-xyz"
    assert "s3cr3t" not in repr(cfg)
    assert cfg.url() == "https://api2.amplitude.com/2/httpapi" and cfg.max_events == 2000
    assert cfg.timeout_s == 10 and cfg.max_backoff_s == 60
    s.forward_batch_size, s.forward_timeout_ms, s.forward_max_backoff_ms = 10, 500, 2000
    cfg = from_settings(s, "mixpanel", forward_endpoint="https://api-eu.mixpanel.com")
    assert cfg.max_events == 10 and cfg.timeout_s == 0.5 and cfg.max_backoff_s == 2
    assert cfg.url(strict="1") == "https://api-eu.mixpanel.com/import?strict=1"
    with pytest.raises(ForwardConfigError, match="forward_endpoint"):
        from_settings(s, "snowplow")
    with pytest.raises(ForwardConfigError, match="measurement_id"):
        from_settings(s, "ga4")
    s.forward_api_key = None
    with pytest.raises(ForwardConfigError, match="forward_api_key"):
        from_settings(s, "segment")
    assert set(SPECS) == set(NAMES)


async def test_a_stop_cuts_a_retry_short_and_the_batch_is_not_delivered() -> None:
    # SIGTERM while the destination keeps failing: the forwarder gives the batch
    # up at once (no commit, so a restart resends it) instead of retrying it for
    # as long as the destination fails.
    fake = Fake("amplitude")
    fake.plan = [(503, {"Retry-After": "60"}, "unavailable")] * 10
    stop = asyncio.Event()
    async with Server(fake) as srv, aiohttp.ClientSession() as http:
        cfg = config("amplitude", srv.url, max_backoff_s=30.0)
        sender = Sender(cfg, http, Metrics(), rng=random.Random(1), stop=stop)
        task = asyncio.create_task(sender.deliver(items("amplitude", 10)))
        while fake.requests < 1:  # then told to wait 60 s before the retry
            await asyncio.sleep(0.01)
        stop.set()
        with pytest.raises(Stopped):
            await asyncio.wait_for(task, 5)
    assert sender.sent == 0 and fake.received == []


def test_commit_point_is_each_partitions_first_unacknowledged_record() -> None:
    from types import SimpleNamespace

    from aiokafka import TopicPartition

    from sessionizer.integrations.forward import Item, commit_point

    tp0, tp1 = TopicPartition("t", 0), TopicPartition("t", 1)
    batch = {
        tp0: [SimpleNamespace(offset=o) for o in (5, 6, 7)],
        tp1: [SimpleNamespace(offset=o) for o in (10, 11)],
    }

    def item(part: int, off: int) -> Item:
        return Item({}, None, {"topic": "t", "partition": part, "offset": off}, "")

    assert commit_point(batch, []) == {tp0: 8, tp1: 12}
    assert commit_point(batch, [item(0, 7), item(1, 10), item(1, 11)]) == {tp0: 7, tp1: 10}
    assert commit_point(batch, [item(0, 6), item(0, 7)]) == {tp0: 6, tp1: 12}
    # A transaction's commit marker after the last record: the position is past it.
    assert commit_point(batch, [], {tp0: 9, tp1: 12}) == {tp0: 9, tp1: 12}
