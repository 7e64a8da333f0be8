"""Snowplow tracker-protocol events (docs/integrations.md#snowplow). Pure.

One §7.1 event -> one structured event (``e=se``) in the tracker protocol's
``payload_data`` 1-0-4 item shape (every value a string, contexts as the JSON
text ``co``), with the ``client_session`` 1-0-2 context of Iglu Central
(schemas/integrations/iglu-*.json, verbatim). Session records are not sent:
every event carries its session. ``stm`` (sent time) is added by the forwarder
when it sends.
"""

from __future__ import annotations

from typing import Any

from .. import codec
from .common import Event, Unsendable, dedup_uuid, device_uuid, event_dedup_uuid, is_app, iso_ms

NAME = "snowplow"
CLIENT_SESSION = "iglu:com.snowplowanalytics.snowplow/client_session/jsonschema/1-0-2"
CONTEXTS = "iglu:com.snowplowanalytics.snowplow/contexts/jsonschema/1-0-1"
PAYLOAD_DATA = "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4"
TRACKER_VERSION = "sessionizer-1"
MAX_FIELD = 1000  # atomic.events se_category / se_action / se_label / app_id: varchar(1000)
MAX_INDEX = 2147483647


def user_id(device: str) -> str:
    return str(device_uuid(device))


def eid(session_uuid: str, event_num: int) -> str:
    return dedup_uuid(session_uuid.lower(), event_num)


def event(ev: Event) -> dict[str, Any]:
    web = not is_app(ev.record)
    p: dict[str, Any] = {
        "e": "se",
        "eid": event_dedup_uuid(ev),
        "tv": TRACKER_VERSION,
        "p": "web" if web else "mob",
        "aid": ev.app[:MAX_FIELD],
        "dtm": str(ev.ts),
        "se_ca": ev.event_type[:MAX_FIELD],
        "se_ac": ev.name[:MAX_FIELD],
    }
    screen = ev.data.get("screen_name")
    if isinstance(screen, str) and screen:
        p["se_la"] = screen[:MAX_FIELD]
    cid = ev.customer_id
    if cid is not None:
        p["uid"] = cid[:255]
    if ev.session_uuid is not None and ev.event_num is not None and ev.session_start is not None:
        if ev.facts is None:
            raise Unsendable(
                "session_number unknown: the step has no session record of "
                f"{ev.session_uuid} and the runner gave no session lookup"
            )
        if not 0 <= ev.facts.number <= MAX_INDEX or not 0 <= ev.event_num <= MAX_INDEX:
            raise Unsendable("sessionIndex or eventIndex over 2147483647")
        prev = ev.facts.previous_uuid
        session = {
            "userId": user_id(ev.device),
            "sessionId": ev.session_uuid.lower(),
            "sessionIndex": ev.facts.number,
            "eventIndex": ev.event_num,
            "previousSessionId": prev.lower() if prev else None,
            "storageMechanism": "LOCAL_STORAGE" if web else "SQLITE",
            "firstEventId": eid(ev.session_uuid, 1),
            "firstEventTimestamp": iso_ms(ev.session_start),
        }
        p["co"] = codec.dumps(
            {"schema": CONTEXTS, "data": [{"schema": CLIENT_SESSION, "data": session}]}
        ).decode()
    return p


def session(rec: dict[str, Any]) -> list[dict[str, Any]]:
    return []  # every event carries its client_session context
