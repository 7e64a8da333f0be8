"""The JSON Schemas of schemas/ against what the engine reads and writes (§1.1, §7).

* every schema is a valid draft 2020-12 schema;
* every record process-file writes for a realistic workload matches its topic's schema;
* every output of hypothesis-generated streams (test_properties' ``scenarios()``) does;
* every input record the engine takes without a dead letter matches raw-event.schema.json,
  and typical structurally rejected records do not.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, note
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from schema_check import (
    SCHEMA_DIR,
    SCHEMA_FILES,
    SchemaMismatch,
    errors,
    topic_kind,
    validate_input,
    validate_output,
    validator,
)
from test_properties import CFG, PROPS, Scenario, scenarios

from sessionizer import codec
from sessionizer.core.model import (
    ALL_DEAD_LETTER_REASONS,
    DEAD_LETTER_REASONS,
    END_REASONS,
    EVENTS,
    SESSIONS,
    TOPIC_NAMES,
)
from sessionizer.integrations import NAMES as INTEGRATIONS
from sessionizer.integrations import translate
from sessionizer.integrations.common import DEAD_LETTER_REASONS as INTEGRATION_REASONS
from sessionizer.integrations.common import REJECTED as INTEGRATION_REJECTED
from sessionizer.integrations.common import UNSENDABLE
from sessionizer.integrations.common import dead_letter as integration_dead_letter
from sessionizer.run.files import process_files
from sessionizer.testing import (
    MIN,
    NOW,
    T0,
    background,
    batch,
    custom,
    event,
    exit_,
    incr_attr,
    launch,
    opt_out,
    run,
    screen,
    session_end,
    session_start,
    set_attr,
    single,
)
from sessionizer.tools.workload import generate

SCHEMAS = sorted(SCHEMA_DIR.glob("*.schema.json"))

# --------------------------------------------------------------------- the schemas


def test_the_four_schemas_exist() -> None:
    # One per topic, and the worker's /sessions answer (tests/test_sessions_view.py).
    http = ["sessions-lookup.schema.json"]
    assert sorted(p.name for p in SCHEMAS) == sorted([*SCHEMA_FILES.values(), *http])


@pytest.mark.parametrize("path", SCHEMAS, ids=lambda p: p.name)
def test_every_schema_is_a_valid_draft_2020_12_schema(path: Path) -> None:
    schema = json.loads(path.read_text(encoding="utf-8"))
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)
    assert schema["$id"].startswith("urn:sessionizer:schema:")
    assert schema["title"] and schema["description"]


def test_enums_match_the_engine() -> None:
    sess = json.loads((SCHEMA_DIR / "session.schema.json").read_text(encoding="utf-8"))
    end = sess["$defs"]["session_end"]["properties"]["end_reason"]["enum"]
    assert end == list(END_REASONS)
    dead = json.loads((SCHEMA_DIR / "dead-letter.schema.json").read_text(encoding="utf-8"))
    # One dead-letters topic: the engine's reasons (§7.3), then the integrations' (§10).
    want = [*ALL_DEAD_LETTER_REASONS, *INTEGRATION_REASONS]
    assert dead["properties"]["reason"]["enum"] == want


def _integration_dead_letters() -> list[dict[str, Any]]:
    """A translation dead letter of every destination (an event whose time came from
    the Kafka timestamp, a session whose device Amplitude cannot take), and what the
    forwarder writes: a refusal with the destination's response, an unsendable record."""
    rec = {**single("dev-1", custom(T0)), "timestamp_unixtime_ms": None}
    rec["data"] = {"event_name": "x", "session_uuid": None}
    out: list[dict[str, Any]] = []
    for name in INTEGRATIONS:
        payloads, dead = translate(name, [(EVENTS, "dev-1", rec)])
        assert payloads == [] and len(dead) == 1, name
        out += dead
    start = {"record": "session_start", "session_uuid": "A" * 8, "session_id": 1, "app": "a",
             "device": "d" * 1100, "mpid": None, "start_unixtime_ms": T0, "session_number": 1,
             "previous_session_uuid": None}  # fmt: skip
    out += translate("amplitude", [(SESSIONS, "A" * 8, start)])[1]
    src = {"topic": "integrations.segment", "partition": 2, "offset": 17, "timestamp": T0}
    out.append(
        integration_dead_letter("segment", INTEGRATION_REJECTED, "HTTP 400", "integrations.segment",
                                b'{"type":"track"}'.decode(), source=src,
                                response={"status": 400, "body": '{"error":"invalid"}'})
    )  # fmt: skip
    out.append(
        integration_dead_letter("ga4", UNSENDABLE, "not a JSON object", "integrations.ga4",
                                "[1]", source=src)
    )  # fmt: skip
    return out


def test_integration_dead_letters_match_the_dead_letter_schema() -> None:
    """Translation and forwarder dead letters go to the dead-letters topic: its schema
    takes them, with ``destination`` and (a refusal only) ``response``."""
    letters = _integration_dead_letters()
    assert {d["reason"] for d in letters} == set(INTEGRATION_REASONS)
    for dl in letters:
        validate_output("dead-letters", dl)
    # Translation dead letters have no source offset; every other field is §7.3's.
    assert letters[0]["source"] == {
        "topic": "sessionized-events", "partition": None, "offset": None, "timestamp": None
    }  # fmt: skip


@pytest.mark.parametrize(
    "change",
    [
        {"destination": None},  # an integration dead letter names its destination
        {"reason": "bad_event"},  # a §7.3 dead letter has no destination, and an offset
        {"reason": "integration_unsendable"},  # a response only with a refusal
        {"response": {"status": 429, "body": ""}},  # 429 is retried, never a dead letter
        {"payload_encoding": "base64"},
    ],
    ids=str,
)
def test_the_dead_letter_schema_keeps_the_two_kinds_apart(change: dict[str, Any]) -> None:
    dl = dict(_integration_dead_letters()[-2])  # the refusal
    assert not errors("dead-letters", dl)
    for k, v in change.items():
        if v is None:
            dl.pop(k)
        else:
            dl[k] = v
    assert errors("dead-letters", dl)


def test_validators_check_formats() -> None:
    for topic in TOPIC_NAMES:
        assert validator(topic).format_checker is not None
    assert validator("sessions") is validator("x-sessions")  # loaded once per schema


# ------------------------------------------------------------------- the helper


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("sessionized-events", "sessionized-events"),
        ("sessions", "sessions"),
        ("dead-letters", "dead-letters"),
        ("raw-events", "raw-events"),
        ("t-1a2b-sessionized-events", "sessionized-events"),
        ("t-1a2b-sessions", "sessions"),
        ("t-1a2b-dead-letters", "dead-letters"),
        ("sessionized_events", "sessionized-events"),
        ("dead_letters", "dead-letters"),
    ],
)
def test_topic_names_map_to_schemas(name: str, kind: str) -> None:
    assert topic_kind(name) == kind


def test_validate_output_raises_with_the_rule_and_the_record() -> None:
    res = run([batch("dev-1", launch(T0), screen(T0 + 1000))])
    end = res.ends()[0]
    validate_output("sessions", end)
    validate_output("t-x-sessions", codec.dumps(end))  # bytes as read from Kafka
    broken = {k: v for k, v in end.items() if k != "revision"}
    broken["end_reason"] = "crashed"
    with pytest.raises(SchemaMismatch) as info:
        validate_output("t-x-sessions", broken)
    msg = str(info.value)
    assert "schemas/session.schema.json" in msg
    assert "'revision' is a required property" in msg
    assert "'crashed' is not one of" in msg
    assert end["session_uuid"] in msg  # the record itself
    with pytest.raises(ValueError, match="no schema for topic"):
        validate_output("opt-out-control", end)
    with pytest.raises(ValueError, match="not an output topic"):
        validate_output("raw-events", end)


# ------------------------------------------------ outputs of a realistic workload


def _check_lines(topic: str, path: Path) -> tuple[int, list[str]]:
    bad: list[str] = []
    n = 0
    with open(path, "rb") as f:
        for i, line in enumerate(f):
            n += 1
            problems = errors(topic, line)
            if problems:
                bad.append(
                    f"{path.name}:{i}: {line.decode()[:600]}\n    " + "\n    ".join(problems)
                )
    return n, bad


@pytest.fixture(scope="module")
def workload_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("workload") / "raw.jsonl"
    with open(path, "wb") as f:
        for rec in generate(5000, devices=300, apps=3, seed=7, bad_rate=0.02, late_rate=0.03):
            f.write(rec + b"\n")
    return path


@pytest.mark.parametrize("keep_open", [False, True], ids=["close_at_end", "keep_open"])
def test_process_file_outputs_match_the_schemas(
    workload_file: Path, tmp_path: Path, keep_open: bool
) -> None:
    _, counts = process_files([str(workload_file)], tmp_path, keep_open=keep_open, now_ms=NOW)
    seen: dict[str, int] = {}
    bad: list[str] = []
    for topic in TOPIC_NAMES:
        n, b = _check_lines(topic, tmp_path / f"{topic}.jsonl")
        seen[topic] = n
        bad.extend(b)
    assert not bad, f"{len(bad)} output records do not match their schema:\n" + "\n".join(bad[:20])
    # The workload exercised every topic, dead letters of several kinds and late data.
    assert seen["sessionized-events"] > 0 and seen["sessions"] > 0
    assert seen["dead-letters"] == counts.records_dead_lettered + counts.events_dead_lettered
    assert sum(1 for r, n in counts.dead_by_reason.items() if n) >= 3
    # §7.3 offline source: the file's name, partition 0, the line number, no timestamp.
    n_lines = len(workload_file.read_bytes().splitlines())
    for line in (tmp_path / "dead-letters.jsonl").read_bytes().splitlines():
        src = json.loads(line)["source"]
        assert src["topic"] == workload_file.name
        assert src["partition"] == 0 and src["timestamp"] is None
        assert 0 <= src["offset"] < n_lines


# ------------------------------------------------- outputs of generated streams


@PROPS
@given(scn=scenarios(), rnd=st.randoms(use_true_random=False), keep_open=st.booleans())
def test_every_output_of_generated_streams_matches_its_schema(
    scn: Scenario, rnd: random.Random, keep_open: bool
) -> None:
    recs = scn.interleave(rnd)
    note("\n".join(repr(r) for r in recs))
    res = run([r.value for r in recs], CFG, keep_open=keep_open)
    for topic, values in (
        ("sessionized-events", res.events),
        ("sessions", res.sessions),
        ("dead-letters", res.dead),
    ):
        for v in values:
            validate_output(topic, v)


# ---------------------------------------------------------------------- inputs
# A record is "accepted" when, alone in a fresh engine, it yields no dead letter and
# none of its events is dropped for an opt-out (R18 drops even malformed events).

# Dead letters a schema cannot foresee: identity (§1.2, not a schema concern), the
# wall-clock bound of timestamps and a missing one (§1.3), and the R14/R15 checks
# that depend on the session's current attributes.
_UNSEEN = {
    ("missing_identity", "no mp_deviceid and no mpid"),
    ("bad_timestamp", "timestamp missing or out of range"),
    ("bad_session_attribute", "too many session attributes"),
    ("bad_session_attribute", "increment of a non-numeric value"),
}


def _alone(value: bytes) -> tuple[bool, list[dict[str, Any]]]:
    res = run([value], CFG)
    c = res.counts
    ok = not res.dead and c.events_opted_out == 0 and c.records_opted_out == 0
    return ok, res.dead


def _as_object(value: bytes) -> Any:
    try:
        return codec.loads(value)
    except codec.JSONDecodeError:
        return None


def _check_input(value: bytes) -> str:
    """Checks one record both ways; returns how it was classified (for coverage)."""
    obj = _as_object(value)
    if type(obj) is not dict:
        return "undecodable"
    accepted, dead = _alone(value)
    problems = errors("raw-events", obj)
    if accepted:
        assert not problems, f"accepted by the engine, rejected by the schema: {value!r}\n" + (
            "\n".join(problems)
        )
        return "accepted"
    if not problems:
        # Valid by the schema: every dead letter is one a schema cannot foresee.
        unseen = [
            (d["reason"], d["detail"]) for d in dead if (d["reason"], d["detail"]) not in _UNSEEN
        ]
        assert not unseen, f"valid by the schema, dead-lettered: {value!r}: {unseen}"
        return "valid, dead-lettered for a reason no schema sees" if dead else "valid, opted out"
    return "rejected by both"


@PROPS
@given(scn=scenarios())
def test_inputs_the_engine_accepts_match_the_raw_event_schema(scn: Scenario) -> None:
    for rec in scn.in_key_order():
        note(repr(rec))
        _check_input(rec.value)


def test_workload_inputs_match_the_raw_event_schema(workload_file: Path) -> None:
    kinds: Counter[str] = Counter()
    for line in workload_file.read_bytes().splitlines():
        kinds[_check_input(line)] += 1
    assert kinds["accepted"] > 100
    assert kinds["rejected by both"] > 0  # bad timestamps and bad attributes


def _rec(ev: dict[str, Any]) -> dict[str, Any]:
    return batch("dev-1", custom(T0), ev)


def _ev(event_type: Any, data: Any) -> dict[str, Any]:
    return {"event_type": event_type, "data": data}


_TS = {"timestamp_unixtime_ms": T0 + 1000}

ACCEPTED = {
    "batch": batch("dev-1", launch(T0), screen(T0 + 1000), custom(T0 + 2000)),
    "empty batch": batch("dev-1"),
    "single event": single("dev-1", custom(T0)),
    "single event, ts at the top": {
        "mpid": 42,
        "event_type": "custom_event",
        "data": {},
        "timestamp_unixtime_ms": T0,
    },
    "mpid only, as a string": batch(None, custom(T0), mpid="8675309"),
    "unknown fields everywhere": {
        **batch("dev-1", {**custom(T0, extra={"a": [1]}), "x-event": 1}),
        "x-batch": {"y": None},
    },
    "integral float ts": batch("dev-1", event("custom_event", float(T0))),
    "no data, batch ts": {"mpid": 1, "events": [{"event_type": "custom_event"}], **_TS},
    "null data, batch ts": {"mpid": 1, "events": [_ev("screen_view", None)], **_TS},
    "unknown transition is activity": _rec(
        event("application_state_transition", T0 + 1, application_transition_type="resumed")
    ),
    "opt_out with an unusable ts": _rec(
        _ev("opt_out", {"is_opted_out": False, "timestamp_unixtime_ms": "x"})
    ),
    "set attribute, deleted false": _rec(
        event("session_attribute_change", T0, session_attribute_name="a", new=None, deleted=False)
    ),
    "increment attribute": _rec(incr_attr(T0, "n", 2.5)),
    "delete attribute": _rec(
        event("session_attribute_change", T0, session_attribute_name="a", deleted=True)
    ),
    "manual end": _rec(session_end(T0 + 1)),
    "unusable batch ts no event relies on": batch(
        "dev-1", custom(T0), opt_out(T0, False), timestamp_unixtime_ms="later"
    ),
    "single event, own ts, unusable top ts": {
        **single("dev-1", custom(T0)),
        "timestamp_unixtime_ms": 5,
    },
}


@pytest.mark.parametrize("rec", ACCEPTED.values(), ids=ACCEPTED.keys())
def test_typical_accepted_inputs_match(rec: dict[str, Any]) -> None:
    value = codec.dumps(rec)
    assert _alone(value)[0], "the engine should accept this record"
    validate_input(rec)


def _attr(**data: Any) -> dict[str, Any]:
    return _rec(_ev("session_attribute_change", {**data, **_TS}))


REJECTED = {
    "events not an array": ({"mpid": 1, "events": {"event_type": "custom_event"}}, "bad_event"),
    "neither events nor event_type": ({"mpid": 1, "data": {}, **_TS}, "bad_event"),
    "event not an object": (_rec("custom_event"), "bad_event"),  # type: ignore[arg-type]
    "event_type not a string": (_rec(_ev(7, _TS)), "bad_event"),
    "event_type missing": (_rec({"data": _TS}), "bad_event"),
    "data not an object": (_rec(_ev("custom_event", [1])), "bad_event"),
    "single event, event_type not a string": (single("dev-1", _ev(["x"], _TS)), "bad_event"),
    "opt_out flag a string": (_rec(opt_out(T0, "yes")), "bad_opt_out"),
    "opt_out flag a number": (_rec(opt_out(T0, 1)), "bad_opt_out"),
    "opt_out flag null": (_rec(opt_out(T0, None)), "bad_opt_out"),
    "opt_out without data": (_rec({"event_type": "opt_out"}), "bad_opt_out"),
    "ts a string": (_rec(_ev("custom_event", {"timestamp_unixtime_ms": str(T0)})), "bad_timestamp"),
    "ts in seconds": (_rec(custom(T0 // 1000)), "bad_timestamp"),
    "ts in microseconds": (_rec(custom(T0 * 1000)), "bad_timestamp"),
    "ts not integral": (
        _rec(_ev("custom_event", {"timestamp_unixtime_ms": T0 + 0.5})),
        "bad_timestamp",
    ),
    "ts null": (_rec(_ev("custom_event", {"timestamp_unixtime_ms": None})), "bad_timestamp"),
    "unusable batch ts an event relies on": (
        batch("dev-1", _ev("custom_event", {}), timestamp_unixtime_ms="later"),
        "bad_timestamp",
    ),
    "single event relying on an unusable top ts": (
        {**single("dev-1", _ev("custom_event", {})), "timestamp_unixtime_ms": T0 / 1000},
        "bad_timestamp",
    ),
    "attribute: two operations": (
        _attr(session_attribute_name="a", new=1, increment=1),
        "bad_session_attribute",
    ),
    "attribute: no operation": (_attr(session_attribute_name="a"), "bad_session_attribute"),
    "attribute: deleted false only": (
        _attr(session_attribute_name="a", deleted=False),
        "bad_session_attribute",
    ),
    "attribute: object value": (
        _attr(session_attribute_name="a", new={"b": 1}),
        "bad_session_attribute",
    ),
    "attribute: array value": (_attr(session_attribute_name="a", new=[1]), "bad_session_attribute"),
    "attribute: increment a string": (
        _attr(session_attribute_name="a", increment="5"),
        "bad_session_attribute",
    ),
    "attribute: increment a bool": (
        _attr(session_attribute_name="a", increment=True),
        "bad_session_attribute",
    ),
    "attribute: no name": (_attr(new=1), "bad_session_attribute"),
    "attribute: name too long": (
        _attr(session_attribute_name="n" * 257, new=1),
        "bad_session_attribute",
    ),
    "attribute: value too long": (
        _attr(session_attribute_name="a", new="v" * 4095),
        "bad_session_attribute",
    ),
}


@pytest.mark.parametrize(("rec", "reason"), REJECTED.values(), ids=REJECTED.keys())
def test_typical_rejected_inputs_do_not_match(rec: dict[str, Any], reason: str) -> None:
    _, dead = _alone(codec.dumps(rec))
    assert [d["reason"] for d in dead] == [reason]
    with pytest.raises(SchemaMismatch):
        validate_input(rec)


def test_typical_accepted_inputs_pass_through_to_valid_outputs() -> None:
    res = run([codec.dumps(r) for r in ACCEPTED.values()], CFG)
    assert not res.dead
    for v in res.events:
        validate_output("sessionized-events", v)


def test_r15_value_length_counts_characters() -> None:
    rec = _attr(session_attribute_name="a", new="é" * 2100)  # 2102 characters as JSON text
    validate_input(rec)
    _, dead = _alone(codec.dumps(rec))
    assert dead == []


def test_no_identity_is_not_a_schema_concern() -> None:
    rec = batch(None, custom(T0), mpid=None)
    _, dead = _alone(codec.dumps(rec))
    assert [d["reason"] for d in dead] == ["missing_identity"]
    validate_input(rec)


def test_a_late_attribute_change_output_matches() -> None:
    # A late attribute change with no session to hold it is forwarded (docs/decisions.md).
    res = run(
        [
            batch("dev-1", custom(T0), opt_out(T0 + 1), opt_out(T0 + 2, False)),
            batch("dev-1", set_attr(T0 - 10 * MIN, "plan", "gold")),
        ],
        CFG,
    )
    late = [e for e in res.forwarded() if e["data"].get("late")]
    assert [e["event_type"] for e in late] == ["session_attribute_change"]
    for v in res.events:
        validate_output("sessionized-events", v)


def test_every_kind_of_output_matches() -> None:
    """One stream with every end reason, every dead-letter reason (base64 too), a
    revision, a split batch, session attributes and a late event."""
    cfg = dataclasses.replace(CFG, max_record_bytes=4096)
    sec = 1000
    recs: list[Any] = [
        batch("dev-h", custom(T0)),  # reopened below: revision 1
        batch("dev-a", launch(T0), set_attr(T0 + 1, "plan", "gold"), incr_attr(T0 + 2, "n", 1)),
        batch("dev-a", background(T0 + 2 * sec)),  # timeout
        batch("dev-b", launch(T0), custom(T0 + sec)),  # idle
        batch("dev-c", launch(T0), screen(T0 + sec), launch(T0 + 5 * sec), exit_(T0 + 6 * sec)),
        batch("dev-d", session_start(T0), custom(T0 + 1), session_end(T0 + 2)),  # manual
        batch("dev-e", custom(T0), opt_out(T0 + 1)),  # opt_out
        single("dev-g", custom(T0 + 10 * MIN)),
        batch("dev-x", custom(T0 + 10 * MIN)),  # with dev-g and dev-y, a quorum (R26)
        batch("dev-y", custom(T0 + 10 * MIN)),  # moves W: dev-h, dev-a, dev-b expire
        batch("dev-h", custom(T0 + 30 * sec)),  # before dev-h's deadline: reopened
        single("dev-g", custom(T0)),  # before start - timeout: late, null session fields
        batch("dev-a", custom(T0 + 11 * MIN)),
        b"{",
        b"\xff\xfe not utf-8",
        b"[1]",
        codec.dumps(batch("dev-z", custom(T0, blob="x" * 5000))),
        b"\xff" * 5000,
        batch(None, custom(T0), mpid=None),
        batch("dev-z", custom(12345)),
        batch("dev-z", _ev(7, _TS)),
        batch("dev-z", opt_out(T0, "yes")),
        batch("dev-z", _ev("session_attribute_change", {"new": 1, **_TS})),
    ]
    res = run(recs, cfg)
    for topic, values in (
        ("sessionized-events", res.events),
        ("sessions", res.sessions),
        ("dead-letters", res.dead),
    ):
        for v in values:
            validate_output(topic, v)
    assert {r["end_reason"] for r in res.ends()} == set(END_REASONS)
    assert {d["reason"] for d in res.dead} == set(DEAD_LETTER_REASONS)
    assert {d["payload_encoding"] for d in res.dead} == {"utf-8", "base64"}
    assert max(r["revision"] for r in res.ends()) >= 1
    assert any(r["session_attributes"] for r in res.ends())
    assert any(e["data"].get("late") for e in res.forwarded())
    # dev-c's batch is split at the relaunch (R25)
    dev_c = [r for r in res.events if "events" in r and r["mp_deviceid"] == "dev-c"]
    assert len(dev_c) == 2


def _outputs() -> dict[str, dict[str, Any]]:
    res = run(
        [
            batch("dev-1", launch(T0), set_attr(T0 + 1, "plan", "gold"), screen(T0 + 2)),
            batch("dev-1", custom(T0 + 10 * MIN)),
            batch("dev-1", custom(T0 - 5 * MIN)),  # late: before every session
            b"{",
        ],
        CFG,
    )
    fwd = [r for r in res.events if "events" in r]
    return {
        "start": res.starts()[0],
        "end": res.ends()[0],
        "synth_start": next(r for r in res.events if r.get("event_type") == "session_start"),
        "synth_end": next(r for r in res.events if r.get("event_type") == "session_end"),
        "batch": next(r for r in fwd if not r["events"][0]["data"].get("late")),
        "late": next(r for r in fwd if r["events"][0]["data"].get("late")),
        "dead": res.dead[0],
    }


def _set(path: str, value: Any) -> Any:
    """A mutation: set (or, with ..., delete) the value at a dotted path."""

    def apply(rec: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = rec
        for p in parents:
            node = node[int(p)] if p.isdigit() else node[p]
        if value is ...:
            del node[last]
        else:
            node[last] = value

    return apply


MUTATIONS = {
    "lower-case session_uuid": ("start", "session_uuid", "4d5f4efc-3de8-559d-b529-f065ab94eba7"),
    "not a uuid": ("start", "previous_session_uuid", "4D5F4EFC-3DE8-559D-B529-F065AB94EBAZ"),
    "session_number 0": ("start", "session_number", 0),
    "session_id beyond int64": ("start", "session_id", 2**63),
    "unknown field in a session record": ("start", "extra", 1),
    "negative revision": ("end", "revision", -1),
    "unknown end_reason": ("end", "end_reason", "crash"),
    "no mpids": ("end", "mpids", ...),
    "object attribute value": ("end", "session_attributes", {"a": {"b": 1}}),
    "start record marked as end": ("start", "record", "session_end"),
    "event_num 0": ("batch", "events.0.data.event_num", 0),
    "missing event_num": ("batch", "events.0.data.event_num", ...),
    "null uuid without late": ("batch", "events.0.data.session_uuid", None),
    "late event with a session_id": ("late", "events.0.data.session_id", 1),
    "late event without late": ("late", "events.0.data.late", ...),
    "empty batch": ("batch", "events", []),
    "forwarded control event": ("batch", "events.0.event_type", "session_end"),
    "forwarded opt_out": ("batch", "events.0.event_type", "opt_out"),
    "synthesized start with an extra field": ("synth_start", "device_info", {}),
    "synthesized start with extra data": ("synth_start", "data.event_num", 1),
    "synthesized end without custom_attributes": ("synth_end", "data.custom_attributes", ...),
    "negative session_duration_ms": ("synth_end", "data.session_duration_ms", -1),
    "unknown dead-letter reason": ("dead", "reason", "oops"),
    "unknown payload encoding": ("dead", "payload_encoding", "latin-1"),
    "base64 payload of a decoded record": ("dead", "reason", "bad_event"),
    "extra source field": ("dead", "source.key", "k"),
}
_TOPIC_OF = {
    "start": "sessions",
    "end": "sessions",
    "synth_start": "sessionized-events",
    "synth_end": "sessionized-events",
    "batch": "sessionized-events",
    "late": "sessionized-events",
    "dead": "dead-letters",
}


@pytest.mark.parametrize(("which", "path", "value"), MUTATIONS.values(), ids=MUTATIONS.keys())
def test_broken_outputs_do_not_match(which: str, path: str, value: Any) -> None:
    outs = _outputs()
    rec = outs[which]
    validate_output(_TOPIC_OF[which], rec)
    if path == "reason" and value == "bad_event":
        rec["payload_encoding"] = "base64"
        rec["payload"] = "ew=="
    _set(path, value)(rec)
    with pytest.raises(SchemaMismatch):
        validate_output(_TOPIC_OF[which], rec)
