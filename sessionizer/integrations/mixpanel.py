"""Mixpanel /import events (docs/integrations.md#mixpanel). Pure.

One §7.1 event -> one event; session records -> ``session_start``,
``session_end`` (revision 0), ``session_revised`` (revision > 0). Limits:
``$insert_id`` at most 36 characters of ``[A-Za-z0-9-]`` (a UUIDv5 here), fewer
than 255 properties, names and string values cut to 255 characters, custom
properties renamed off Mixpanel's reserved ``$``/``mp_`` prefixes and off the
names sessionizer sets itself.
"""

from __future__ import annotations

import re
from typing import Any

from .common import (
    Event,
    Unsendable,
    app_version,
    dedup_uuid,
    end_event,
    event_dedup_uuid,
    truncate,
)

NAME = "mixpanel"
INSERT_ID = re.compile(r"^[A-Za-z0-9-]{1,36}$")
MAX_PROPS = 254  # "fewer than 255 properties"
MAX_STRING = 255
MAX_DISTINCT_ID = 255
OURS = frozenset(
    {"time", "distinct_id", "token", "session_id", "session_number", "event_num", "app_version"}
)


def insert_id(session_uuid: str, event_num: int) -> str:
    return dedup_uuid(session_uuid.lower(), event_num)


def _custom(props: dict[str, Any], room: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in props.items():
        if len(out) >= room:
            break
        name = str(k)
        if name.startswith(("$", "mp_")) or name in OURS:
            name = "attr_" + name
        out[name[:MAX_STRING]] = truncate(v, MAX_STRING)
    return out


def _ids(device: str, mpid: Any) -> dict[str, Any]:
    if len(device) > MAX_DISTINCT_ID:
        raise Unsendable(f"device id over {MAX_DISTINCT_ID} characters")
    ids: dict[str, Any] = {"$device_id": device}
    if mpid is not None and str(mpid):
        ids["$user_id"] = str(mpid)
        ids["distinct_id"] = str(mpid)
    else:
        ids["distinct_id"] = "$device:" + device
    return ids


def event(ev: Event) -> dict[str, Any]:
    props: dict[str, Any] = {"time": ev.ts, **_ids(ev.device, ev.mpid)}
    props["$insert_id"] = event_dedup_uuid(ev)
    if ev.session_uuid is not None:
        props["session_id"] = ev.session_uuid.lower()
        if ev.facts is not None:
            props["session_number"] = ev.facts.number
        props["event_num"] = ev.event_num
    version = app_version(ev.record)
    if version is not None:
        props["app_version"] = version[:MAX_STRING]
    props.update(_custom(ev.attributes, MAX_PROPS - len(props)))
    return {"event": ev.name[:MAX_STRING], "properties": props}


def session(rec: dict[str, Any]) -> list[dict[str, Any]]:
    suuid = rec["session_uuid"].lower()
    props: dict[str, Any] = _ids(str(rec["device"]), rec.get("mpid"))
    props["session_id"] = suuid
    props["session_number"] = rec["session_number"]
    prev = rec.get("previous_session_uuid")
    props["previous_session_id"] = prev.lower() if prev else None
    if rec["record"] == "session_start":
        name = "session_start"
        props["time"] = rec["start_unixtime_ms"]
        props["$insert_id"] = dedup_uuid(suuid, "start")
    else:
        name, end = end_event(rec)
        props["time"] = rec["end_unixtime_ms"]
        props["$insert_id"] = dedup_uuid(suuid, "end", rec["revision"])
        props.update(end)
        attrs = rec.get("session_attributes") or {}
        if attrs:  # an object property (fewer than 255 keys: max_session_attributes)
            props["session_attributes"] = truncate(dict(list(attrs.items())[:MAX_PROPS]), 255)
    return [{"event": name, "properties": props}]
