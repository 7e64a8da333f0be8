"""One or more tests per SPEC rule, named after it, on realistic mParticle batches."""

from __future__ import annotations

import uuid
from typing import Any

from sessionizer import codec
from sessionizer.core.config import AppOverrides, EngineConfig
from sessionizer.core.ids import NAMESPACE, session_id, session_uuid
from sessionizer.testing import (
    MIN,
    NOW,
    SEC,
    T0,
    background,
    batch,
    custom,
    del_attr,
    exit_,
    foreground,
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

D = "6f1c2a3e-0000-4000-8000-000000000001"
D2 = "6f1c2a3e-0000-4000-8000-000000000002"
APP = "com.example.shop"


def reasons(res: Any) -> list[str]:
    return [r["end_reason"] for r in res.final().values()]


def by_number(res: Any, device: str = D) -> list[dict[str, Any]]:
    ends = [r for r in res.final().values() if r["device"] == device]
    return sorted(ends, key=lambda r: r["session_number"])


# ---------------------------------------------------------------- R0


def test_r0_other_keys_and_expiry_timing_do_not_change_a_keys_sessions() -> None:
    mine = [
        batch(D, launch(T0), screen(T0 + SEC)),
        batch(D, custom(T0 + 20 * MIN)),
        batch(D, custom(T0 + 200 * MIN)),
    ]
    alone = run(mine)
    # Another key pushes the watermark far ahead between my records: my first
    # session is closed by expiry, then reopened by my next event (R21).
    noisy = run([mine[0], batch(D2, custom(T0 + 150 * MIN)), mine[1], mine[2]])
    strip = lambda r: {k: v for k, v in r.items() if k != "revision"}  # noqa: E731
    mine_final = [strip(r) for r in by_number(alone)]
    noisy_final = [strip(r) for r in by_number(noisy)]
    assert mine_final == noisy_final
    assert [r["event_count"] for r in mine_final] == [3, 1]
    # The provisional close was corrected by a revision.
    assert max(r["revision"] for r in noisy.ends() if r["device"] == D) == 1


# ---------------------------------------------------------------- R1-R6


def test_r1_first_event_starts_a_session_at_its_ts() -> None:
    res = run([batch(D, custom(T0 + 5 * SEC), screen(T0 + 6 * SEC))])
    (start,) = res.starts()
    assert start["start_unixtime_ms"] == T0 + 5 * SEC
    assert start["session_number"] == 1 and start["previous_session_uuid"] is None
    assert res.events[0]["event_type"] == "session_start"


def test_r1_attribute_change_and_session_start_start_a_session() -> None:
    res = run([batch(D, set_attr(T0, "plan", "gold"))])
    assert len(res.starts()) == 1
    res = run([batch(D, session_start(T0))])
    assert len(res.starts()) == 1
    assert res.forwarded() == []


def test_r2_launch_ends_open_session_as_relaunch() -> None:
    res = run([batch(D, launch(T0), screen(T0 + SEC)), batch(D, launch(T0 + 5 * MIN))])
    first, second = by_number(res)
    assert first["end_reason"] == "relaunch"
    assert first["end_unixtime_ms"] == T0 + SEC
    assert second["start_unixtime_ms"] == T0 + 5 * MIN
    assert second["previous_session_uuid"] == first["session_uuid"]


def test_r2_resume_on_launch_per_app_makes_launch_a_foreground() -> None:
    cfg = EngineConfig(apps={APP: AppOverrides(resume_on_launch=True)})
    res = run([batch(D, launch(T0), screen(T0 + SEC)), batch(D, launch(T0 + 5 * MIN))], cfg)
    (only,) = by_number(res)
    assert only["event_count"] == 3
    other = run([batch(D, launch(T0)), batch(D, launch(T0 + MIN))], cfg, keep_open=True)
    assert other.ends() == []


def test_r3_foreground_before_deadline_continues_the_session() -> None:
    res = run(
        [
            batch(D, launch(T0), background(T0 + MIN)),
            batch(D, foreground(T0 + 20 * MIN), screen(T0 + 21 * MIN)),
        ]
    )
    (only,) = by_number(res)
    assert only["event_count"] == 4
    assert only["foreground_duration_ms"] == 21 * MIN - 19 * MIN


def test_r3_activity_in_background_extends_deadline_without_clearing_it() -> None:
    res = run(
        [
            batch(D, launch(T0), background(T0 + MIN)),
            batch(D, custom(T0 + 25 * MIN)),  # still backgrounded: deadline 25 + 30
            batch(D, custom(T0 + 54 * MIN)),
            batch(D, custom(T0 + 90 * MIN)),  # 54 + 30 = 84 < 90: new session
        ]
    )
    first, second = by_number(res)
    assert first["event_count"] == 4 and first["end_reason"] == "timeout"
    # backgrounded from minute 1 to the end at minute 54
    assert first["foreground_duration_ms"] == 1 * MIN
    assert second["start_unixtime_ms"] == T0 + 90 * MIN


def test_r4_background_timeout_starts_new_session_at_or_after_deadline() -> None:
    res = run(
        [
            batch(D, launch(T0), background(T0 + MIN)),
            batch(D, foreground(T0 + MIN + 30 * MIN)),  # exactly at the deadline
        ]
    )
    first, second = by_number(res)
    assert first["end_reason"] == "timeout"
    assert first["end_unixtime_ms"] == T0 + MIN
    assert second["start_unixtime_ms"] == T0 + 31 * MIN


def test_r4_timeout_is_configurable_per_app() -> None:
    cfg = EngineConfig(apps={APP: AppOverrides(timeout_ms=5 * MIN)})
    res = run([batch(D, launch(T0), background(T0 + SEC)), batch(D, foreground(T0 + 6 * MIN))], cfg)
    assert len(by_number(res)) == 2
    other = run(
        [
            batch(D, launch(T0), background(T0 + SEC), app="com.other"),
            batch(D, foreground(T0 + 6 * MIN), app="com.other"),
        ],
        cfg,
    )
    assert len(other.final()) == 1


def test_r5_idle_timeout_after_launch_without_background() -> None:
    res = run(
        [
            batch(D, launch(T0), screen(T0 + MIN)),
            batch(D, custom(T0 + MIN + 100 * MIN)),  # < 4 x 30 min: same session
            batch(D, custom(T0 + MIN + 100 * MIN + 121 * MIN)),  # > 120 min idle
        ]
    )
    first, second = by_number(res)
    assert first["end_reason"] == "idle" and first["event_count"] == 3
    assert second["end_reason"] == "end_of_input"


def test_r5_web_traffic_without_lifecycle_times_out_after_timeout() -> None:
    res = run([batch(D, screen(T0)), batch(D, screen(T0 + 31 * MIN))])
    assert [r["end_reason"] for r in by_number(res)] == ["timeout", "end_of_input"]


def test_r5_idle_closes_by_watermark_without_the_keys_next_event() -> None:
    res = run(
        [batch(D, launch(T0)), batch(D2, custom(T0 + 4 * 30 * MIN + 2 * MIN))],
        keep_open=True,
    )
    (end,) = [r for r in res.ends() if r["device"] == D]
    assert end["end_reason"] == "idle"


def test_r6_exit_belongs_to_the_session_and_ends_it() -> None:
    res = run([batch(D, launch(T0), screen(T0 + SEC), exit_(T0 + 2 * SEC), custom(T0 + 3 * SEC))])
    first, second = by_number(res)
    assert first["end_reason"] == "exit"
    assert first["end_unixtime_ms"] == T0 + 2 * SEC and first["event_count"] == 3
    assert second["start_unixtime_ms"] == T0 + 3 * SEC


# ---------------------------------------------------------------- R7-R13


def test_r7_manual_session_control() -> None:
    res = run(
        [
            batch(D, session_start(T0), custom(T0 + SEC), session_start(T0 + 2 * SEC)),
            batch(D, session_end(T0 + 3 * SEC), session_end(T0 + 4 * SEC)),
            batch(D, custom(T0 + 5 * SEC)),
        ]
    )
    first, second = by_number(res)
    assert first["end_reason"] == "manual" and first["event_count"] == 1
    assert first["end_unixtime_ms"] == T0 + SEC  # control events do not move the end
    assert second["start_unixtime_ms"] == T0 + 5 * SEC
    types = [e["event_type"] for e in res.forwarded()]
    assert "session_start" not in types and "session_end" not in types
    assert res.counts.events_control == 4


def test_r8_default_timeout_is_30_minutes_and_bad_values_are_errors() -> None:
    import pytest

    from sessionizer.core.config import ConfigError

    assert EngineConfig().rules_for(APP).timeout_ms == 30 * MIN
    assert EngineConfig().rules_for(APP).idle_timeout_ms == 120 * MIN
    with pytest.raises(ConfigError, match="timeout_ms"):
        EngineConfig(timeout_ms=0)
    with pytest.raises(ConfigError, match="foreground_idle_timeout_ms"):
        EngineConfig(apps={APP: AppOverrides(foreground_idle_timeout_ms=-1)})


def test_r9_times_durations_and_foreground_duration() -> None:
    res = run(
        [
            batch(
                D,
                launch(T0),
                screen(T0 + 10 * SEC),
                background(T0 + 20 * SEC),
                foreground(T0 + 80 * SEC),
                custom(T0 + 100 * SEC),
                set_attr(T0 + 200 * SEC, "x", 1),  # control: does not move the end
            )
        ]
    )
    (s,) = by_number(res)
    assert s["end_unixtime_ms"] == T0 + 100 * SEC
    assert s["session_duration_ms"] == 100 * SEC
    assert s["foreground_duration_ms"] == 40 * SEC


def test_r9_old_lifecycle_event_has_no_lifecycle_effect() -> None:
    res = run(
        [
            batch(D, launch(T0), screen(T0 + 10 * MIN)),
            batch(D, launch(T0 + 5 * MIN), exit_(T0 + 6 * MIN)),  # older than last_ts
            batch(D, custom(T0 + 11 * MIN)),
        ]
    )
    (s,) = by_number(res)
    assert s["event_count"] == 5


def test_r9_control_or_launch_at_deadline_first_ends_with_deadline_reason() -> None:
    res = run([batch(D, screen(T0)), batch(D, session_end(T0 + 40 * MIN))])
    (s,) = by_number(res)
    assert s["end_reason"] == "timeout"
    res = run([batch(D, screen(T0)), batch(D, launch(T0 + 40 * MIN))])
    assert reasons(res) == ["timeout", "end_of_input"]


def test_r9_r24_session_started_by_control_ends_at_its_only_forwarded_event() -> None:
    """v2: a session_start (or an attribute change) starts a session; an out-of-order
    event moves its start back and, being its only forwarded event, is its end too
    (R9: control events do not move the end). Before: 5-10 min; now 5-5 min."""
    for first in (session_start(T0 + 10 * MIN), set_attr(T0 + 10 * MIN, "plan", "pro")):
        res = run([batch(D, first), batch(D, custom(T0 + 5 * MIN))])
        (s,) = by_number(res)
        assert s["start_unixtime_ms"] == s["end_unixtime_ms"] == T0 + 5 * MIN
        assert s["session_duration_ms"] == 0 and s["event_count"] == 1
        (end_ev,) = [e for e in res.events if e.get("event_type") == "session_end"]
        assert end_ev["data"]["timestamp_unixtime_ms"] == T0 + 5 * MIN


def test_r24_attribution_does_not_move_the_deadline_of_a_control_started_session() -> None:
    # The deadline stays at session_start + timeout (40 min) although the end is 5 min.
    late = [batch(D, session_start(T0 + 10 * MIN)), batch(D, custom(T0 + 5 * MIN))]
    (s,) = by_number(run([*late, batch(D, custom(T0 + 39 * MIN))]))
    assert s["start_unixtime_ms"] == T0 + 5 * MIN and s["end_unixtime_ms"] == T0 + 39 * MIN
    first, second = by_number(run([*late, batch(D, custom(T0 + 40 * MIN))]))
    assert first["end_unixtime_ms"] == T0 + 5 * MIN and first["end_reason"] == "timeout"
    assert second["start_unixtime_ms"] == T0 + 40 * MIN


def test_r9_r24_late_event_into_closed_session_without_events_becomes_its_end() -> None:
    closed = batch(D, session_start(T0 + 10 * MIN), session_end(T0 + 11 * MIN))
    (s,) = by_number(run([closed, batch(D, custom(T0 + 5 * MIN))]))
    assert (s["start_unixtime_ms"], s["end_unixtime_ms"]) == (T0 + 5 * MIN, T0 + 5 * MIN)
    assert s["revision"] == 1 and s["end_reason"] == "manual" and s["event_count"] == 1
    # After the start: the start stays, the end is the event (not the session_start).
    (s,) = by_number(run([closed, batch(D, custom(T0 + 10 * MIN + 30 * SEC))]))
    assert s["start_unixtime_ms"] == T0 + 10 * MIN
    assert s["end_unixtime_ms"] == T0 + 10 * MIN + 30 * SEC


def test_r10_counts_events_and_screen_views() -> None:
    res = run([batch(D, launch(T0), screen(T0 + 1), screen(T0 + 2), custom(T0 + 3))])
    (s,) = by_number(res)
    assert s["event_count"] == 4 and s["screen_view_count"] == 2
    nums = [e["data"]["event_num"] for e in res.forwarded()]
    assert nums == [1, 2, 3, 4]


def test_r11_numbering_and_previous_session_link() -> None:
    res = run([batch(D, launch(T0 + i * 60 * MIN)) for i in range(3)])
    s1, s2, s3 = by_number(res)
    assert [s["session_number"] for s in (s1, s2, s3)] == [1, 2, 3]
    assert s2["previous_session_uuid"] == s1["session_uuid"]
    assert s3["previous_session_uuid"] == s2["session_uuid"]


def test_r12_deterministic_ids_and_fnv_test_vector() -> None:
    assert session_id("76F1ABB9-7A9A-4D4E-AB4D-56C8FF79CAD1") == -6881666186511944082
    u = session_uuid(APP, D, 1, T0)
    assert u == u.upper() and u == session_uuid(APP, D, 1, T0)
    assert u != session_uuid(APP, D, 2, T0)
    assert u == str(uuid.uuid5(NAMESPACE, f"{APP}\x1f{D}\x1f1\x1f{T0}")).upper()
    res = run([batch(D, launch(T0))])
    (s,) = by_number(res)
    assert s["session_uuid"] == u and s["session_id"] == session_id(u)
    assert run([batch(D, launch(T0))]).sessions == res.sessions


def test_r13_ids_stay_when_start_moves_back() -> None:
    res = run([batch(D, custom(T0 + 10 * MIN)), batch(D, custom(T0 + 5 * MIN))])
    (s,) = by_number(res)
    (start,) = res.starts()
    assert s["session_uuid"] == start["session_uuid"] == session_uuid(APP, D, 1, T0 + 10 * MIN)
    assert s["start_unixtime_ms"] == T0 + 5 * MIN


# ---------------------------------------------------------------- R14-R16


def test_r14_set_increment_delete() -> None:
    res = run(
        [
            batch(
                D,
                launch(T0),
                set_attr(T0 + 1, "level", 3),
                incr_attr(T0 + 2, "level", 2),
                incr_attr(T0 + 3, "coins", 1.5),
                set_attr(T0 + 4, "gone", "x"),
                del_attr(T0 + 5, "gone"),
                set_attr(T0 + 6, "nothing", None),
                incr_attr(T0 + 7, "nothing", 4),
            )
        ]
    )
    (s,) = by_number(res)
    assert s["session_attributes"] == {"level": 5, "coins": 1.5, "nothing": 4}
    assert res.counts.events_control == 7 and res.dead == []
    end_ev = [e for e in res.events if e.get("event_type") == "session_end"]
    assert end_ev[0]["data"]["custom_attributes"] == s["session_attributes"]


def test_r14_increment_over_null_counts_from_zero() -> None:
    res = run([batch(D, launch(T0), set_attr(T0 + 1, "n", None), incr_attr(T0 + 2, "N", 4))])
    (s,) = by_number(res)
    assert s["session_attributes"] == {"n": 4} and res.dead == []


def test_r14_a_sum_of_decimals_has_no_binary_noise() -> None:
    """9.99 + 2.54 is 12.53 in the output, not 12.530000000000001; ints stay exact."""
    res = run(
        [
            batch(
                D,
                launch(T0),
                incr_attr(T0 + 1, "spend", 9.99),
                incr_attr(T0 + 2, "spend", 2.54),
                incr_attr(T0 + 3, "tenths", 0.1),
                incr_attr(T0 + 4, "tenths", 0.2),
                incr_attr(T0 + 5, "mixed", 2**53 + 1),
                incr_attr(T0 + 6, "mixed", 1),
                incr_attr(T0 + 7, "tiny", 5e-324),
                incr_attr(T0 + 8, "tiny", 5e-324),
            )
        ]
    )
    (s,) = by_number(res)
    attrs = s["session_attributes"]
    assert 9.99 + 2.54 != 12.53 and 0.1 + 0.2 != 0.3  # what a plain float sum gives
    assert attrs == {"spend": 12.53, "tenths": 0.3, "mixed": 2**53 + 2, "tiny": 1e-323}
    assert type(attrs["mixed"]) is int
    assert b'"spend":12.53,' in codec.dumps(s) and res.dead == []


def test_r14_sum_outside_64_bits_is_a_dead_letter_not_a_crash() -> None:
    """§7.3: a value that can be read but not written is a dead letter."""
    big = 2**63
    res = run(
        [
            batch(
                D,
                launch(T0),
                set_attr(T0 + 1, "n", big),
                incr_attr(T0 + 2, "n", big),  # 2**64: outside uint64
                incr_attr(T0 + 3, "n", big - 1),  # 2**64 - 1: the largest that fits
                set_attr(T0 + 4, "m", -big),
                incr_attr(T0 + 5, "m", -1),  # below int64
                set_attr(T0 + 6, "f", 1.5e308),
                incr_attr(T0 + 7, "f", 1.5e308),  # inf: not a JSON number
            )
        ]
    )
    assert [d["reason"] for d in res.dead] == ["bad_session_attribute"] * 3
    (s,) = by_number(res)
    assert s["session_attributes"] == {"n": 2**64 - 1, "m": -big, "f": 1.5e308}


def test_r14_invalid_changes_are_dead_letters_and_leave_session_alone() -> None:
    bad = [
        {"event_type": "session_attribute_change", "data": {"session_attribute_name": "a"}},
        {
            "event_type": "session_attribute_change",
            "data": {"session_attribute_name": "a", "new": 1, "increment": 1},
        },
        {
            "event_type": "session_attribute_change",
            "data": {"session_attribute_name": "a", "new": 1, "deleted": True},
        },
        incr_attr(T0 + 5, "name", 1),  # name holds a string
        incr_attr(T0 + 6, "n", "1"),  # increment must be a number
    ]
    for ev in bad[:3]:
        ev["data"]["timestamp_unixtime_ms"] = T0 + 4
    res = run([batch(D, launch(T0), set_attr(T0 + 1, "name", "ann"), *bad)])
    assert [d["reason"] for d in res.dead] == ["bad_session_attribute"] * 5
    (s,) = by_number(res)
    assert s["session_attributes"] == {"name": "ann"}


def test_r15_case_insensitive_names_and_limits() -> None:
    cfg = EngineConfig(max_session_attributes=2)
    res = run(
        [
            batch(
                D,
                launch(T0),
                set_attr(T0 + 1, "Level", 1),
                set_attr(T0 + 2, "LEVEL", 2),
                set_attr(T0 + 3, "b", "x"),
                set_attr(T0 + 4, "c", "too many"),
                set_attr(T0 + 5, "n" * 257, 1),
                set_attr(T0 + 6, "big", "v" * 4095),
                set_attr(T0 + 7, "obj", {"a": 1}),
                set_attr(T0 + 8, "list", [1]),
            )
        ],
        cfg,
    )
    (s,) = by_number(res)
    assert s["session_attributes"] == {"Level": 2, "b": "x"}
    assert len(res.dead) == 5
    assert {d["reason"] for d in res.dead} == {"bad_session_attribute"}


def test_r16_attributes_reset_at_session_end() -> None:
    res = run(
        [
            batch(D, launch(T0), set_attr(T0 + 1, "level", 11)),
            batch(D, launch(T0 + 10 * MIN), custom(T0 + 11 * MIN)),
        ]
    )
    first, second = by_number(res)
    assert first["session_attributes"] == {"level": 11}
    assert second["session_attributes"] == {}


# ---------------------------------------------------------------- R17-R19


def _nothing_of(res: Any, device: str, after_offset_marker: str | None = None) -> bool:
    from sessionizer import codec

    return all(device.encode() not in codec.dumps(v) for _, _, v in res.order)


def test_r17_opt_out_ends_session_and_opt_in_starts_new() -> None:
    res = run(
        [
            batch(D, launch(T0), screen(T0 + SEC)),
            batch(D, opt_out(T0 + 2 * SEC), custom(T0 + 3 * SEC)),
            batch(D, opt_out(T0 + 4 * SEC, False), custom(T0 + 5 * SEC)),
        ]
    )
    first, second = by_number(res)
    assert first["end_reason"] == "opt_out" and first["end_unixtime_ms"] == T0 + SEC
    assert second["start_unixtime_ms"] == T0 + 5 * SEC
    assert second["session_number"] == 2 and second["previous_session_uuid"] is None
    types = [e["event_type"] for e in res.forwarded()]
    assert "opt_out" not in types and len(types) == 3
    assert res.counts.events_opted_out == 1


def test_r17_bad_opt_out_flag_is_a_dead_letter() -> None:
    res = run([batch(D, launch(T0), opt_out(T0 + 1, "yes"))])
    assert [d["reason"] for d in res.dead] == ["bad_opt_out"]


def test_r18_nothing_of_an_opted_out_key_reaches_any_output() -> None:
    res = run(
        [
            batch(D, opt_out(T0)),
            batch(D, launch(T0 + SEC), {"event_type": 5}, custom(T0 + 2 * SEC)),
            batch(D, custom(None), set_attr(T0 + 3, "x" * 300, 1)),  # type: ignore[arg-type]
            batch(D, opt_out(T0 + 4, "maybe")),
            {"mp_deviceid": D, "application_info": {"package": APP}},  # no events: malformed
            single(D, custom(T0 + 5 * SEC)),
        ]
    )
    assert res.events == [] and res.sessions == [] and res.dead == []
    assert _nothing_of(res, D)
    assert res.counts.events_opted_out == 7 and res.counts.records_opted_out == 1
    assert res.counts.balanced()


def test_r18_state_is_deleted_except_flag_and_counter() -> None:
    res = run([batch(D, launch(T0), screen(T0 + 1)), batch(D, opt_out(T0 + 2))], keep_open=True)
    snap = res.engine.snapshot_key(f"{APP}/{D}")
    assert snap is not None
    assert snap[3] == 1 and snap[4] is True  # counter, flag
    assert snap[6] is None and snap[7] is None  # no open or last session


def test_r18_unknown_key_records_still_dead_letter() -> None:
    res = run([b"{not json", {"events": [custom(T0)]}], control={"*": True})
    assert [d["reason"] for d in res.dead] == ["invalid_json", "missing_identity"]


def test_r19_console_opt_out_by_device_session_key_and_app() -> None:
    for key in (D, f"{APP}/{D}", f"{APP}/*"):
        res = run([batch(D, launch(T0), screen(T0 + 1))], control={key: True})
        assert res.events == [] and res.sessions == [], key
    # Another app's key is not touched by an app/* entry.
    res = run([batch(D, launch(T0), app="com.other")], control={f"{APP}/*": True})
    assert len(res.starts()) == 1


def test_r19_control_entry_ends_open_session_and_applies_to_later_records() -> None:
    from sessionizer import codec
    from sessionizer.core.engine import Engine
    from sessionizer.testing import NOW, collect

    eng = Engine(EngineConfig(), loads=codec.loads, dumps=codec.dumps)
    eng.process_record(
        codec.dumps(batch(D, launch(T0), screen(T0 + SEC))), None, "t", 0, 0, None, NOW
    )
    eng.set_control(D, True)
    eng.process_record(codec.dumps(batch(D, custom(T0 + 2 * SEC))), None, "t", 0, 1, None, NOW)
    eng.set_control(D, None)
    eng.process_record(codec.dumps(batch(D, custom(T0 + 3 * SEC))), None, "t", 0, 2, None, NOW)
    eng.close_all()
    res = collect(eng, eng.take_output())
    first, second = by_number(res)
    assert first["end_reason"] == "opt_out" and first["event_count"] == 2
    assert second["start_unixtime_ms"] == T0 + 3 * SEC
    assert res.counts.events_opted_out == 1


# ---------------------------------------------------------------- R20-R25


def test_r20_watermark_is_max_ts_and_never_goes_back() -> None:
    res = run([batch(D, custom(T0 + 10 * MIN)), batch(D2, custom(T0))], keep_open=True)
    assert res.engine.watermark == T0 + 10 * MIN
    res.engine.advance_watermark(T0)
    assert res.engine.watermark == T0 + 10 * MIN


def test_r21_expiry_closes_without_the_keys_next_event_after_grace() -> None:
    recs = [batch(D, screen(T0)), batch(D2, custom(T0 + 30 * MIN + 2 * MIN - 1))]
    assert run(recs, keep_open=True).ends() == []  # grace not yet passed
    recs.append(batch(D2, custom(T0 + 32 * MIN)))
    res = run(recs, keep_open=True)
    (end,) = res.ends()
    assert end["device"] == D and end["end_reason"] == "timeout" and end["revision"] == 0


def test_r21_reopen_when_next_event_is_before_deadline() -> None:
    # Expired at W = T0+2h via another key, then our key's event at T0+29min reopens it.
    res = run(
        [
            batch(D, launch(T0), background(T0 + MIN)),
            batch(D2, custom(T0 + 120 * MIN)),
            batch(D, foreground(T0 + 29 * MIN), exit_(T0 + 30 * MIN)),
        ]
    )
    mine = [r for r in res.ends() if r["device"] == D]
    assert [(r["end_reason"], r["revision"]) for r in mine] == [("timeout", 0), ("exit", 1)]
    assert mine[1]["event_count"] == 4
    assert len([r for r in res.starts() if r["device"] == D]) == 1
    ev_ends = [
        e for e in res.events if e.get("event_type") == "session_end" and e["mp_deviceid"] == D
    ]
    assert len(ev_ends) == 2  # the reopened session emits its session_end event again


def test_r21_event_ended_sessions_are_never_reopened() -> None:
    res = run(
        [
            batch(D, launch(T0), exit_(T0 + MIN)),
            batch(D, custom(T0 + 2 * MIN)),
        ]
    )
    assert reasons(res) == ["exit", "end_of_input"]


def test_r21_dead_letters_do_not_reopen() -> None:
    res = run(
        [
            batch(D, screen(T0)),
            batch(D2, custom(T0 + 60 * MIN)),
            batch(D, set_attr(T0 + MIN, "n" * 300, 1)),
        ],
        keep_open=True,
    )
    mine = [r for r in res.ends() if r["device"] == D]
    assert [r["revision"] for r in mine] == [0]


def test_r22_idle_partition_advance_moves_time_on() -> None:
    res = run([batch(D, screen(T0))], keep_open=True)
    eng = res.engine
    eng.advance_watermark(T0 + 33 * MIN)
    eng.expire()
    out = eng.take_output()
    assert [v["end_reason"] for t, _, v in out if t == 1] == ["timeout"]


def test_r23_session_end_emitted_before_anything_of_the_next_session() -> None:
    res = run([batch(D, screen(T0), screen(T0 + 40 * MIN), screen(T0 + 41 * MIN))])
    kinds = [(t, v.get("record") or v.get("event_type")) for t, _, v in res.order]
    one_session = [(0, "session_start"), (1, "session_start"), (0, None)]
    one_session += [(0, "session_end"), (1, "session_end")]
    assert kinds == one_session * 2


def test_r24_late_event_attributed_to_last_closed_session_with_revision() -> None:
    res = run(
        [
            batch(D, launch(T0), screen(T0 + MIN), exit_(T0 + 2 * MIN)),
            batch(D, launch(T0 + 10 * MIN)),
            batch(D, custom(T0 + 90 * SEC), launch(T0 + 100 * SEC)),  # late, for session 1
        ]
    )
    first, second = by_number(res)
    assert first["event_count"] == 5 and first["revision"] == 1
    assert first["end_reason"] == "exit"
    assert second["event_count"] == 1


def test_r24_late_event_before_open_session_moves_its_start_back() -> None:
    res = run([batch(D, screen(T0 + 20 * MIN)), batch(D, screen(T0 + 5 * MIN))])
    (s,) = by_number(res)
    assert s["start_unixtime_ms"] == T0 + 5 * MIN and s["event_count"] == 2
    assert s["session_duration_ms"] == 15 * MIN


def test_r24_too_late_event_is_forwarded_with_null_session_and_late_flag() -> None:
    res = run([batch(D, screen(T0 + 100 * MIN)), batch(D, screen(T0))])
    late = [e for e in res.forwarded() if e["data"].get("late")]
    assert len(late) == 1
    assert late[0]["data"]["session_uuid"] is None and late[0]["data"]["event_num"] is None
    assert res.counts.events_late == 1
    (s,) = by_number(res)
    assert s["event_count"] == 1


def test_r24_attribute_change_still_applies_to_closed_session() -> None:
    res = run(
        [
            batch(D, launch(T0), exit_(T0 + MIN)),
            batch(D, set_attr(T0 + 30 * SEC, "plan", "pro")),
        ]
    )
    (s,) = by_number(res)
    assert s["session_attributes"] == {"plan": "pro"} and s["revision"] == 1


def test_r24_late_event_window_starts_no_earlier_than_end_of_session_before() -> None:
    # Session 1 ends by exit at 26 min; session 2 runs 30-31 min and is closed by
    # session 3's launch, so session 1 is no longer kept. Session 2's window is
    # [max(30 - 30, 26), its deadline) = [26 min, 40 min).
    sessions = [
        batch(D, launch(T0), screen(T0 + 25 * MIN), exit_(T0 + 26 * MIN)),
        batch(D, launch(T0 + 30 * MIN), screen(T0 + 31 * MIN)),
        batch(D, launch(T0 + 40 * MIN)),
    ]
    res = run([*sessions, batch(D, custom(T0 + 20 * MIN))])  # inside session 1: not kept
    assert [e["data"].get("late") for e in res.forwarded()][-1] is True
    assert [s["event_count"] for s in by_number(res)] == [3, 2, 1]
    res = run([*sessions, batch(D, custom(T0 + 28 * MIN))])  # after session 1's end
    _, second, _ = by_number(res)
    assert second["start_unixtime_ms"] == T0 + 28 * MIN and second["event_count"] == 3


def test_r25_batch_split_at_session_boundaries_keeps_batch_fields() -> None:
    res = run(
        [
            batch(
                D,
                launch(T0),
                screen(T0 + SEC),
                launch(T0 + 2 * SEC),
                screen(T0 + 3 * SEC),
                source_request_id="req-1",
            )
        ]
    )
    batches = [e for e in res.events if "events" in e]
    assert len(batches) == 2
    assert all(b["source_request_id"] == "req-1" and b["mp_deviceid"] == D for b in batches)
    assert [len(b["events"]) for b in batches] == [2, 2]
    u = [{e["data"]["session_uuid"] for e in b["events"]} for b in batches]
    assert len(u[0]) == 1 and len(u[1]) == 1 and u[0] != u[1]


def test_r0_replayed_input_after_restore_is_not_applied_twice() -> None:
    """A restored key skips records at or below the input position it applied."""
    from sessionizer import codec
    from sessionizer.core.engine import Engine
    from sessionizer.testing import NOW, collect

    recs = [codec.dumps(batch(D, launch(T0 + i * MIN), screen(T0 + i * MIN + 1))) for i in range(6)]

    def engine() -> Engine:
        return Engine(EngineConfig(), loads=codec.loads, dumps=codec.dumps)

    whole = engine()
    for i, v in enumerate(recs):
        whole.process_record(v, None, "t", 0, i, None, NOW, i)
    whole.close_all()
    # Crash after record 3 was applied; the input is replayed from record 1.
    first = engine()
    for i, v in enumerate(recs[:4]):
        first.process_record(v, None, "t", 0, i, None, NOW, i)
    restored = engine()
    for k in first.keys:
        snap = first.snapshot_key(k)
        assert snap is not None
        restored.restore_key(k, codec.loads(codec.dumps(snap)))
    for i, v in enumerate(recs[1:], start=1):
        restored.process_record(v, None, "t", 0, i, None, NOW, i)
    restored.close_all()
    both = first.take_output() + restored.take_output()
    assert collect(restored, both).final() == collect(whole, whole.take_output()).final()
    assert restored.counts.records_in == 2  # records 4 and 5 only


# ---------------------------------------------------------------- R26-R27

DAY = 24 * 60 * MIN
CROWD = [f"6f1c2a3e-0000-4000-8000-0000000001{i:02d}" for i in range(8)]


def crowd(ts: int, step: int = 10 * SEC) -> list[dict[str, Any]]:
    """One screen view of each of 8 other devices, ``step`` apart from ``ts`` on."""
    return [batch(d, screen(ts + i * step)) for i, d in enumerate(CROWD)]


def test_r26_one_key_far_ahead_does_not_move_time() -> None:
    ahead = batch(D2, custom(T0 + 6 * 60 * MIN))  # a phone whose clock runs 6 h ahead
    res = run([batch(D, screen(T0)), *crowd(T0), ahead, *crowd(T0 + 2 * MIN)], keep_open=True)
    assert res.engine.watermark == T0 + 2 * MIN + 70 * SEC  # the crowd's latest time
    assert res.ends() == []  # D's session (deadline T0 + 30 min) is not closed early
    assert res.counts.events_ahead == 1
    assert (res.engine.ahead_key, res.engine.ahead_ts) == (f"{APP}/{D2}", T0 + 6 * 60 * MIN)
    # Without the crowd there is no one to compare with: the phone's time is the time.
    alone = run([batch(D, screen(T0)), ahead], keep_open=True)
    assert alone.engine.watermark == T0 + 6 * 60 * MIN
    assert [r["device"] for r in alone.ends()] == [D]


def test_r26_two_keys_ahead_together_do_not_move_time() -> None:
    recs = [batch(D, screen(T0)), *crowd(T0)]
    recs += [batch(D2, custom(T0 + DAY)), batch("third", custom(T0 + 2 * DAY))]
    res = run(recs, keep_open=True)
    assert res.engine.watermark == T0 + 70 * SEC
    assert res.ends() == []


def test_r26_a_quorum_of_keys_moves_time_to_its_lowest_time() -> None:
    # The whole partition comes back after a night: 3 keys agree, so time jumps.
    recs = [batch(D, screen(T0)), *crowd(T0)]
    night = T0 + 10 * 60 * MIN
    later = [batch(d, screen(night + i * MIN)) for i, d in enumerate(CROWD[:3])]
    res = run([*recs, *later[:2]], keep_open=True)
    assert res.engine.watermark == T0 + 70 * SEC
    assert D not in [r["device"] for r in res.ends()]  # only the 2 keys' own ends (R4)
    res = run([*recs, *later], keep_open=True)
    assert res.engine.watermark == night  # the 3rd highest of the 3 keys ahead
    assert D in [r["device"] for r in res.ends()]
    assert {r["end_reason"] for r in res.ends()} == {"timeout"}


def test_r26_keys_still_ahead_after_a_quorum_jump_keep_their_claim() -> None:
    # Two devices 20 min ahead of a quiet partition, then three clock devices a day
    # ahead: the first quorum moves time to the devices', the clocks' claims stay and
    # the third clock completes their own quorum.
    recs = [batch(D, screen(T0)), *crowd(T0)]
    recs += [batch(d, screen(T0 + 20 * MIN)) for d in CROWD[:2]]
    clocks = [batch(f"clock-{i}", custom(T0 + DAY)) for i in range(3)]
    res = run([*recs, *clocks[:1]], keep_open=True)
    assert res.engine.watermark == T0 + 20 * MIN
    res = run([*recs, *clocks[:2]], keep_open=True)
    assert res.engine.watermark == T0 + 20 * MIN
    res = run([*recs, *clocks], keep_open=True)
    assert res.engine.watermark == T0 + DAY


def test_r26_records_in_step_move_time_as_the_largest_time() -> None:
    # Each record at most grace ahead moves time to its time at once (R20).
    res = run([batch(D, screen(T0)), *crowd(T0 + 31 * MIN, step=2 * MIN)], keep_open=True)
    assert res.engine.watermark == T0 + 31 * MIN + 14 * MIN
    assert [r["device"] for r in res.ends()] == [D]
    assert res.counts.events_ahead == 1  # the first crowd record, 31 min after D's


def test_r26_a_key_heard_alone_for_the_window_moves_time_on() -> None:
    # Liveness: when the other keys fall silent, a key alone is all the partition knows.
    recs = [batch(D, screen(T0)), *crowd(T0)]
    recs += [batch(D2, custom(T0 + 60 * MIN + i * SEC)) for i in range(64)]
    res = run(recs, keep_open=True)
    assert res.engine.watermark == T0 + 60 * MIN + 63 * SEC
    assert D in [r["device"] for r in res.ends()]


def test_r26_clock_state_restored_goes_on_as_if_never_stopped() -> None:
    from sessionizer import codec
    from sessionizer.core.engine import Engine
    from sessionizer.testing import encode

    ahead = [batch(D2, custom(T0 + DAY)), batch("x", custom(T0 + DAY))]
    recs = encode([batch(D, screen(T0)), *crowd(T0), *ahead])
    last = encode([batch("y", custom(T0 + DAY + MIN))])[0]
    first = Engine(EngineConfig(), loads=codec.loads, dumps=codec.dumps)
    for i, v in enumerate(recs):
        first.process_record(v, None, "t", 0, i, None, NOW, i)
    snaps = [(k, codec.loads(codec.dumps(first.snapshot_key(k)))) for k in first.state_keys()]
    clock = codec.loads(codec.dumps(first.clock_state()))
    for with_clock, moved in ((True, True), (False, False)):
        eng = Engine(EngineConfig(), loads=codec.loads, dumps=codec.dumps)
        eng.restore(snaps, first.watermark, clock if with_clock else None)
        eng.process_record(last, None, "t", 0, len(recs), None, NOW, len(recs))
        # With the clock, the third key ahead completes the quorum as it would have;
        # without (an older marker), the restored keys count but not the two ahead.
        assert (eng.watermark == T0 + DAY) is moved


def test_r27_a_stray_now_record_in_a_year_old_backfill_forgets_nothing() -> None:
    stray = batch("stray", custom(0), timestamp_unixtime_ms=NOW)
    del stray["events"][0]["data"]["timestamp_unixtime_ms"]  # the record's own time
    recs = [batch(D, screen(T0)), *crowd(T0), stray, batch(D, screen(T0 + 40 * MIN))]
    recs += crowd(T0 + 40 * MIN)
    res = run(recs)
    first, second = by_number(res)
    assert second["session_number"] == 2
    assert second["previous_session_uuid"] == first["session_uuid"]
    assert res.engine.key_count() == 10  # D, the crowd and the stray
    assert first["end_reason"] == "timeout" and second["end_reason"] == "end_of_input"


def test_r27_a_key_really_idle_for_state_ttl_is_forgotten() -> None:
    cfg = EngineConfig(state_ttl_ms=3 * DAY)
    recs: list[dict[str, Any]] = [batch(D, screen(T0))]
    recs += [r for day in range(5) for r in crowd(T0 + day * DAY)]  # the others go on
    res = run([*recs, batch(D, screen(T0 + 5 * DAY))], cfg)
    _first, again = sorted(by_number(res), key=lambda r: r["start_unixtime_ms"])
    assert again["session_number"] == 1 and again["previous_session_uuid"] is None
    # One day less and the key is kept.
    res = run([batch(D, screen(T0)), *crowd(T0 + 2 * DAY), batch(D, screen(T0 + 2 * DAY))], cfg)
    assert [r["session_number"] for r in by_number(res)] == [1, 2]


def test_r27_a_key_whose_clock_is_behind_is_not_forgotten_while_it_sends() -> None:
    # 30 days behind the partition, with a 3-day state_ttl: heard now, so kept.
    cfg = EngineConfig(state_ttl_ms=3 * DAY)
    recs: list[dict[str, Any]] = [*crowd(T0 + 30 * DAY)]
    recs += [batch(D, screen(T0)), *crowd(T0 + 30 * DAY + MIN), batch(D, screen(T0 + 40 * MIN))]
    res = run(recs, cfg)
    assert [r["session_number"] for r in by_number(res)] == [1, 2]
