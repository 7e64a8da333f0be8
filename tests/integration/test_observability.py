"""The worker's web port: /health, /metrics (Prometheus) and /sessions/{app}/{device}."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from jsonschema import Draft202012Validator
from prometheus_client.parser import text_string_to_metric_families

from sessionizer import codec
from sessionizer.stream.web import device_partition
from sessionizer.testing import MIN, T0, batch, custom, launch, opt_out, run, screen, set_attr
from sessionizer.testing.harness import (
    Names,
    WorkerProc,
    device_key,
    http_get,
    produce,
    running,
    until,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(400)]

PARTITIONS = 4
APP = "com.example.shop"
LOOKUP = Draft202012Validator(
    codec.loads(
        (Path(__file__).parents[2] / "schemas" / "sessions-lookup.schema.json").read_bytes()
    )
)


def _names() -> Names:
    return Names(f"obs-{uuid.uuid4().hex[:8]}")


_get = http_get
_until = until


async def _healthy(port: int, timeout: float = 120.0) -> dict[str, Any]:
    async def probe() -> Any:
        status, body = await _get(port, "/health")
        return body if status == 200 and body["ready"] else None

    return await _until(probe, f"/health on :{port} ready", timeout)  # type: ignore[no-any-return]


async def _owners(a: WorkerProc, b: WorkerProc) -> dict[int, str]:
    """The URL of each partition's owner, once both workers are ready and the partitions are
    shared out between them (the group has settled); /health needs no token."""

    async def split() -> Any:
        ha, hb = await asyncio.gather(_get(a.web_port, "/health"), _get(b.web_port, "/health"))
        if ha[0] != 200 or hb[0] != 200:
            return None
        pa, pb = set(ha[1]["partitions"]), set(hb[1]["partitions"])
        ok = pa and pb and not pa & pb and pa | pb == set(range(PARTITIONS))
        return (ha[1], hb[1]) if ok else None

    ha, hb = await _until(split, "partitions shared by both workers", 150)
    return {p: ha["url"] for p in ha["partitions"]} | {p: hb["url"] for p in hb["partitions"]}


def _scrape(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _records() -> tuple[list[bytes], str, str]:
    dev, gone = "obs-device-1", "obs-device-gone"
    recs = [
        batch(dev, launch(T0), screen(T0 + 1000), set_attr(T0 + 2000, "tier", "gold")),
        batch(dev, screen(T0 + 3000, "Cart"), custom(T0 + 4000)),
        batch(gone, launch(T0), screen(T0 + 500)),
        batch(gone, opt_out(T0 + 1000), custom(T0 + 1500)),
        batch("obs-device-2", custom(T0 + 100), custom(5)),  # bad_timestamp
        batch(None, custom(T0), mpid=None),  # missing_identity
    ]
    return [*(codec.dumps(r) for r in recs), b"{not json"], dev, gone


async def test_health_metrics_and_session_lookup(broker: Any, tmp_path: Path) -> None:
    names = _names()
    w = WorkerProc(broker.bootstrap, names, tmp_path, partitions=PARTITIONS)
    async with running(w):
        health = await _healthy(w.web_port)
        assert health["partitions"] == list(range(PARTITIONS))
        assert isinstance(health["lag"], int)
        # The start-up line of docs/operations.md#start-up: its partitions and web URL.
        ready = (
            f"sessionizer worker ready: partitions {list(range(PARTITIONS))} of "
            f"{names.topics['raw_events']}; web http://127.0.0.1:{w.web_port}"
        )
        assert ready in w.log().splitlines(), w.log()[-3000:]

        recs, dev, gone = _records()
        want = run(recs, keep_open=True)
        c = want.counts
        # Expected watermark of each partition: the same engine over its records.
        by_part: dict[int, list[bytes]] = {}
        for v in recs:
            k = device_key(v)
            if k is not None:
                by_part.setdefault(device_partition(k, PARTITIONS), []).append(v)
        wms = {p: run(vs, keep_open=True).engine.watermark for p, vs in by_part.items()}
        produced_at = time.monotonic()
        await produce(broker.bootstrap, names.topics["raw_events"], recs)

        async def scraped() -> Any:
            status, text = await _get(w.web_port, "/metrics")
            m = _scrape(text) if status == 200 else {}
            return m if m.get(("sessionizer_records_in_total", ())) == len(recs) else None

        m = await _until(scraped, "all records counted in /metrics")
        elapsed_ms = (time.monotonic() - produced_at) * 1000

        def val(name: str, **labels: str) -> float:
            return m[(name, tuple(sorted(labels.items())))]

        assert c.balanced()
        assert val("sessionizer_events_in_total") == c.events_in == 11
        assert val("sessionizer_events_forwarded_total") == c.events_forwarded
        assert val("sessionizer_events_control_total") == c.events_control >= 2
        assert val("sessionizer_events_opted_out_total") == c.events_opted_out == 1
        assert val("sessionizer_events_dead_lettered_total") == c.events_dead_lettered
        assert val("sessionizer_records_dead_lettered_total") == c.records_dead_lettered == 2
        for reason, n in c.dead_by_reason.items():
            assert val("sessionizer_dead_letters_total", reason=reason) == n, reason
        assert val("sessionizer_dead_letters_total", reason="bad_timestamp") == 1
        assert val("sessionizer_sessions_started_total") == c.sessions_started == 3
        for reason, n in c.sessions_ended.items():
            assert val("sessionizer_sessions_ended_total", reason=reason) == n, reason
        assert val("sessionizer_sessions_ended_total", reason="opt_out") == 1
        opened = sum(val("sessionizer_open_sessions", partition=str(p)) for p in wms)
        assert opened == want.engine.open_sessions() == 2
        for p, wm in wms.items():
            got = val("sessionizer_watermark_ms", partition=str(p))
            # R22: an idle partition's watermark moves on with the wall clock.
            assert wm <= got <= wm + elapsed_ms + 60_000, (p, got, wm)
            assert val("sessionizer_applied_offset", partition=str(p)) >= 0
            assert val("sessionizer_consumer_lag", partition=str(p)) >= 0
        assert val("sessionizer_batch_seconds_count") >= 1
        # One duration per session closed so far (the opted-out one, at least).
        closed = sum(want.counts.sessions_ended.values())
        assert val("sessionizer_session_duration_seconds_count") == closed >= 1
        assert val("sessionizer_ready") == 1

        status, body = await _get(w.web_port, f"/sessions/{APP}/{dev}")
        assert status == 200, body
        st = want.engine.keys[f"{APP}/{dev}"]
        assert st.open is not None
        s = body["open_session"]
        assert body["opted_out"] is False and body["session_count"] == 1
        assert s["status"] == "open" and s["session_uuid"] == st.open.uuid
        assert s["event_count"] == st.open.events
        assert s["screen_view_count"] == st.open.screens == 2
        assert s["session_attributes"] == {"tier": "gold"}
        assert s["start_unixtime_ms"] == T0 and s["end_unixtime_ms"] == T0 + 4000
        assert s["revision"] is None and body["last_closed_session"] is None
        assert body["expired_session"] is None
        assert list(LOOKUP.iter_errors(body)) == []

        # R18: an opted-out key shows nothing but the flag.
        assert await _get(w.web_port, f"/sessions/{APP}/{gone}") == (200, {"opted_out": True})
        assert list(LOOKUP.iter_errors({"opted_out": True})) == []
        status, body = await _get(w.web_port, f"/sessions/{APP}/no-such-device")
        assert status == 404, body
        status, _ = await _get(w.web_port, f"/sessions/other.app/{dev}")
        assert status == 404

        status, health = await _get(w.web_port, "/health")
        assert status == 200 and health["ready"] is True


async def test_session_lookup_is_routed_to_the_owning_worker(broker: Any, tmp_path: Path) -> None:
    names = _names()
    # One device per partition, so that each worker owns some of them.
    devices: dict[int, str] = {}
    i = 0
    while len(devices) < PARTITIONS:
        d = f"route-{i}"
        devices.setdefault(device_partition(d.encode(), PARTITIONS), d)
        i += 1
    a = WorkerProc(broker.bootstrap, names, tmp_path, partitions=PARTITIONS, tag="a")
    b = WorkerProc(broker.bootstrap, names, tmp_path, partitions=PARTITIONS, tag="b")
    async with running(a, b, clean=False):
        owner = await _owners(a, b)
        recs = [
            codec.dumps(batch(d, launch(T0), screen(T0 + 1000), set_attr(T0 + 2000, "n", p)))
            for p, d in devices.items()
        ]
        await produce(broker.bootstrap, names.topics["raw_events"], recs)

        async def all_known() -> Any:
            for d in devices.values():
                status, _ = await _get(a.web_port, f"/sessions/{APP}/{d}")
                if status != 200:
                    return None
            return True

        await _until(all_known, "every device's session known", 60)
        for p, d in devices.items():
            bodies = []
            for w in (a, b):
                status, body = await _get(w.web_port, f"/sessions/{APP}/{d}")
                assert status == 200, (w.web_port, d, body)
                bodies.append(body)
            assert bodies[0] == bodies[1]  # the same answer, from the owner
            body = bodies[0]
            assert body["served_by"] == owner[p] and body["partition"] == p
            assert body["open_session"]["session_attributes"] == {"n": p}
            assert body["open_session"]["screen_view_count"] == 1
        # Unknown keys are 404 on either worker, wherever they would live.
        for w in (a, b):
            for i in range(PARTITIONS * 2):
                status, _ = await _get(w.web_port, f"/sessions/{APP}/nobody-{i}")
                assert status == 404
        # Each worker counted only what it processed; together, everything.
        totals = []
        for w in (a, b):
            _, text = await _get(w.web_port, "/metrics")
            totals.append(_scrape(text)[("sessionizer_sessions_started_total", ())])
        assert sum(totals) == PARTITIONS and all(t >= 1 for t in totals)


async def test_counters_survive_a_rebalance(broker: Any, tmp_path: Path) -> None:
    """An engine is rebuilt when its partition moves; the worker's counters never go down."""
    names = _names()
    a = WorkerProc(broker.bootstrap, names, tmp_path, partitions=PARTITIONS, tag="a")
    b = WorkerProc(broker.bootstrap, names, tmp_path, partitions=PARTITIONS, tag="b")
    async with running(a, clean=False):
        await _healthy(a.web_port)
        recs = [codec.dumps(batch(f"keep-{i}", launch(T0), screen(T0 + MIN))) for i in range(16)]
        await produce(broker.bootstrap, names.topics["raw_events"], recs)

        async def counted() -> Any:
            _, text = await _get(a.web_port, "/metrics")
            m = _scrape(text)
            return m if m.get(("sessionizer_events_in_total", ())) == 2 * len(recs) else None

        before = await _until(counted, "worker a counted every event")
        async with running(b, clean=False):  # a loses some partitions: their engines are dropped

            async def shared() -> Any:
                status, h = await _get(a.web_port, "/health")
                return h if status == 200 and len(h["partitions"]) < PARTITIONS else None

            await _until(shared, "worker a gives partitions to b", 150)
            _, text = await _get(a.web_port, "/metrics")
            after = _scrape(text)
            for key, value in before.items():
                if key[0].endswith("_total"):
                    assert after[key] >= value, key
            assert after[("sessionizer_sessions_started_total", ())] == len(recs)


# --------------------------------------------------------------------------- /sessions needs a key

TOKEN = "obs-web-token-7Hq2xVb9Lm4Rt8Zp"


async def _get_with(port: int, path: str, authorization: str | None) -> tuple[int, Any, str]:
    """Status, JSON body and WWW-Authenticate of a GET with this Authorization header."""
    headers = {} if authorization is None else {"Authorization": authorization}
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as s,
        s.get(f"http://127.0.0.1:{port}{path}", headers=headers) as r,
    ):
        body = codec.loads(await r.read())
        return r.status, body, r.headers.get("WWW-Authenticate", "")


def _split_devices() -> dict[int, str]:
    devices: dict[int, str] = {}
    i = 0
    while len(devices) < PARTITIONS:
        d = f"tok-{i}"
        devices.setdefault(device_partition(d.encode(), PARTITIONS), d)
        i += 1
    return devices


async def test_sessions_needs_the_web_token_and_forwards_it(broker: Any, tmp_path: Path) -> None:
    names = _names()
    env = {"SESSIONIZER_WEB_TOKEN": TOKEN}
    a = WorkerProc(broker.bootstrap, names, tmp_path, partitions=PARTITIONS, env=env, tag="a")
    b = WorkerProc(broker.bootstrap, names, tmp_path, partitions=PARTITIONS, env=env, tag="b")
    async with running(a, b, clean=False):
        owner = await _owners(a, b)
        devices = _split_devices()
        recs = [
            codec.dumps(batch(d, launch(T0), screen(T0 + 1000), set_attr(T0 + 2000, "n", p)))
            for p, d in devices.items()
        ]
        await produce(broker.bootstrap, names.topics["raw_events"], recs)
        bearer = f"Bearer {TOKEN}"

        async def all_known() -> Any:
            for d in devices.values():
                status, _, _ = await _get_with(a.web_port, f"/sessions/{APP}/{d}", bearer)
                if status != 200:
                    return None
            return True

        await _until(all_known, "every device's session known", 60)
        for p, d in devices.items():
            path = f"/sessions/{APP}/{d}"
            for w in (a, b):
                # Through the owner or forwarded to it: the forward carries the token.
                status, body, _ = await _get_with(w.web_port, path, bearer)
                assert status == 200, (w.web_port, d, body)
                assert body["served_by"] == owner[p] and body["partition"] == p
                assert body["open_session"]["session_attributes"] == {"n": p}

                status, body, challenge = await _get_with(w.web_port, path, None)
                assert status == 401, body
                assert body == {
                    "error": "missing bearer token: send Authorization: Bearer <web_token>"
                }
                assert challenge == 'Bearer realm="sessionizer"'
                for wrong in (f"Bearer {TOKEN[:-1]}", f"Bearer {TOKEN}x", "Bearer nope"):
                    status, body, challenge = await _get_with(w.web_port, path, wrong)
                    assert (status, body) == (401, {"error": "invalid bearer token"})
                    assert 'error="invalid_token"' in challenge
                status, _, _ = await _get_with(w.web_port, path, f"Basic {TOKEN}")
                assert status == 401
                status, _, _ = await _get_with(w.web_port, path + "?routed=1", "Bearer nope")
                assert status == 401
        # Unknown keys still answer 404, but only to a caller with the token.
        assert (await _get_with(b.web_port, f"/sessions/{APP}/nobody", bearer))[0] == 404
        assert (await _get_with(b.web_port, f"/sessions/{APP}/nobody", None))[0] == 401
        status, text = await _get(a.web_port, "/metrics")
        assert status == 200 and "sessionizer_sessions_started_total" in text
    for w in (a, b):
        log = w.log()
        assert "Ready" in log
        assert TOKEN not in log and TOKEN[:-1] not in log


async def test_sessions_is_refused_without_a_token_off_loopback(
    broker: Any, tmp_path: Path
) -> None:
    names = _names()
    w = WorkerProc(
        broker.bootstrap,
        names,
        tmp_path,
        partitions=PARTITIONS,
        env={"SESSIONIZER_WEB_HOST": "0.0.0.0"},
    )
    async with running(w):
        health = await _healthy(w.web_port)  # /health and /metrics stay open
        assert health["ready"] is True
        status, text = await _get(w.web_port, "/metrics")
        assert status == 200 and "sessionizer_ready" in text
        recs, dev, _ = _records()
        await produce(broker.bootstrap, names.topics["raw_events"], recs)

        async def counted() -> Any:
            _, text = await _get(w.web_port, "/metrics")
            return _scrape(text).get(("sessionizer_records_in_total", ())) == len(recs)

        await _until(counted, "records processed")
        for authorization in (None, f"Bearer {TOKEN}", "Bearer "):
            status, body, challenge = await _get_with(
                w.web_port, f"/sessions/{APP}/{dev}", authorization
            )
            assert status == 401, body
            assert "no web_token is set and web_host 0.0.0.0 is not loopback" in body["error"]
            assert "open_session" not in body and dev not in str(body)
            assert challenge == 'Bearer realm="sessionizer"'
    # Said once at start-up, where the operator looks.
    assert "/sessions answers 401 to every request (set SESSIONIZER_WEB_TOKEN)" in w.log()
