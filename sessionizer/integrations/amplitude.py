"""Amplitude HTTP V2 events from sessionized-events records (docs/integrations.md).

Pure and deterministic. Returns (payloads, dead_letters).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .common import device_of

MAX_ID = 1024  # Amplitude: device_id/user_id/insert_id limited length
MIN_ID = 5  # Amplitude rejects ids shorter than 5 characters
NO_SESSION = -1


def translate_events(
    records: Iterable[dict[str, Any]],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    out: list[dict[str, Any]] = []
    dead: list[dict[str, Any]] = []
    for record in records:
        device = device_of(record)
        for event in record.get("events") or []:
            data = event.get("data") or {}
            if device is None or not (MIN_ID <= len(device) <= MAX_ID):
                dead.append(
                    {
                        "reason": "amplitude: device_id missing or outside 5..1024 chars",
                        "event": event,
                    }
                )
                continue
            suuid = data.get("session_uuid")
            num = data.get("event_num")
            start = data.get("session_start_unixtime_ms")
            late = suuid is None
            name = data.get("event_name") or event.get("event_type") or "unknown"
            payload: dict[str, Any] = {
                "device_id": device,
                "event_type": str(name)[:1024],
                "time": data.get("timestamp_unixtime_ms"),
                "session_id": NO_SESSION if late or start is None else start,
            }
            if not late and num is not None:
                payload["event_id"] = num
                payload["insert_id"] = f"{suuid.lower()}-{num}"
            out.append(payload)
    return out, dead
