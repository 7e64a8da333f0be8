"""Property tests (hypothesis) of the engine against SPEC rules R0-R25 and §7.4.

Inputs are realistic per-device streams of mParticle batches: 1-4 devices across
1-2 apps, launches, foregrounds, backgrounds, exits, activity, manual session
control, session attributes (some invalid), opt-outs, gaps around the (short,
configured) timeouts, out-of-order timestamps and a few malformed records.

Every input event carries a unique tag ``"E:<key>:<n>"`` (in ``data.eid``, or as
the event itself when the event is not an object) so each one can be traced to
the outputs. Per key, the events are classified while generating (forwardable,
control, attribute change, bad, opt-out true/false), which is enough to predict
where each tag may appear without re-implementing the session rules.
"""

from __future__ import annotations

import functools
import itertools
import os
import random
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from sessionizer import codec
from sessionizer.core.config import EngineConfig
from sessionizer.core.engine import Engine, attribute_sum, identity
from sessionizer.core.ids import session_id, session_uuid
from sessionizer.core.model import DEAD_LETTERS, EVENTS, SESSIONS
from sessionizer.core.state import OPEN
from sessionizer.testing import (
    MIN,
    NOW,
    SEC,
    T0,
    background,
    batch,
    custom,
    event,
    exit_,
    foreground,
    launch,
    screen,
    single,
    transition,
)

TIMEOUT = MIN
IDLE = 4 * TIMEOUT  # the default foreground_idle_timeout (R5)
GRACE = 5 * SEC
CFG = EngineConfig(timeout_ms=TIMEOUT, grace_ms=GRACE, max_session_attributes=3)
APPS = ("com.example.shop", "com.example.news")
# How a session open when a console opt-out entry arrives ends (R19).
CONTROL_CLOSE = {"opt_out"}
END_REASONS = {"timeout", "idle", "relaunch", "exit", "manual", "opt_out", "end_of_input"}


MAX_RECORDS = int(os.environ.get("PROPERTY_MAX_RECORDS", "6"))  # per key

PROPS = settings(
    max_examples=int(os.environ.get("PROPERTY_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Event classes, decided when generating.
FWD = "fwd"  # activity or lifecycle with a valid ts: forwarded exactly once unless opted out
CTL = "ctl"  # session_start / session_end: consumed, never output
ATTR = "attr"  # statically valid attribute change: consumed, one dead letter, or forwarded late
BAD = "bad"  # statically invalid event: exactly one dead letter unless opted out
OPT_T = "opt_true"  # valid opt_out true (the engine applies it even with a bad ts)
OPT_F = "opt_false"
WHOLE = "whole"  # a keyed record too malformed to split: one dead letter unless opted out
UNKEYED = "unkeyed"  # a record with no identity: one dead letter whoever sent it


# ------------------------------------------------------------------ inputs


@dataclass(frozen=True)
class KeySpec:
    index: int
    app: str
    device: str
    mpids: tuple[int, ...]

    @property
    def skey(self) -> str:
        return f"{self.app}/{self.device}"


@dataclass
class Rec:
    key: int | None  # index of the KeySpec, None when the record names no key
    value: bytes
    events: list[tuple[str | None, str]] = field(default_factory=list)  # (eid, class)

    def __repr__(self) -> str:
        return f"Rec(key={self.key}, {self.value.decode('utf-8', 'replace')})"


@dataclass
class Scenario:
    keys: list[KeySpec]
    streams: list[list[Rec]]  # one per key, in the key's own order
    unkeyed: list[Rec]

    def interleave(self, rnd: random.Random) -> list[Rec]:
        """All records, each stream's own order kept, streams merged at random."""
        queues = [list(s) for s in self.streams if s] + [[r] for r in self.unkeyed]
        out: list[Rec] = []
        while queues:
            i = rnd.randrange(len(queues))
            out.append(queues[i].pop(0))
            if not queues[i]:
                queues.pop(i)
        return out

    def in_key_order(self) -> list[Rec]:
        out = [r for s in self.streams for r in s]
        return out + list(self.unkeyed)


_GAP_EDGES = (
    0,
    TIMEOUT - 1,
    TIMEOUT,
    TIMEOUT + 1,
    TIMEOUT + GRACE - 1,
    TIMEOUT + GRACE,
    IDLE - 1,
    IDLE,
    IDLE + GRACE,
)


@st.composite
def _ts(draw: st.DrawFn, cursor: int) -> tuple[int, int]:
    """(ts, new cursor): mostly increasing, sometimes around the timeouts or out of order."""
    g = draw(st.integers(0, 99))
    if g < 55:
        d = draw(st.integers(0, 5 * SEC))
    elif g < 62:
        d = draw(st.sampled_from(_GAP_EDGES))
    elif g < 72:
        d = draw(st.integers(TIMEOUT - 10 * SEC, TIMEOUT + 10 * SEC))
    elif g < 78:
        d = draw(st.integers(IDLE - 10 * SEC, IDLE + 10 * SEC))
    elif g < 86:
        d = draw(st.integers(5 * MIN, 60 * MIN))
    else:
        back = draw(st.integers(1, 2 * TIMEOUT))
        return cursor - back, cursor
    return cursor + d, cursor + d


_ATTR_NAMES = ("plan", "Plan", "count", "level", "x")

# (weight, kind) -- the first kind is the simplest, hypothesis shrinks towards it.
_KINDS: list[tuple[int, str]] = [
    (26, "custom"),
    (16, "screen"),
    (7, "foreground"),
    (7, "background"),
    (5, "launch"),
    (3, "exit"),
    (2, "other_activity"),
    (3, "session_start"),
    (3, "session_end"),
    (4, "set_attr"),
    (3, "incr_attr"),
    (2, "del_attr"),
    (2, "bad_attr"),
    (2, "opt_true"),
    (2, "opt_false"),
    (2, "bad_ts"),
    (1, "bad_opt_out"),
    (2, "bad_shape"),
    (1, "opt_true_no_ts"),
    (2, "float_ts"),
]
_KIND_TABLE = [k for w, k in _KINDS for _ in range(w)]


@st.composite
def _event(
    draw: st.DrawFn, eid: str, cursor: int, no_ts_opt_out: bool = True
) -> tuple[Any, str, int, bool]:
    """(event, class, new cursor, ts_is_valid_int)."""
    kind = _KIND_TABLE[draw(st.integers(0, len(_KIND_TABLE) - 1))]
    if kind == "opt_true_no_ts" and not no_ts_opt_out:
        kind = "opt_true"
    ts, cursor = draw(_ts(cursor))
    ev: Any
    cls = FWD
    plain_ts = True
    if kind == "custom":
        ev = custom(ts)
    elif kind == "screen":
        ev = screen(ts, draw(st.sampled_from(("Home", "Cart"))))
    elif kind == "foreground":
        ev = foreground(ts)
    elif kind == "background":
        ev = background(ts)
    elif kind == "launch":
        ev = launch(ts)
    elif kind == "exit":
        ev = exit_(ts)
    elif kind == "other_activity":
        ev = draw(
            st.sampled_from(
                (
                    event("commerce_event", ts, product_action={"action": "purchase"}),
                    transition("application_resumed", ts),
                    event("crash_report", ts),
                )
            )
        )
    elif kind == "float_ts":
        ev = custom(ts)
        ev["data"]["timestamp_unixtime_ms"] = float(ts)
        plain_ts = False
    elif kind in ("session_start", "session_end"):
        ev, cls = event(kind, ts), CTL
    elif kind == "set_attr":
        value = draw(st.sampled_from(("gold", 3, 2.5, None, True)))
        name = draw(st.sampled_from(_ATTR_NAMES))
        ev, cls = (
            event("session_attribute_change", ts, session_attribute_name=name, new=value),
            ATTR,
        )
    elif kind == "incr_attr":
        name = draw(st.sampled_from(_ATTR_NAMES))
        by = draw(st.sampled_from((1, 2, -1, 0.5)))
        ev = event("session_attribute_change", ts, session_attribute_name=name, increment=by)
        cls = ATTR
    elif kind == "del_attr":
        name = draw(st.sampled_from(_ATTR_NAMES))
        ev = event("session_attribute_change", ts, session_attribute_name=name, deleted=True)
        cls = ATTR
    elif kind == "bad_attr":
        data = draw(
            st.sampled_from(
                (
                    {"new": "gold"},  # no name
                    {"session_attribute_name": "plan", "new": 1, "increment": 1},
                    {"session_attribute_name": "plan"},  # none of the three
                    {"session_attribute_name": "plan", "deleted": False},
                    {"session_attribute_name": "plan", "new": {"a": 1}},
                    {"session_attribute_name": "plan", "new": [1]},
                    {"session_attribute_name": "n" * 257, "new": 1},
                    {"session_attribute_name": "plan", "increment": "1"},
                    {"session_attribute_name": "plan", "increment": None},
                    {"session_attribute_name": "plan", "new": "v" * 4100},
                )
            )
        )
        ev, cls = event("session_attribute_change", ts, **data), BAD
    elif kind == "opt_true":
        ev, cls = event("opt_out", ts, is_opted_out=True), OPT_T
    elif kind == "opt_false":
        ev, cls = event("opt_out", ts, is_opted_out=False), OPT_F
    elif kind == "opt_true_no_ts":
        # The engine applies a well-formed opt_out even when its ts is unusable.
        ev, cls = event("opt_out", None, is_opted_out=True), OPT_T
        ev["data"]["timestamp_unixtime_ms"] = draw(st.sampled_from(("soon", 12345, None)))
        plain_ts = False
    elif kind == "bad_ts":
        bad = draw(st.sampled_from(("soon", 12345, NOW + 2 * 24 * 60 * MIN, 1.5, None)))
        ev, cls = custom(ts), BAD
        ev["data"]["timestamp_unixtime_ms"] = bad
        plain_ts = False
    elif kind == "bad_opt_out":
        ev = event("opt_out", ts, is_opted_out=draw(st.sampled_from(("yes", None, 1))))
        cls = BAD
    elif kind == "bad_shape":
        shape = draw(st.integers(0, 2))
        cls = BAD
        if shape == 0:
            return eid, cls, cursor, False  # an event that is not an object: the tag itself
        if shape == 1:
            ev = {"event_type": 7, "data": {"timestamp_unixtime_ms": ts}}
        else:
            ev = {"event_type": "custom_event", "data": [eid]}
            return ev, cls, cursor, False
    else:  # pragma: no cover
        raise AssertionError(kind)
    ev["data"]["eid"] = eid
    return ev, cls, cursor, plain_ts


@st.composite
def _stream(draw: st.DrawFn, k: KeySpec, max_records: int, no_ts_opt_out: bool = True) -> list[Rec]:
    cursor = T0 + draw(st.integers(0, 10 * SEC))
    n = 0
    recs: list[Rec] = []
    for _ in range(draw(st.integers(1, max_records))):
        shape = draw(st.integers(0, 99))
        mpid = k.mpids[draw(st.integers(0, len(k.mpids) - 1))]

        def tag() -> str:
            nonlocal n
            n += 1
            return f"E:{k.index}:{n}"

        if shape >= 96:  # a keyed record too malformed to split into events
            eid = tag()
            if shape == 96:
                obj: dict[str, Any] = batch(k.device, app=k.app, mpid=mpid)
                del obj["events"]
                obj["data"] = {"eid": eid}
            else:
                obj = batch(k.device, app=k.app, mpid=mpid)
                obj["events"] = {"eid": eid}
            recs.append(Rec(k.index, codec.dumps(obj), [(eid, WHOLE)]))
            continue
        size = 1 if shape >= 75 else draw(st.integers(1, 6))
        evs: list[Any] = []
        classes: list[tuple[str | None, str]] = []
        plain = True
        for _ in range(size):
            eid = tag()
            ev, cls, cursor, plain = draw(_event(eid, cursor, no_ts_opt_out))
            evs.append(ev)
            classes.append((eid, cls))
        if shape >= 75 and type(evs[0]) is dict:
            obj = single(k.device, evs[0], app=k.app, mpid=mpid)
            if plain and draw(st.booleans()):
                # the event's ts given at the record's top level (the batch ts)
                obj["timestamp_unixtime_ms"] = obj["data"].pop("timestamp_unixtime_ms")
        else:
            obj = batch(k.device, *evs, app=k.app, mpid=mpid)
        recs.append(Rec(k.index, codec.dumps(obj), classes))
    return recs


@st.composite
def _unkeyed(draw: st.DrawFn, n: int) -> Rec:
    kind = draw(st.integers(0, 3))
    if kind == 0:
        eid = f"E:u:{n}"
        obj = batch(None, custom(T0, eid=eid), mpid=None)
        return Rec(None, codec.dumps(obj), [(eid, UNKEYED)])
    value = (
        b'{"mp_deviceid": "dev-1", "events": [{"event_type": "custom_e',
        b"\xff\xfe\x00not utf-8",
        b"[1, 2, 3]",
    )[kind - 1]
    return Rec(None, value, [])


@st.composite
def scenarios(
    draw: st.DrawFn, max_records: int = MAX_RECORDS, no_ts_opt_out: bool = True
) -> Scenario:
    apps = APPS[: draw(st.integers(1, 2))]
    keys: list[KeySpec] = []
    for d in range(draw(st.integers(1, 4))):
        device = f"dev-{d + 1}"
        mpids = tuple(1000 * (d + 1) + j for j in range(draw(st.integers(1, 2))))
        mine = [a for a in apps if draw(st.booleans())] or [apps[d % len(apps)]]
        for app in mine:
            keys.append(KeySpec(len(keys), app, device, mpids))
    streams = [draw(_stream(k, max_records, no_ts_opt_out)) for k in keys]
    unkeyed = [draw(_unkeyed(i)) for i in range(draw(st.integers(0, 2)))]
    return Scenario(keys, streams, unkeyed)


# ------------------------------------------------------------------ running


@dataclass
class Out:
    topic: int
    key: Any
    raw: bytes
    value: dict[str, Any]
    owner: str | None  # the session key the output belongs to, if it can be told
    eids: set[str]

    @property
    def line(self) -> tuple[int, bytes, bytes]:
        return (self.topic, codec.dumps(self.key), self.raw)


def _walk(v: Any) -> Iterator[str]:
    if isinstance(v, str):
        if v.startswith("E:"):
            yield v
    elif isinstance(v, dict):
        for x in v.values():
            yield from _walk(x)
    elif isinstance(v, list):
        for x in v:
            yield from _walk(x)


def _owner(topic: int, v: dict[str, Any]) -> tuple[str | None, set[str]]:
    if topic == SESSIONS:
        return f"{v['app']}/{v['device']}", set()
    if topic == EVENTS:
        ident = identity(v)
        return (None if ident is None else "/".join(ident)), set(_walk(v))
    if v["payload_encoding"] != "utf-8":
        return None, set()
    try:
        payload = codec.loads(v["payload"])
    except codec.JSONDecodeError:
        return None, set()
    ident = identity(payload) if type(payload) is dict else None
    return (None if ident is None else "/".join(ident)), set(_walk(payload))


def _outs(raw: list[tuple[int, Any, dict[str, Any]]]) -> list[Out]:
    res = []
    for t, k, v in raw:
        b = codec.dumps(v)  # serialized at once, as the edge does
        value = codec.loads(b)
        owner, eids = _owner(t, value)
        res.append(Out(t, k, b, value, owner, eids))
    return res


def new_engine() -> Engine:
    return Engine(CFG, loads=codec.loads, dumps=codec.dumps)


def drive(
    recs: Sequence[Rec],
    *,
    expire: bool | Sequence[bool] = True,
    engine: Engine | None = None,
    control: dict[str, bool] | None = None,
    control_at: int = 0,
    close: bool = True,
    first_offset: int = 0,
    after: Callable[[int, Engine], None] | None = None,
) -> tuple[Engine, list[list[Out]]]:
    """Runs records one by one; returns one output chunk per record (its own outputs and
    those of the expiry after it) and, with ``close``, a last chunk from ``close_all``."""
    eng = engine or new_engine()
    chunks: list[list[Out]] = []
    for i, r in enumerate(recs):
        if control and i == control_at:
            for k, v in control.items():
                eng.set_control(k, v)
        w = eng.watermark
        eng.process_record(r.value, None, "raw-events", 0, first_offset + i, None, NOW)
        if expire if isinstance(expire, bool) else expire[i]:
            eng.expire()
        assert eng.watermark >= w, "R20: the watermark never goes back"
        chunks.append(_outs(eng.take_output()))
        if after is not None:
            after(i, eng)
    if control and control_at >= len(recs):
        for k, v in control.items():
            eng.set_control(k, v)
    if close:
        eng.close_all()
        chunks.append(_outs(eng.take_output()))
    return eng, chunks


def flat(chunks: list[list[Out]]) -> list[Out]:
    return [o for c in chunks for o in c]


def forwarded(o: Out) -> list[dict[str, Any]]:
    """The forwarded input events of one output (not the synthesized session events)."""
    if o.topic != EVENTS:
        return []
    evs = o.value.get("events", [o.value])
    return [e for e in evs if e["event_type"] not in ("session_start", "session_end")]


def is_synth(o: Out, kind: str) -> bool:
    return o.topic == EVENTS and "events" not in o.value and o.value.get("event_type") == kind


def event_ts(o: Out, ev: dict[str, Any]) -> int:
    ts = ev["data"].get("timestamp_unixtime_ms")
    if ts is None:
        ts = o.value.get("timestamp_unixtime_ms")
    return int(ts)


@dataclass
class Model:
    """What the record classes alone predict (opt-out state per key, in record order)."""

    events_in: int = 0
    records_dead: int = 0
    records_opted_out: int = 0
    fwd: set[str] = field(default_factory=set)  # exactly once, forwarded
    dead: set[str] = field(default_factory=set)  # exactly once, dead-lettered
    maybe_dead: set[str] = field(default_factory=set)  # at most once, dead-lettered
    absent: set[str] = field(default_factory=set)  # nowhere
    window: set[str] = field(default_factory=set)  # processed while opted out (R18)
    # per record: (key, opted before, opted after, flag changes in the record)
    flags: list[tuple[int | None, bool, bool, list[bool]]] = field(default_factory=list)


def model(recs: Sequence[Rec], controlled: set[int] | None = None, control_at: int = 0) -> Model:
    m = Model()
    opted: dict[int, bool] = defaultdict(bool)
    for i, r in enumerate(recs):
        if r.key is None:
            m.flags.append((None, False, False, []))
            for eid, _ in r.events:
                m.dead.add(eid)  # type: ignore[arg-type]
            m.records_dead += 1
            continue
        k = r.key
        ctl = controlled is not None and k in controlled and i >= control_at
        before = opted[k] or ctl
        changes: list[bool] = []
        if r.events and r.events[0][1] == WHOLE:
            eid = r.events[0][0]
            assert eid is not None
            if before:
                m.records_opted_out += 1
                m.absent.add(eid)
                m.window.add(eid)
            else:
                m.records_dead += 1
                m.dead.add(eid)
            m.flags.append((k, before, before, changes))
            continue
        m.events_in += len(r.events)
        for eid, cls in r.events:
            assert eid is not None
            if cls in (OPT_T, OPT_F):
                opted[k] = cls == OPT_T
                changes.append(opted[k])
                m.absent.add(eid)
                continue
            if opted[k] or ctl:
                m.absent.add(eid)
                m.window.add(eid)
            elif cls == FWD:
                m.fwd.add(eid)
            elif cls == BAD:
                m.dead.add(eid)
            elif cls == ATTR:
                m.maybe_dead.add(eid)
            else:
                m.absent.add(eid)
        m.flags.append((k, before, opted[k] or ctl, changes))
    return m


def _show(recs: Sequence[Rec]) -> str:
    return "\n".join(f"  [{i}] {r!r}" for i, r in enumerate(recs))


# ------------------------------------------------------------------ (a) determinism


@PROPS
@given(scn=scenarios(), rnd=st.randoms(use_true_random=False), data=st.data())
def test_r0_r12_determinism_same_input_gives_byte_identical_output(
    scn: Scenario, rnd: random.Random, data: st.DataObject
) -> None:
    recs = scn.interleave(rnd)
    expire = data.draw(st.lists(st.booleans(), min_size=len(recs), max_size=len(recs)))
    _, a = drive(recs, expire=expire)
    _, b = drive(recs, expire=expire)
    assert [o.line for o in flat(a)] == [o.line for o in flat(b)]


# ------------------------------------------------------------------ (b) conservation


@PROPS
@given(scn=scenarios(), rnd=st.randoms(use_true_random=False))
def test_s7_4_conservation_every_event_accounted_for_exactly_once(
    scn: Scenario, rnd: random.Random
) -> None:
    recs = scn.interleave(rnd)
    note(_show(recs))
    eng, chunks = drive(recs)
    outs = flat(chunks)
    c = eng.counts
    m = model(recs)
    assert c.balanced(), c.as_dict()
    assert c.records_in == len(recs)
    assert c.events_in == m.events_in
    assert c.records_dead_lettered == m.records_dead
    assert c.records_opted_out == m.records_opted_out
    fwd = [e for o in outs for e in forwarded(o)]
    assert len(fwd) == c.events_forwarded
    assert sum(1 for e in fwd if e["data"].get("late") is True) == c.events_late
    dead = [o for o in outs if o.topic == DEAD_LETTERS]
    assert len(dead) == c.records_dead_lettered + c.events_dead_lettered
    # Each event object appears exactly once across the outputs, or not at all.
    fwd_seen: dict[str, int] = defaultdict(int)
    for e in fwd:
        for eid in _walk(e):
            fwd_seen[eid] += 1
    dead_seen: dict[str, int] = defaultdict(int)
    for o in dead:
        for eid in o.eids:
            dead_seen[eid] += 1
    # synthesized session events never carry an input event
    for o in outs:
        if is_synth(o, "session_start") or is_synth(o, "session_end"):
            assert not o.eids
    for eid in m.fwd:
        assert (fwd_seen[eid], dead_seen[eid]) == (1, 0), eid
    for eid in m.dead:
        assert (fwd_seen[eid], dead_seen[eid]) == (0, 1), eid
    late_tags = {t for e in fwd if e["data"].get("late") is True for t in _walk(e)}
    for eid in m.maybe_dead:
        # An attribute change is consumed, or dead-lettered (R15), or -- when no session can
        # hold it -- forwarded as a late event: the engine reads R24's "no event is ever
        # dropped" over R14's "it is not forwarded" (a spec question, see the report).
        assert fwd_seen[eid] + dead_seen[eid] <= 1, eid
        assert not fwd_seen[eid] or eid in late_tags, eid
    for eid in m.absent:
        assert (fwd_seen[eid], dead_seen[eid]) == (0, 0), eid
    assert {eid for eid, n in fwd_seen.items() if n} <= m.fwd | m.maybe_dead


# ------------------------------------------------------------------ (c) privacy


def _privacy_scenarios() -> st.SearchStrategy[Scenario]:
    return scenarios(max_records=MAX_RECORDS + 2)


@PROPS
@given(scn=_privacy_scenarios(), rnd=st.randoms(use_true_random=False), data=st.data())
def test_r17_r18_nothing_of_an_opted_out_key_reaches_any_output(
    scn: Scenario, rnd: random.Random, data: st.DataObject
) -> None:
    recs = scn.interleave(rnd)
    expire = data.draw(st.lists(st.booleans(), min_size=len(recs), max_size=len(recs)))
    note(_show(recs))
    m = model(recs)
    skeys = {k.index: k.skey for k in scn.keys}

    def state_deleted(i: int, eng: Engine) -> None:
        rk, _, after, _ = m.flags[i]
        if rk is not None and after:
            snap = eng.snapshot_key(skeys[rk])
            # R18: only the flag and the counter are kept while opted out
            assert snap is not None and snap[4] is True, snap
            assert snap[6] is None and snap[7] is None, snap

    _, chunks = drive(recs, expire=expire, after=state_deleted)
    # Tags of events processed while their key was opted out appear nowhere.
    for o in flat(chunks):
        leaked = o.eids & m.window
        assert not leaked, (leaked, o.value)
    opted_now: dict[int, bool] = defaultdict(bool)
    for i, chunk in enumerate(chunks):
        if i < len(recs):
            rk, before, after, changes = m.flags[i]
        else:
            rk, before, after, changes = None, False, False, []
        for k, sk in skeys.items():
            mine = [(j, o) for j, o in enumerate(chunk) if o.owner == sk]
            if k != rk:
                if opted_now[k]:
                    assert not mine, (i, sk, [o.value for _, o in mine])
                continue
            if before and after and False not in changes:
                # opted out through the whole record: nothing at all
                assert not mine, (i, sk, [o.value for _, o in mine])
            elif not before and changes and changes[-1] is True and changes.count(True) == 1:
                # the record opts the key out: after the close it causes, nothing of the key
                pre = {eid for eid, _ in recs[i].events} - m.window
                marks = [
                    j
                    for j, o in mine
                    if (o.eids & pre)
                    or (o.topic == SESSIONS and o.value["record"] == "session_end")
                    or is_synth(o, "session_end")
                ]
                last = max(marks, default=-1)
                late = [o.value for j, o in mine if j > last]
                assert not late, (i, sk, late)
        if rk is not None:
            opted_now[rk] = after


@pytest.mark.parametrize("which", ["device", "session_key", "app"])
@settings(PROPS, max_examples=60)
@given(scn=_privacy_scenarios(), rnd=st.randoms(use_true_random=False))
def test_r19_console_opt_out_from_the_start_emits_nothing_of_the_key(
    which: str, scn: Scenario, rnd: random.Random
) -> None:
    recs = scn.interleave(rnd)
    k0 = scn.keys[0]
    ctl = {"device": k0.device, "session_key": k0.skey, "app": f"{k0.app}/*"}[which]
    hit = {k.skey for k in scn.keys if ctl in (k.device, k.skey, f"{k.app}/*")}
    _, chunks = drive(recs, control={ctl: True})
    tags = {
        eid
        for r in recs
        if r.key is not None and scn.keys[r.key].skey in hit
        for eid, _ in r.events
    }
    for o in flat(chunks):
        assert o.owner not in hit, o.value
        assert not (o.eids & tags), o.value


@PROPS
@given(scn=_privacy_scenarios(), rnd=st.randoms(use_true_random=False), data=st.data())
def test_r19_console_opt_out_mid_stream_only_closes_the_open_session(
    scn: Scenario, rnd: random.Random, data: st.DataObject
) -> None:
    recs = scn.interleave(rnd)
    cut = data.draw(st.integers(0, len(recs)), label="cut")
    k0 = scn.keys[data.draw(st.integers(0, len(scn.keys) - 1), label="key")]
    ctl = data.draw(st.sampled_from((k0.device, k0.skey, f"{k0.app}/*")), label="control")
    hit = {k.skey for k in scn.keys if ctl in (k.device, k.skey, f"{k.app}/*")}
    note(_show(recs))
    _, chunks = drive(recs, control={ctl: True}, control_at=cut)
    before = flat(chunks[:cut])
    after = flat(chunks[cut:])
    started = {o.value["session_uuid"] for o in before if o.topic == SESSIONS}
    tags = {
        eid
        for r in recs[cut:]
        if r.key is not None and scn.keys[r.key].skey in hit
        for eid, _ in r.events
    }
    closes: dict[tuple[str, str], int] = defaultdict(int)
    for o in after:
        assert not (o.eids & tags), o.value
        if o.owner not in hit:
            continue
        # The one thing allowed: the opt_out close of a session announced before the entry.
        if o.topic == SESSIONS:
            ok = o.value["record"] == "session_end" and o.value["end_reason"] in CONTROL_CLOSE
            ok = ok and o.value["session_uuid"] in started
            closes[("rec", o.value["session_uuid"])] += 1
        else:
            ok = is_synth(o, "session_end") and o.value["data"]["session_uuid"] in started
            if ok:
                closes[("ev", o.value["data"]["session_uuid"])] += 1
        assert ok, o.value
    assert all(n == 1 for n in closes.values()), closes


# ------------------------------------------------------------------ (d) R0


def per_key(chunks: list[list[Out]]) -> dict[str | None, dict[str, Any]]:
    """Per session key: what R0 says must not depend on other keys or expiry timing."""
    res: dict[str | None, dict[str, Any]] = defaultdict(
        lambda: {"starts": [], "finals": {}, "records": [], "end_events": {}, "dead": []}
    )
    for o in flat(chunks):
        p = res[o.owner]
        if o.topic == SESSIONS:
            if o.value["record"] == "session_start":
                p["starts"].append(o.value)
            else:
                v = {k: x for k, x in o.value.items() if k != "revision"}
                p["finals"][o.value["session_uuid"]] = v
        elif o.topic == EVENTS:
            if is_synth(o, "session_end"):
                p["end_events"][o.value["data"]["session_uuid"]] = o.value
            else:
                p["records"].append(o.value)
        else:
            v = dict(o.value)
            del v["source"]
            p["dead"].append(v)
    for p in res.values():
        p["finals"] = sorted(p["finals"].values(), key=lambda r: r["session_number"])
    return dict(res)


def _diff(
    a: dict[str | None, dict[str, Any]],
    b: dict[str | None, dict[str, Any]],
    *,
    input_end: bool = False,
) -> None:
    """``input_end``: a key's last session may end as end_of_input in one run and
    by its deadline in the other (§9, R0's exception): with R26 the time a bounded
    input ends at depends on how the keys' records interleave."""
    assert a.keys() == b.keys()
    for k in a:
        for part in ("finals", "starts", "records", "end_events", "dead"):
            x, y = a[k][part], b[k][part]
            if k is None:  # records of no key: their order is the interleaving's
                x, y = sorted(map(codec.dumps, x)), sorted(map(codec.dumps, y))
            if input_end and part == "finals" and x and y and x[-1] != y[-1]:
                reasons = {x[-1]["end_reason"], y[-1]["end_reason"]}
                assert "end_of_input" in reasons and reasons <= {"end_of_input", "timeout", "idle"}
                assert {**x[-1], "end_reason": ""} == {**y[-1], "end_reason": ""}, (k, part)
                x, y = x[:-1], y[:-1]
            assert x == y, (k, part)


@PROPS
@given(
    scn=scenarios(),
    r1=st.randoms(use_true_random=False),
    r2=st.randoms(use_true_random=False),
    data=st.data(),
)
def test_r0_sessions_do_not_depend_on_interleaving_or_expiry_timing(
    scn: Scenario, r1: random.Random, r2: random.Random, data: st.DataObject
) -> None:
    a_recs = scn.interleave(r1)
    b_recs = scn.interleave(r2)
    note("A:\n" + _show(a_recs))
    note("B:\n" + _show(b_recs))
    pattern = data.draw(st.lists(st.booleans(), min_size=len(b_recs), max_size=len(b_recs)))
    _, a = drive(a_recs, expire=True)
    ref = per_key(a)
    _diff(ref, per_key(drive(b_recs, expire=pattern)[1]), input_end=True)
    _diff(ref, per_key(drive(a_recs, expire=False)[1]))
    _diff(ref, per_key(drive(scn.in_key_order(), expire=True)[1]), input_end=True)


# ------------------------------------------------------------------ (e) snapshot/restore


@PROPS
@given(scn=scenarios(), rnd=st.randoms(use_true_random=False), data=st.data())
def test_state_snapshot_restore_continues_byte_identically(
    scn: Scenario, rnd: random.Random, data: st.DataObject
) -> None:
    recs = scn.interleave(rnd)
    n = len(recs)
    expire = data.draw(st.lists(st.booleans(), min_size=n, max_size=n), label="expire")
    cuts = data.draw(st.sets(st.integers(0, n), min_size=1, max_size=3), label="cuts")
    note(_show(recs))
    _, whole = drive(recs, expire=expire)
    for cut in sorted(cuts):
        eng, _ = drive(recs[:cut], expire=expire[:cut], close=False)
        fresh = new_engine()
        for k in list(eng.keys):
            snap = eng.snapshot_key(k)
            assert snap is not None
            fresh.restore_key(k, codec.loads(codec.dumps(snap)))
        fresh.watermark = eng.watermark
        fresh.restore_clock(codec.loads(codec.dumps(eng.clock_state())))
        _, rest = drive(recs[cut:], expire=expire[cut:], engine=fresh, first_offset=cut)
        assert [o.line for o in flat(rest)] == [o.line for o in flat(whole[cut:])], cut
        # The same outputs after every record, in the same order for each key.
        assert len(rest) == len(whole[cut:])
        for got, want in zip(rest, whole[cut:], strict=True):
            assert sorted(o.line for o in got) == sorted(o.line for o in want), cut
            for sk in {o.owner for o in want}:
                assert [o.line for o in got if o.owner == sk] == [
                    o.line for o in want if o.owner == sk
                ], (cut, sk)


# ------------------------------------------------------------------ session records


@PROPS
@given(scn=scenarios(), rnd=st.randoms(use_true_random=False), data=st.data())
def test_r9_r10_r11_r12_r13_session_records_are_well_formed(
    scn: Scenario, rnd: random.Random, data: st.DataObject
) -> None:
    recs = scn.interleave(rnd)
    expire = data.draw(st.lists(st.booleans(), min_size=len(recs), max_size=len(recs)))
    note(_show(recs))
    _, chunks = drive(recs, expire=expire)
    m = model(recs)
    skeys = {k.skey: k.index for k in scn.keys}
    # chunk indices at which each key's opt-out flag turned on
    opt_on: dict[str, list[int]] = defaultdict(list)
    for i, (rk, before, _after, changes) in enumerate(m.flags):
        if rk is not None:
            flag = before
            for f in changes:
                if f and not flag:
                    opt_on[scn.keys[rk].skey].append(i)
                flag = f

    starts: dict[str, dict[str, Any]] = {}
    start_chunk: dict[str, int] = {}
    by_key: dict[str, list[str]] = defaultdict(list)
    revisions: dict[str, int] = defaultdict(int)
    n_fwd: dict[str, int] = defaultdict(int)
    n_screens: dict[str, int] = defaultdict(int)
    lo: dict[str, int] = {}
    hi: dict[str, int] = {}
    for i, chunk in enumerate(chunks):
        for o in chunk:
            v = o.value
            if o.topic == SESSIONS and v["record"] == "session_start":
                u = v["session_uuid"]
                assert u not in starts
                assert v["app"] + "/" + v["device"] in skeys
                key_sessions = by_key[o.owner]  # type: ignore[index]
                assert v["session_number"] == len(key_sessions) + 1  # R11
                assert u == session_uuid(
                    v["app"], v["device"], v["session_number"], v["start_unixtime_ms"]
                )  # R12
                assert v["session_id"] == session_id(u)
                prev = v["previous_session_uuid"]
                if key_sessions:
                    p_chunk = start_chunk[key_sessions[-1]]
                    ons = [j for j in opt_on[o.owner] if p_chunk <= j <= i]  # type: ignore[index]
                    if any(p_chunk < j < i for j in ons):
                        assert prev is None, "R18: previous_session_uuid after opt-out"
                    elif not ons:
                        assert prev == key_sessions[-1], "R11: previous_session_uuid"
                    else:
                        assert prev in (None, key_sessions[-1])
                else:
                    assert prev is None
                key_sessions.append(u)
                starts[u] = v
                start_chunk[u] = i
                lo[u] = hi[u] = v["start_unixtime_ms"]
            elif o.topic == SESSIONS:
                u = v["session_uuid"]
                s = starts[u]  # an end never comes before its start
                for f, x in s.items():  # R13: ids and identity never change
                    if f not in ("record", "start_unixtime_ms"):
                        assert v[f] == x, f
                assert v["revision"] == revisions[u]
                revisions[u] += 1
                assert v["end_reason"] in END_REASONS
                start, end = v["start_unixtime_ms"], v["end_unixtime_ms"]
                assert v["session_duration_ms"] == end - start >= 0  # R9
                assert 0 <= v["foreground_duration_ms"] <= v["session_duration_ms"]
                assert v["event_count"] >= v["screen_view_count"] >= 0
                # R9/R10/R24: the record agrees with the events forwarded with the session
                assert v["event_count"] == n_fwd[u], "R10 event_count"
                assert v["screen_view_count"] == n_screens[u], "R10 screen_view_count"
                assert start == lo[u], "R24 start = earliest attributed event"
                assert end == hi[u], "R9 end = ts of the last forwarded event"
            elif o.topic == EVENTS and not is_synth(o, "session_start"):
                if is_synth(o, "session_end"):
                    d = o.value["data"]
                    u = d["session_uuid"]
                    assert d["session_start_unixtime_ms"] == lo[u]
                    assert d["timestamp_unixtime_ms"] == hi[u]
                    assert d["session_duration_ms"] == hi[u] - lo[u]
                    continue
                for e in forwarded(o):
                    d = e["data"]
                    u = d["session_uuid"]
                    if u is None:
                        assert d["late"] is True and d["event_num"] is None
                        continue
                    assert u in starts, "forwarded with a session not yet announced"
                    assert d["session_id"] == session_id(u)
                    ts = event_ts(o, e)
                    lo[u] = min(lo[u], ts)
                    # R9 (v2): the end is the last forwarded event's ts; before the
                    # first one it is the start, even when a control event started it.
                    hi[u] = ts if n_fwd[u] == 0 else max(hi[u], ts)
                    n_fwd[u] += 1
                    n_screens[u] += e["event_type"] == "screen_view"
                    assert d["event_num"] == n_fwd[u]
                    assert d["session_start_unixtime_ms"] == lo[u]
    # every started session ends (close_all at end of input)
    assert set(revisions) == set(starts)


@PROPS
@given(scn=scenarios(), rnd=st.randoms(use_true_random=False), data=st.data())
def test_r23_r25_session_end_is_emitted_before_anything_of_a_later_session(
    scn: Scenario, rnd: random.Random, data: st.DataObject
) -> None:
    recs = scn.interleave(rnd)
    expire = data.draw(st.lists(st.booleans(), min_size=len(recs), max_size=len(recs)))
    note(_show(recs))
    _, chunks = drive(recs, expire=expire)
    number: dict[str, int] = {}
    ended: dict[str, set[tuple[int, str]]] = defaultdict(set)  # key -> {(number, kind)}
    started: dict[str, int] = defaultdict(int)

    def check(owner: str, n: int, what: str) -> None:
        for earlier in range(1, n):
            for kind in ("record", "event"):
                assert (earlier, kind) in ended[owner], (
                    f"R23: {what} of session {n} of {owner} before the session_end "
                    f"{kind} of session {earlier}"
                )

    for o in flat(chunks):
        if o.owner is None:
            continue
        v = o.value
        if o.topic == SESSIONS:
            u = v["session_uuid"]
            if v["record"] == "session_start":
                number[u] = v["session_number"]
                check(o.owner, number[u], "session_start record")
            else:
                ended[o.owner].add((number[u], "record"))
        elif o.topic == EVENTS:
            if is_synth(o, "session_end"):
                ended[o.owner].add((number[v["data"]["session_uuid"]], "event"))
            elif is_synth(o, "session_start"):
                # emitted just before its start record: it opens the key's next session
                started[o.owner] += 1
                check(o.owner, started[o.owner], "session_start event")
            else:
                # R25: one output batch never mixes sessions
                us = {e["data"]["session_uuid"] for e in forwarded(o)}
                assert len(us) == 1, us
                for u in us:
                    if u is not None:
                        check(o.owner, number[u], "forwarded event")


@PROPS
@given(scn=scenarios(), rnd=st.randoms(use_true_random=False), data=st.data())
def test_r9_r13_sessions_of_a_key_never_overlap(
    scn: Scenario, rnd: random.Random, data: st.DataObject
) -> None:
    recs = scn.interleave(rnd)
    expire = data.draw(st.lists(st.booleans(), min_size=len(recs), max_size=len(recs)))
    note(_show(recs))
    _, chunks = drive(recs, expire=expire)
    for k, p in per_key(chunks).items():
        if k is None:
            continue
        finals = p["finals"]
        announced = {r["session_uuid"]: r["start_unixtime_ms"] for r in p["starts"]}
        assert [r["session_number"] for r in finals] == list(range(1, len(finals) + 1))
        for a, b in itertools.pairwise(finals):
            assert a["end_unixtime_ms"] <= b["start_unixtime_ms"], (k, a, b)
            assert b["start_unixtime_ms"] <= announced[b["session_uuid"]], (k, b)


# ------------------------------------------------------------------ counterexamples
# Minimal inputs found by the properties above; each pins an engine bug.

D = "dev-1"
D2 = "dev-2"


def _ends(res: Any, device: str = D) -> list[tuple[int, int, int, str]]:
    """Final (number, start, end, reason) of a device's sessions, times relative to T0."""
    finals = sorted(
        (r for r in res.final().values() if r["device"] == device),
        key=lambda r: r["session_number"],
    )
    return [
        (
            r["session_number"],
            r["start_unixtime_ms"] - T0,
            r["end_unixtime_ms"] - T0,
            r["end_reason"],
        )
        for r in finals
    ]


def _opt_out_without_ts() -> dict[str, Any]:
    ev = event("opt_out", None, is_opted_out=True)
    ev["data"]["timestamp_unixtime_ms"] = "soon"
    return single(D, ev)


def test_r0_regression_opt_out_without_ts_after_provisional_close() -> None:
    from sessionizer.testing import run

    mine = [batch(D, custom(T0)), _opt_out_without_ts()]
    alone = run(mine, CFG)
    # another key moves W past D's deadline + grace before D's opt_out arrives
    noisy = run([mine[0], batch(D2, custom(T0 + 10 * MIN)), mine[1]], CFG)
    assert _ends(alone) == [(1, 0, 0, "opt_out")]
    assert _ends(noisy) == _ends(alone)  # engine: [(1, 0, 0, "timeout")]


def test_r0_regression_console_opt_out_after_provisional_close() -> None:
    def go(recs: list[dict[str, Any]], control_at: int) -> list[tuple[int, int, int, str]]:
        _, chunks = drive(
            [Rec(0, codec.dumps(r)) for r in recs], control={D: True}, control_at=control_at
        )
        ends = [
            o.value
            for o in flat(chunks)
            if o.topic == SESSIONS and o.value["record"] == "session_end"
        ]
        final = {r["session_uuid"]: r for r in ends if r["device"] == D}
        return [
            (
                r["session_number"],
                r["start_unixtime_ms"] - T0,
                r["end_unixtime_ms"] - T0,
                r["end_reason"],
            )
            for r in final.values()
        ]

    alone = go([batch(D, custom(T0)), batch(D, custom(T0 + SEC))], 1)
    noisy = go(
        [batch(D, custom(T0)), batch(D2, custom(T0 + 10 * MIN)), batch(D, custom(T0 + SEC))], 2
    )
    assert alone == [(1, 0, 0, "opt_out")]
    assert noisy == alone  # engine: [(1, 0, 0, "timeout")]


def test_r19_regression_close_all_of_a_console_opted_out_key() -> None:
    _, chunks = drive([Rec(0, codec.dumps(batch(D, custom(T0))))], control={D: True}, control_at=1)
    ends = [
        o.value for o in flat(chunks) if o.topic == SESSIONS and o.value["record"] == "session_end"
    ]
    assert [r["end_reason"] for r in ends] == ["opt_out"]  # engine: ["end_of_input"]


def test_r9_r24_regression_attribution_makes_sessions_overlap() -> None:
    from sessionizer.testing import run

    res = run(
        [
            batch(
                D,
                launch(T0),
                screen(T0 + 10 * SEC),
                launch(T0 + 20 * SEC),  # relaunch: session 1 is [0 s, 10 s]
                launch(T0 + 30 * SEC),  # relaunch: session 2 is [20 s, 20 s]
                custom(T0 + 5 * SEC),  # late, in [start - timeout, deadline) of session 2
            )
        ],
        CFG,
    )
    # engine: [(1, 0, 10000, relaunch), (2, 5000, 20000, relaunch), (3, 30000, 30000, ...)]
    ends = _ends(res)
    for a, b in itertools.pairwise(ends):
        assert a[2] <= b[1], (a, b)


def test_r9_r18_regression_session_after_opt_in_overlaps_the_previous_one() -> None:
    from sessionizer.testing import opt_out, run

    res = run(
        [
            batch(D, custom(T0), custom(T0 + 10 * SEC)),  # session 1 is [0 s, 10 s]
            batch(
                D,
                opt_out(T0 + 10 * SEC),
                opt_out(T0 + 10 * SEC, False),
                custom(T0 + 5 * SEC),  # starts session 2 at 5 s
            ),
        ],
        CFG,
    )
    # engine: [(1, 0, 10000, "opt_out"), (2, 5000, 5000, "end_of_input")]
    ends = _ends(res)
    for a, b in itertools.pairwise(ends):
        assert a[2] <= b[1], (a, b)


def test_snapshot_regression_expiry_order_after_restore() -> None:
    recs = [
        Rec(0, codec.dumps(batch(D, custom(T0)))),  # D: due T0 + 1 min + grace
        Rec(0, codec.dumps(batch(D, foreground(T0)))),  # D: deadline moves to T0 + 4 min
        Rec(1, codec.dumps(batch(D2, custom(T0 + 1)))),  # D2: due T0 + 1 min + 1 ms + grace
        Rec(2, codec.dumps(batch("dev-3", custom(T0 + 5 * MIN)))),  # W passes both
    ]
    cut = 3
    _, whole = drive(recs, close=False)
    eng, _ = drive(recs[:cut], close=False)
    fresh = new_engine()
    for k in list(eng.keys):
        fresh.restore_key(k, codec.loads(codec.dumps(eng.snapshot_key(k))))
    fresh.watermark = eng.watermark
    _, rest = drive(recs[cut:], engine=fresh, first_offset=cut, close=False)
    # uninterrupted: dev-1 (idle) closes before dev-2 (timeout); restored: dev-2 first
    assert [o.line for o in flat(rest)] == [o.line for o in flat(whole[cut:])]


# ------------------------------------------------------------------ the open-sessions gauge


def _walk_open(eng: Engine) -> int:
    return sum(1 for s in eng.keys.values() if s.open is not None and s.open.status == OPEN)


@PROPS
@given(scn=_privacy_scenarios(), rnd=st.randoms(use_true_random=False), data=st.data())
def test_the_incremental_open_sessions_gauge_equals_a_walk_at_every_step(
    scn: Scenario, rnd: random.Random, data: st.DataObject
) -> None:
    """The worker's gauge (track_dirty) is kept from the changed keys only; after
    any record, expiry, console opt-out, take_dirty or restore it equals a walk."""
    recs = scn.interleave(rnd)
    n = len(recs)
    takes = data.draw(st.lists(st.booleans(), min_size=n, max_size=n), label="take_dirty")
    cut = data.draw(st.integers(0, n), label="restore at")
    control = data.draw(st.sampled_from([None, *[k.device for k in scn.keys]]), label="opt-out")
    eng = Engine(CFG, loads=codec.loads, dumps=codec.dumps, track_dirty=True)

    def check(i: int, e: Engine) -> None:
        assert e.open_sessions() == _walk_open(e), i
        if takes[i]:
            e.take_dirty()
            assert e.open_sessions() == _walk_open(e), i

    ctl = None if control is None else {control: True}
    eng, _ = drive(recs[:cut], engine=eng, control=ctl, control_at=n // 2, close=False, after=check)
    fresh = Engine(CFG, loads=codec.loads, dumps=codec.dumps, track_dirty=True, control=eng.control)
    fresh.restore(((k, eng.snapshot_key(k) or []) for k in list(eng.keys)), eng.watermark)
    assert fresh.open_sessions() == _walk_open(fresh) == _walk_open(eng)
    rest = recs[cut:]

    def check_rest(i: int, e: Engine) -> None:
        check(cut + i, e)

    fresh, _ = drive(rest, engine=fresh, first_offset=cut, close=False, after=check_rest)
    fresh.close_all()
    assert fresh.open_sessions() == _walk_open(fresh) == 0
    fresh.take_dirty()
    assert fresh.open_sessions() == 0


def _fnv1a_utf16le(text: str) -> int:
    """R12's session_id by its definition: byte by byte, 64-bit, read as signed."""
    h = 0xCBF29CE484222325
    for b in text.encode("utf-16-le", "surrogatepass"):
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h - (1 << 64) if h >= 1 << 63 else h


@settings(max_examples=500, deadline=None)
@given(text=st.one_of(st.uuids().map(lambda u: str(u).upper()), st.text(max_size=80)))
def test_r12_session_id_is_fnv1a_of_utf16le_for_any_text(text: str) -> None:
    assert session_id(text) == _fnv1a_utf16le(text)


# Amounts as apps send them: up to 6 decimal places, below 10 million, so that a sum of
# 20 has at most 15 significant digits, which a double always holds.
_amounts = st.builds(
    lambda units, places: Decimal(units).scaleb(-places),
    st.integers(-(10**7), 10**7),
    st.integers(0, 6),
)


@given(amounts=st.lists(_amounts, min_size=1, max_size=20))
def test_r14_a_sum_of_decimals_is_the_nearest_double_to_their_decimal_sum(
    amounts: list[Decimal],
) -> None:
    """Each increment is read as JSON (a double); their sum prints as the decimal sum would."""
    values = [codec.loads(str(a).encode()) for a in amounts]
    total = functools.reduce(attribute_sum, values)
    if all(type(v) is int for v in values):
        assert total == sum(values)
    else:
        assert total == float(sum(amounts)), note(f"{values} -> {total!r}")


# ------------------------------------------------------------------ R26, R27 outliers

DAY = 24 * 60 * MIN
NORMAL_KINDS = ("screen", "custom", "launch", "background", "foreground", "exit")


def _ev(kind: str, ts: int) -> dict[str, Any]:
    make = {
        "screen": screen,
        "custom": custom,
        "launch": launch,
        "background": background,
        "foreground": foreground,
        "exit": exit_,
    }[kind]
    return make(ts)


@st.composite
def outlier_streams(draw: st.DrawFn) -> tuple[list[bytes], list[bytes], set[str]]:
    """A dense clean stream of 8-10 keys (each record carries the partition's time, at
    most grace after the last, and maybe late events), and the same stream with outlier
    keys' records injected: up to two keys far ahead (clocks hours to days ahead, a 'now'
    record), a key 30 days behind. Returns (clean, with outliers, the normal keys)."""
    n = draw(st.integers(8, 10), label="keys")
    devices = [f"dev-{i}" for i in range(n)]
    rounds = draw(st.integers(2, 8), label="rounds")
    t = T0
    clean: list[dict[str, Any]] = []
    for _ in range(rounds):
        for d in draw(st.permutations(devices)):
            t += draw(st.integers(0, GRACE))
            late = draw(
                st.lists(
                    st.tuples(st.sampled_from(NORMAL_KINDS), st.integers(1, 3 * MIN)), max_size=2
                )
            )
            kind = draw(st.sampled_from(NORMAL_KINDS))
            evs = [_ev(k, max(T0, t - back)) for k, back in late] + [_ev(kind, t)]
            clean.append(batch(d, *evs, mpid=None))
    span = t - T0
    outliers: list[dict[str, Any]] = []
    # At most two keys ahead, the 'now' record's included: three make a quorum (R26).
    n_ahead = draw(st.integers(0, 2), label="ahead keys")
    for i in range(n_ahead):
        lead = draw(st.integers(span + 60 * MIN, 30 * DAY), label="lead")
        for at in draw(st.lists(st.integers(0, span), min_size=1, max_size=4)):
            outliers.append(batch(f"ahead-{i}", custom(T0 + at + lead), mpid=None))
    if n_ahead < 2 and draw(st.booleans(), label="now record"):
        stray = batch("stray", custom(0), mpid=None, timestamp_unixtime_ms=NOW)
        del stray["events"][0]["data"]["timestamp_unixtime_ms"]
        outliers.append(stray)
    if draw(st.booleans(), label="behind key"):
        for at in draw(st.lists(st.integers(0, span), min_size=1, max_size=4)):
            outliers.append(batch("behind", screen(T0 + at - 30 * DAY), mpid=None))
    mixed = list(clean)
    for rec in outliers:  # anywhere after the first round, so the keys are heard (R26)
        mixed.insert(draw(st.integers(n, len(mixed)), label="at"), rec)
    keys = {f"{APPS[0]}/{d}" for d in devices}
    return [codec.dumps(r) for r in clean], [codec.dumps(r) for r in mixed], keys


def _by_owner(chunks: list[list[Out]], keys: set[str]) -> dict[str, list[bytes]]:
    out: dict[str, list[bytes]] = defaultdict(list)
    for o in flat(chunks):
        if o.owner in keys:
            out[o.owner].append(o.raw)
    return dict(out)


def _run_raw(values: list[bytes]) -> tuple[Engine, list[list[Out]]]:
    eng = new_engine()
    chunks = []
    for i, v in enumerate(values):
        eng.process_record(v, None, "raw-events", 0, i, None, NOW)
        eng.expire()
        chunks.append(_outs(eng.take_output()))
    eng.close_all()
    chunks.append(_outs(eng.take_output()))
    return eng, chunks


@PROPS
@given(streams=outlier_streams())
def test_r26_r27_outlier_keys_change_nothing_of_the_other_keys(
    streams: tuple[list[bytes], list[bytes], set[str]],
) -> None:
    clean, mixed, keys = streams
    _, a = _run_raw(clean)
    eng, b = _run_raw(mixed)
    # Every output of every other key, in order: sessions, revisions and ids alike.
    assert _by_owner(a, keys) == _by_owner(b, keys)
    assert all(eng.key_state(k) is not None for k in keys)  # nothing forgotten (R27)
