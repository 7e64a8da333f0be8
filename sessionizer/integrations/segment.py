"""Segment / RudderStack track calls from sessionized-events (docs/integrations.md). Pure."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

_NS = uuid.UUID("0b7d5c33-8a0e-4c6e-9a2e-5f0c4b1d7e21")


def translate_events(
    records: Iterable[dict[str, Any]],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    out: list[dict[str, Any]] = []
    dead: list[dict[str, Any]] = []
    for record in records:
        device = record.get("mp_deviceid")
        mpid = record.get("mpid")
        for event in record.get("events") or []:
            data = event.get("data") or {}
            if device is None and mpid is None:
                dead.append({"reason": "segment: neither anonymousId nor userId", "event": event})
                continue
            call: dict[str, Any] = {
                "type": "track",
                "event": str(data.get("event_name") or event.get("event_type") or "unknown"),
            }
            if device is not None:
                call["anonymousId"] = device
            if mpid is not None:
                call["userId"] = str(mpid)
            ts = data.get("timestamp_unixtime_ms")
            context: dict[str, Any] = {}
            suuid = data.get("session_uuid")
            num = data.get("event_num")
            if suuid is not None and num is not None:
                context["sessionId"] = data.get("session_start_unixtime_ms")
                if num == 1:
                    context["sessionStart"] = True
                call["messageId"] = str(uuid.uuid5(_NS, f"{suuid.lower()}/{num}"))
            call["context"] = context
            if ts is not None:
                call["timestamp"] = ts
            out.append(call)
    return out, dead
