"""The engine never raises on input, and a failure of its own loses nothing but that record.

Part A (issue #7): arbitrary JSON values in every field of realistic records,
and byte-level mutations of realistic records, go through process-file's own
path (``files.run``: lines, engine, orjson encoder, files). For each input:
no exception, the §7.4 counts equal what the three output files hold, no
``internal_error`` (that would be a crash the engine caught), and a second run
writes the same bytes.

Part B: a failure injected into the engine on a chosen record (a bug, not the
input) makes that record one ``internal_error`` dead letter; every other output
equals a run without the record, and the key's state is as before the record.

``FUZZ_EXAMPLES`` scales the number of examples (default: a few thousand in
all, well under a minute); ``bench/fuzz.py`` runs millions.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, event, example, given, note, settings
from hypothesis import strategies as st

from sessionizer import codec
from sessionizer.core.config import EngineConfig
from sessionizer.core.engine import MAX_DEPTH, Engine
from sessionizer.core.model import DEAD_LETTERS, EVENTS, INTERNAL_ERROR, SESSIONS, Counts
from sessionizer.run.files import process_files
from sessionizer.testing import NOW, T0, source_modules
from sessionizer.testing.fuzz import (
    APP_KEYS,
    BATCH_KEYS,
    DATA_KEYS,
    EVENT_KEYS,
    SPECIAL,
    mutate_bytes,
    nested,
)
from sessionizer.tools import workload

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "1000"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# Short timeouts: sessions open and close within the few records of an example.
CFG = EngineConfig(timeout_ms=60_000, grace_ms=5_000, max_session_attributes=5)


@cache
def corpus() -> tuple[bytes, ...]:
    """Realistic records: every event kind, attributes, opt-outs, late batches, a few bad."""
    return tuple(
        workload.generate(
            4000, devices=12, apps=2, seed=7, start_ms=T0, bad_rate=0.02, late_rate=0.05
        )
    )


# ------------------------------------------------------------------ the path


def process(lines: Sequence[bytes]) -> tuple[Counts, dict[str, bytes]]:
    """``lines`` as one JSONL file through process-file's path; the counts and the files."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp, "in.jsonl")
        src.write_bytes(b"".join(line + b"\n" for line in lines))
        out = Path(tmp, "out")
        _, counts = process_files([str(src)], out, CFG, now_ms=NOW)
        files = {p.stem: p.read_bytes() for p in out.iterdir()}
    return counts, files


def records_of(lines: Sequence[bytes]) -> int:
    """Records process-file reads from these lines (a mutation may add a newline)."""
    text = b"".join(line + b"\n" for line in lines)
    n = 0
    for line in text.split(b"\n"):
        if line.endswith(b"\r"):
            line = line[:-1]
        n += bool(line)
    return n


def check(lines: Sequence[bytes]) -> None:
    """No exception; the counts are what the outputs hold; the same bytes twice."""
    counts, files = process(lines)
    c = counts
    assert c.records_in == records_of(lines)
    assert c.records_internal_error == 0 and c.dead_by_reason[INTERNAL_ERROR] == 0, files.get(
        "dead-letters"
    )
    assert c.balanced(), c.as_dict()

    dead = [orjson.loads(x) for x in files["dead-letters"].splitlines()]
    sessions = [orjson.loads(x) for x in files["sessions"].splitlines()]
    events = [orjson.loads(x) for x in files["sessionized-events"].splitlines()]
    assert len(dead) == c.records_dead_lettered + c.events_dead_lettered
    assert Counter(d["reason"] for d in dead) == +Counter(c.dead_by_reason)
    for d in dead:
        if d["payload_encoding"] == "base64":
            assert d["reason"] in ("invalid_json", "too_large")

    starts = [s for s in sessions if s["record"] == "session_start"]
    ends = [s for s in sessions if s["record"] == "session_end"]
    assert len(starts) == c.sessions_started
    assert Counter(s["end_reason"] for s in ends if s["revision"] == 0) == +Counter(
        c.sessions_ended
    )
    assert sum(s["revision"] > 0 for s in ends) == c.sessions_revised

    forwarded = late = synth_start = synth_end = 0
    for v in events:
        evs = v.get("events")
        if type(evs) is list:  # a batch; anything else is a single event
            for e in evs:
                forwarded += 1
                late += e["data"].get("late") is True
        elif v["event_type"] == "session_start":
            synth_start += 1
        elif v["event_type"] == "session_end":
            synth_end += 1
        else:
            forwarded += 1
            late += v["data"].get("late") is True
    assert forwarded == c.events_forwarded
    assert late == c.events_late
    assert (synth_start, synth_end) == (len(starts), len(ends))

    _, again = process(lines)
    assert again == files, "two runs of the same input wrote different bytes"


# ------------------------------------------------------------------ (1) values


_NUMBERS = [x for x in SPECIAL if type(x) in (int, float)] + [True, None]


def _attr_times(evs: list[Any]) -> list[Any]:
    datas = [e.get("data") for e in evs if isinstance(e, dict)]
    ts = [d.get("timestamp_unixtime_ms") for d in datas if isinstance(d, dict)]
    ts = [t for t in ts if isinstance(t, int)]
    return ts or [T0]


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),  # inf and nan included: JSON text "Infinity"/"NaN", which orjson refuses
    st.text(max_size=12),
    st.text(st.characters(categories=["Cs", "Lo", "So", "Cc"]), max_size=6),
    st.sampled_from(SPECIAL),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=10,
)
# Nesting deeper than Python's json (or orjson's writer) handles, as JSON text.
DEEP = "\x00deep\x00"


@st.composite
def deep_text(draw: st.DrawFn) -> str:
    depth = draw(
        st.one_of(
            st.integers(1, 8),
            st.integers(MAX_DEPTH - 4, MAX_DEPTH + 4),
            st.integers(250, 260),  # around orjson's writing limit
            st.integers(1000, 1030),  # around orjson's reading limit
        )
    )
    shape = draw(st.sampled_from(["[", "{", "mixed"]))
    return nested(depth, shape, draw(st.sampled_from(["1", '"x"', "null", "[]", "{}"])))


def _encode(obj: Any, ascii_only: bool, deep: str | None) -> bytes:
    text = json.dumps(obj, ensure_ascii=ascii_only, allow_nan=True)
    if deep is not None:
        text = text.replace(json.dumps(DEEP, ensure_ascii=ascii_only), deep, 1)
    return text.encode("utf-8", "surrogatepass")


@st.composite
def mutated_records(draw: st.DrawFn) -> list[bytes]:
    recs = corpus()
    start = draw(st.integers(0, len(recs) - 8))
    lines = list(recs[start : start + draw(st.integers(1, 8))])
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(lines) - 1))
        try:
            rec = orjson.loads(lines[i])
        except orjson.JSONDecodeError:
            continue  # one of the corpus' bad records: mutate another
        if not isinstance(rec, dict):
            continue
        if draw(st.booleans()) and isinstance(rec.get("events"), list) and rec["events"]:
            # a single-event record: the event with the batch fields at its top level
            ev = rec.pop("events")[0]
            rec.update(ev if isinstance(ev, dict) else {})
        deep = draw(deep_text()) if draw(st.integers(0, 9)) == 0 else None
        value = DEEP if deep is not None else draw(values)
        where = draw(
            st.sampled_from(["batch", "app", "event", "data", "event_whole", "whole", "attr"])
        )
        evs = rec.get("events")
        ev = draw(st.sampled_from(evs)) if isinstance(evs, list) and evs else rec
        if where == "attr" and isinstance(evs, list):
            # Attribute changes on names the corpus uses: sums, overflows, odd values.
            data = {"timestamp_unixtime_ms": draw(st.sampled_from(_attr_times(evs)))}
            data["session_attribute_name"] = draw(
                st.sampled_from(["cart_items", "CART_ITEMS", "n"])
            )
            for op in draw(st.lists(st.sampled_from(["new", "increment", "deleted"]), max_size=2)):
                data[op] = draw(st.one_of(st.sampled_from(_NUMBERS), values))
            evs.insert(
                draw(st.integers(0, len(evs))),
                {"event_type": "session_attribute_change", "data": data},
            )
        elif where == "batch":
            rec[draw(st.sampled_from(BATCH_KEYS))] = value
        elif where == "app":
            info = rec.get("application_info")
            if isinstance(info, dict):
                info[draw(st.sampled_from(APP_KEYS))] = value
        elif where == "event" and isinstance(ev, dict):
            ev[draw(st.sampled_from(EVENT_KEYS))] = value
        elif where == "data" and isinstance(ev, dict) and isinstance(ev.get("data"), dict):
            ev["data"][draw(st.sampled_from(DATA_KEYS))] = value
        elif where == "event_whole" and isinstance(evs, list) and evs:
            evs[draw(st.integers(0, len(evs) - 1))] = value
        elif where == "whole":
            rec = value
        lines[i] = _encode(rec, draw(st.booleans()), deep)
    return lines


# Found in CI: an input event whose data already says "late": true (the engine's
# own output field) came out claiming to be late, with a session.
_INPUT_SAYS_LATE = (
    b'{"mpid": 1531022600948381365, "mp_deviceid": "a170b338-3926-4059-f28c-105d1fb17c23",'
    b' "timestamp_unixtime_ms": 1767227993487, "application_info": {"package": "com.example.shop"},'
    b' "event_type": "application_state_transition", "data": {"application_transition_type":'
    b' "application_initialized", "timestamp_unixtime_ms": 1767227987683, "late": true}}'
)


@FUZZ
@given(lines=mutated_records())
@example(lines=[_INPUT_SAYS_LATE])
def test_a_any_json_value_in_any_field_never_raises_and_counts_hold(lines: list[bytes]) -> None:
    note(repr(lines))
    check(lines)


# ------------------------------------------------------------------ (2) bytes


def mutate_lines(rnd: random.Random, lines: list[bytes]) -> list[bytes]:
    """One to three byte-level changes (``mutate_bytes``) of the records."""
    out = list(lines)
    for _ in range(rnd.randint(1, 3)):
        i = rnd.randrange(len(out))
        out[i] = mutate_bytes(rnd, out[i], corpus())[1]
    return out


@st.composite
def mutated_bytes(draw: st.DrawFn) -> list[bytes]:
    recs = corpus()
    start = draw(st.integers(0, len(recs) - 8))
    lines = list(recs[start : start + draw(st.integers(1, 8))])
    return mutate_lines(random.Random(draw(st.integers(0, 2**32))), lines)


@FUZZ
@given(lines=mutated_bytes())
def test_a_byte_mutations_of_realistic_records_never_raise_and_counts_hold(
    lines: list[bytes],
) -> None:
    note(repr(lines))
    check(lines)


# ------------------------------------------------------------------ known crashes


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param({"application_transition_type": [1]}, id="transition-type-list"),
        pytest.param({"application_transition_type": {}}, id="transition-type-object"),
        pytest.param({"application_transition_type": 1.5}, id="transition-type-number"),
    ],
)
def test_a_regression_unhashable_transition_type_is_a_plain_event(bad: dict[str, Any]) -> None:
    ev = {"event_type": "application_state_transition", "data": {"timestamp_unixtime_ms": T0}}
    ev["data"].update(bad)
    rec = {"events": [ev], "mp_deviceid": "d1"}
    counts, _ = process([orjson.dumps(rec)])
    assert counts.events_forwarded == 1 and counts.records_internal_error == 0
    check([orjson.dumps(rec)])


def test_a_regression_attribute_sum_past_64_bits_is_a_dead_letter() -> None:
    def attr(ts: int, **kw: Any) -> dict[str, Any]:
        data = {"timestamp_unixtime_ms": ts, "session_attribute_name": "n", **kw}
        return {"event_type": "session_attribute_change", "data": data}

    rec = {"events": [attr(T0, new=2**63), attr(T0 + 1, increment=2**63)], "mp_deviceid": "d1"}
    counts, files = process([orjson.dumps(rec)])
    assert counts.dead_by_reason["bad_session_attribute"] == 1
    assert b'"n":9223372036854775808' in files["sessions"]
    check([orjson.dumps(rec)])


@pytest.mark.parametrize("depth", [MAX_DEPTH - 4, MAX_DEPTH - 3, 300, 1020])
def test_a_regression_deep_nesting_in_one_event_dead_letters_that_event_only(depth: int) -> None:
    deep = "[" * depth + "]" * depth
    good = f'{{"event_type":"custom_event","data":{{"timestamp_unixtime_ms":{T0}}}}}'
    bad = f'{{"event_type":"custom_event","data":{{"timestamp_unixtime_ms":{T0},"x":{deep}}}}}'
    line = f'{{"mp_deviceid":"d1","events":[{good},{bad}]}}'.encode()
    counts, _ = process([line])
    too_deep = depth + 4 > MAX_DEPTH  # the record, events, event and data hold the value
    assert counts.events_forwarded == (1 if too_deep else 2)
    assert counts.dead_by_reason["bad_event"] == too_deep
    check([line])
    # Too deep in a batch field: the whole record.
    line = f'{{"mp_deviceid":"d1","context":{deep},"events":[{good}]}}'.encode()
    counts, _ = process([line])
    assert counts.records_dead_lettered == (depth + 1 > MAX_DEPTH)
    check([line])


def test_a_regression_tombstone_and_non_bytes_values_are_dead_letters() -> None:
    eng = Engine(CFG, loads=codec.loads, dumps=codec.dumps)
    for i, value in enumerate([None, bytearray(b"{}"), memoryview(b"[1]"), "{}"]):
        eng.process_record(value, None, "t", 0, i, None, NOW)  # type: ignore[arg-type]
    assert eng.counts.records_dead_lettered == 4 and eng.counts.records_internal_error == 0
    for _t, _k, v in eng.take_output():
        codec.dumps(v)


# ------------------------------------------------------------------ (B) internal errors

# Injection replaces the engine's functions: a compiled engine (sessionizer/_native.py)
# has none to replace, so part B runs an interpreted copy of the same source.
_interpreted = source_modules()
engine_mod = _interpreted["sessionizer.core.engine"]
ioffline = _interpreted["sessionizer.run.files"]
IEngine = engine_mod.Engine


class Injected(RuntimeError):
    pass


# Where a bug is injected: methods a record runs through, early and late.
POINTS: dict[str, tuple[Any, str]] = {
    "event": (engine_mod._Record, "event"),  # the slow path, per event
    "feed": (engine_mod._Record, "feed"),  # the fast path's first change
    "flush": (engine_mod._Record, "flush"),  # output parts: late in a record
    "start": (IEngine, "_emit_start"),  # a session started
    "end": (IEngine, "_emit_end"),  # a session ended inside a record
    "dead": (engine_mod._Record, "dead"),  # a bad event of a batch
    "set_attr": (engine_mod, "_set_attr"),
}


@contextlib.contextmanager
def injected(point: str, offset: int, nth: int) -> Iterator[list[int]]:
    """Makes ``point`` raise on its ``nth`` call while the record at ``offset`` runs."""
    owner, name = POINTS[point]
    real = getattr(owner, name)
    real_process = IEngine.process_record
    current = [-1]
    calls = [0]
    fired: list[int] = []

    def process_record(self: IEngine, value: bytes, key: Any, topic: str, partition: int,
                       off: int, *rest: Any) -> None:  # fmt: skip
        current[0] = off
        calls[0] = 0
        try:
            real_process(self, value, key, topic, partition, off, *rest)
        finally:
            current[0] = -1

    def wrapper(*args: Any, **kw: Any) -> Any:
        if current[0] == offset:
            calls[0] += 1
            if calls[0] == nth:
                fired.append(offset)
                raise Injected(f"injected into {point}")
        return real(*args, **kw)

    setattr(owner, name, wrapper)
    IEngine.process_record = process_record  # type: ignore[method-assign]
    try:
        yield fired
    finally:
        setattr(owner, name, real)
        IEngine.process_record = real_process  # type: ignore[method-assign]


def drive(
    lines: Sequence[bytes], skip: int = -1, track_dirty: bool = False, **kw: Any
) -> tuple[IEngine, dict[int, list[bytes]]]:
    """process-file's loop with explicit offsets; the record at ``skip`` is left out."""
    eng = IEngine(CFG, loads=codec.loads, dumps=codec.dumps, track_dirty=track_dirty, **kw)
    out: dict[int, list[bytes]] = {EVENTS: [], SESSIONS: [], DEAD_LETTERS: []}
    for off, value in enumerate(lines):
        if off != skip:
            eng.process_record(value, None, "in.jsonl", 0, off, None, NOW)
        if eng.heap and eng.heap[0][0] <= eng.watermark:
            eng.expire()
        for topic, _key, v in eng.take_output():
            out[topic].append(codec.dumps(v))
    eng.close_all()
    for topic, _key, v in eng.take_output():
        out[topic].append(codec.dumps(v))
    return eng, out


@settings(FUZZ, max_examples=max(20, EXAMPLES // 5))
@given(
    start=st.integers(0, 3000),
    n=st.integers(1, 60),
    data=st.data(),
    point=st.sampled_from(sorted(POINTS)),
    nth=st.sampled_from([1, 1, 1, 2, 3]),
)
def test_b_a_failing_record_is_an_internal_error_and_changes_nothing_else(
    start: int, n: int, data: st.DataObject, point: str, nth: int
) -> None:
    recs = corpus()
    start = min(start, len(recs) - n)
    lines = recs[start : start + n]
    k = data.draw(st.integers(0, len(lines) - 1), label="poisoned record")
    reports: list[tuple[BaseException, Any]] = []
    with injected(point, k, nth) as fired:
        eng, out = drive(lines, on_internal_error=lambda e, src: reports.append((e, src)))
    _, full = drive(lines)
    event(f"fired: {bool(fired)}")
    if not fired:  # the record never reached the point: nothing happened
        assert out == full and not reports
        return
    ref_eng, ref = drive(lines, skip=k)
    # The poisoned record: one internal_error dead letter, its source, its bytes.
    internal = [d for d in out[DEAD_LETTERS] if b'"reason":"internal_error"' in d]
    ref_c, c = ref_eng.counts, eng.counts
    if internal:
        (dl,) = internal
        d = orjson.loads(dl)
        assert d["detail"] == f"Injected: injected into {point}"
        assert d["source"] == {"topic": "in.jsonl", "partition": 0, "offset": k, "timestamp": None}
        assert d["payload"] == lines[k].decode("utf-8")
        assert c.records_dead_lettered == ref_c.records_dead_lettered + 1
    else:  # an opted-out key: counted, never output (R18)
        assert c.records_opted_out == ref_c.records_opted_out + 1
    # Everything else is exactly a run without the record.
    assert [d for d in out[DEAD_LETTERS] if d not in internal] == ref[DEAD_LETTERS]
    assert out[EVENTS] == ref[EVENTS]
    assert out[SESSIONS] == ref[SESSIONS]
    assert c.records_internal_error == 1 and c.records_in == ref_c.records_in + 1
    assert c.balanced()
    same = c.as_dict()
    for name in ("records_in", "records_dead_lettered", "records_opted_out"):
        same.pop(name)
    same.pop("records_internal_error")
    same["dead_letters"].pop(INTERNAL_ERROR)
    expected = ref_c.as_dict()
    for name in ("records_in", "records_dead_lettered", "records_opted_out"):
        expected.pop(name)
    expected.pop("records_internal_error")
    expected["dead_letters"].pop(INTERNAL_ERROR)
    assert same == expected
    assert eng.watermark == ref_eng.watermark
    assert {k: v.snapshot() for k, v in eng.keys.items()} == {
        k: v.snapshot() for k, v in ref_eng.keys.items()
    }
    ((exc, src),) = reports
    assert isinstance(exc, Injected) and src == (None, "in.jsonl", 0, k, None)


def test_b_key_state_and_dirty_set_are_as_before_the_record() -> None:
    """Injected after the record changed its key: snapshot, dirty set and index unchanged."""
    from sessionizer.testing import batch, custom, launch, opt_out, screen, set_attr

    first = codec.dumps(batch("d1", launch(T0), screen(T0 + 1000)))
    second = codec.dumps(
        batch("d1", screen(T0 + 2000), set_attr(T0 + 3000, "a", 1), custom(T0 + 4000))
    )
    new_key = codec.dumps(batch("d2", launch(T0 + 5000)))
    eng = IEngine(CFG, loads=codec.loads, dumps=codec.dumps, track_dirty=True)
    eng.process_record(first, None, "t", 0, 0, None, NOW, 0)
    eng.take_dirty()

    def snapshot() -> Any:  # as the worker stores it: a copy, not the live lists
        return codec.loads(codec.dumps(eng.snapshot_key("com.example.shop/d1")))

    before = snapshot()
    heap, out, watermark = list(eng.heap), eng.take_output(), eng.watermark
    assert out
    for point in ("flush", "set_attr", "feed"):
        with injected(point, 1, 1) as fired:
            eng.process_record(second, None, "t", 0, 1, None, NOW, 1)
        assert fired == [1]
        assert snapshot() == before
        assert eng.take_dirty() == set()  # nothing to write: the state did not change
        assert eng.watermark == watermark and eng.heap == heap
        (dl,) = eng.take_output()
        assert dl[0] == DEAD_LETTERS and dl[2]["reason"] == "internal_error"
    with injected("start", 2, 1) as fired:
        eng.process_record(new_key, None, "t", 0, 2, None, NOW, 2)
    assert fired == [2] and "com.example.shop/d2" not in eng.keys
    assert eng.take_dirty() == set()
    assert [o[2]["reason"] for o in eng.take_output()] == ["internal_error"]
    # A new mpid by the fast path (R7 mpids), and an opt-out that marked the key
    # dirty, both before the failure: undone too.
    login = codec.dumps(batch("d1", screen(T0 + 2000), mpid=43))
    opting = codec.dumps(batch("d1", screen(T0 + 2000), opt_out(T0 + 3000), screen(T0 + 4000)))
    for value, nth in ((login, 1), (opting, 2)):
        with injected("flush", 3, nth) as fired:
            eng.process_record(value, None, "t", 0, 3, None, NOW, 3)
        assert fired == [3]
        assert snapshot() == before
        assert eng.take_dirty() == set()
        assert [o[2]["reason"] for o in eng.take_output()] == ["internal_error"]
    # The key then goes on as if the failed records never arrived.
    eng.process_record(second, None, "t", 0, 4, None, NOW, 4)
    assert snapshot() != before
    assert eng.counts.records_internal_error == 6 and eng.counts.balanced()


def test_b_late_event_into_the_last_closed_session_is_undone() -> None:
    """R24 changes the last closed session (a copy of it): a failure after that
    leaves the session as it was, and the next record gets the same result."""
    from sessionizer.testing import batch, custom, exit_, launch, screen, set_attr

    closed = codec.dumps(batch("d1", launch(T0), screen(T0 + 1000), exit_(T0 + 2000)))
    reopen = codec.dumps(batch("d1", launch(T0 + 10_000)))
    late = codec.dumps(batch("d1", custom(T0 + 1500), set_attr(T0 + 1600, "a", 1)))
    lines = [closed, reopen, late, late]
    for point, nth in (("flush", 1), ("feed", 1), ("set_attr", 1), ("end", 1)):
        with injected(point, 2, nth) as fired:
            eng, out = drive(lines)
        assert fired == [2], point
        ref_eng, ref = drive(lines, skip=2)
        assert out[SESSIONS] == ref[SESSIONS] and out[EVENTS] == ref[EVENTS]
        assert {k: v.snapshot() for k, v in eng.keys.items()} == {
            k: v.snapshot() for k, v in ref_eng.keys.items()
        }


def test_b_opted_out_key_failure_is_counted_not_dead_lettered() -> None:
    from sessionizer.testing import batch, opt_out, screen

    eng = IEngine(CFG, loads=codec.loads, dumps=codec.dumps)
    eng.process_record(
        codec.dumps(batch("d1", screen(T0), opt_out(T0 + 1))), None, "t", 0, 0, None, NOW
    )
    eng.take_output()
    # A malformed record of the opted-out key, and a bug where it is dropped.
    real = IEngine._bad_record

    def boom(self: IEngine, *a: Any) -> None:
        raise Injected("bad record")

    IEngine._bad_record = boom  # type: ignore[method-assign]
    try:
        malformed = {"mp_deviceid": "d1", "application_info": {"package": "com.example.shop"}}
        eng.process_record(codec.dumps(malformed), None, "t", 0, 1, None, NOW)
    finally:
        IEngine._bad_record = real  # type: ignore[method-assign]
    assert eng.take_output() == []  # R18: not even a dead letter
    assert eng.counts.records_internal_error == 1 and eng.counts.records_opted_out == 1


def test_b_process_file_survives_and_counts_an_internal_error(tmp_path: Path) -> None:
    lines = corpus()[:200]
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"".join(line + b"\n" for line in lines))
    with injected("flush", 57, 1) as fired:
        _, counts = ioffline.process_files([str(src)], tmp_path / "out", CFG, now_ms=NOW)
    assert fired == [57]
    assert counts.records_internal_error == 1 and counts.dead_by_reason[INTERNAL_ERROR] == 1
    assert counts.as_dict()["records_internal_error"] == 1
    dead = (tmp_path / "out" / "dead-letters.jsonl").read_bytes().splitlines()
    (d,) = [orjson.loads(x) for x in dead if b"internal_error" in x]
    assert d["source"]["offset"] == 57 and d["detail"].startswith("Injected:")


def test_b_callback_failure_does_not_escape() -> None:
    def callback(exc: Exception, src: Any) -> None:
        raise ValueError("the report failed")

    lines = corpus()[:30]
    with injected("flush", 3, 1) as fired:
        eng, _ = drive(lines, on_internal_error=callback)
    assert fired == [3] and eng.counts.records_internal_error == 1


def test_make_fuzz_runs_the_loop_of_process_file() -> None:
    """`make fuzz` itself (small): it drives the engine as process-file does, and reports
    no exception; it once fell behind a change of the driver and failed on every record."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, str(root / "bench" / "fuzz.py"), "--records", "3000", "--corpus", "2000"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("FUZZ "))
    report = json.loads(line[5:])
    assert report["records"] == 3000
    assert report["exceptions"] == 0 and report["balanced"]
