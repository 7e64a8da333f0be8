"""The session engine: one per source partition, pure and deterministic.

Records go in as bytes with their source position; outputs come out as
``(topic, key, value)`` tuples in ``engine.out``. Time is event time only:
the watermark is the largest valid event ``ts`` seen (R20) and expiry pops
an index of deadlines (R21). The one wall-clock input, ``now_ms``, only
bounds timestamps from the future (§1.3) and is passed in by the caller.
"""

from __future__ import annotations

import base64
import heapq
from collections.abc import Callable, Sequence
from typing import Any

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
from .state import CLOSED, EXPIRED, LC_BG, LC_FG, NEVER, OPEN, KeyState, Session

MIN_TS = 946_684_800_000  # 2000-01-01T00:00:00Z
MAX_ATTR_NAME = 256
MAX_ATTR_VALUE = 4096
IDENTITY_FIELDS = ("mpid", "mp_deviceid", "application_info", "api_key", "environment")

Loads = Callable[[bytes], Any]
Dumps = Callable[[Any], bytes]


class _Late:
    """Marks an output part of events that belong to no session (R24)."""


LATE = _Late()


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
    """(app, device) per §1.2, or None when the record names no device."""
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
        return name, 1, inc
    value = data["new"]
    t = type(value)
    if t is dict or t is list:
        raise DeadLetter("bad_session_attribute", "value must be a string, number, bool or null")
    # JSON text can be up to 6x a string's length; measure only when it could be too long.
    if (
        t is str
        and len(value) * 6 + 2 > MAX_ATTR_VALUE
        and len(dumps(value).decode("utf-8")) > MAX_ATTR_VALUE  # characters, not bytes
    ):
        raise DeadLetter("bad_session_attribute", f"value longer than {MAX_ATTR_VALUE} characters")
    return name, 0, value


def _event_fields(ev: Any, batch_ts: Any) -> tuple[str, dict[str, Any], Any]:
    """(event_type, data, raw ts) of an event off the common shape, or a dead letter."""
    if type(ev) is not dict:
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
    """Sessionizes the records of one source partition."""

    def __init__(
        self,
        config: EngineConfig,
        *,
        loads: Loads,
        dumps: Dumps,
        track_dirty: bool = False,
    ) -> None:
        self.config = config
        self.loads = loads
        self.dumps = dumps
        self.keys: dict[str, KeyState] = {}
        self.heap: list[tuple[int, str]] = []
        self.watermark = 0
        self.counts = Counts()
        self.out: list[Output] = []
        # R19 console opt-out entries: device, "app/device" or "app/*" -> opted out.
        self.control: dict[str, bool] = {}
        # Keys whose state changed since the last take_dirty(), for the changelog.
        self.dirty: set[str] | None = set() if track_dirty else None
        self._rules: dict[str, AppRules] = {}
        # Read once per record: plain attributes, not a chain of lookups.
        self._max_bytes = config.max_record_bytes
        self._skew = config.max_future_skew_ms
        self._pending: list[tuple[KeyState, Session]] = []

    # ----------------------------------------------------------------- API

    def take_output(self) -> list[Output]:
        out = self.out
        self.out = []
        return out

    def take_dirty(self) -> set[str]:
        dirty = self.dirty or set()
        self.dirty = set()
        return dirty

    def snapshot_key(self, key: str) -> list[Any] | None:
        st = self.keys.get(key)
        return None if st is None else st.snapshot()

    def restore_key(self, key: str, value: list[Any]) -> None:
        st = KeyState.restore(key, value)
        self.keys[key] = st
        self._schedule(st)

    def set_control(self, key: str, opted_out: bool | None) -> None:
        if opted_out is None:
            self.control.pop(key, None)
        else:
            self.control[key] = opted_out

    def open_sessions(self) -> int:
        return sum(1 for st in self.keys.values() if st.open is not None and st.open.status == OPEN)

    def rules(self, app: str) -> AppRules:
        r = self._rules.get(app)
        if r is None:
            r = self._rules[app] = self.config.rules_for(app)
        return r

    def advance_watermark(self, ts: int) -> None:
        """R22: idle partitions move time on; the watermark never goes back (R20)."""
        if ts > self.watermark:
            self.watermark = ts

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
        value: bytes,
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
        applied, so replaying input after a restore never applies a record twice."""
        counts = self.counts
        counts.records_in += 1
        src = (key, topic, partition, offset, timestamp)
        if len(value) > self._max_bytes:
            self._dead_record(
                src, value, "too_large", f"{len(value)} bytes > {self.config.max_record_bytes}"
            )
            return
        try:
            obj = self.loads(value)
        except Exception as exc:  # any decoder error is the same answer to the user
            self._dead_record(src, value, "invalid_json", str(exc))
            return
        if type(obj) is not dict:
            self._dead_record(src, value, "not_an_object", f"top level is {type(obj).__name__}")
            return
        ident = identity(obj)
        if ident is None:
            self._dead_record(src, value, "missing_identity", "no mp_deviceid and no mpid")
            return
        app, device = ident
        skey = app + "/" + device
        st = self.keys.get(skey)
        if st is not None and 0 <= seq <= st.seq:
            counts.records_in -= 1  # already applied before the restore: not new input
            return
        controlled = bool(self.control) and self._controlled_key(app, device, skey)
        opted = controlled or (st is not None and st.opted)
        if controlled and st is not None and (st.open is not None or st.last is not None):
            # A console opt-out takes effect at the key's first record after it is
            # known: its session, open or provisionally closed, ends as opt_out (R19).
            self._opt_out_close(st, None, None)

        events = obj.get("events")
        single = events is None
        if single:
            if "event_type" not in obj:
                self._bad_record(src, value, opted, "record has neither events nor event_type")
                return
            events = [obj]
        elif type(events) is not list:
            self._bad_record(src, value, opted, "events is not an array")
            return

        if st is None:
            st = KeyState(skey, app, device)
            self.keys[skey] = st
        if self.dirty is not None:
            self.dirty.add(skey)
        rules = self._rules.get(app) or self.rules(app)
        mpid = obj.get("mpid")
        # IDENTITY_FIELDS as a tuple: cheaper than a dict per record; dict on output.
        ident_obj = (
            mpid,
            obj.get("mp_deviceid"),
            obj.get("application_info"),
            obj.get("api_key"),
            obj.get("environment"),
        )
        batch_ts = obj.get("timestamp_unixtime_ms")
        if batch_ts is None:
            batch_ts = timestamp
        max_ts = now_ms + self._skew
        rec = _Record(self, st, rules, obj, single, device, ident_obj, mpid, src, value)
        kinds = EVENT_KINDS
        counts.events_in += len(events)
        hi = 0  # largest valid ts of the record: the watermark and the key's activity
        fast = 0  # events taken by the fast path, counted once at the end
        idle_ms = rules.idle_timeout_ms
        timeout_ms = rules.timeout_ms
        s = st.open

        for ev in events:
            if opted and (type(ev) is not dict or ev.get("event_type") != "opt_out"):
                counts.events_opted_out += 1  # R18: malformed ones too
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
            if ts is None:
                ts = batch_ts  # §1.3: a null event time falls back like a missing one
            kind = kinds.get(et, 0)
            if kind == TRANSITION:
                kind = TRANSITION_KINDS.get(data.get("application_transition_type"), 0)
            if type(ts) is not int:
                ts = int(ts) if type(ts) is float and ts.is_integer() else None
            if ts is not None and not MIN_TS <= ts <= max_ts:
                ts = None

            if (
                kind <= SCREEN_VIEW
                and ts is not None
                and s is not None
                and s.last_ts <= ts < s.deadline
                and s.status == OPEN
            ):
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
                rec.part.append(ev)
                if ts > s.last_ts:
                    s.last_ts = ts
                    s.deadline = ts + (idle_ms if s.lc == LC_FG else timeout_ms)
                    if ts > hi:
                        hi = ts
                fast += 1
                continue

            if kind == OPT_OUT:
                flag = data.get("is_opted_out")
                if type(flag) is not bool:
                    if opted:
                        counts.events_opted_out += 1
                    else:
                        rec.dead(ev, "bad_opt_out", "is_opted_out must be a boolean")
                    continue
                counts.events_control += 1
                if ts is not None and ts > hi:
                    hi = ts
                if flag:
                    if not st.opted:
                        st.opted = True
                        if not opted:
                            rec.flush()
                            self._opt_out_close(st, ts, rec)
                            opted = True
                elif st.opted:
                    st.opted = False
                    opted = controlled
                s = st.open
                continue
            if ts is None:
                rec.dead(ev, "bad_timestamp", "timestamp missing or out of range")
                continue
            if kind == ATTRIBUTE:
                try:
                    attr = check_attribute(data, self.dumps)
                except DeadLetter as dl:
                    rec.dead(ev, dl.reason, dl.detail)
                    continue
            else:
                attr = None
            if ts > hi:
                hi = ts
            rec.event(ev, data, kind, ts, attr)
            s = st.open

        counts.events_forwarded += fast
        if hi > self.watermark:
            self.watermark = hi
        if hi > st.activity:
            st.activity = hi
        rec.finish()
        if seq >= 0:
            st.seq = seq
        self._schedule(st)

    # ------------------------------------------------------------ helpers

    def _controlled_key(self, app: str, device: str, skey: str) -> bool:
        c = self.control
        return bool(c.get(skey) or c.get(device) or c.get(app + "/*"))

    def _controlled(self, st: KeyState) -> bool:
        return self._controlled_key(st.app, st.device, st.key)

    def _deadline_reason(self, st: KeyState, s: Session) -> str:
        return "idle" if s.lc == LC_FG else "timeout"

    def _due(self, st: KeyState) -> int | None:
        """When the deadline index must look at the key next; None: never (R18)."""
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
            self.counts.sessions_ended[s.reason or "timeout"] += 1
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
        self.counts.records_dead_lettered += 1
        self.counts.dead_by_reason[reason] += 1
        try:
            payload, enc = value.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            payload, enc = base64.b64encode(value).decode("ascii"), "base64"
        self.out.append((DEAD_LETTERS, src[0], _dead(reason, detail, src, payload, enc)))

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
        "fields",
        "ident",
        "mpid",
        "n_in",
        "n_parts",
        "obj",
        "part",
        "part_session",
        "rules",
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

    def finish(self) -> None:
        self.flush()
        if self.engine._pending:
            self.engine._flush_pending()

    def dead(self, ev: Any, reason: str, detail: str) -> None:
        eng = self.engine
        src = self.src
        eng.counts.events_dead_lettered += 1
        eng.counts.dead_by_reason[reason] += 1
        if self.single:
            try:
                payload = self.value.decode("utf-8")
            except UnicodeDecodeError:
                # The engine decoded it, so this cannot happen; stay total anyway.
                payload = self.value.decode("utf-8", "replace")
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
        if self.part_session is not s:
            self.feed(s)
        self.part.append(ev)
        self.engine.counts.events_forwarded += 1

    def feed(self, s: Session) -> None:
        """This record starts feeding events to ``s``: a new output part (R25)."""
        self.flush()
        self.part_session = s
        s.ident = self.ident
        mpid = self.mpid
        if mpid is not None and mpid not in s.mpids:
            s.mpids.append(mpid)

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
            if v is not None and (type(v) is bool or not isinstance(v, (int, float))):
                self.dead(ev, "bad_session_attribute", "increment of a non-numeric value")
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
            if ts > target.last_ts and target is last:
                target.last_ts = ts
            self._forward(target, ev, data, kind)
        if target.status != OPEN and (st, target) not in eng._pending:
            eng._pending.append((st, target))


def _set_attr(s: Session, attr: tuple[str, int, Any]) -> None:
    name, op, operand = attr
    low = name.lower()
    attrs = s.attrs
    if op == 2:
        if attrs and low in attrs:
            del attrs[low]
        return
    if attrs is None:
        attrs = s.attrs = {}
    cur = attrs.get(low)
    if op == 0:
        if cur is None:
            attrs[low] = [name, operand]
        else:
            cur[1] = operand
        return
    if cur is None:
        attrs[low] = [name, operand]
    else:
        cur[1] = operand if cur[1] is None else cur[1] + operand
