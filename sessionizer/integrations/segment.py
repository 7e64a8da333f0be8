"""Segment (and RudderStack) track calls (docs/integrations.md#segment). Pure.

One §7.1 event -> one ``track`` call, in the shape ``analytics-python`` queues
(``timestamp`` ISO-8601 with milliseconds, ``messageId``). The session rides on
every call as ``context.sessionId`` (= ``session_start_unixtime_ms``) and
``context.sessionStart: true`` on its first event (RudderStack's session
fields); session records are not sent as calls. A call over 32 KB (Segment's
per-message limit) is a dead letter.
"""

from __future__ import annotations

from typing import Any

from .. import codec
from .common import Event, Unsendable, app_version, event_dedup_uuid, iso_ms

NAME = "segment"
MAX_MESSAGE_BYTES = 32 * 1024


def event(ev: Event) -> dict[str, Any]:
    call: dict[str, Any] = {
        "type": "track",
        "event": ev.name,
        "anonymousId": ev.device,
        "timestamp": iso_ms(ev.ts),
        "messageId": event_dedup_uuid(ev),
    }
    if ev.mpid is not None and str(ev.mpid):
        call["userId"] = str(ev.mpid)
    props: dict[str, Any] = dict(ev.attributes)
    if ev.session_uuid is not None:
        props["session_uuid"] = ev.session_uuid.lower()
        props["event_num"] = ev.event_num
    call["properties"] = props
    context: dict[str, Any] = {}
    if ev.session_start is not None:
        context["sessionId"] = ev.session_start
        if ev.event_num == 1:
            context["sessionStart"] = True
    version = app_version(ev.record)
    if version is not None:
        context["app"] = {"version": version}
    call["context"] = context
    size = len(codec.dumps(call))
    if size > MAX_MESSAGE_BYTES:
        raise Unsendable(f"call of {size} bytes is over the 32 KB limit")
    return call


def session(rec: dict[str, Any]) -> list[dict[str, Any]]:
    return []  # sessions reach Segment as context.sessionId / sessionStart on events
