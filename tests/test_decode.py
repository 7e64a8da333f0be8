"""§1 decoding and §7.3 dead letters: every rejection has its reason code."""

from __future__ import annotations

import base64
from typing import Any

from sessionizer import codec
from sessionizer.core.config import EngineConfig
from sessionizer.core.engine import Engine
from sessionizer.testing import (
    NOW,
    SEC,
    T0,
    batch,
    collect,
    custom,
    event,
    launch,
    run,
    screen,
    single,
)

D = "dev-abc"


def reasons(res: Any) -> list[str]:
    return [d["reason"] for d in res.dead]


def test_whole_record_rejections() -> None:
    res = run(
        [
            b"{oops",
            b"[1, 2]",
            {"events": [custom(T0)]},  # no device, no mpid
            {"mp_deviceid": D},  # neither events nor event_type
            {"mp_deviceid": D, "events": {"not": "a list"}},
        ]
    )
    assert reasons(res) == [
        "invalid_json",
        "not_an_object",
        "missing_identity",
        "bad_event",
        "bad_event",
    ]
    assert res.counts.records_dead_lettered == 5 and res.counts.events_in == 0
    first = res.dead[0]
    assert first["payload"] == "{oops" and first["payload_encoding"] == "utf-8"
    assert first["source"] == {"topic": "test", "partition": 0, "offset": 0, "timestamp": None}


def test_too_large_and_non_utf8_payload_is_base64() -> None:
    big = codec.dumps(batch(D, custom(T0, blob="x" * 2000)))
    res = run([big, b"\xff\xfe{"], EngineConfig(max_record_bytes=1000))
    assert reasons(res) == ["too_large", "invalid_json"]
    assert res.dead[1]["payload_encoding"] == "base64"
    assert base64.b64decode(res.dead[1]["payload"]) == b"\xff\xfe{"


def test_bad_event_does_not_spoil_the_batch() -> None:
    res = run(
        [
            batch(
                D,
                launch(T0),
                "not an object",  # type: ignore[arg-type]
                {"event_type": 7, "data": {}},
                {"event_type": "custom_event", "data": []},
                custom(T0 + SEC),
            )
        ]
    )
    assert reasons(res) == ["bad_event"] * 3
    assert len(res.forwarded()) == 2
    # The dead letter carries the bad event with its batch identity.
    payload = codec.loads(res.dead[1]["payload"])
    assert payload["mp_deviceid"] == D and payload["event_type"] == 7
    assert res.counts.balanced()


def test_bad_timestamps() -> None:
    res = run(
        [
            batch(
                D,
                custom(None),  # no ts anywhere
                custom(946_684_799_999),  # before 2000
                custom(NOW + 25 * 3600 * SEC),  # beyond the future skew
                custom("1767225600000"),  # type: ignore[arg-type]
                custom(True),  # type: ignore[arg-type]
                custom(T0 + 0.5),  # type: ignore[arg-type]
                custom(float(T0)),  # integral float is fine
            )
        ]
    )
    assert reasons(res) == ["bad_timestamp"] * 6
    assert len(res.forwarded()) == 1


def test_timestamp_falls_back_to_batch_then_record_timestamp() -> None:
    res = run([batch(D, custom(None), timestamp_unixtime_ms=T0 + 7)])
    assert res.starts()[0]["start_unixtime_ms"] == T0 + 7
    eng = Engine(EngineConfig(), loads=codec.loads, dumps=codec.dumps)
    eng.process_record(codec.dumps(batch(D, custom(None))), b"k", "raw", 3, 9, T0 + 9, NOW)
    eng.close_all()
    out = collect(eng, eng.take_output())
    assert out.starts()[0]["start_unixtime_ms"] == T0 + 9


def test_identity_rules() -> None:
    res = run(
        [
            batch(None, custom(T0), mpid=99, app=None, api_key="key-1"),
            batch(None, custom(T0), mpid="u-7", app=None),
            batch("", custom(T0), mpid=5, app=None),
            {
                "mp_deviceid": "d-9",
                "application_info": {"application_name": "Shop"},
                "events": [custom(T0)],
            },
        ]
    )
    got = [(s["app"], s["device"]) for s in res.starts()]
    assert got == [("key-1", "99"), ("default", "u-7"), ("default", "5"), ("Shop", "d-9")]


def test_single_event_in_single_event_out_with_unknown_fields_preserved() -> None:
    ev = single(D, custom(T0, extra={"deep": [1, 2]}), x_vendor="keep-me")
    res = run([ev])
    (out,) = [e for e in res.events if e.get("event_type") == "custom_event"]
    assert out["x_vendor"] == "keep-me" and "events" not in out
    assert out["data"]["extra"] == {"deep": [1, 2]}
    assert out["data"]["event_num"] == 1


def test_unknown_event_types_are_activity_and_unknown_transitions_too() -> None:
    res = run(
        [
            batch(
                D,
                event("commerce_event", T0),
                event("brand_new_type", T0 + 1),
                event(
                    "application_state_transition",
                    T0 + 2,
                    application_transition_type="application_unknown",
                ),
            )
        ]
    )
    (end,) = res.ends()
    assert end["event_count"] == 3 and res.dead == []


def test_bad_single_event_dead_letters_whole_record_text() -> None:
    raw = codec.dumps(single(D, {"event_type": "custom_event", "data": 5}))
    res = run([raw])
    assert reasons(res) == ["bad_event"]
    assert res.dead[0]["payload"] == raw.decode()


def test_counts_conserve_events() -> None:
    res = run([batch(D, launch(T0), screen(T0 + 1), custom(None)), b"nope"])
    c = res.counts
    assert c.records_in == 2 and c.records_dead_lettered == 1
    assert c.events_in == 3 and c.events_forwarded == 2 and c.events_dead_lettered == 1
    assert c.balanced()
    assert c.as_dict()["dead_letters"]["bad_timestamp"] == 1
    assert c.as_dict()["sessions_ended"]["end_of_input"] == 1


def test_screen_helper_counts() -> None:
    res = run([batch(D, screen(T0), screen(T0 + 1))])
    assert res.ends()[0]["screen_view_count"] == 2
