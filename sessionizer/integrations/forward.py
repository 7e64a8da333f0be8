"""``sessionizer forward NAME``: the topic ``integrations.<name>`` to the destination's HTTP API.

At-least-once: the consumer (own group ``sessionizer-forward-<name>``, manual
commits) commits a batch's offsets only once every record of it is either
acknowledged by the destination or written to the dead-letters topic. A crash
resends what was in flight; every record carries its destination's dedup id
(docs/integrations.md), so the destination counts it once.

Plain aiohttp, not the official client libraries: they queue and retry in
background threads and report by callback, so they cannot say when a record is
safe to commit. The request shapes are the libraries' own (the tests build both
and compare).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import email.utils
import logging
import random
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import choose_encoder

from .. import codec
from ..settings import Settings
from . import REGISTRY, topic_name
from .common import REJECTED, UNSENDABLE, dead_letter, iso_ms
from .snowplow import PAYLOAD_DATA

log = logging.getLogger(__name__)

GA4_MAX_AGE_MS = 72 * 3600 * 1000
# GA4 refuses timestamps older than 72 hours at receipt: keep a margin for the
# time a request may spend in retries.
GA4_MARGIN_MS = 15 * 60 * 1000
BACKOFF_BASE_S = 0.1
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ForwardConfigError(ValueError):
    """A setting the forwarder cannot work with; one line naming it."""


@dataclass(frozen=True)
class Spec:
    """A destination's HTTP contract: endpoint, documented batch limits, request shape."""

    default_endpoint: str  # "": none public, forward_endpoint is required
    default_path: str  # appended when the configured endpoint has no path
    max_events: int  # per request
    max_bytes: int  # per request body
    build: Callable[[ForwardConfig, list[dict[str, Any]], int], tuple[str, dict[str, str], bytes]]
    # 4xx body -> indexes of the rejected items (None: all), and whether the rest
    # must be sent again (True) or was accepted (False).
    rejected: Callable[[int, str, int], tuple[set[int] | None, bool]] = lambda status, body, n: (
        None,
        False,
    )


def _basic(user: str, password: str = "") -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _json_headers(cfg: ForwardConfig) -> dict[str, str]:
    return {"Content-Type": "application/json", "User-Agent": "sessionizer-forward"}


def _amplitude(cfg: ForwardConfig, items: list[dict[str, Any]], now: int) -> Any:
    # min_id_length 1: Amplitude's documented way to accept device ids under 5 chars.
    body = {"api_key": cfg.key(), "events": items, "options": {"min_id_length": 1}}
    return cfg.url(), _json_headers(cfg), codec.dumps(body)


def _amplitude_rejected(status: int, text: str, n: int) -> tuple[set[int] | None, bool]:
    # 400 lists the events at fault; Amplitude took none of them: resend the rest.
    try:
        body = codec.loads(text)
    except Exception:
        return None, False
    bad: set[int] = set()
    for k in ("events_with_invalid_fields", "events_with_missing_fields"):
        for idxs in (body.get(k) or {}).values():
            bad.update(i for i in idxs if isinstance(i, int))
    bad.update(i for i in body.get("silenced_events") or [] if isinstance(i, int))
    return (bad, True) if bad else (None, False)


def _mixpanel(cfg: ForwardConfig, items: list[dict[str, Any]], now: int) -> Any:
    headers = _json_headers(cfg) | {"Authorization": _basic(cfg.key())}
    return cfg.url(strict="1"), headers, codec.dumps(items)


def _mixpanel_rejected(status: int, text: str, n: int) -> tuple[set[int] | None, bool]:
    # strict=1: a 400 names the failed records; the others were imported.
    try:
        body = codec.loads(text)
        bad = {r["index"] for r in body["failed_records"] if isinstance(r.get("index"), int)}
    except Exception:
        return None, False
    return (bad, False) if bad else (None, False)


def _segment(cfg: ForwardConfig, items: list[dict[str, Any]], now: int) -> Any:
    headers = _json_headers(cfg) | {"Authorization": _basic(cfg.key())}
    return cfg.url(), headers, codec.dumps({"batch": items, "sentAt": iso_ms(now)})


def _snowplow(cfg: ForwardConfig, items: list[dict[str, Any]], now: int) -> Any:
    stm = str(now)
    body = {"schema": PAYLOAD_DATA, "data": [{**p, "stm": stm} for p in items]}
    headers = _json_headers(cfg) | {"Content-Type": "application/json; charset=utf-8"}
    return cfg.url(), headers, codec.dumps(body)


def _ga4(cfg: ForwardConfig, items: list[dict[str, Any]], now: int) -> Any:
    (body,) = items  # one Measurement Protocol body per request
    return cfg.url(api_secret=cfg.key()), _json_headers(cfg), codec.dumps(body)


SPECS: dict[str, Spec] = {
    # HTTP V2: "fewer than 2000 events per request", "under 1 MB".
    "amplitude": Spec(
        "https://api2.amplitude.com/2/httpapi", "/2/httpapi", 2000, 1_000_000,
        _amplitude, _amplitude_rejected,
    ),
    # /import: 2000 events, 2 MB uncompressed (the stricter of the two documented sizes).
    "mixpanel": Spec(
        "https://api.mixpanel.com/import", "/import", 2000, 2_000_000,
        _mixpanel, _mixpanel_rejected,
    ),
    # /v1/batch: 500 KB per request, 32 KB per call (checked by the translation).
    "segment": Spec("https://api.segment.io/v1/batch", "/v1/batch", 2500, 500_000, _segment),
    "rudderstack": Spec("", "/v1/batch", 2500, 500_000, _segment),
    # The collector's POST path; its default maxBytes is 1 MB.
    "snowplow": Spec("", "/com.snowplowanalytics.snowplow/tp2", 500, 1_000_000, _snowplow),
    # One body (<= 25 events of one device) per request; 130 kB per body.
    "ga4": Spec("https://www.google-analytics.com/mp/collect", "/mp/collect", 1, 130_000, _ga4),
}  # fmt: skip


@dataclass(frozen=True)
class ForwardConfig:
    """Everything the forwarder reads; ``from_settings`` is the one glue to Settings."""

    name: str
    client: dict[str, Any]  # aiokafka connection options
    topic: str
    dead_letters_topic: str
    group_id: str
    endpoint: str
    api_key: Any = field(repr=False)  # settings.Secret | None
    batch_size: int
    timeout_s: float
    max_backoff_s: float
    web_host: str = "127.0.0.1"
    web_port: int | None = None
    progress_s: float = 10.0
    poll_records: int = 5000

    @property
    def spec(self) -> Spec:
        return SPECS[self.name]

    def key(self) -> str:
        k = self.api_key
        if k is None:
            return ""
        return str(k.reveal() if hasattr(k, "reveal") else k)

    def url(self, **query: str) -> str:
        """The endpoint (its path defaulted) with ``query`` added."""
        parts = urlsplit(self.endpoint or self.spec.default_endpoint)
        path = parts.path if parts.path not in ("", "/") else self.spec.default_path
        q = parse_qsl(parts.query, keep_blank_values=True) + list(query.items())
        return urlunsplit((parts.scheme, parts.netloc, path, urlencode(q), ""))

    @property
    def max_events(self) -> int:
        limit = self.spec.max_events
        return min(self.batch_size, limit) if self.batch_size > 0 else limit

    def check(self) -> None:
        if self.name not in SPECS:
            raise ForwardConfigError(f"forward: unknown destination {self.name!r}")
        if not (self.endpoint or self.spec.default_endpoint):
            raise ForwardConfigError(
                f"forward_endpoint (SESSIONIZER_FORWARD_ENDPOINT): {self.name} has no public "
                "endpoint; set the collector or data plane URL"
            )
        if self.name == "ga4":
            q = dict(parse_qsl(urlsplit(self.url()).query))
            if "measurement_id" not in q and "firebase_app_id" not in q:
                raise ForwardConfigError(
                    "forward_endpoint (SESSIONIZER_FORWARD_ENDPOINT): ga4 needs "
                    "?measurement_id=G-... (web) or ?firebase_app_id=... (app) in the URL"
                )
        if self.name != "snowplow" and not self.key():
            raise ForwardConfigError(
                f"forward_api_key (SESSIONIZER_FORWARD_API_KEY): {self.name} needs its key"
            )


def from_settings(settings: Settings, name: str, **overrides: Any) -> ForwardConfig:
    """The forwarder's config from ``Settings`` (getattr fallbacks: the forward_*
    settings are new); ``overrides`` (command-line values) win when not None."""
    from ..kafka.clients import client_options

    def get(attr: str, default: Any) -> Any:
        v = overrides.get(attr)
        return v if v is not None else getattr(settings, attr, default)

    topics = getattr(settings, "topics", None)
    cfg = ForwardConfig(
        name=name,
        client=client_options(settings),
        topic=get("topic", topic_name(name, getattr(topics, "integrations", "integrations"))),
        dead_letters_topic=get(
            "dead_letters_topic", getattr(topics, "dead_letters", "dead-letters")
        ),
        group_id=get("group_id", f"sessionizer-forward-{name}"),
        endpoint=get("forward_endpoint", ""),
        api_key=get("forward_api_key", None),
        batch_size=int(get("forward_batch_size", 0)),
        timeout_s=int(get("forward_timeout_ms", 10_000)) / 1000,
        max_backoff_s=int(get("forward_max_backoff_ms", 60_000)) / 1000,
        web_host=get("web_host", "127.0.0.1"),
        web_port=get("web_port", None),
    )
    cfg.check()
    return cfg


def retry_after_s(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After``: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        dt = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, dt.timestamp() - (time.time() if now is None else now))


class Metrics:
    """sent / retried / failed / latency per destination (docs/operations.md style names)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.sent = Counter(
            "sessionizer_forward_sent",
            "Events the destination acknowledged.",
            ["destination"],
            registry=self.registry,
        )
        self.retried = Counter(
            "sessionizer_forward_retried",
            "Requests sent again after a 429, a 5xx, a timeout or a connection error.",
            ["destination", "cause"],
            registry=self.registry,
        )
        self.failed = Counter(
            "sessionizer_forward_failed",
            "Events dead-lettered (rejected by the destination, or unsendable).",
            ["destination", "reason"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "sessionizer_forward_request_seconds",
            "Time of one request to the destination.",
            ["destination"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )


@dataclass
class Item:
    """One record of the integrations topic, on its way."""

    payload: dict[str, Any]
    key: bytes | None
    source: dict[str, Any]
    raw: str


AfterRequest = Callable[[list[Item], list[Any]], Awaitable[None]]


class Stopped(Exception):
    """The forwarder was asked to stop while a batch waited to be retried."""


class Sender:
    """Delivers items in requests within the destination's limits; returns dead letters."""

    def __init__(
        self,
        cfg: ForwardConfig,
        http: aiohttp.ClientSession,
        metrics: Metrics,
        *,
        clock: Callable[[], int] = lambda: int(time.time() * 1000),
        rng: random.Random | None = None,
        stop: asyncio.Event | None = None,
    ) -> None:
        self.cfg = cfg
        self.http = http
        self.metrics = metrics
        self.clock = clock
        self.rng = rng or random.Random()
        # Set on SIGTERM: a batch waiting to be retried is given up (Stopped).
        self.stop = stop
        self.retrying_since: float | None = None
        self.last_error: str | None = None
        # Counted in events (a GA4 body holds several); retried in requests.
        self.sent = 0
        self.failed = 0
        self.failed_by: collections.Counter[str] = collections.Counter()  # detail -> events
        self.retried = 0

    def events(self, payload: Any) -> int:
        """Events in one record of the integrations topic: one, or a GA4 body's events."""
        events = payload.get("events") if self.cfg.name == "ga4" else None
        return len(events) if isinstance(events, list) and events else 1

    def batches(self, items: list[Item]) -> list[list[Item]]:
        out: list[list[Item]] = []
        cur: list[Item] = []
        size = 256  # envelope
        limit, max_n = self.cfg.spec.max_bytes, self.cfg.max_events
        for it in items:
            n = len(it.raw) + 1
            if cur and (len(cur) >= max_n or size + n > limit):
                out.append(cur)
                cur, size = [], 256
            cur.append(it)
            size += n
        if cur:
            out.append(cur)
        return out

    def _dead(self, it: Item, reason: str, detail: str, payload: Any = None, **kw: Any) -> Any:
        n = self.events(it.payload if payload is None else payload)
        self.failed += n
        self.failed_by[detail] += n
        self.metrics.failed.labels(self.cfg.name, reason).inc(n)
        return (
            it.key,
            dead_letter(
                self.cfg.name,
                reason,
                detail,
                self.cfg.topic,
                it.raw if payload is None else payload,
                source=it.source,
                **kw,
            ),
        )

    def _ga4_fresh(self, items: list[Item]) -> tuple[list[Item], list[Any]]:
        """GA4 drops events older than 72 hours: those become dead letters, the
        rest of their body is sent (docs/integrations.md#ga4-72-hours)."""
        oldest = (self.clock() - GA4_MAX_AGE_MS + GA4_MARGIN_MS) * 1000
        keep: list[Item] = []
        dead: list[Any] = []
        for it in items:
            events = it.payload.get("events") or []
            fresh = [e for e in events if e.get("timestamp_micros", oldest) >= oldest]
            for e in events:
                if e.get("timestamp_micros", oldest) < oldest:
                    one = {**it.payload, "events": [e]}
                    dead.append(
                        self._dead(
                            it, UNSENDABLE, "event older than GA4's 72 hours at send time", one
                        )
                    )
            if fresh:
                if len(fresh) != len(events):
                    it = Item({**it.payload, "events": fresh}, it.key, it.source, it.raw)
                keep.append(it)
        return keep, dead

    async def deliver(self, items: list[Item], after: AfterRequest | None = None) -> list[Any]:
        """Sends every item; returns [(key, dead letter)] of those the destination
        refused. Returns only when each item is acknowledged or dead-lettered.
        ``after(rest, dead)`` runs once each request is answered, with the items not
        sent yet and the dead letters not handed over yet (it takes them)."""
        dead: list[Any] = []
        if self.cfg.name == "ga4":
            items, dead = self._ga4_fresh(items)
        batches = self.batches(items)
        for i, batch in enumerate(batches):
            dead += await self._send(batch)
            if after is not None:
                await after([it for b in batches[i + 1 :] for it in b], dead)
                dead = []
        return dead

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        cap = min(self.cfg.max_backoff_s, BACKOFF_BASE_S * (2**attempt))
        delay = self.rng.uniform(cap / 2, cap)  # "equal jitter": never 0, never over cap
        if retry_after is not None:
            delay = max(delay, retry_after)
        return delay

    async def _wait(self, delay: float) -> None:
        """The backoff before a retry, cut short by a stop: the batch is then not
        committed, so a restart sends it again with the same dedup ids."""
        if self.stop is None:
            await asyncio.sleep(delay)
            return
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.stop.wait(), delay)
        if self.stop.is_set():
            raise Stopped

    async def _send(self, batch: list[Item]) -> list[Any]:
        cfg = self.cfg
        attempt = 0
        while True:
            url, headers, body = cfg.spec.build(cfg, [it.payload for it in batch], self.clock())
            t0 = time.monotonic()
            status: int | None = None
            text = ""
            retry_after: str | None = None
            try:
                async with self.http.post(
                    url,
                    data=body,
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(total=cfg.timeout_s),
                ) as resp:
                    status = resp.status
                    retry_after = resp.headers.get("Retry-After")
                    text = await resp.text(errors="replace")
            except asyncio.TimeoutError:
                cause = "timeout"
            except aiohttp.ClientError as err:
                cause = "connection"
                text = f"{type(err).__name__}: {err}"
            self.metrics.latency.labels(cfg.name).observe(time.monotonic() - t0)
            if status is not None and 200 <= status < 300:
                n = sum(self.events(it.payload) for it in batch)
                self.sent += n
                self.metrics.sent.labels(cfg.name).inc(n)
                self.retrying_since = None
                self.last_error = None
                return []
            if status == 413 and len(batch) > 1:
                half = len(batch) // 2
                return await self._send(batch[:half]) + await self._send(batch[half:])
            if status is None or status == 429 or status >= 500:
                if status is not None:
                    cause = "429" if status == 429 else "5xx"
                self.last_error = f"HTTP {status}" if status is not None else cause
                if self.retrying_since is None:
                    self.retrying_since = time.monotonic()
                self.retried += 1
                self.metrics.retried.labels(cfg.name, cause).inc()
                await self._wait(self._backoff(attempt, retry_after_s(retry_after)))
                attempt += 1
                continue
            # A 4xx other than 429: the destination will never take it as it is.
            self.retrying_since = None
            response = {"status": status, "body": text[:4096]}
            bad, resend = cfg.spec.rejected(status, text, len(batch))
            if bad is None:
                return [
                    self._dead(it, REJECTED, f"HTTP {status}", response=response) for it in batch
                ]
            dead = [
                self._dead(it, REJECTED, f"HTTP {status}", response=response)
                for i, it in enumerate(batch)
                if i in bad
            ]
            rest = [it for i, it in enumerate(batch) if i not in bad]
            if resend and rest:
                dead += await self._send(rest)
            elif rest:
                self.sent += len(rest)
                self.metrics.sent.labels(cfg.name).inc(len(rest))
            return dead


def commit_point(
    batch: Mapping[Any, Sequence[Any]],
    rest: Sequence[Item],
    positions: Mapping[Any, int] | None = None,
) -> dict[Any, int]:
    """The offsets to commit for a poll (``batch``: partition -> its records, in order)
    when ``rest`` is what is not yet acknowledged: each partition's first such record,
    or, when nothing of it is left, the consumer's position after the poll (past a
    transaction's commit marker too, which the last record's offset + 1 is not)."""
    first: dict[int, int] = {}
    for it in rest:
        part, off = it.source["partition"], it.source["offset"]
        if off < first.get(part, off + 1):
            first[part] = off
    ends = positions or {}
    return {
        tp: first.get(tp.partition, max(ends.get(tp, 0), msgs[-1].offset + 1))
        for tp, msgs in batch.items()
    }


class Forwarder:
    """The consumer loop: poll, deliver (committing after each request), dead-letter."""

    def __init__(self, cfg: ForwardConfig, *, out: Any = None) -> None:
        self.cfg = cfg
        self.metrics = Metrics()
        self.stop = asyncio.Event()
        self.started = False
        self.committed = 0
        self._positions: dict[Any, int] = {}  # committed offset per partition
        self.sender: Sender | None = None
        self.out = out if out is not None else sys.stderr

    @staticmethod
    def _source(msg: Any) -> dict[str, Any]:
        return {
            "topic": msg.topic,
            "partition": msg.partition,
            "offset": msg.offset,
            "timestamp": msg.timestamp,
        }

    def _decode(self, msg: Any) -> tuple[Item | None, str]:
        source = self._source(msg)
        raw = msg.value.decode("utf-8", "replace") if msg.value is not None else ""
        try:
            payload = codec.loads(msg.value)
        except Exception:
            payload = None
        item = Item(payload if isinstance(payload, dict) else {}, msg.key, source, raw)
        return (item if isinstance(payload, dict) else None), raw

    async def run(self) -> None:
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

        from ..kafka.clients import READ_COMMITTED

        cfg = self.cfg
        consumer = AIOKafkaConsumer(
            cfg.topic,
            group_id=cfg.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level=READ_COMMITTED,  # an aborted record is never forwarded
            **cfg.client,
        )
        producer = AIOKafkaProducer(acks="all", **cfg.client)
        await consumer.start()
        try:
            await producer.start()
            async with aiohttp.ClientSession() as http:
                self.sender = sender = Sender(cfg, http, self.metrics, stop=self.stop)
                self.started = True
                progress = asyncio.create_task(self._progress())
                try:
                    while not self.stop.is_set():
                        batch = await consumer.getmany(timeout_ms=500, max_records=cfg.poll_records)
                        if not batch:
                            await self._commit_skipped(consumer)
                            continue
                        try:
                            await self._forward(batch, consumer, producer, sender)
                        except Stopped:
                            break  # uncommitted: sent again after a restart
                finally:
                    progress.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await progress
        finally:
            self.started = False
            with contextlib.suppress(Exception):
                await producer.stop()
            await consumer.stop()

    async def _forward(self, batch: Any, consumer: Any, producer: Any, sender: Sender) -> None:
        """One poll: decode, deliver, dead-letter; offsets follow each acknowledged
        request, so a crash re-sends at most the request in flight, not the whole poll."""
        items: list[Item] = []
        dead: list[Any] = []
        for msgs in batch.values():
            for m in msgs:
                item, raw = self._decode(m)
                if item is None:
                    bad = Item({}, m.key, self._source(m), raw)
                    dead.append(sender._dead(bad, UNSENDABLE, "not a JSON object"))
                else:
                    items.append(item)
        polled = sum(sender.events(it.payload) for it in items) + len(dead)
        base = self.committed
        positions = {tp: await consumer.position(tp) for tp in batch}

        async def after(rest: list[Item], more: list[Any]) -> None:
            await self._dead_letters(producer, more)
            point = commit_point(batch, rest, positions)
            await consumer.commit(point)
            self._positions.update(point)
            self.committed = base + polled - sum(sender.events(it.payload) for it in rest)

        if dead:  # what the decode refused
            await after(items, dead)
        await after([], await sender.deliver(items, after))

    async def _commit_skipped(self, consumer: Any) -> None:
        """After an empty poll: positions that moved past offsets no record has (a
        transaction's commit marker) are committed, so lag tools see no lag."""
        moved = {}
        for tp in consumer.assignment():
            position = await consumer.position(tp)
            if position != self._positions.get(tp):
                moved[tp] = position
        if moved:
            await consumer.commit(moved)
            self._positions.update(moved)

    async def _dead_letters(self, producer: Any, dead: list[Any]) -> None:
        if dead:
            futs = [
                await producer.send(self.cfg.dead_letters_topic, codec.dumps(dl), key=k)
                for k, dl in dead
            ]
            await asyncio.gather(*futs)

    async def _progress(self) -> None:
        last, t_last = 0, time.monotonic()
        while True:
            await asyncio.sleep(self.cfg.progress_s)
            s = self.sender
            if s is None:
                continue
            now = time.monotonic()
            rate = (s.sent - last) / max(now - t_last, 1e-9)
            last, t_last = s.sent, now
            print(self.summary(rate), file=self.out, flush=True)

    def summary(self, rate: float | None = None) -> str:
        """One line, in events throughout: sent, dead-lettered (why, how many), committed."""
        s = self.sender
        sent, failed, retried = (s.sent, s.failed, s.retried) if s else (0, 0, 0)
        per_s = f" ({rate:.0f}/s)" if rate is not None else ""
        why = ", ".join(f"{detail}: {n}" for detail, n in s.failed_by.most_common()) if s else ""
        state = f", retrying ({s.last_error})" if s and s.retrying_since is not None else ""
        return (
            f"forward {self.cfg.name}: sent {sent} events{per_s}, retried {retried} requests, "
            f"dead-lettered {failed} events{f' ({why})' if why else ''}, "
            f"committed {self.committed} events{state}"
        )

    def health(self) -> tuple[bool, dict[str, Any]]:
        s = self.sender
        stuck = (
            s is not None
            and s.retrying_since is not None
            and time.monotonic() - s.retrying_since > max(60.0, 3 * self.cfg.max_backoff_s)
        )
        ok = self.started and not stuck
        return ok, {
            "ready": ok,
            "destination": self.cfg.name,
            "topic": self.cfg.topic,
            "sent": s.sent if s else 0,
            "failed": s.failed if s else 0,
            "retried": s.retried if s else 0,
            "committed": self.committed,
            "retrying": bool(s and s.retrying_since is not None),
            "last_error": s.last_error if s else None,
        }

    async def serve_web(self) -> web.AppRunner | None:
        if self.cfg.web_port is None:
            return None

        async def health(request: web.Request) -> web.Response:
            ok, body = self.health()
            return web.json_response(body, status=200 if ok else 503)

        async def metrics(request: web.Request) -> web.Response:
            encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
            return web.Response(
                body=encoder(self.metrics.registry), headers={"Content-Type": content_type}
            )

        app = web.Application()
        app.router.add_get("/health", health)
        app.router.add_get("/metrics", metrics)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, self.cfg.web_host, self.cfg.web_port).start()
        return runner


async def forward(cfg: ForwardConfig) -> int:
    fw = Forwarder(cfg)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, fw.stop.set)
    runner = await fw.serve_web()
    try:
        await fw.run()
    finally:
        if runner is not None:
            await runner.cleanup()
        print(fw.summary(), file=fw.out, flush=True)  # also a short run says what it did
    return 0


def destinations() -> Sequence[str]:
    return sorted(n for n in REGISTRY if n in SPECS)


def run_cli(
    settings_loader: Callable[..., Any],
    name: str,
    *,
    config: str | None,
    broker_url: str | None,
    endpoint: str | None,
    web_port: int | None,
) -> int:
    """``sessionizer forward NAME``: settings, one clear line on a bad one (exit 2), run."""
    name = name.strip().lower()
    if name not in SPECS:
        print(
            f"sessionizer forward: unknown destination {name!r}; known: "
            f"{', '.join(destinations())}",
            file=sys.stderr,
        )
        return 2
    settings = settings_loader(config, broker_url=broker_url)
    try:
        cfg = from_settings(settings, name, forward_endpoint=endpoint, web_port=web_port)
    except ForwardConfigError as err:
        print(f"sessionizer: {err}", file=sys.stderr)
        return 2
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    print(
        f"forward {name}: {cfg.topic} -> {cfg.url()}"
        + (f", /health on {cfg.web_host}:{cfg.web_port}" if cfg.web_port is not None else ""),
        file=sys.stderr,
        flush=True,
    )
    return asyncio.run(forward(cfg))
