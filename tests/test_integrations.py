from sessionizer import codec
from sessionizer.integrations import REGISTRY, amplitude

REC = {
    "mpid": 4242,
    "mp_deviceid": "8d5f3c1e-dev",
    "events": [
        {
            "event_type": "screen_view",
            "data": {
                "screen_name": "Home",
                "timestamp_unixtime_ms": 1767225601000,
                "session_uuid": "8EE22D68-918A-5247-B5D4-61D74E4080D5",
                "session_id": -2906315348217095851,
                "session_start_unixtime_ms": 1767225600000,
                "event_num": 2,
            },
        },
        {
            "event_type": "custom_event",
            "data": {
                "event_name": "late_one",
                "timestamp_unixtime_ms": 1767225000000,
                "session_uuid": None,
                "session_id": None,
                "session_start_unixtime_ms": None,
                "event_num": None,
                "late": True,
            },
        },
    ],
}


def test_registry():
    assert "amplitude" in REGISTRY


def test_amplitude_deterministic_and_late():
    a, dead = amplitude.translate_events([REC])
    b, _ = amplitude.translate_events([REC])
    assert codec.dumps(a) == codec.dumps(b)
    assert dead == []
    assert a[0]["insert_id"] == "8ee22d68-918a-5247-b5d4-61d74e4080d5-2"
    assert a[0]["session_id"] == 1767225600000
    assert a[1]["session_id"] == -1 and "insert_id" not in a[1]


def test_amplitude_short_device_dead_letter():
    out, dead = amplitude.translate_events([{**REC, "mp_deviceid": "ab"}])
    assert out == [] and len(dead) == 2


def test_mixpanel_insert_id_and_late():
    from sessionizer.integrations import mixpanel

    out, dead = mixpanel.translate_events([REC])
    assert dead == []
    iid = out[0]["properties"]["$insert_id"]
    assert mixpanel._INSERT_ID.match(iid)
    assert iid == mixpanel.translate_events([REC])[0][0]["properties"]["$insert_id"]
    assert "$insert_id" not in out[1]["properties"]
    assert "session_id" not in out[1]["properties"]


def test_segment_message_id_and_late():
    from sessionizer.integrations import segment

    out, dead = segment.translate_events([REC])
    assert dead == []
    assert out[0]["messageId"] == segment.translate_events([REC])[0][0]["messageId"]
    assert out[0]["context"]["sessionId"] == 1767225600000
    assert "sessionStart" not in out[0]["context"]  # event_num 2
    assert "messageId" not in out[1] and out[1]["context"] == {}


def test_snowplow_client_session_validates():
    import json
    from pathlib import Path

    import jsonschema

    from sessionizer.integrations import snowplow

    schema = json.loads(
        (Path(snowplow.__file__).parent / "client_session-1-0-2.schema.json").read_text()
    )
    out, dead = snowplow.translate_events([REC])
    assert dead == []
    ctx = out[0]["co"]["data"][0]
    assert ctx["schema"] == snowplow.CLIENT_SESSION
    jsonschema.Draft202012Validator(schema).validate(ctx["data"])
    assert out[0]["eid"] == snowplow.translate_events([REC])[0][0]["eid"]
    assert "co" not in out[1] and "eid" not in out[1]  # late: no session context


def test_ga4_sanitise_and_batching():
    import re

    from sessionizer.integrations import ga4

    ok = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,39}$")
    for raw in ["session_start", "_x", "firebase_y", "ga_z", "Google_q", "9 lives!", "a" * 60, ""]:
        n = ga4.sanitise_name(raw)
        assert ok.match(n), (raw, n)
        assert n.lower() not in ga4.RESERVED
        assert not n.lower().startswith(ga4.RESERVED_PREFIXES)
    many = {**REC, "events": REC["events"] * 30}
    out, dead = ga4.translate_events([many])
    assert dead == [] and [len(b["events"]) for b in out] == [25, 25, 10]


def test_never_raise_on_workload_outputs():
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from sessionizer import testing, workload

    @settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))
    @given(seed=st.integers(0, 10_000), late=st.sampled_from([0.0, 0.2]))
    def check(seed, late):
        res = testing.run(
            list(workload.generate(200, devices=5, seed=seed, late_rate=late, bad_rate=0.05))
        )
        for name, fn in REGISTRY.items():
            out, _dead = fn(res.events)
            assert codec.dumps(out) == codec.dumps(fn(res.events)[0]), name

    check()
