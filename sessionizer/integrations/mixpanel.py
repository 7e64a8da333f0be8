"""Mixpanel import events from sessionized-events records (docs/integrations.md). Pure."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from typing import Any

_NS = uuid.UUID("6f1c1a52-3b1e-4f0e-9a57-2d1f3b0f6a10")
_INSERT_ID = re.compile(r"^[A-Za-z0-9-]{1,36}$")


def insert_id(session_uuid: str, event_num: int) -> str:
    """36 chars of [0-9a-f-]: a uuid5 of (session_uuid, event_num)."""
    return str(uuid.uuid5(_NS, f"{session_uuid.lower()}/{event_num}"))


def translate_events(
    records: Iterable[dict[str, Any]],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    out: list[dict[str, Any]] = []
    dead: list[dict[str, Any]] = []
    for record in records:
        device = record.get("mp_deviceid")
        mpid = record.get("mpid")
        distinct = str(mpid) if mpid is not None else device
        for event in record.get("events") or []:
            data = event.get("data") or {}
            if distinct is None:
                dead.append({"reason": "mixpanel: no identity", "event": event})
                continue
            props: dict[str, Any] = {
                "distinct_id": distinct,
                "time": data.get("timestamp_unixtime_ms"),
            }
            if device is not None:
                props["$device_id"] = device
            if mpid is not None:
                props["$user_id"] = str(mpid)
            suuid = data.get("session_uuid")
            num = data.get("event_num")
            if suuid is not None and num is not None:
                props["session_id"] = suuid.lower()
                props["event_num"] = num
                props["$insert_id"] = insert_id(suuid, num)
            name = data.get("event_name") or event.get("event_type") or "unknown"
            out.append({"event": str(name), "properties": props})
    return out, dead
