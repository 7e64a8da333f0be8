"""Builders for mParticle-shaped records and a one-call engine run, for tests.

Shipped with the package so users can test their own pipelines against the
same engine: ``run([batch("dev-1", launch(T0), screen(T0 + 1000))])``.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from .. import _native, codec
from ..core.config import EngineConfig
from ..core.engine import Engine
from ..core.model import DEAD_LETTERS, EVENTS, SESSIONS, Counts

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
SEC = 1000
MIN = 60 * SEC
NOW = T0 + 365 * 24 * 60 * MIN  # a fixed "wall clock" so tests do not depend on today


def event(event_type: str, ts: int | None, **data: Any) -> dict[str, Any]:
    d = dict(data)
    if ts is not None:
        d["timestamp_unixtime_ms"] = ts
    return {"event_type": event_type, "data": d}


def transition(kind: str, ts: int | None, **data: Any) -> dict[str, Any]:
    return event("application_state_transition", ts, application_transition_type=kind, **data)


def launch(ts: int) -> dict[str, Any]:
    return transition("application_initialized", ts)


def foreground(ts: int) -> dict[str, Any]:
    return transition("application_foreground", ts)


def background(ts: int) -> dict[str, Any]:
    return transition("application_background", ts)


def exit_(ts: int) -> dict[str, Any]:
    return transition("application_exit", ts)


def custom(ts: int, name: str = "tap", **data: Any) -> dict[str, Any]:
    return event("custom_event", ts, event_name=name, custom_event_type="other", **data)


def screen(ts: int, name: str = "Home") -> dict[str, Any]:
    return event("screen_view", ts, screen_name=name)


def session_start(ts: int) -> dict[str, Any]:
    return event("session_start", ts)


def session_end(ts: int) -> dict[str, Any]:
    return event("session_end", ts)


def opt_out(ts: int, opted: Any = True) -> dict[str, Any]:
    return event("opt_out", ts, is_opted_out=opted)


def set_attr(ts: int, name: str, value: Any) -> dict[str, Any]:
    return event("session_attribute_change", ts, session_attribute_name=name, new=value)


def incr_attr(ts: int, name: str, by: Any) -> dict[str, Any]:
    return event("session_attribute_change", ts, session_attribute_name=name, increment=by)


def del_attr(ts: int, name: str) -> dict[str, Any]:
    return event("session_attribute_change", ts, session_attribute_name=name, deleted=True)


def batch(
    device: str | None,
    *events: dict[str, Any],
    mpid: Any = 42,
    app: str | None = "com.example.shop",
    **fields: Any,
) -> dict[str, Any]:
    """An Events API v2 batch as the official mparticle SDK serializes it."""
    b: dict[str, Any] = {"events": list(events)}
    if mpid is not None:
        b["mpid"] = mpid
    if device is not None:
        b["mp_deviceid"] = device
    if app is not None:
        b["application_info"] = {"package": app, "application_version": "4.2.0"}
    b["environment"] = "production"
    b["device_info"] = {"platform": "Android", "os_version": "14"}
    b.update(fields)
    return b


def single(device: str | None, ev: dict[str, Any], **kw: Any) -> dict[str, Any]:
    """A single-event record: the event with the batch fields at its top level."""
    b = batch(device, **kw)
    del b["events"]
    b.update(ev)
    return b


@dataclass
class Result:
    events: list[dict[str, Any]]
    sessions: list[dict[str, Any]]
    dead: list[dict[str, Any]]
    counts: Counts
    engine: Engine
    order: list[tuple[int, Any, dict[str, Any]]]

    def ends(self) -> list[dict[str, Any]]:
        return [s for s in self.sessions if s["record"] == "session_end"]

    def starts(self) -> list[dict[str, Any]]:
        return [s for s in self.sessions if s["record"] == "session_start"]

    def final(self) -> dict[str, dict[str, Any]]:
        """The highest revision of each session_end record, by session_uuid."""
        out: dict[str, dict[str, Any]] = {}
        for rec in self.ends():
            cur = out.get(rec["session_uuid"])
            if cur is None or rec["revision"] >= cur["revision"]:
                out[rec["session_uuid"]] = rec
        return out

    def forwarded(self) -> list[dict[str, Any]]:
        """Every forwarded input event (not the synthesized ones), in output order."""
        out: list[dict[str, Any]] = []
        for rec in self.events:
            evs = rec.get("events", [rec])
            out.extend(e for e in evs if e["event_type"] not in ("session_start", "session_end"))
        return out


def encode(records: Iterable[Any]) -> list[bytes]:
    return [r if isinstance(r, bytes) else codec.dumps(r) for r in records]


def run(
    records: Iterable[Any],
    config: EngineConfig | None = None,
    *,
    keep_open: bool = False,
    expire_each: bool = True,
    engine: Engine | None = None,
    control: dict[str, bool] | None = None,
    now_ms: int = NOW,
) -> Result:
    """Runs records (dicts or raw bytes) through a fresh engine as process-file would."""
    eng = engine or Engine(config or EngineConfig(), loads=codec.loads, dumps=codec.dumps)
    for k, v in (control or {}).items():
        eng.set_control(k, v)
    for offset, value in enumerate(encode(records)):
        eng.process_record(value, None, "test", 0, offset, None, now_ms)
        if expire_each:
            eng.expire()
    if keep_open:
        eng.expire()
    else:
        eng.close_all()
    return collect(eng, eng.take_output())


def collect(eng: Engine, out: list[tuple[int, Any, dict[str, Any]]]) -> Result:
    # Round-trip through JSON so tests see exactly what a consumer would read.
    decoded = [(t, k, codec.loads(codec.dumps(v))) for t, k, v in out]
    return Result(
        events=[v for t, _, v in decoded if t == EVENTS],
        sessions=[v for t, _, v in decoded if t == SESSIONS],
        dead=[v for t, _, v in decoded if t == DEAD_LETTERS],
        counts=eng.counts,
        engine=eng,
        order=decoded,
    )


def source_modules() -> dict[str, ModuleType]:
    """A fresh, interpreted copy of ``_native.MODULES``, by name (none put in ``sys.modules``).

    For tests that replace functions inside the engine (failure injection):
    a compiled module's functions and classes cannot be replaced. The copies
    import one another, so the copy of ``offline`` runs the copy of the engine.
    """
    importlib.import_module("sessionizer.run.files")  # the real ones, to put back
    real = {m: sys.modules.pop(m) for m in _native.MODULES if m in sys.modules}
    finder = _native.Sources()
    sys.meta_path.insert(0, finder)
    try:
        return {m: importlib.import_module(m) for m in _native.MODULES}
    finally:
        sys.meta_path.remove(finder)
        for m in _native.MODULES:
            sys.modules.pop(m, None)
        sys.modules.update(real)
        for m, module in real.items():  # an import also set the copy on its package
            parent, _, child = m.rpartition(".")
            setattr(sys.modules[parent], child, module)
