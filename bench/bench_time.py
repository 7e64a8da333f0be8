"""What outlier clocks do to the other keys (R26, R27): emission delay and revisions.

    python bench/bench_time.py [--events 60000] [--devices 1200] [--seed 1] [--json]

One workload stream (``sessionizer.tools.workload``) runs through one engine as
``process-file`` would, clean and with outliers injected:

* ``ahead``: 1 % of the devices with their clock 1-24 h ahead (every event);
* ``now``: one record stamped with the wall clock, a year after the data
  (what the worker gives an event with no time of its own), in the middle;
* ``behind``: one device with its clock 30 days behind.

Per stream: the emission delay of session ends closed by expiry (timeout or
idle, first emission): the watermark's time when the end record came out,
minus the session's deadline + grace (median and p99), and the same measured
on the front (the largest event time seen so far); the revisions, those of
the other (not injected) devices, and how many of the other devices' final
sessions differ from the clean stream's. Run it on another checkout with
``PYTHONPATH=<checkout>`` for a before/after comparison.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from typing import Any

import orjson

from sessionizer import codec
from sessionizer.core.config import EngineConfig
from sessionizer.core.engine import Engine
from sessionizer.core.model import SESSIONS
from sessionizer.tools import workload

HOUR = 3_600_000
DAY = 24 * HOUR
YEAR = 365 * DAY


def _device(rec: dict[str, Any]) -> str:
    dev = rec.get("mp_deviceid")
    return dev if isinstance(dev, str) and dev else str(rec.get("mpid"))


def _shift(raw: bytes, by: int) -> bytes:
    try:
        rec = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw
    if not isinstance(rec, dict):
        return raw
    if isinstance(rec.get("timestamp_unixtime_ms"), int):
        rec["timestamp_unixtime_ms"] += by
    for ev in rec.get("events") or ():
        data = ev.get("data") if isinstance(ev, dict) else None
        if isinstance(data, dict) and isinstance(data.get("timestamp_unixtime_ms"), int):
            data["timestamp_unixtime_ms"] += by
    return orjson.dumps(rec)


def streams(events: int, devices: int, seed: int) -> dict[str, tuple[list[bytes], set[str]]]:
    """Each variant's records and the devices injected into it."""
    clean = list(workload.generate(events, devices=devices, seed=seed))
    devs: list[str] = []
    seen: set[str] = set()
    for raw in clean:
        try:
            rec = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            d = _device(rec)
            if d not in seen:
                seen.add(d)
                devs.append(d)
    rng = random.Random(seed)
    ahead = {d: rng.randint(HOUR, 24 * HOUR) for d in rng.sample(devs, max(1, len(devs) // 100))}
    behind = rng.choice([d for d in devs if d not in ahead])

    def shifted(by_device: dict[str, int]) -> list[bytes]:
        out = []
        for raw in clean:
            try:
                rec = orjson.loads(raw)
            except orjson.JSONDecodeError:
                out.append(raw)
                continue
            by = by_device.get(_device(rec)) if isinstance(rec, dict) else None
            out.append(raw if by is None else _shift(raw, by))
        return out

    first = orjson.loads(clean[0])
    t0 = first["events"][0]["data"]["timestamp_unixtime_ms"]
    stray = orjson.dumps(
        {
            "mp_deviceid": "stray-now-device",
            "application_info": {"package": "com.example.news"},
            "timestamp_unixtime_ms": t0 + YEAR,  # no event time: the record's own
            "events": [{"event_type": "custom_event", "data": {"event_name": "tap"}}],
        }
    )
    mid = len(clean) // 2
    return {
        "clean": (clean, set()),
        "ahead 1% 1-24h": (shifted(ahead), set(ahead)),
        "one 'now' record": ([*clean[:mid], stray, *clean[mid:]], {"stray-now-device"}),
        "one 30 days behind": (shifted({behind: -30 * DAY}), {behind}),
    }


def _pct(xs: list[int], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] / 1000


def measure(records: list[bytes], injected: set[str], now_ms: int) -> dict[str, Any]:
    cfg = EngineConfig()
    eng = Engine(cfg, loads=codec.loads, dumps=codec.dumps)
    grace = cfg.grace_ms
    timeout = cfg.timeout_ms
    idle = 4 * timeout
    delays: list[int] = []
    delays_front: list[int] = []
    lags: list[int] = []
    ends: list[dict[str, Any]] = []
    front = 0
    for off, raw in enumerate(records):
        eng.process_record(raw, None, "raw-events", 0, off, None, now_ms)
        eng.advance()
        w = eng.watermark
        try:
            rec = orjson.loads(raw)
            if isinstance(rec, dict) and _device(rec) not in injected:
                for ev in rec.get("events") or ():
                    t = ev["data"]["timestamp_unixtime_ms"]
                    if isinstance(t, int) and front < t <= now_ms + DAY:
                        front = t
        except Exception:
            pass
        lags.append(max(0, front - w))
        for topic, _key, value in eng.take_output():
            if topic != SESSIONS or value.get("record") != "session_end":
                continue
            ends.append(value)
            if value["revision"] == 0 and value["end_reason"] in ("timeout", "idle"):
                due = value["end_unixtime_ms"] + (
                    timeout if value["end_reason"] == "timeout" else idle
                )
                due += grace
                if w >= due:  # closed by expiry (not by the key's own next event)
                    delays.append(w - due)
                    delays_front.append(front - due)
    eng.end_of_input()
    for topic, _key, value in eng.take_output():
        if topic == SESSIONS and value.get("record") == "session_end":
            ends.append(value)
    others = [e for e in ends if e["device"] not in injected]
    return {
        "sessions": len({e["session_uuid"] for e in ends}),
        "revisions": sum(1 for e in ends if e["revision"] > 0),
        "revisions_others": sum(1 for e in others if e["revision"] > 0),
        "delay_p50_s": _pct(delays, 0.5),
        "delay_p99_s": _pct(delays, 0.99),
        "delay_front_p50_s": _pct(delays_front, 0.5),
        "delay_front_p99_s": _pct(delays_front, 0.99),
        "lag_p50_s": _pct(lags, 0.5),
        "lag_p99_s": _pct(lags, 0.99),
        "events_ahead": getattr(eng.counts, "events_ahead", None),
        "final": _final(others),
    }


def _final(ends: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for e in ends:
        u = e["session_uuid"]
        if u not in out or e["revision"] >= out[u]["revision"]:
            out[u] = e
    return {u: {k: v for k, v in e.items() if k != "revision"} for u, e in out.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=60_000)
    ap.add_argument("--devices", type=int, default=1_200)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", action="store_true", help="one JSON line per stream")
    args = ap.parse_args()
    variants = streams(args.events, args.devices, args.seed)
    now_ms = workload.DEFAULT_START_MS + 2 * YEAR  # every injected time is valid (§1.3)
    clean_final: dict[str, dict[str, Any]] | None = None
    for name, (records, injected) in variants.items():
        m = measure(records, injected, now_ms)
        final = m.pop("final")
        if clean_final is None:
            clean_final = final
        others = {e["device"] for e in final.values()}
        changed = {
            e["device"]
            for u, e in {**clean_final, **final}.items()
            if e["device"] not in injected and clean_final.get(u) != final.get(u)
        }
        m["other_devices"] = len(others)
        m["other_devices_changed"] = len(changed)
        if args.json:
            print(json.dumps({"stream": name, **m}))
        else:
            print(f"{name:20} " + " ".join(f"{k}={v}" for k, v in m.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
