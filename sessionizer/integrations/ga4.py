"""GA4 Measurement Protocol request bodies from sessionized-events records (docs/integrations.md).

Pure. One body per <= 25 consecutive events of one device. Event names are
sanitised to [A-Za-z][A-Za-z0-9_]{0,39}, avoiding reserved names and prefixes.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from typing import Any

from .common import device_of

MAX_EVENTS = 25
MAX_PARAMS = 25
_NS = uuid.UUID("5e2b7c1d-9f3a-4d6e-8b0c-2a1f4e3d5c77")
_BAD = re.compile(r"[^A-Za-z0-9_]")
RESERVED = frozenset(
    {
        "ad_activeview", "ad_click", "ad_exposure", "ad_impression", "ad_query",
        "adunit_exposure", "app_clear_data", "app_install", "app_update", "app_remove",
        "error", "first_open", "first_visit", "in_app_purchase", "notification_dismiss",
        "notification_foreground", "notification_open", "notification_receive",
        "os_update", "screen_view", "session_start", "user_engagement",
    }
)  # fmt: skip
RESERVED_PREFIXES = ("_", "firebase_", "ga_", "google_")


def sanitise_name(name: str) -> str:
    n = _BAD.sub("_", name)
    if not n or not n[0].isalpha():
        n = "e_" + n
    while n.lower().startswith(RESERVED_PREFIXES):
        n = "e_" + n
    if n.lower() in RESERVED:
        n = "mp_" + n
    n = n[:40]
    return n


def client_id(device: str) -> str:
    return str(uuid.uuid5(_NS, device))


def translate_events(
    records: Iterable[dict[str, Any]],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    out: list[dict[str, Any]] = []
    dead: list[dict[str, Any]] = []
    for record in records:
        device = device_of(record)
        events: list[dict[str, Any]] = []
        for event in record.get("events") or []:
            data = event.get("data") or {}
            if device is None:
                dead.append({"reason": "ga4: no device to derive app_instance_id", "event": event})
                continue
            params: dict[str, Any] = {"engagement_time_msec": 1}
            suuid = data.get("session_uuid")
            if suuid is not None:
                params["session_id"] = str(data.get("session_start_unixtime_ms"))
                params["event_num"] = data.get("event_num")
            raw = str(data.get("event_name") or event.get("event_type") or "unknown")
            events.append({"name": sanitise_name(raw), "params": params})
        for i in range(0, len(events), MAX_EVENTS):
            out.append({"app_instance_id": client_id(device), "events": events[i : i + MAX_EVENTS]})
    return out, dead
