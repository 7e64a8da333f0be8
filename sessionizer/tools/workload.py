"""A realistic synthetic mParticle workload, deterministic from a seed.

Devices run scripted "visits" (launch, screens, custom and commerce events,
background/foreground with short and long gaps, exits, crashes, logins,
opt-outs, session attributes); web devices send no lifecycle events. A global
event-time clock interleaves all devices and each device's SDK uploads its
buffered events as Events API v2 batches, so the watermark moves as it would
in production. A few batches arrive late and a few records are bad.

Same arguments → byte-identical output: one ``random.Random(seed)``, no wall
clock, no hash-order dependence.

``Population`` (the devices and their scripts) and ``Scheduler`` (their SDKs on
one event-time clock) are public: ``generate`` runs them as fast as it can, the
demo (``sessionizer.tools.traffic.LiveTraffic``) against the wall clock.
"""

from __future__ import annotations

import gzip
import heapq
import random
from collections.abc import Callable, Iterator
from io import BufferedWriter
from pathlib import Path
from typing import Any, NamedTuple

import orjson

__all__ = [
    "DEFAULT_START_MS",
    "Device",
    "Population",
    "Scheduler",
    "Upload",
    "generate",
    "generate_to_file",
]

DEFAULT_START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z

SEC = 1000
MIN = 60 * SEC
HOUR = 60 * MIN

_APPS = ("shop", "news", "fitness", "travel", "music", "bank", "chat", "games")

# Flags a script attaches to an event: what the device's SDK does after buffering it.
_F_NONE = 0
_F_FLUSH = 1  # background/exit: the SDKs upload when the app leaves the foreground
_F_LOGIN = 2  # identity changes after this event: flush, then a new mpid

_Event = dict[str, Any]
_Step = tuple[int, _Event, int]

_CUSTOM: tuple[tuple[str, str, tuple[dict[str, str], ...]], ...] = (
    ("add_to_wishlist", "user_preference", ({"item": "sku-1"}, {"item": "sku-7"})),
    ("search", "search", ({"query": "shoes"}, {"query": "red dress", "page": "2"})),
    ("tap_banner", "navigation", ({"banner": "promo", "position": "1"}, {"banner": "sale"})),
    ("share", "social", ({"channel": "whatsapp"}, {"channel": "mail"})),
    ("play", "media", ({"track": "t-42", "quality": "hd"}, {"track": "t-7"})),
    ("filter", "navigation", ({"by": "price"}, {"by": "rating", "order": "desc"})),
    ("rate", "user_content", ({"stars": "5"}, {"stars": "3"})),
    ("other", "other", ({}, {"note": "x"})),
)
_SCREENS = ("Home", "Search", "Product", "Cart", "Checkout", "Profile", "Settings", "Feed")
_PRODUCTS = (("sku-1", "Sneaker", 79.99), ("sku-7", "Dress", 49.5), ("sku-9", "Cap", 15.0))
_DEVICES = (
    ("iOS", "Apple", "iPhone15,2", "17.2"),
    ("iOS", "Apple", "iPhone14,5", "16.7"),
    ("Android", "samsung", "SM-S911B", "14"),
    ("Android", "Google", "Pixel 8", "14"),
    ("Android", "Xiaomi", "2201117TG", "13"),
)


def _uuid(rng: random.Random, upper: bool = False) -> str:
    h = f"{rng.getrandbits(128):032x}"
    s = f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{h[16:20]}-{h[20:]}"
    return s.upper() if upper else s


def _mpid(rng: random.Random) -> int:
    # mParticle ids are signed int64, never 0.
    return rng.getrandbits(64) - (1 << 63) or 1


class Device:
    """One simulated device: its app, identity, SDK buffer and script."""

    __slots__ = (
        "api_key",
        "app_info",
        "buf",
        "device_id",
        "device_info",
        "flush_due",
        "gen",
        "mpid",
        "next",
        "target",
        "upload_ms",
        "user_ids",
        "web",
    )

    api_key: str
    app_info: dict[str, Any]
    device_id: str
    device_info: dict[str, Any]
    gen: Iterator[_Step]
    mpid: int
    target: int
    upload_ms: int
    user_ids: dict[str, str]
    web: bool

    def __init__(self) -> None:
        self.buf: list[_Event] = []
        self.flush_due = 0  # 0: nothing buffered
        self.next: _Step | None = None


class Population:
    """The simulated devices, their scripted visits and their SDKs' batches, from one seed.

    ``away_ms``: how long visitors stay away between visits, (shortest, longest),
    drawn uniformly; None: hours (exponential, 4 h mean), as in production.
    """

    def __init__(
        self,
        devices: int,
        apps: int,
        seed: int,
        start_ms: int,
        *,
        away_ms: tuple[int, int] | None = None,
    ) -> None:
        if devices < 1 or apps < 1:
            raise ValueError("devices >= 1 and apps >= 1 are required")
        self.rng = random.Random(seed)
        self.start_ms = start_ms
        self.away_ms = away_ms
        rng = self.rng
        names = [_APPS[i % len(_APPS)] + ("" if i < len(_APPS) else str(i)) for i in range(apps)]
        app_keys = [
            (name, f"{rng.getrandbits(64):016x}", f"{rng.getrandbits(64):016x}") for name in names
        ]
        self.devices: list[Device] = []
        for _ in range(devices):
            d = Device()
            name, mobile_key, web_key = rng.choice(app_keys)
            d.web = rng.random() < 0.15
            d.device_id = _uuid(rng)
            d.mpid = _mpid(rng)
            d.user_ids = {}
            if d.web:
                # No package: the app key falls back to application_name (§1.2).
                d.api_key = web_key
                d.app_info = {"application_name": f"{name}-web", "application_version": "2.3.0"}
                d.device_info = {"platform": "web", "browser": rng.choice(("Chrome", "Safari"))}
                d.upload_ms = 3 * MIN
            else:
                d.api_key = mobile_key
                platform, brand, model, osv = rng.choice(_DEVICES)
                d.app_info = {
                    "application_name": name.capitalize(),
                    "package": f"com.example.{name}",
                    "application_version": rng.choice(("5.1.0", "5.2.1", "5.3.0")),
                    "os": platform,
                }
                d.device_info = {
                    "platform": platform,
                    "brand": brand,
                    "product": model,
                    "device_model": model,
                    "os_version": osv,
                    "locale_language": "en",
                    "locale_country": rng.choice(("US", "GB", "DE", "FR")),
                    "is_dst": False,
                }
                d.upload_ms = 10 * MIN  # the SDKs' default upload interval
            d.target = self._target(d)
            # Stagger first visits so many devices are active at once from the start.
            d.gen = self.script(d, start_ms + int(rng.random() * 3 * HOUR))
            self.devices.append(d)

    def script(self, d: Device, t: int) -> Iterator[_Step]:
        """The device's visits from event time ``t`` on: (time, event, flag) steps."""
        return self._web(d, t) if d.web else self._mobile(d, t)

    # ---------------------------------------------------------------- scripts

    def _target(self, d: Device) -> int:
        # Events per upload, 1-20; background, exit and the upload timer cut batches shorter.
        r = self.rng
        return r.randint(2, 14) if d.web else min(20, 5 + int(r.expovariate(1 / 10.0)))

    def _activity(self, t: int, web: bool) -> _Event:
        r = self.rng.random()
        rng = self.rng
        if r < 0.42:
            return {
                "event_type": "screen_view",
                "data": {
                    "screen_name": _SCREENS[int(rng.random() * 8)],
                    "timestamp_unixtime_ms": t,
                },
            }
        if r < 0.88 or web:
            name, ctype, attrs = _CUSTOM[int(rng.random() * 8)]
            return {
                "event_type": "custom_event",
                "data": {
                    "event_name": name,
                    "custom_event_type": ctype,
                    "custom_attributes": attrs[int(rng.random() * 2)],
                    "timestamp_unixtime_ms": t,
                },
            }
        if r < 0.965:
            return self._attr(t)
        return self._commerce(t)

    def _attr(self, t: int) -> _Event:
        rng = self.rng
        r = rng.random()
        data: dict[str, Any] = {}
        if r < 0.4:
            data["session_attribute_name"] = "cart_items"
            data["increment"] = 1
        elif r < 0.6:
            data["session_attribute_name"] = "spend"
            data["increment"] = round(rng.random() * 100, 2)
        elif r < 0.8:
            data["session_attribute_name"] = "ab_bucket"
            data["new"] = rng.choice(("A", "B", "control"))
        else:
            data["session_attribute_name"] = "Last_Screen"
            data["new"] = _SCREENS[int(rng.random() * 8)]
        data["timestamp_unixtime_ms"] = t
        return {"event_type": "session_attribute_change", "data": data}

    def _commerce(self, t: int) -> _Event:
        rng = self.rng
        sku, pname, price = rng.choice(_PRODUCTS)
        qty = rng.randint(1, 3)
        action = rng.choice(("view_detail", "add_to_cart", "add_to_cart", "purchase"))
        pa: dict[str, Any] = {
            "action": action,
            "products": [{"id": sku, "name": pname, "price": price, "quantity": qty}],
        }
        if action == "purchase":
            pa["transaction_id"] = f"T{rng.getrandbits(40):010x}"
            pa["total_amount"] = round(price * qty, 2)
        return {
            "event_type": "commerce_event",
            "data": {"product_action": pa, "currency_code": "USD", "timestamp_unixtime_ms": t},
        }

    @staticmethod
    def _lc(kind: str, t: int, **extra: Any) -> _Event:
        data: dict[str, Any] = {"application_transition_type": kind, "timestamp_unixtime_ms": t}
        data.update(extra)
        return {"event_type": "application_state_transition", "data": data}

    @staticmethod
    def _opt(t: int, flag: bool) -> _Event:
        return {"event_type": "opt_out", "data": {"is_opted_out": flag, "timestamp_unixtime_ms": t}}

    def _visit_gap(self) -> int:
        # Hours between visits; a few come back within the session timeout.
        r = self.rng
        if r.random() < 0.08:
            return int(r.uniform(2, 25) * MIN)
        if self.away_ms is not None:
            return int(r.uniform(*self.away_ms))
        return int(r.expovariate(1 / (4 * HOUR))) + 10 * MIN

    def _login(self, t: int) -> _Step:
        ev = {
            "event_type": "custom_event",
            "data": {
                "event_name": "login",
                "custom_event_type": "user_preference",
                "custom_attributes": {"method": self.rng.choice(("email", "apple", "google"))},
                "timestamp_unixtime_ms": t,
            },
        }
        return t, ev, _F_LOGIN

    def _optouts(self, t: int, opted: bool) -> Iterator[_Step]:
        rng = self.rng
        if opted and rng.random() < 0.25:
            yield t, self._opt(t, False), _F_NONE
        elif not opted and rng.random() < 0.003:
            # The device keeps sending (server-side feeds do), so R18 drops are exercised.
            yield t, self._opt(t, True), _F_NONE

    def _mobile(self, d: Device, t: int) -> Iterator[_Step]:
        rng = self.rng
        lc = self._lc
        first = True
        opted = False
        resumable = False  # backgrounded last time, not killed: may resume with a foreground
        while True:
            if resumable and rng.random() < 0.25:
                yield t, lc("application_foreground", t), _F_NONE
            else:
                yield t, lc("application_initialized", t, is_first_run=first), _F_NONE
            first = False
            for step in self._optouts(t, opted):
                opted = step[1]["data"]["is_opted_out"]
                yield step
            login_at = rng.randint(1, 6) if not d.user_ids and rng.random() < 0.05 else -1
            n = 1 + int(rng.expovariate(1 / 24.0))
            for i in range(n):
                t += 300 + int(rng.expovariate(1 / (12 * SEC)))
                if i == login_at:
                    yield self._login(t)
                    continue
                if rng.random() < 0.025:
                    yield t, lc("application_background", t), _F_FLUSH
                    if rng.random() < 0.75:
                        t += int(rng.uniform(5 * SEC, 28 * MIN))
                    else:
                        t += int(rng.uniform(31 * MIN, 3 * HOUR))
                    yield t, lc("application_foreground", t), _F_NONE
                    continue
                yield t, self._activity(t, False), _F_NONE
            t += 300 + int(rng.expovariate(1 / (8 * SEC)))
            r = rng.random()
            resumable = False
            if r < 0.78:
                yield t, lc("application_background", t), _F_FLUSH
                if rng.random() < 0.12:
                    t += int(rng.uniform(1 * SEC, 20 * SEC))
                    yield t, lc("application_exit", t), _F_FLUSH
                else:
                    resumable = True
            elif r < 0.88:
                yield t, lc("application_exit", t, successfully_closed=True), _F_FLUSH
            elif r < 0.93:
                ev = {
                    "event_type": "crash_report",
                    "data": {
                        "exception_name": "NSRangeException",
                        "message": "index 3 beyond bounds",
                        "timestamp_unixtime_ms": t,
                    },
                }
                yield t, ev, _F_FLUSH
            # else: killed in the foreground, nothing more is sent (R5 idle ends it)
            t += self._visit_gap()

    def _web(self, d: Device, t: int) -> Iterator[_Step]:
        rng = self.rng
        opted = False
        while True:
            for step in self._optouts(t, opted):
                opted = step[1]["data"]["is_opted_out"]
                yield step
            n = 1 + int(rng.expovariate(1 / 16.0))
            for _ in range(n):
                r = rng.random()
                if r < 0.02:
                    t += int(rng.uniform(10 * MIN, 25 * MIN))  # tab left open, back in time
                elif r < 0.03:
                    t += int(rng.uniform(35 * MIN, 90 * MIN))  # back after the timeout
                else:
                    t += 500 + int(rng.expovariate(1 / (20 * SEC)))
                yield t, self._activity(t, True), _F_NONE
            t += self._visit_gap()

    # ---------------------------------------------------------------- batches

    def record(self, d: Device, t: int) -> _Event:
        """The batch device ``d`` uploads at ``t``: its buffer, which it empties."""
        rec: _Event = {
            "events": d.buf,
            "source_request_id": _uuid(self.rng),
            "environment": "production",
            "api_key": d.api_key,
            "mpid": d.mpid,
            "mp_deviceid": d.device_id,
            "timestamp_unixtime_ms": t,
            "application_info": d.app_info,
            "device_info": d.device_info,
            "schema_version": 2,
        }
        if d.user_ids:
            rec["user_identities"] = d.user_ids
        d.buf = []
        d.flush_due = 0
        d.target = self._target(d)
        return rec

    def corrupt(self, rec: _Event) -> bytes | None:
        """Make one record bad the ways producers do: a cut-off copy, or None: bad in place."""
        rng = self.rng
        kind = rng.randrange(4)
        if kind == 0:
            data = orjson.dumps(rec)
            return data[: rng.randrange(1, len(data))]  # a cut-off upload
        if kind == 1:
            del rec["mpid"], rec["mp_deviceid"]
            return None
        ev = rng.choice(rec["events"])
        data = ev["data"]
        if kind == 2:
            ts = data["timestamp_unixtime_ms"]
            data["timestamp_unixtime_ms"] = rng.choice((ts // 1000, ts * 1000, str(ts)))
        else:
            ev["event_type"] = "session_attribute_change"
            data["session_attribute_name"] = "promo"
            data["new"] = rng.choice(({"code": "X"}, [1, 2]))
            if rng.random() < 0.5:
                del data["new"]
                data["increment"] = "five"
        return None


class Upload(NamedTuple):
    device: Device
    t: int  # event time of the upload


class Scheduler:
    """The devices' SDKs on one event-time clock: ``generate`` and the demo's live traffic.

    Every device's script yields (time, event, flag) steps; its SDK buffers the
    events and uploads them as a batch when the app leaves the foreground (a
    flagged step), when the batch is full, when its upload timer fires, or before
    a login (after which the device has a new mpid and user identities).
    ``advance()`` runs the earliest step of any device and yields the uploads it
    makes; build each record (``Population.record``) before asking for the next,
    since a login changes the identity afterwards.
    """

    def __init__(
        self,
        population: Population,
        *,
        jitter_ms: int = 0,
        stamp: Callable[[int], int] | None = None,
    ) -> None:
        """``jitter_ms``: flushes upload up to this long after their event (random);
        ``stamp``: rewrites each event's timestamp from its event time when it is buffered."""
        self.population = population
        self.jitter_ms = jitter_ms
        self.stamp = stamp
        self.events = 0  # buffered so far
        devs = population.devices
        self._heap: list[tuple[int, int, int]] = []
        for i, d in enumerate(devs):
            if d.next is None:
                d.next = next(d.gen)
            self._heap.append((d.next[0], i, i))
        heapq.heapify(self._heap)
        self._seq = len(devs)

    def peek(self) -> int | None:
        """The event time of the next step, None when no device has one."""
        return self._heap[0][0] if self._heap else None

    def advance(self) -> Iterator[Upload]:
        """Runs the earliest step: an event buffered, or an upload timer firing."""
        g = self.population
        rng = g.rng
        t, _, i = heapq.heappop(self._heap)
        d = g.devices[i]
        step = d.next
        assert step is not None
        if d.flush_due and t == d.flush_due and t < step[0]:
            # The SDK's upload timer fired before the device's next event.
            yield Upload(d, t)
        else:
            ts, ev, flag = step
            if self.stamp is not None:
                ev["data"]["timestamp_unixtime_ms"] = self.stamp(ts)
            buf = d.buf
            if not buf:
                d.flush_due = ts + d.upload_ms
            buf.append(ev)
            self.events += 1
            if flag == _F_LOGIN:
                yield Upload(d, ts)
                d.mpid = _mpid(rng)
                d.user_ids = {
                    "customer_id": f"C{rng.getrandbits(32):010d}",
                    "email": f"user{rng.getrandbits(24)}@example.com",
                }
            elif flag or len(buf) >= d.target:
                yield Upload(d, ts + int(rng.random() * self.jitter_ms) if self.jitter_ms else ts)
            d.next = step = next(d.gen)
        wake = step[0]
        if d.flush_due and d.flush_due < wake:
            wake = d.flush_due
        self._seq += 1
        heapq.heappush(self._heap, (wake, self._seq, i))

    def flush_all(self) -> Iterator[Upload]:
        """Every SDK uploads what it holds, in time order (out of events)."""
        devs = self.population.devices
        tail = sorted(
            (d.buf[-1]["data"]["timestamp_unixtime_ms"], i) for i, d in enumerate(devs) if d.buf
        )
        for ts, i in tail:
            yield Upload(devs[i], ts)


def _batches(g: Population, n_events: int, bad_rate: float, late_rate: float) -> Iterator[bytes]:
    """Records of the first ``n_events`` events, some bad and some late (see ``generate``)."""
    rng = g.rng
    dumps = orjson.dumps
    late: list[tuple[int, int, bytes]] = []
    seq = 0
    heappush = heapq.heappush
    heappop = heapq.heappop

    def emit(up: Upload) -> Iterator[bytes]:
        nonlocal seq
        d, t = up
        rec = g.record(d, t)
        while late and late[0][0] <= t:
            yield heappop(late)[2]
        cut = g.corrupt(rec) if rng.random() < bad_rate else None
        if cut is not None:
            # A cut-off upload holds no events; the SDK retries it whole, so every
            # asked-for event still arrives in a decodable record.
            yield cut
        raw = dumps(rec)
        if rng.random() < late_rate:
            seq += 1
            heappush(late, (t + int(rng.uniform(1 * MIN, 8 * MIN)), seq, raw))
        else:
            yield raw

    sched = Scheduler(g, jitter_ms=500)
    while sched.events < n_events and sched.peek() is not None:
        for up in sched.advance():
            yield from emit(up)
    for up in sched.flush_all():
        yield from emit(up)
    while late:
        yield heappop(late)[2]


def generate(
    n_events: int,
    *,
    devices: int = 5000,
    apps: int = 3,
    seed: int = 1,
    start_ms: int = DEFAULT_START_MS,
    bad_rate: float = 0.001,
    late_rate: float = 0.005,
    upload_ms: int | None = None,
) -> Iterator[bytes]:
    """Yield JSONL record values (no newline), each an Events API v2 batch.

    The decodable records hold exactly ``n_events`` events. ``bad_rate`` is the
    fraction of records made bad (missing identity, bad timestamp, bad session
    attribute, or an upload cut off mid-way, which holds no events and is
    followed by its complete retry) and ``late_rate`` the fraction of batches
    delivered 1-8 minutes late. ``upload_ms`` sets every device's SDK upload
    interval (default: 10 minutes on mobile, 3 on the web); shorter intervals
    make more, smaller batches (30 s gives about 3 events per record, the
    default about 8).
    """
    if n_events < 0:
        raise ValueError("n_events >= 0 is required")
    g = Population(devices, apps, seed, start_ms)
    if upload_ms is not None:
        if upload_ms < 1:
            raise ValueError("upload_ms >= 1 is required")
        for d in g.devices:
            d.upload_ms = upload_ms
    return _batches(g, n_events, bad_rate, late_rate)


def generate_to_file(path: str | Path, n_events: int, **kw: Any) -> int:
    """Write ``generate(n_events, **kw)`` as JSONL (gzip if ``.gz``); return the record count."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(p, "wb") as raw:
        # mtime=0 and no file name in the header keep .gz output byte-identical.
        out: BufferedWriter | gzip.GzipFile = raw
        if p.name.endswith(".gz"):
            out = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6)
        chunk: list[bytes] = []
        for rec in generate(n_events, **kw):
            chunk.append(rec)
            n += 1
            if len(chunk) >= 4096:
                out.write(b"\n".join(chunk) + b"\n")
                chunk.clear()
        if chunk:
            out.write(b"\n".join(chunk) + b"\n")
        if out is not raw:
            out.close()
    return n
