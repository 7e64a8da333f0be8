"""Snowplow tracker-protocol events with the client_session 1-0-2 context (docs/integrations.md).

Pure. Schema: iglu:com.snowplowanalytics.snowplow/client_session/jsonschema/1-0-2
(Iglu Central), copied in sessionizer/integrations/client_session-1-0-2.schema.json.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

from .common import device_of

CLIENT_SESSION = "iglu:com.snowplowanalytics.snowplow/client_session/jsonschema/1-0-2"
CONTEXTS = "iglu:com.snowplowanalytics.snowplow/contexts/jsonschema/1-0-0"
_USER_NS = uuid.UUID("3c0e6f5a-1d2b-4b7a-8e4f-9a6b2c1d0e33")
_EID_NS = uuid.UUID("a4d2e1f0-6b3c-4e5d-8f7a-1b2c3d4e5f60")


def user_id(device: str) -> str:
    return str(uuid.uuid5(_USER_NS, device))


def eid(session_uuid: str, event_num: int) -> str:
    return str(uuid.uuid5(_EID_NS, f"{session_uuid.lower()}/{event_num}"))


def translate_events(
    records: Iterable[dict[str, Any]],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    out: list[dict[str, Any]] = []
    dead: list[dict[str, Any]] = []
    for record in records:
        device = device_of(record)
        for event in record.get("events") or []:
            data = event.get("data") or {}
            if device is None:
                dead.append({"reason": "snowplow: no device to derive userId", "event": event})
                continue
            name = str(data.get("event_name") or event.get("event_type") or "unknown")
            ts = data.get("timestamp_unixtime_ms")
            payload: dict[str, Any] = {"e": "se", "p": "mob", "se_ca": "mparticle", "se_ac": name}
            if ts is not None:
                payload["dtm"] = str(ts)
            suuid = data.get("session_uuid")
            num = data.get("event_num")
            if suuid is not None and num is not None:
                payload["eid"] = eid(suuid, num)
                session = {
                    "userId": user_id(device),
                    "sessionId": suuid.lower(),
                    "sessionIndex": 1,  # TODO: session_number from the sessions record
                    "eventIndex": num,
                    "previousSessionId": None,
                    "storageMechanism": "SQLITE",
                }
                payload["co"] = {
                    "schema": CONTEXTS,
                    "data": [{"schema": CLIENT_SESSION, "data": session}],
                }
            out.append(payload)
    return out, dead
