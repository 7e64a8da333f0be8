"""The session engine: one per source partition, pure and deterministic.

Records go in as bytes with their source position; outputs come out as
``(topic, key, value)`` tuples in ``engine.out``. Time is event time only:
the watermark follows the partition's keys robustly (R20, R26) and expiry
pops an index of deadlines (R21). The one wall-clock input, ``now_ms``, only
bounds timestamps from the future (§1.3) and is passed in by the caller.

``process_record`` never raises on input. What ``loads`` accepts, ``dumps``
must be able to write back (true of orjson, the one codec) except nesting:
orjson reads 1024 levels but writes 254, so records nested deeper than
``MAX_DEPTH`` are dead letters. Values the engine computes are checked before
they are kept (an attribute sum outside the 64-bit range, or not finite, is a
``bad_session_attribute``). Anything else that raises is a bug: the record
becomes an ``internal_error`` dead letter and its key is left exactly as it
was before the record (§7.3 v2, ``Engine._internal_error``).
"""

from __future__ import annotations

import base64
import decimal
import heapq
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final

from .config import AppRules, EngineConfig
from .ids import session_id, session_uuid
from .model import (
    ATTRIBUTE,
    BACKGROUND,
    DEAD_LETTERS,
    EVENT_KINDS,
    EVENTS,
    EXIT,
    FOREGROUND,
    INTERNAL_ERROR,
    LAUNCH,
    OPT_OUT,
    SCREEN_VIEW,
    SESSION_END,
    SESSION_START,
    SESSIONS,
    TRANSITION,
    TRANSITION_KINDS,
    Counts,
    Output,
)
from .state import (
    CLOSED,
    EXPIRED,
    LC_BG,
    LC_FG,
    NEVER,
    OPEN,
    KeyState,
    Session,
    load_key,
    save_key,
)

MIN_TS: Final = 946_684_800_000  # 2000-01-01T00:00:00Z
MAX_ATTR_NAME: Final = 256
MAX_ATTR_VALUE: Final = 4096
# Nesting levels a record may have (the record itself is level 1). orjson reads
# 1024 levels but writes only 254; outputs and state snapshots nest input values
# at most a few levels deeper than the record does, so 128 leaves room for them
# (and for integrations' wrappers) while no real mParticle record comes close.
MAX_DEPTH: Final = 128
TOO_DEEP: Final = f"nested deeper than {MAX_DEPTH} levels"
# The 64-bit integer range the outputs can hold (orjson: int64 and uint64).
MIN_INT: Final = -(1 << 63)
MAX_INT: Final = (1 << 64) - 1
# R26: the records (the last WINDOW of them) whose distinct keys set the quorum
# that confirms a jump of the watermark, at most QUORUM keys.
WINDOW: Final = 64
QUORUM: Final = 3
IDENTITY_FIELDS = ("mpid", "mp_deviceid", "application_info", "api_key", "environment")

Loads = Callable[[bytes], Any]
Dumps = Callable[[Any], bytes]
Source = tuple[Any, str, int, int, int | None]  # (key, topic, partition, offset, timestamp)
OnInternalError = Callable[[Exception, Source], None]


class _Late:
    """Marks an output part of events that belong to no session (R24)."""


LATE = _Late()


# Where the fast path finds no open session: no ts lies in [last_ts=1, deadline=0).
NO_SESSION = Session("", 0, 0, 1, 0, None, (), None)


class _Deep:
    """Stands in a batch for an event nested deeper than MAX_DEPTH: a bad_event."""

    __slots__ = ("event",)

    def __init__(self, event: Any) -> None:
        self.event = event


class DeadLetter(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail


def ident_fields(ident: Sequence[Any]) -> dict[str, Any]:
    """The batch identity fields (§7.1) present in a record, from their tuple."""
    mpid, device, info, api_key, env = ident
    out: dict[str, Any] = {}
    # Spelled out: runs twice per session, a comprehension costs a frame.
    if mpid is not None:
        out["mpid"] = mpid
    if device is not None:
        out["mp_deviceid"] = device
    if info is not None:
        out["application_info"] = info
    if api_key is not None:
        out["api_key"] = api_key
    if env is not None:
        out["environment"] = env
    return out


def identity(obj: dict[str, Any]) -> tuple[str, str] | None:
    """(app, device) per §1.2, or None when the record names no device.
    (Inlined in Engine.process_record: keep the two alike.)"""
    device = obj.get("mp_deviceid")
    if type(device) is not str or not device:
        mpid = obj.get("mpid")
        if type(mpid) is int or (type(mpid) is str and mpid):
            device = str(mpid)
        else:
            return None
    info = obj.get("application_info")
    app: Any = None
    if type(info) is dict:
        app = info.get("package")
        if type(app) is not str or not app:
            app = info.get("application_name")
    if type(app) is not str or not app:
        app = obj.get("api_key")
        if type(app) is not str or not app:
            app = "default"
    return app, device


def controlled(control: Mapping[str, bool], app: str, device: str) -> bool:
    """R19: an entry of the console opt-out table ``control`` covers ``device``
    of ``app`` (by device, by ``"app/device"`` or by ``"app/*"``).
    (Engine._controlled_key is the same test on the hot path: keep the two alike.)"""
    return bool(control.get(f"{app}/{device}") or control.get(device) or control.get(app + "/*"))


def check_attribute(data: dict[str, Any], dumps: Dumps) -> tuple[str, int, Any]:
    """Static checks of R14/R15; returns (name, op, operand). op: 0 set, 1 add, 2 delete."""
    name = data.get("session_attribute_name")
    if type(name) is not str or not name:
        raise DeadLetter("bad_session_attribute", "session_attribute_name must be a string")
    if len(name) > MAX_ATTR_NAME:
        raise DeadLetter("bad_session_attribute", f"name longer than {MAX_ATTR_NAME} characters")
    deleted = data.get("deleted", False)
    if type(deleted) is not bool:
        raise DeadLetter("bad_session_attribute", "deleted must be a boolean")
    ops = ("new" in data) + ("increment" in data) + deleted
    if ops != 1:
        raise DeadLetter(
            "bad_session_attribute", "exactly one of new, increment, deleted: true is required"
        )
    if deleted:
        return name, 2, None
    if "increment" in data:
        inc = data["increment"]
        if type(inc) is not int and type(inc) is not float:
            raise DeadLetter("bad_session_attribute", "increment must be a number")
        if not _writable_number(inc):
            raise DeadLetter("bad_session_attribute", "increment out of range")
        return name, 1, inc
    value = data["new"]
    t = type(value)
    if t is dict or t is list:
        raise DeadLetter("bad_session_attribute", "value must be a string, number, bool or null")
    if (t is int or t is float) and not _writable_number(value):
        raise DeadLetter("bad_session_attribute", "value out of range")
    # JSON text can be up to 6x a string's length; measure only when it could be too long.
    if (
        t is str
        and len(value) * 6 + 2 > MAX_ATTR_VALUE
        and len(dumps(value).decode("utf-8")) > MAX_ATTR_VALUE  # characters, not bytes
    ):
        raise DeadLetter("bad_session_attribute", f"value longer than {MAX_ATTR_VALUE} characters")
    return name, 0, value


# Enough digits for the exact sum of any two doubles: the only rounding is the last one.
_SUM = decimal.Context(prec=800, traps=[])


def attribute_sum(a: int | float, b: int | float) -> int | float:
    """R14: ints add exactly; with a float, the double nearest the exact sum of the
    two numbers as they print (9.99 + 2.54 is 12.53, not 12.530000000000001)."""
    if type(a) is int and type(b) is int:
        return a + b
    # No traps: an overflow is inf, which the caller refuses (never an exception here).
    return float(_SUM.add(decimal.Decimal(repr(a)), decimal.Decimal(repr(b))))


def _writable_number(v: int | float) -> bool:
    """An int in the 64-bit range, or a finite float: what the outputs can hold."""
    if type(v) is int:
        return MIN_INT <= v <= MAX_INT
    return math.isfinite(v)


def _too_deep(v: Any, room: int) -> bool:
    """True when the container ``v``, counted as one level, nests more than ``room`` levels."""
    if room <= 0:
        return True
    room -= 1
    for x in v.values() if type(v) is dict else v:
        t = type(x)
        if (t is dict or t is list) and _too_deep(x, room):
            return True
    return False


def _deep_parts(obj: dict[str, Any], events: list[Any], single: bool) -> bool:
    """MAX_DEPTH: True when the record as a whole nests too deep (a single event,
    or a batch field); else each event of the batch that does is replaced by a
    ``_Deep`` in ``events``, to be dead-lettered on its own."""
    if single:
        return _too_deep(obj, MAX_DEPTH)
    for k, v in obj.items():
        t = type(v)
        if k != "events" and (t is dict or t is list) and _too_deep(v, MAX_DEPTH - 1):
            return True
    for i, ev in enumerate(events):
        t = type(ev)
        if (t is dict or t is list) and _too_deep(ev, MAX_DEPTH - 2):
            events[i] = _Deep(ev)
    return False


def _as_bytes(value: Any) -> bytes:
    """A record value that is not ``bytes``: a Kafka tombstone (None) reads as empty."""
    if value is None:
        return b""
    if type(value) is str:
        return value.encode("utf-8", "surrogatepass")
    return bytes(value)


def _describe(exc: BaseException) -> str:
    """``Type: message`` of an exception, short and always valid UTF-8."""
    try:
        msg = str(exc)
    except Exception:
        msg = "(no message)"
    detail = f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__
    if len(detail) > 1000:
        detail = detail[:1000] + "..."
    return detail.encode("utf-8", "replace").decode("utf-8")


def _event_ts(ts: Any, batch_ts: Any, max_ts: int) -> int | None:
    """§1.3 for an event time that is not an int: the batch's when null, an integral
    float as its int; None when unusable (bad_timestamp)."""
    if ts is None:
        ts = batch_ts  # a null event time falls back like a missing one
    if type(ts) is int:
        v: int = ts
    elif type(ts) is float and ts.is_integer():
        v = int(ts)
    else:
        return None
    return v if MIN_TS <= v <= max_ts else None


def _event_fields(ev: Any, batch_ts: Any) -> tuple[str, dict[str, Any], Any]:
    """(event_type, data, raw ts) of an event off the common shape, or a dead letter."""
    if type(ev) is not dict:
        if type(ev) is _Deep:
            raise DeadLetter("bad_event", TOO_DEEP)
        raise DeadLetter("bad_event", "event is not an object")
    et = ev.get("event_type")
    if type(et) is not str:
        raise DeadLetter("bad_event", "event_type must be a string")
    data = ev.get("data")
    if data is None:
        data = ev["data"] = {}
    elif type(data) is not dict:
        raise DeadLetter("bad_event", "data must be an object")
    ts = data.get("timestamp_unixtime_ms")
    return et, data, batch_ts if ts is None else ts


class Engine:
    """Sessionizes the records of one source partition.

    The runners (``process-file``, ``replay``, the worker) drive it through
    this surface only:

    * a record in: :meth:`process_record`;
    * time: :meth:`advance` (to a later watermark, R22, then expiry, R21);
    * end of a bounded input: :meth:`end_of_input`;
    * outputs and state out: :meth:`take_output`, :meth:`has_pending`,
      :meth:`take_dirty` and :meth:`snapshot_key`;
    * a restart: :meth:`restore` (the snapshots and the marker's watermark and
      :meth:`clock_state`; :meth:`restore_clock` puts the latter back alone);
    * reads: :meth:`key_state`, :meth:`key_count`, :meth:`state_keys`,
      :meth:`open_sessions`, :meth:`is_controlled`, and the attributes
      ``watermark`` (R20, R26: the event time the partition's keys agree on,
      or the time an idle partition was advanced to), ``counts`` (§7.4) and
      the R26 outlier readings ``ahead_key`` and ``ahead_ts``, which only the
      engine writes.

    ``control`` is the R19 console opt-out table (device, ``"app/device"`` or
    ``"app/*"`` -> opted out); it is shared, not copied: the caller keeps it up
    to date (the worker's control reader), and every engine sees each change.
    """

    def __init__(
        self,
        config: EngineConfig,
        *,
        loads: Loads,
        dumps: Dumps,
        track_dirty: bool = False,
        on_internal_error: OnInternalError | None = None,
        control: dict[str, bool] | None = None,
    ) -> None:
        self.config = config
        self.loads = loads
        self.dumps = dumps
        # Told of every record whose processing raised (after it is dead-lettered),
        # so the edge can log it and count it; it must not raise.
        self.on_internal_error = on_internal_error
        self.keys: dict[str, KeyState] = {}
        self.heap: list[tuple[int, str]] = []
        self.watermark = 0
        # R26: keys whose records ran ahead of the watermark since a record in step
        # moved it (key -> largest such ts), and the keys of the last WINDOW records.
        self._ahead: dict[str, int] = {}
        self._ring: list[str] = [""] * WINDOW
        self._ri = 0
        # The latest record that ran ahead (R26), for /health: its key and time.
        self.ahead_key = ""
        self.ahead_ts = 0
        self.counts = Counts()
        self.out: list[Output] = []
        # R19 console opt-out entries: device, "app/device" or "app/*" -> opted out.
        self.control: dict[str, bool] = {} if control is None else control
        # Keys whose state changed since the last take_dirty(), for the changelog.
        self.dirty: set[str] | None = set() if track_dirty else None
        # With track_dirty, the keys whose session is open as of the last
        # take_dirty(): the gauge a scrape reads costs the changed keys, not a
        # walk over every key (1M keys: a walk is hundreds of ms).
        self._open_keys: set[str] | None = set() if track_dirty else None
        self._rules: dict[str, AppRules] = {}
        # Read once per record: plain attributes, not a chain of lookups.
        self._max_bytes = config.max_record_bytes
        self._skew = config.max_future_skew_ms
        self._grace = config.grace_ms
        self._ttl = config.state_ttl_ms
        self._pending: list[tuple[KeyState, Session]] = []

    # ----------------------------------------------------------------- API

    def take_output(self) -> list[Output]:
        """The outputs emitted since the last call, in order; the engine forgets them.

        Each is ``(topic, key, value)``: ``topic`` an index into ``TOPIC_NAMES``
        (``EVENTS``, ``SESSIONS``, ``DEAD_LETTERS``), ``key`` the session key
        (``str``) or, for a dead letter, the source record's key as given, and
        ``value`` the record's JSON value (encoded by ``sessionizer.run.encode``).
        """
        out = self.out
        self.out = []
        return out

    def has_pending(self) -> bool:
        """True when outputs or changed keys (``track_dirty``) wait to be taken."""
        return bool(self.out or self.dirty)

    def take_dirty(self) -> set[str]:
        """The keys whose state changed since the last call (``track_dirty`` only):
        write :meth:`snapshot_key` of each (None: the key is forgotten)."""
        dirty = self.dirty or set()
        self.dirty = set()
        open_keys = self._open_keys
        if open_keys is not None:
            for key in dirty:
                if self._is_open(key):
                    open_keys.add(key)
                else:
                    open_keys.discard(key)
        return dirty

    def snapshot_key(self, key: str) -> list[Any] | None:
        """The key's state as a JSON-able value for :meth:`restore`; None if not held."""
        st = self.keys.get(key)
        return None if st is None else st.snapshot()

    def restore_key(self, key: str, value: list[Any]) -> None:
        """Puts one key's :meth:`snapshot_key` back (see :meth:`restore`)."""
        st = KeyState.restore(key, value)
        self.keys[key] = st
        self._schedule(st)
        if self._open_keys is not None:
            if self._is_open(key):
                self._open_keys.add(key)
            else:
                self._open_keys.discard(key)

    def restore(
        self,
        snapshots: Iterable[tuple[str, list[Any]]],
        watermark: int,
        clock: list[Any] | None = None,
    ) -> int:
        """A restart: the keys' snapshots, the watermark the state was written at
        and the R26 clock state (:meth:`clock_state`) written with it.

        Both come from the partition's marker, written with the snapshots (the
        watermark never goes back, R20); sessions already due close at the next
        :meth:`advance`. Returns the number of keys restored.
        """
        n = 0
        for key, value in snapshots:
            self.restore_key(key, value)
            if clock is None and n < WINDOW:
                # No clock state (a marker of an older version): the restored keys
                # stand for the records before, so the first ones after cannot move time alone.
                self._ring[n] = key
            n += 1
        self.advance_watermark(watermark)
        if clock is not None:
            self.restore_clock(clock)
        return n

    def clock_state(self) -> list[Any]:
        """What R26 knows besides the watermark, as a JSON-able value: the keys of
        the last WINDOW records (each at its latest position) and the keys ahead."""
        ring = self._ring
        heard: list[Any] = []
        seen: set[str] = set()
        for age in range(WINDOW):
            key = ring[(self._ri - 1 - age) % WINDOW]
            if key and key not in seen:
                seen.add(key)
                heard.append([key, age])
        return [heard, [[k, t] for k, t in self._ahead.items()]]

    def restore_clock(self, clock: list[Any]) -> None:
        """Puts back a :meth:`clock_state`: the engine goes on as if never stopped."""
        heard, ahead = clock
        ring = [""] * WINDOW
        for key, age in heard:
            ring[(WINDOW - 1 - age) % WINDOW] = key
        self._ring = ring
        self._ri = 0
        self._ahead = {k: t for k, t in ahead}

    def advance(self, to_ms: int | None = None) -> None:
        """Time moves on: the watermark to ``to_ms`` when later (R22, an idle
        partition), then every session it has passed expires (R21).

        Cheap when nothing is due: a runner may call it after every record.
        """
        if to_ms is not None and to_ms > self.watermark:
            self._move_to(to_ms)
        heap = self.heap
        if heap and heap[0][0] <= self.watermark:
            self.expire()

    def end_of_input(self, *, keep_open: bool = False) -> None:
        """§9: a bounded input (a file, a replay window) ends. Sessions the
        watermark has not closed end with ``end_of_input``, in the order their
        keys first appeared; with ``keep_open`` they stay open (expiry only)."""
        if keep_open:
            self.expire()
        else:
            self.close_all()

    def key_state(self, key: str) -> KeyState | None:
        """One session key's (``"app/device"``) state, read-only; None if not held."""
        return self.keys.get(key)

    def key_count(self) -> int:
        """Session keys held (open, closed or kept for late events)."""
        return len(self.keys)

    def state_keys(self) -> list[str]:
        """The session keys held, in the order they first appeared."""
        return list(self.keys)

    def is_controlled(self, app: str, device: str) -> bool:
        """R19: a console opt-out entry covers the device of ``app``."""
        return controlled(self.control, app, device)

    def set_control(self, key: str, opted_out: bool | None) -> None:
        """Sets (True/False) or removes (None) one R19 console opt-out entry."""
        if opted_out is None:
            self.control.pop(key, None)
        else:
            self.control[key] = opted_out

    def open_sessions(self) -> int:
        """Sessions open now (not those the watermark closed provisionally, R21)."""
        open_keys = self._open_keys
        if open_keys is None:
            return sum(1 for key in self.keys if self._is_open(key))
        # The set is exact as of the last take_dirty(); correct it for the keys changed since.
        n = len(open_keys)
        for key in self.dirty or ():
            n += self._is_open(key) - (key in open_keys)
        return n

    def _is_open(self, key: str) -> bool:
        st = self.keys.get(key)
        return st is not None and st.open is not None and st.open.status == OPEN

    def rules(self, app: str) -> AppRules:
        r = self._rules.get(app)
        if r is None:
            r = self._rules[app] = self.config.rules_for(app)
        return r

    def advance_watermark(self, ts: int) -> None:
        """R22: idle partitions move time on; the watermark never goes back (R20)."""
        if ts > self.watermark:
            self._move_to(ts)

    def _move_to(self, w: int) -> None:
        """W moves on other than by a record in step (a quorum, R22, a restore): the
        keys still more than grace ahead of it stay ahead (R26)."""
        self.watermark = w
        if self._ahead:
            bound = w + self._grace
            self._ahead = {k: t for k, t in self._ahead.items() if t > bound}

    def expire(self) -> None:
        """R21: close every session whose deadline + grace the watermark has passed."""
        heap = self.heap
        w = self.watermark
        keys = self.keys
        while heap and heap[0][0] <= w:
            due, key = heapq.heappop(heap)
            st = keys.get(key)
            if st is None or st.hdue != due:
                continue  # stale entry: the key was rescheduled or forgotten
            st.hdue = NEVER
            real = self._due(st)
            if real is None:
                continue
            if real > due:
                # The deadline moved on since this entry was pushed. Re-queue it, so
                # keys always close in order of their real due time (restores agree).
                st.hdue = real
                heapq.heappush(heap, (real, key))
                continue
            s = st.open
            if s is not None and s.status == OPEN:
                if self.control and self._controlled(st):
                    self._opt_out_close(st, None, None)
                else:
                    self._close(st, s, self._deadline_reason(st, s), EXPIRED)
            else:
                del keys[key]  # state_ttl (§2)
            if self.dirty is not None:
                self.dirty.add(key)
            if key in keys:
                self._schedule(st)

    def close_all(self, reason: str = "end_of_input") -> None:
        """§9: end of a bounded input closes what the watermark has not."""
        self.expire()
        for st in list(self.keys.values()):
            s = st.open
            if s is not None and self.control and self._controlled(st):
                self._opt_out_close(st, None, None)
            elif s is not None and s.status == OPEN:
                self._close(st, s, reason, CLOSED)
                st.open = None
                st.retire(s)
                if self.dirty is not None:
                    self.dirty.add(st.key)

    # ------------------------------------------------------------ records

    def process_record(
        self,
        value: Any,  # bytes; anything else too (a tombstone's None): never rejected by type
        key: Any,
        topic: str,
        partition: int,
        offset: int,
        timestamp: int | None,
        now_ms: int,
        seq: int = -1,
    ) -> None:
        """Sessionizes one record. ``seq``, when given, is the record's position in
        this engine's input: a key skips records at or below the last ``seq`` it
        applied, so replaying input after a restore never applies a record twice.

        Never raises: whatever the record holds is used or dead-lettered, and a
        failure of the engine itself makes the record an ``internal_error`` dead
        letter with its key as it was before the record (all or nothing)."""
        counts = self.counts
        counts.records_in += 1
        # All or nothing (§7.3 v2). Nothing is saved up front: the fast path notes
        # what it changes in the open session (_Record.feed), the slow path saves
        # the whole key before its first change (_Record.save), and the counts,
        # the watermark and the key's index entry change only once nothing can
        # fail any more. _internal_error puts back what was changed.
        rec: _Record | None = None
        saved: tuple[Any, ...] | None = None  # a save taken before ``rec`` exists
        skey = ""
        opted = was_opted = False  # was_opted: before the record (opted changes within)
        raw = b""  # value as bytes: typed, so native calls on it when compiled
        try:
            raw = value if type(value) is bytes else _as_bytes(value)
            src = (key, topic, partition, offset, timestamp)
            if len(raw) > self._max_bytes:
                self._dead_record(
                    src, raw, "too_large", f"{len(raw)} bytes > {self.config.max_record_bytes}"
                )
                return
            try:
                obj = self.loads(raw)
            except Exception as exc:  # any decoder error is the same answer to the user
                self._dead_record(src, raw, "invalid_json", str(exc))
                return
            if type(obj) is not dict:
                self._dead_record(src, raw, "not_an_object", f"top level is {type(obj).__name__}")
                return
            # identity(obj), inline: the fields are read once for the key and the output.
            device = dev_field = obj.get("mp_deviceid")
            mpid = obj.get("mpid")
            if type(device) is not str or not device:
                if type(mpid) is int or (type(mpid) is str and mpid):
                    device = str(mpid)
                else:
                    self._dead_record(src, raw, "missing_identity", "no mp_deviceid and no mpid")
                    return
            info = obj.get("application_info")
            app: Any = None
            if type(info) is dict:
                app = info.get("package")
                if type(app) is not str or not app:
                    app = info.get("application_name")
            api_key = obj.get("api_key")
            if type(app) is not str or not app:
                app = api_key if type(api_key) is str and api_key else "default"
            skey = app + "/" + device
            st = self.keys.get(skey)
            if st is not None and 0 <= seq <= st.seq:
                counts.records_in -= 1  # already applied before the restore: not new input
                return
            controlled = bool(self.control) and self._controlled_key(app, device, skey)
            opted = was_opted = controlled or (st is not None and st.opted)
            if controlled and st is not None and (st.open is not None or st.last is not None):
                # A console opt-out takes effect at the key's first record after it is
                # known: its session, open or provisionally closed, ends as opt_out (R19).
                saved = self._save(st)
                self._opt_out_close(st, None, None)

            events = obj.get("events")
            single = events is None
            if single:
                if "event_type" not in obj:
                    self._bad_record(src, raw, opted, "record has neither events nor event_type")
                    return
                events = [obj]
            elif type(events) is not list:
                self._bad_record(src, raw, opted, "events is not an array")
                return
            # Nesting (MAX_DEPTH): a record has at least as many brackets as levels,
            # so only a record with many brackets needs walking (memchr for the rare
            # "[": one pass over the bytes, not two).
            nb = raw.count(b"{")
            i = raw.find(b"[")
            while i >= 0 and nb <= MAX_DEPTH:
                nb += 1
                i = raw.find(b"[", i + 1)
            if nb > MAX_DEPTH and _deep_parts(obj, events, single):
                self._bad_record(src, raw, opted, TOO_DEEP)
                return

            new_key = st is None
            if st is None:
                st = KeyState(skey, app, device)  # kept once the record is through
            rules = self._rules.get(app) or self.rules(app)
            # IDENTITY_FIELDS as a tuple: cheaper than a dict per record; dict on output.
            ident_obj = (mpid, dev_field, info, api_key, obj.get("environment"))
            batch_ts = obj.get("timestamp_unixtime_ms")
            if batch_ts is None:
                batch_ts = timestamp
            max_ts = now_ms + self._skew
            rec = _Record(self, st, rules, obj, single, device, ident_obj, mpid, src, raw, saved)
            kinds = EVENT_KINDS
            hi = 0  # largest valid ts of the record: the watermark and the key's activity
            fast = 0  # events taken by the fast path, counted once at the end
            n_opted = 0  # events dropped for opt-out (R18), counted once at the end
            n_control = 0  # attribute changes taken by the fast path, counted at the end
            idle_ms = rules.idle_timeout_ms
            timeout_ms = rules.timeout_ms
            # The session the fast path may continue: the open one, else one no ts fits.
            s = st.open
            if s is None or s.status != OPEN:
                s = NO_SESSION

            for ev in events:
                if opted and (type(ev) is not dict or ev.get("event_type") != "opt_out"):
                    n_opted += 1  # R18: malformed ones too
                    continue
                try:
                    # The common shape, read with subscripts (cheaper than .get).
                    et = ev["event_type"]
                    data = ev["data"]
                    ts = data["timestamp_unixtime_ms"]
                    if type(et) is not str or type(data) is not dict:
                        raise TypeError
                except (KeyError, TypeError):
                    try:
                        et, data, ts = _event_fields(ev, batch_ts)
                    except DeadLetter as dl:
                        rec.dead(ev, dl.reason, dl.detail)
                        continue
                kind = kinds.get(et, 0)
                if kind == TRANSITION:
                    tt = data.get("application_transition_type")
                    # Only a string can name a transition (and a list or object is unhashable).
                    kind = TRANSITION_KINDS.get(tt, 0) if type(tt) is str else 0
                # t: the event time as a plain int, -1 when unusable (a machine int compiled).
                if type(ts) is int:
                    t: int = ts if MIN_TS <= ts <= max_ts else -1
                else:
                    v = _event_ts(ts, batch_ts, max_ts)
                    t = -1 if v is None else v

                if kind <= SCREEN_VIEW and s.last_ts <= t < s.deadline:
                    # Fast path: an in-order activity event continuing the open session
                    # (R3-R5, R9, R10); the same effect as the general path below.
                    if rec.part_session is not s:
                        rec.feed(s)
                    n = s.events = s.events + 1
                    if kind:
                        s.screens += 1
                    data["session_uuid"] = s.uuid
                    data["session_id"] = s.sid
                    data["session_start_unixtime_ms"] = s.start
                    data["event_num"] = n
                    data.pop("late", None)  # the engine's field: only late events have it
                    rec.part.append(ev)
                    if t > s.last_ts:
                        s.last_ts = t
                        s.deadline = t + (idle_ms if s.lc == LC_FG else timeout_ms)
                        if t > hi:
                            hi = t
                    fast += 1
                    continue
                if FOREGROUND <= kind <= BACKGROUND and s.last_ts <= t < s.deadline:
                    # Fast path too: an in-order foreground or background in the open
                    # session; the general path's effect (R3-R5, R9, R10, _Record._apply).
                    if rec.part_session is not s:
                        rec.feed(s)
                    if kind == FOREGROUND:
                        s.lc = LC_FG
                        if s.bg_since >= 0:
                            s.bg_total += t - s.bg_since
                            s.bg_since = -1
                    else:
                        s.lc = LC_BG
                        if s.bg_since < 0:
                            s.bg_since = t
                    n = s.events = s.events + 1
                    data["session_uuid"] = s.uuid
                    data["session_id"] = s.sid
                    data["session_start_unixtime_ms"] = s.start
                    data["event_num"] = n
                    data.pop("late", None)  # the engine's field: only late events have it
                    rec.part.append(ev)
                    s.last_ts = t
                    s.deadline = t + (idle_ms if kind == FOREGROUND else timeout_ms)
                    if t > hi:
                        hi = t
                    fast += 1
                    continue

                if kind == OPT_OUT:
                    flag = data.get("is_opted_out")
                    if type(flag) is not bool:
                        if opted:
                            n_opted += 1
                        else:
                            rec.dead(ev, "bad_opt_out", "is_opted_out must be a boolean")
                        continue
                    if rec.saved is None:
                        rec.save()
                    counts.events_control += 1
                    if t > hi:
                        hi = t
                    if flag:
                        if not st.opted:
                            st.opted = True
                            if not opted:
                                rec.flush()
                                self._opt_out_close(st, t if t >= 0 else None, rec)
                                opted = True
                    elif st.opted:
                        st.opted = False
                        opted = controlled
                    s = st.open
                    if s is None or s.status != OPEN:
                        s = NO_SESSION
                    continue
                if t < 0:
                    rec.dead(ev, "bad_timestamp", "timestamp missing or out of range")
                    continue
                if kind == ATTRIBUTE:
                    try:
                        attr = check_attribute(data, self.dumps)
                    except DeadLetter as dl:
                        rec.dead(ev, dl.reason, dl.detail)
                        continue
                    if s.start <= t < s.deadline:
                        # Fast path too: a change to the open session's attributes
                        # (R14, R15); the general path's effect (_Record.event).
                        if t > hi:
                            hi = t
                        if rec.saved is None and rec.light is None:
                            rec.note(s)
                        if rec._attr_ok(s, attr, ev):
                            n_control += 1
                            _set_attr(s, attr)
                        continue
                else:
                    attr = None
                if t > hi:
                    hi = t
                rec.event(ev, data, kind, t, attr)
                s = st.open
                if s is None or s.status != OPEN:
                    s = NO_SESSION

            rec.flush()
            if self._pending:
                self._flush_pending()
            # The record is through: what follows cannot fail.
            counts.events_in += len(events)
            counts.events_forwarded += fast
            counts.events_opted_out += n_opted
            counts.events_control += n_control
            if new_key:
                self.keys[skey] = st
            if self.dirty is not None:
                self.dirty.add(skey)
            ring = self._ring
            ring[self._ri] = skey
            self._ri = (self._ri + 1) % WINDOW
            if hi > self.watermark:
                if hi <= self.watermark + self._grace:
                    self.watermark = hi  # R26: in step with the partition
                    if self._ahead:
                        self._ahead.clear()
                else:
                    self._ran_ahead(skey, hi, events, batch_ts, max_ts)
            if hi > 0:
                # R27: heard at its own latest time, or the partition's if that is later.
                heard = hi if hi > self.watermark else self.watermark
                if heard > st.activity:
                    st.activity = heard
            if seq >= 0:
                st.seq = seq
            # self._schedule(st), inline: once per record
            s = st.open
            if s is not None and s.status == OPEN:
                due: int | None = s.deadline + self._grace
            elif st.opted:
                due = None
            else:
                due = st.activity + self._ttl
            if due is not None and due < st.hdue:
                st.hdue = due
                heapq.heappush(self.heap, (due, skey))
        except Exception as exc:
            if rec is not None:
                saved = rec.saved
            self._internal_error(
                exc,
                saved,
                rec,
                skey,
                was_opted,
                raw or value,
                (key, topic, partition, offset, timestamp),
            )

    def _ran_ahead(self, skey: str, hi: int, events: list[Any], batch_ts: Any, max_ts: int) -> None:
        """R26: a record more than ``grace`` ahead of the watermark moves it only
        once enough distinct keys (the quorum) have run ahead since a record in step
        last moved it; then to the quorum-th highest of their times. Must not raise."""
        bound = self.watermark + self._grace
        n = 0
        for ev in events:  # the record's events that run ahead, for the metric
            data = ev.get("data") if type(ev) is dict else None
            if type(data) is dict:
                t = _event_ts(data.get("timestamp_unixtime_ms"), batch_ts, max_ts)
                if t is not None and t > bound:
                    n += 1
        if self.watermark:  # the first record of a fresh partition sets its time
            self.counts.events_ahead += n
            self.ahead_key = skey
            self.ahead_ts = hi
        ahead = self._ahead
        if hi > ahead.get(skey, 0):
            ahead[skey] = hi
        quorum = self._quorum()
        if len(ahead) >= quorum:
            self._move_to(sorted(ahead.values(), reverse=True)[quorum - 1])

    def _quorum(self) -> int:
        """R26: the distinct keys that must run ahead together to move time: one
        more for every 4 distinct keys of the last WINDOW records, at most QUORUM."""
        heard = set(self._ring)
        heard.discard("")
        q = 1 + len(heard) // 4
        return q if q < QUORUM else QUORUM

    def _save(self, st: KeyState) -> tuple[Any, ...]:
        """The key, the counts and the outputs' length before a record changes them.
        (The counts' dicts are held by reference: they are replaced to count.)"""
        c = self.counts
        dirty = self.dirty
        return (
            st,
            save_key(st),
            len(self.out),
            dirty is not None and st.key in dirty,
            c.records_dead_lettered,
            c.records_opted_out,
            c.events_forwarded,
            c.events_control,
            c.events_dead_lettered,
            c.events_late,
            c.sessions_started,
            c.sessions_revised,
            c.sessions_ended,
            c.dead_by_reason,
        )

    def _internal_error(
        self,
        exc: Exception,
        saved: tuple[Any, ...] | None,
        rec: _Record | None,
        skey: str,
        opted: bool,
        value: Any,
        src: Source,
    ) -> None:
        """A record raised (a bug): put its key back as it was before the record
        and dead-letter the record whole as internal_error (§7.3 v2)."""
        counts = self.counts
        self._pending.clear()  # only ever holds the current record's sessions
        n_out = -1
        if saved is not None:  # the slow path had begun: the whole key back
            st, key_saved, n_out, was_dirty = saved[:4]
            load_key(st, key_saved)
            (
                counts.records_dead_lettered,
                counts.records_opted_out,
                counts.events_forwarded,
                counts.events_control,
                counts.events_dead_lettered,
                counts.events_late,
                counts.sessions_started,
                counts.sessions_revised,
                counts.sessions_ended,
                counts.dead_by_reason,
            ) = saved[4:]
            if self.dirty is not None and not was_dirty:
                self.dirty.discard(skey)
        light = None if rec is None else rec.light
        if light is not None:  # in-order events had gone to the open session
            s, s.events, s.screens, s.last_ts, s.deadline = light[:5]
            s.lc, s.bg_since, s.bg_total, s.attrs, s.ident, mpids, n, n_light = light[5:]
            del mpids[n:]
            s.mpids = mpids
            if n_out < 0:
                n_out = n_light
        if n_out >= 0:
            del self.out[n_out:]  # what the record emitted: outputs of its key only
        # A key new with this record was never added to self.keys; events_in, the
        # fast path's events_forwarded, events_opted_out, the watermark and the
        # deadline index change only once a record is through.
        counts.records_internal_error += 1
        if opted:
            counts.records_opted_out += 1  # R18: not even a dead letter of an opted-out key
        else:
            try:
                payload, enc = value.decode("utf-8"), "utf-8"
            except UnicodeDecodeError:
                payload, enc = base64.b64encode(value).decode("ascii"), "base64"
            except Exception:  # not bytes at all: nothing faithful to show
                payload, enc = "", "utf-8"
            counts.records_dead_lettered += 1
            counts.dead_by_reason = Counts.bump(counts.dead_by_reason, INTERNAL_ERROR)
            self.out.append(
                (DEAD_LETTERS, src[0], _dead(INTERNAL_ERROR, _describe(exc), src, payload, enc))
            )
        cb = self.on_internal_error
        if cb is not None:
            try:  # noqa: SIM105 - no contextlib on this path: the report must not undo the recovery
                cb(exc, src)
            except Exception:
                pass

    # ------------------------------------------------------------ helpers

    def _controlled_key(self, app: str, device: str, skey: str) -> bool:
        c = self.control
        return bool(c.get(skey) or c.get(device) or c.get(app + "/*"))

    def _controlled(self, st: KeyState) -> bool:
        return self._controlled_key(st.app, st.device, st.key)

    def _deadline_reason(self, st: KeyState, s: Session) -> str:
        return "idle" if s.lc == LC_FG else "timeout"

    def _due(self, st: KeyState) -> int | None:
        """When the deadline index must look at the key next; None: never (R18).
        (Inlined at the end of process_record: keep the two alike.)"""
        s = st.open
        if s is not None and s.status == OPEN:
            return s.deadline + self.config.grace_ms
        if st.opted:
            return None  # the flag is never forgotten while set
        return st.activity + self.config.state_ttl_ms

    def _schedule(self, st: KeyState) -> None:
        due = self._due(st)
        if due is not None and due < st.hdue:
            st.hdue = due
            heapq.heappush(self.heap, (due, st.key))

    def _emit_start(self, st: KeyState, s: Session) -> None:
        out = self.out
        out.append(
            (
                EVENTS,
                st.device,
                {
                    **ident_fields(s.ident),
                    "event_type": "session_start",
                    "data": {
                        "session_uuid": s.uuid,
                        "session_id": s.sid,
                        "session_start_unixtime_ms": s.start,
                        "timestamp_unixtime_ms": s.start,
                    },
                },
            )
        )
        out.append((SESSIONS, s.uuid, self._start_fields(st, s)))
        self.counts.sessions_started += 1

    def _start_fields(self, st: KeyState, s: Session) -> dict[str, Any]:
        return {
            "record": "session_start",
            "session_uuid": s.uuid,
            "session_id": s.sid,
            "app": st.app,
            "device": st.device,
            "mpid": s.mpid,
            "start_unixtime_ms": s.start,
            "session_number": s.number,
            "previous_session_uuid": s.prev_uuid,
        }

    def _emit_end(self, st: KeyState, s: Session) -> None:
        attrs = s.attributes()
        duration = s.last_ts - s.start
        self.out.append(
            (
                EVENTS,
                st.device,
                {
                    **ident_fields(s.ident),
                    "event_type": "session_end",
                    "data": {
                        "session_uuid": s.uuid,
                        "session_id": s.sid,
                        "session_start_unixtime_ms": s.start,
                        "timestamp_unixtime_ms": s.last_ts,
                        "session_duration_ms": duration,
                        "custom_attributes": attrs,
                    },
                },
            )
        )
        rec = self._start_fields(st, s)
        rec["record"] = "session_end"
        rec["end_unixtime_ms"] = s.last_ts
        rec["session_duration_ms"] = duration
        rec["foreground_duration_ms"] = s.foreground_ms()
        rec["event_count"] = s.events
        rec["screen_view_count"] = s.screens
        rec["session_attributes"] = attrs
        rec["end_reason"] = s.reason
        rec["revision"] = s.emitted
        rec["mpids"] = list(s.mpids)
        self.out.append((SESSIONS, s.uuid, rec))
        if s.emitted == 0:
            c = self.counts
            c.sessions_ended = Counts.bump(c.sessions_ended, s.reason or "timeout")
        else:
            self.counts.sessions_revised += 1
        s.emitted += 1

    def _close(self, st: KeyState, s: Session, reason: str, status: int) -> None:
        s.reason = reason
        s.status = status
        self._emit_end(st, s)

    def _flush_pending(self) -> None:
        pending = self._pending
        while pending:
            st, s = pending.pop(0)
            if s.status != OPEN:
                self._emit_end(st, s)

    def _opt_out_close(self, st: KeyState, ts: int | None, rec: _Record | None) -> None:
        """R17/R18: end the open session at its last event, then forget all but
        the flag, the counter and where the key's sessions end (so no later
        session can overlap them, R9).

        ``ts`` is the opt-out's time; None when unusable, taken as in order
        (privacy first: a broken timestamp must not keep a user tracked).
        """
        self._flush_pending()
        s = st.open
        if s is not None:
            if ts is not None and ts >= s.deadline:
                if s.status == OPEN:
                    self._close(st, s, self._deadline_reason(st, s), CLOSED)
            else:
                # Open, or expired and reopened by this opt-out (R21).
                self._close(st, s, "opt_out", CLOSED)
            if s.last_ts > st.floor:
                st.floor = s.last_ts
        if st.last is not None and st.last.last_ts > st.floor:
            st.floor = st.last.last_ts
        st.open = None
        st.last = None
        if self.dirty is not None:
            self.dirty.add(st.key)
        if rec is not None:
            rec.part_session = None

    def _dead_record(
        self, src: tuple[Any, str, int, int, int | None], value: bytes, reason: str, detail: str
    ) -> None:
        try:
            payload, enc = value.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            payload, enc = base64.b64encode(value).decode("ascii"), "base64"
        dead = _dead(reason, detail, src, payload, enc)
        # Counted once built: a failure above changes nothing (all or nothing).
        self.counts.records_dead_lettered += 1
        self.counts.dead_by_reason = Counts.bump(self.counts.dead_by_reason, reason)
        self.out.append((DEAD_LETTERS, src[0], dead))

    def _bad_record(
        self, src: tuple[Any, str, int, int, int | None], value: bytes, opted: bool, detail: str
    ) -> None:
        if opted:
            self.counts.records_opted_out += 1
        else:
            self._dead_record(src, value, "bad_event", detail)


def _dead(
    reason: str,
    detail: str,
    src: tuple[Any, str, int, int, int | None],
    payload: str,
    encoding: str,
) -> dict[str, Any]:
    return {
        "reason": reason,
        "detail": detail,
        "source": {"topic": src[1], "partition": src[2], "offset": src[3], "timestamp": src[4]},
        "payload": payload,
        "payload_encoding": encoding,
    }


class _Record:
    """The work on one record of one key: session logic per event and R25 output parts."""

    __slots__ = (
        "device",
        "engine",
        "ident",
        "last_copy",
        "light",
        "mpid",
        "n_in",
        "n_parts",
        "obj",
        "part",
        "part_session",
        "rules",
        "saved",
        "single",
        "src",
        "st",
        "value",
    )

    def __init__(
        self,
        engine: Engine,
        st: KeyState,
        rules: AppRules,
        obj: dict[str, Any],
        single: bool,
        device: str,
        ident: tuple[Any, ...],
        mpid: Any,
        src: tuple[Any, str, int, int, int | None],
        value: bytes,
        saved: tuple[Any, ...] | None,
    ) -> None:
        self.engine = engine
        self.src = src  # (key, topic, partition, offset, timestamp) for dead letters
        self.value = value
        self.st = st
        self.rules = rules
        self.obj = obj
        self.single = single
        self.device = device
        self.ident = ident
        self.mpid = mpid
        self.part: list[dict[str, Any]] = []
        self.part_session: Session | _Late | None = None
        self.n_parts = 0
        self.n_in = 1 if single else len(obj["events"])
        # For Engine._internal_error: the key before the slow path's first change,
        # and what the fast path changed in the open session before that.
        self.saved = saved
        self.light: tuple[Any, ...] | None = None
        self.last_copy: Session | None = None  # the last closed session, copied on write

    def save(self) -> None:
        """Called before the slow path first changes anything of the record's key."""
        self.saved = self.engine._save(self.st)

    # R25: consecutive events of one session form one output batch.
    def flush(self) -> None:
        part = self.part
        if not part:
            return
        if self.single:
            self.engine.out.append((EVENTS, self.device, self.obj))
        elif self.n_parts == 0 and len(part) == self.n_in:
            self.obj["events"] = part
            self.engine.out.append((EVENTS, self.device, self.obj))
        else:
            batch = {k: v for k, v in self.obj.items() if k != "events"}
            batch["events"] = part
            self.engine.out.append((EVENTS, self.device, batch))
        self.n_parts += 1
        self.part = []

    def dead(self, ev: Any, reason: str, detail: str) -> None:
        if self.saved is None:
            self.save()
        eng = self.engine
        src = self.src
        eng.counts.events_dead_lettered += 1
        eng.counts.dead_by_reason = Counts.bump(eng.counts.dead_by_reason, reason)
        if self.single:
            try:
                payload = self.value.decode("utf-8")
            except UnicodeDecodeError:
                # The engine decoded it, so this cannot happen; stay total anyway.
                payload = self.value.decode("utf-8", "replace")
        elif type(ev) is _Deep:
            # Too deep to write on its own (MAX_DEPTH): the record it came in.
            payload = self.value.decode("utf-8")
        else:
            bad = {**ident_fields(self.ident), **ev} if type(ev) is dict else ev
            payload = eng.dumps(bad).decode("utf-8")
        eng.out.append((DEAD_LETTERS, src[0], _dead(reason, detail, src, payload, "utf-8")))

    # ------------------------------------------------------------- events

    def _start(self, ts: int) -> Session:
        st = self.st
        eng = self.engine
        st.counter += 1
        uuid = session_uuid(st.app, st.device, st.counter, ts)
        prev = st.last.uuid if st.last is not None else None
        s = Session(
            uuid,
            session_id(uuid),
            st.counter,
            ts,
            ts + self.rules.timeout_ms,
            self.mpid,
            self.ident,
            prev,
        )
        st.open = s
        self.flush()
        eng._emit_start(st, s)
        return s

    def _end(self, s: Session, reason: str, deadline: int) -> None:
        """Ends the open session by an event (final: never reopened)."""
        st = self.st
        self.flush()
        s.deadline = deadline
        self.engine._close(st, s, reason, CLOSED)
        st.open = None
        st.retire(s)

    def _forward(self, s: Session, ev: dict[str, Any], data: dict[str, Any], kind: int) -> None:
        s.events += 1
        if kind == SCREEN_VIEW:
            s.screens += 1
        data["session_uuid"] = s.uuid
        data["session_id"] = s.sid
        data["session_start_unixtime_ms"] = s.start
        data["event_num"] = s.events
        data.pop("late", None)  # the engine's field: only late events have it
        if self.part_session is not s:
            self.feed(s)
        self.part.append(ev)
        self.engine.counts.events_forwarded += 1

    def feed(self, s: Session) -> None:
        """This record starts feeding events to ``s``: a new output part (R25)."""
        if self.saved is None and self.light is None:
            self.note(s)
        if self.part:
            self.flush()
        self.part_session = s
        s.ident = self.ident
        mpid = self.mpid
        if mpid is not None and mpid not in s.mpids:
            s.mpids.append(mpid)

    def note(self, s: Session) -> None:
        """The fast path's first change to the record's key: what it may change in
        the open session (counts, end, deadline, lifecycle state, attributes,
        identity), for Engine._internal_error."""
        self.light = (
            s,
            s.events,
            s.screens,
            s.last_ts,
            s.deadline,
            s.lc,
            s.bg_since,
            s.bg_total,
            s.attrs,
            s.ident,
            s.mpids,
            len(s.mpids),
            len(self.engine.out),
        )

    def _touch(self, s: Session, ts: int) -> None:
        """A forwarded in-order event: moves the session's end and deadline (R4, R5, R9)."""
        if ts > s.last_ts:
            s.last_ts = ts
        r = self.rules
        s.deadline = s.last_ts + (r.idle_timeout_ms if s.lc == LC_FG else r.timeout_ms)

    def event(
        self,
        ev: dict[str, Any],
        data: dict[str, Any],
        kind: int,
        ts: int,
        attr: tuple[str, int, Any] | None,
    ) -> None:
        if self.saved is None:
            self.save()
        st = self.st
        eng = self.engine
        s = st.open
        if s is not None and ts >= s.deadline:
            # R4: an event at or after the deadline ends the session with the deadline's reason.
            if s.status == OPEN:
                self.flush()
                eng._close(st, s, eng._deadline_reason(st, s), CLOSED)
            s.status = CLOSED
            st.open = None
            st.retire(s)
            s = None

        if s is None:
            last = st.last
            if (last is not None and ts < last.deadline) or ts < st.floor:
                self._out_of_order(ev, data, kind, ts, attr)
                return
            if kind == SESSION_END:
                eng.counts.events_control += 1
                return
            s = self._start(ts)
            self._apply(s, ev, data, kind, ts, attr, True)
            return

        if ts < s.start:
            self._out_of_order(ev, data, kind, ts, attr)
            return
        if kind == SESSION_START:
            eng.counts.events_control += 1  # R7: a session is open, nothing to do
            return
        if kind == ATTRIBUTE and attr is not None and not self._attr_ok(s, attr, ev):
            return
        if s.status == EXPIRED and not (kind == SESSION_END and ts < s.last_ts):
            # R21: the key's next valid event is before the deadline: reopen.
            s.status = OPEN
            s.reason = None
        self._apply(s, ev, data, kind, ts, attr, False)

    def _apply(
        self,
        s: Session,
        ev: dict[str, Any],
        data: dict[str, Any],
        kind: int,
        ts: int,
        attr: tuple[str, int, Any] | None,
        fresh: bool,
    ) -> None:
        if kind <= SCREEN_VIEW or kind > SESSION_START:
            if kind <= SCREEN_VIEW:
                self._forward(s, ev, data, kind)
                self._touch(s, ts)
            elif kind == ATTRIBUTE:
                self.engine.counts.events_control += 1
                if attr is not None:
                    _set_attr(s, attr)
            elif kind == SESSION_END:
                self.engine.counts.events_control += 1
                if ts >= s.last_ts:
                    self._end(s, "manual", ts)
            return
        if kind == SESSION_START:
            self.engine.counts.events_control += 1
            return
        # Lifecycle (R2-R6). One older than the session's last event is a plain event (R9).
        if ts < s.last_ts:
            self._forward(s, ev, data, kind)
            return
        if kind == LAUNCH and not fresh and not self.rules.resume_on_launch:
            self._end(s, "relaunch", ts)
            s = self._start(ts)
        if kind in (LAUNCH, FOREGROUND):
            s.lc = LC_FG
            if s.bg_since >= 0:
                s.bg_total += ts - s.bg_since
                s.bg_since = -1
        elif kind == BACKGROUND:
            s.lc = LC_BG
            if s.bg_since < 0:
                s.bg_since = ts
        self._forward(s, ev, data, kind)
        self._touch(s, ts)
        if kind == EXIT:
            self._end(s, "exit", ts)

    def _attr_ok(
        self,
        s: Session,
        attr: tuple[str, int, Any],
        ev: dict[str, Any],
    ) -> bool:
        """Checks of R14/R15 that depend on the session's current attributes."""
        name, op, _ = attr
        low = name.lower()
        cur = s.attrs.get(low) if s.attrs else None
        if cur is None:
            if (
                op != 2
                and s.attrs is not None
                and len(s.attrs) >= (self.engine.config.max_session_attributes)
            ):
                self.dead(ev, "bad_session_attribute", "too many session attributes")
                return False
            if op == 2 or op == 0:
                return True
        elif op == 1:
            v = cur[1]
            if v is not None:
                if type(v) is bool or not isinstance(v, (int, float)):
                    self.dead(ev, "bad_session_attribute", "increment of a non-numeric value")
                    return False
                if not _writable_number(attribute_sum(v, attr[2])):
                    # Read fine, cannot be written (§7.3): outside int64/uint64, or not finite.
                    self.dead(ev, "bad_session_attribute", "sum out of range")
                    return False
        return True

    def _out_of_order(
        self,
        ev: dict[str, Any],
        data: dict[str, Any],
        kind: int,
        ts: int,
        attr: tuple[str, int, Any] | None,
    ) -> None:
        """R24: attribute without lifecycle or control effects, or forward as late."""
        st = self.st
        eng = self.engine
        timeout = self.rules.timeout_ms
        last = st.last
        target: Session | None = None
        if ts < st.floor:
            pass  # before a session no longer kept: belongs to none (R9)
        elif last is not None and last.start - timeout <= ts < last.deadline:
            target = last
        elif st.open is not None and ts >= st.open.start - timeout:
            target = st.open
        if kind in (SESSION_START, SESSION_END):
            eng.counts.events_control += 1
            return
        if target is not None and target is last and target is not self.last_copy:
            # The last closed session is never changed in place by a record (its
            # save holds it by reference, state.save_key): change a copy instead.
            target = self.last_copy = last.copy()
            st.last = target
            if self.part_session is last:
                self.part_session = target
            pending = eng._pending
            for i, (pst, ps) in enumerate(pending):
                if ps is last:
                    pending[i] = (pst, target)
        if target is None:
            # No session can hold it, not even an attribute change: never drop it (R24).
            eng.counts.events_late += 1
            data["session_uuid"] = None
            data["session_id"] = None
            data["session_start_unixtime_ms"] = None
            data["event_num"] = None
            data["late"] = True
            if self.part_session is not LATE:
                self.flush()
                self.part_session = LATE
            self.part.append(ev)
            eng.counts.events_forwarded += 1
            return
        if kind == ATTRIBUTE:
            if attr is None or not self._attr_ok(target, attr, ev):
                return
            eng.counts.events_control += 1
            _set_attr(target, attr)
        else:
            if ts < target.start:
                target.start = ts
            if target.events == 0 or (ts > target.last_ts and target is st.last):
                # R9: the end is the last forwarded event's ts; a session that has
                # none yet (started by a control event or an attribute change)
                # ends at this one, not at the control event. The deadline stays.
                target.last_ts = ts
            self._forward(target, ev, data, kind)
        if target.status != OPEN and (st, target) not in eng._pending:
            eng._pending.append((st, target))


def _set_attr(s: Session, attr: tuple[str, int, Any]) -> None:
    # Copy on write: a record's save holds ``attrs`` by reference (state.save_key).
    name, op, operand = attr
    low = name.lower()
    attrs = dict(s.attrs) if s.attrs else {}
    if op == 2:
        if low in attrs:
            del attrs[low]
            s.attrs = attrs
        return
    cur = attrs.get(low)
    if cur is None:
        attrs[low] = [name, operand]
    elif op == 0 or cur[1] is None:
        attrs[low] = [cur[0], operand]  # R14 v2: an increment over null counts from 0
    else:
        attrs[low] = [cur[0], attribute_sum(cur[1], operand)]
    s.attrs = attrs
