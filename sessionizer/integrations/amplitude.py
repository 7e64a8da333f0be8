"""Amplitude HTTP V2 API events (docs/integrations.md#amplitude). Pure.

One §7.1 event -> one event; a session_start record -> ``session_start``; a
session_end record -> ``session_end`` (revision 0) or ``session_revised``
(revision > 0). Amplitude's own limits, as the official ``amplitude-analytics``
library applies them: strings cut to 1024 characters, at most 1024 property keys.
"""

from __future__ import annotations

from typing import Any

from .common import Event, Unsendable, app_version, end_event, platform, truncate

NAME = "amplitude"
MAX_STRING = 1024  # amplitude.constants.MAX_STRING_LENGTH
MAX_KEYS = 1024  # amplitude.constants.MAX_PROPERTY_KEYS
MAX_ID = 1024  # longer ids would have to be cut, merging devices: a dead letter
NO_SESSION = -1


def _properties(props: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in props.items():
        if v is None:
            continue  # the library drops null properties
        if len(out) == MAX_KEYS:
            break  # the library would drop them all: keep the first 1024
        out[str(k)[:MAX_STRING]] = truncate(v, MAX_STRING)
    return out


def _check_id(value: str, what: str) -> str:
    if not value or len(value) > MAX_ID:
        raise Unsendable(f"{what} must be 1..{MAX_ID} characters, got {len(value)}")
    return value


def event(ev: Event) -> dict[str, Any]:
    p: dict[str, Any] = {"device_id": _check_id(ev.device, "device_id")}
    cid = ev.customer_id
    if cid is not None and len(cid) <= MAX_ID:
        p["user_id"] = cid
    p["event_type"] = ev.name[:MAX_STRING]
    p["time"] = ev.ts
    props = _properties(ev.attributes)
    if props:
        p["event_properties"] = props
    version = app_version(ev.record)
    if version is not None:
        p["app_version"] = version[:MAX_STRING]
    plat = platform(ev.record)
    if plat is not None:
        p["platform"] = plat[:MAX_STRING]
    if ev.session_uuid is None or ev.session_start is None or ev.event_num is None:
        p["session_id"] = NO_SESSION
        p["insert_id"] = "late-" + ev.content_digest()[:40]
    else:
        p["session_id"] = ev.session_start
        p["event_id"] = ev.event_num
        p["insert_id"] = f"{ev.session_uuid.lower()}-{ev.event_num}"
    return p


def session(rec: dict[str, Any]) -> list[dict[str, Any]]:
    suuid = rec["session_uuid"].lower()
    props: dict[str, Any] = {
        "session_uuid": suuid,
        "session_number": rec["session_number"],
        "previous_session_uuid": (rec.get("previous_session_uuid") or "").lower() or None,
    }
    p: dict[str, Any] = {"device_id": _check_id(str(rec["device"]), "device_id")}
    if rec["record"] == "session_start":
        p["event_type"] = "session_start"
        p["time"] = rec["start_unixtime_ms"]
        p["insert_id"] = f"{suuid}-start"
    else:
        p["event_type"], end = end_event(rec)
        p["time"] = rec["end_unixtime_ms"]
        p["insert_id"] = f"{suuid}-end-{rec['revision']}"
        props.update(end)
        if rec.get("session_attributes"):
            props["session_attributes"] = rec["session_attributes"]
    p["event_properties"] = _properties(props)
    p["session_id"] = rec["start_unixtime_ms"]
    return [p]
