"""The synthetic workload: deterministic, sized as asked, and covering every event class."""

from __future__ import annotations

import gzip
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from sessionizer.tools.workload import (
    DEFAULT_START_MS,
    Population,
    Scheduler,
    generate,
    generate_to_file,
)

N = 20_000
DEVICES = 300


def _records(**kw: Any) -> list[bytes]:
    return list(generate(kw.pop("n", N), devices=kw.pop("devices", DEVICES), **kw))


@pytest.fixture(scope="module")
def records() -> list[bytes]:
    return _records()


@pytest.fixture(scope="module")
def decoded(records: list[bytes]) -> list[dict[str, Any] | None]:
    out: list[dict[str, Any] | None] = []
    for r in records:
        try:
            out.append(orjson.loads(r))
        except orjson.JSONDecodeError:
            out.append(None)
    return out


def _bad_kinds(rec: dict[str, Any] | None) -> set[str]:
    """What a correct engine dead-letters in this record (§1.2, §1.3, R14, R15)."""
    if rec is None:
        return {"invalid_json"}
    kinds = set()
    if not rec.get("mp_deviceid") and rec.get("mpid") is None:
        kinds.add("missing_identity")
    for ev in rec["events"]:
        d = ev["data"]
        ts = d["timestamp_unixtime_ms"]
        if type(ts) is not int or not DEFAULT_START_MS <= ts < DEFAULT_START_MS + 400 * 86_400_000:
            kinds.add("bad_timestamp")
        if ev["event_type"] == "session_attribute_change":
            ops = [k for k in ("new", "increment") if k in d]
            value = d.get(ops[0]) if ops else None
            bad_incr = ops == ["increment"] and not isinstance(value, (int, float))
            if len(ops) != 1 or isinstance(value, (dict, list)) or bad_incr:
                kinds.add("bad_session_attribute")
    return kinds


def test_same_seed_same_bytes(records: list[bytes]) -> None:
    assert _records() == records


def test_different_seed_different_bytes(records: list[bytes]) -> None:
    assert _records(seed=2) != records


def test_file_output_is_deterministic_and_gzip_ok(tmp_path: Path, records: list[bytes]) -> None:
    a, b, plain = tmp_path / "a.jsonl.gz", tmp_path / "b.jsonl.gz", tmp_path / "c.jsonl"
    n = generate_to_file(a, N, devices=DEVICES)
    generate_to_file(b, N, devices=DEVICES)
    generate_to_file(plain, N, devices=DEVICES)
    assert n == len(records)
    assert a.read_bytes() == b.read_bytes()
    assert gzip.decompress(a.read_bytes()) == plain.read_bytes() == b"\n".join(records) + b"\n"


def test_no_newline_inside_a_record(records: list[bytes]) -> None:
    assert all(b"\n" not in r and r for r in records)


@pytest.mark.parametrize("n", [0, 1, 1000, N])
@pytest.mark.parametrize("bad_rate", [0.001, 0.05])
def test_exactly_the_requested_number_of_events(n: int, bad_rate: float) -> None:
    """`produce --generate N` promises N events: a cut-off upload is retried whole."""
    decoded = []
    cut = 0
    for r in generate(n, devices=DEVICES, bad_rate=bad_rate):
        try:
            decoded.append(orjson.loads(r))
        except orjson.JSONDecodeError:
            cut += 1
    assert sum(len(r["events"]) for r in decoded) == n
    if n >= 1000 and bad_rate >= 0.05:
        assert cut > 0  # the cut-off uploads are still there, as bad records


def test_produce_counts_the_requested_number_of_events() -> None:
    from sessionizer.tools.produce import count_and_key

    assert sum(count_and_key(r)[1] for r in generate(20_000)) == 20_000


def test_batches_of_1_to_20_events_mean_about_8(decoded: list[dict[str, Any] | None]) -> None:
    sizes = [len(r["events"]) for r in decoded if r is not None]
    assert min(sizes) >= 1
    assert max(sizes) <= 20
    assert 5 <= sum(sizes) / len(sizes) <= 11


def test_good_records_have_identity_and_events(decoded: list[dict[str, Any] | None]) -> None:
    good = [r for r in decoded if not _bad_kinds(r)]
    assert len(good) > 0.99 * len(decoded)
    for r in good:
        assert r is not None
        assert isinstance(r["mp_deviceid"], str) and r["mp_deviceid"]
        assert isinstance(r["mpid"], int) and -(2**63) <= r["mpid"] < 2**63
        assert r["environment"] == "production"
        assert r["api_key"] and r["source_request_id"]
        assert isinstance(r["timestamp_unixtime_ms"], int)
        assert r["application_info"].get("package") or r["application_info"]["application_name"]
        assert isinstance(r["device_info"], dict)
        for ev in r["events"]:
            assert isinstance(ev["event_type"], str)
            assert isinstance(ev["data"]["timestamp_unixtime_ms"], int)
            assert ev["data"]["timestamp_unixtime_ms"] <= r["timestamp_unixtime_ms"]


def test_mix_contains_every_event_class(decoded: list[dict[str, Any] | None]) -> None:
    types: Counter[str] = Counter()
    transitions: Counter[str] = Counter()
    attr_ops: Counter[str] = Counter()
    opt: Counter[bool] = Counter()
    for r in decoded:
        for ev in r["events"] if r else ():
            et, d = ev["event_type"], ev["data"]
            types[et] += 1
            if et == "application_state_transition":
                transitions[d["application_transition_type"]] += 1
            elif et == "session_attribute_change":
                attr_ops.update(k for k in ("new", "increment") if k in d)
            elif et == "opt_out":
                opt[d["is_opted_out"]] += 1
            elif et == "custom_event":
                assert d["event_name"] and d["custom_event_type"]
                assert isinstance(d["custom_attributes"], dict)
    for et in ("screen_view", "custom_event", "commerce_event", "session_attribute_change"):
        assert types[et] > 0, et
    for kind in ("initialized", "foreground", "background", "exit"):
        assert transitions[f"application_{kind}"] > 0, kind
    assert attr_ops["new"] > 0 and attr_ops["increment"] > 0
    assert opt[True] <= 20  # a few; test_opt_outs_are_sometimes_withdrawn needs more traffic
    # Activity dominates, as in production.
    assert types["screen_view"] + types["custom_event"] > 0.6 * sum(types.values())


def test_opt_outs_are_sometimes_withdrawn() -> None:
    opt: Counter[bool] = Counter()
    for r in _records(n=100_000, devices=1000):
        if b'"opt_out"' in r:
            for ev in orjson.loads(r)["events"]:
                if ev["event_type"] == "opt_out":
                    opt[ev["data"]["is_opted_out"]] += 1
    assert opt[True] > 0 and opt[False] > 0


def test_web_devices_send_no_lifecycle_events(decoded: list[dict[str, Any] | None]) -> None:
    web = [r for r in decoded if r and r["device_info"].get("platform") == "web"]
    assert web
    for r in web:
        assert "package" not in r["application_info"]
        assert all(ev["event_type"] != "application_state_transition" for ev in r["events"])


def test_thousands_of_devices_few_apps_and_logins() -> None:
    recs = [orjson.loads(r) for r in _records(n=60_000, devices=2000, bad_rate=0)]
    devices = {r["mp_deviceid"] for r in recs}
    apps = {r["application_info"].get("package") for r in recs} - {None}
    assert len(devices) > 1500
    assert apps == {"com.example.shop", "com.example.news", "com.example.fitness"}
    mpids: dict[str, set[int]] = {}
    for r in recs:
        mpids.setdefault(r["mp_deviceid"], set()).add(r["mpid"])
    assert any(len(v) > 1 for v in mpids.values())  # a login changed some mpid


def test_devices_interleave_and_a_few_batches_arrive_late(
    decoded: list[dict[str, Any] | None],
) -> None:
    last: dict[str, int] = {}
    late = switches = 0
    prev = None
    good = [r for r in decoded if r and not _bad_kinds(r)]
    for r in good:
        dev = r["mp_deviceid"]
        first = min(ev["data"]["timestamp_unixtime_ms"] for ev in r["events"])
        if first < last.get(dev, 0):
            late += 1
        last[dev] = max(
            last.get(dev, 0), *(ev["data"]["timestamp_unixtime_ms"] for ev in r["events"])
        )
        switches += dev != prev
        prev = dev
    assert switches > 0.9 * len(good)  # many devices active at once
    assert 0 < late < 0.03 * len(good)


def test_lifecycle_gaps_both_sides_of_the_timeout() -> None:
    gaps = []
    bg: dict[str, int] = {}
    for raw in _records(n=60_000, devices=1000, bad_rate=0, late_rate=0):
        r = orjson.loads(raw)
        for ev in r["events"]:
            d = ev["data"]
            kind = d.get("application_transition_type")
            if kind == "application_background":
                bg[r["mp_deviceid"]] = d["timestamp_unixtime_ms"]
            elif kind == "application_foreground" and r["mp_deviceid"] in bg:
                gaps.append(d["timestamp_unixtime_ms"] - bg.pop(r["mp_deviceid"]))
    thirty_min = 30 * 60_000
    assert any(g < thirty_min for g in gaps) and any(g > thirty_min for g in gaps)


def test_timestamps_are_in_the_past_and_after_start(decoded: list[dict[str, Any] | None]) -> None:
    for r in decoded:
        if r and "bad_timestamp" not in _bad_kinds(r):
            for ev in r["events"]:
                assert DEFAULT_START_MS <= ev["data"]["timestamp_unixtime_ms"] < 1_790_000_000_000


def test_bad_records_present_but_rare() -> None:
    recs = _records(n=200_000, devices=2000)
    kinds: Counter[str] = Counter()
    n_bad = 0
    for raw in recs:
        try:
            rec = orjson.loads(raw)
        except orjson.JSONDecodeError:
            rec = None
        found = _bad_kinds(rec)
        n_bad += bool(found)
        kinds.update(found)
    assert set(kinds) == {
        "invalid_json",
        "missing_identity",
        "bad_timestamp",
        "bad_session_attribute",
    }
    assert n_bad < 0.004 * len(recs)


def test_bad_rate_zero_means_all_good() -> None:
    recs = _records(bad_rate=0)
    assert not any(_bad_kinds(orjson.loads(r)) for r in recs)


def test_the_scheduler_uploads_every_event_once_and_logins_bring_user_ids() -> None:
    p = Population(40, 2, 5, DEFAULT_START_MS)
    sched = Scheduler(p)
    sent = 0
    identified = 0
    while sched.events < 5000:
        for up in sched.advance():
            rec = p.record(up.device, up.t)
            sent += len(rec["events"])
            identified += "user_identities" in rec
    for up in sched.flush_all():
        sent += len(p.record(up.device, up.t)["events"])
    assert sent == sched.events == 5000
    assert identified > 0
