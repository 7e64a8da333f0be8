"""GA4 Measurement Protocol request bodies (docs/integrations.md#ga4). Pure.

The events of one §7.1 record (one device) -> bodies of at most 25 events.
Names are sanitised, never dropped: event and parameter names to
``[A-Za-z][A-Za-z0-9_]{0,39}`` off the reserved names and prefixes, at most 25
parameters per event, string values cut to 100 characters. Session records
send nothing (``session_start`` is reserved; GA4 makes its sessions from
``params.session_id``). Each event carries its own ``timestamp_micros``; the
72-hour limit depends on when it is sent, so the forwarder applies it.
``client_id``/``app_instance_id``: the value of the field the setting
``ga4_client_id_field`` names when GA4 accepts it, else derived from the device.
"""

from __future__ import annotations

import math
import re
from typing import Any

from .. import codec
from .common import DEFAULT_OPTIONS, Event, Options, device_uuid, is_app

NAME = "ga4"
MAX_EVENTS = 25
MAX_PARAMS = 25
MAX_NAME = 40
MAX_VALUE = 100
MAX_USER_ID = 256
MAX_CLIENT_ID = 256
_APP_INSTANCE_ID = re.compile(r"[0-9A-Fa-f]{32}")  # what the Firebase SDK gives
_CLIENT_ID = re.compile(rf"[!-~]{{1,{MAX_CLIENT_ID}}}")  # printable ASCII, no spaces
_BAD = re.compile(r"[^A-Za-z0-9_]")
RESERVED = frozenset(
    {
        "ad_activeview", "ad_click", "ad_exposure", "ad_impression", "ad_query",
        "ad_reward", "adunit_exposure", "app_background", "app_clear_data",
        "app_exception", "app_install", "app_remove", "app_store_refund",
        "app_store_subscription_cancel", "app_store_subscription_convert",
        "app_store_subscription_renew", "app_update", "app_upgrade",
        "dynamic_link_app_open", "dynamic_link_app_update", "dynamic_link_first_open",
        "error", "firebase_campaign", "firebase_in_app_message_action",
        "firebase_in_app_message_dismiss", "firebase_in_app_message_impression",
        "first_open", "first_visit", "in_app_purchase", "notification_dismiss",
        "notification_foreground", "notification_open", "notification_receive",
        "notification_send", "os_update", "screen_view", "session_start",
        "user_engagement",
    }
)  # fmt: skip
RESERVED_PARAMS = frozenset({"firebase_conversion"})
RESERVED_PREFIXES = ("_", "firebase_", "ga_", "google_", "gtag")


def sanitise_name(name: str, reserved: frozenset[str] = RESERVED) -> str:
    """A valid, unreserved GA4 name; the same input always gives the same name."""
    n = _BAD.sub("_", name)
    if not n or not n[0].isalpha() or not n[0].isascii():
        n = "e_" + n
    if n.lower().startswith(RESERVED_PREFIXES):
        n = "e_" + n
    if n.lower() in reserved:
        n = "mp_" + n
    return n[:MAX_NAME]


def client_id(device: str) -> str:
    """A web stream's ``client_id``: a UUID derived from the device."""
    return str(device_uuid(device))


def app_instance_id(device: str) -> str:
    """An app stream's ``app_instance_id``: 32 hex digits derived from the device."""
    return device_uuid(device).hex


def configured_id(value: Any, app: bool) -> str | None:
    """A configured field's value as GA4's id, None when GA4 would not take it:
    ``app_instance_id`` 32 hex digits (lower-cased), ``client_id`` 1-256 printable
    ASCII characters; a number counts as its JSON text. Never raises."""
    if isinstance(value, str):
        text = value
    elif isinstance(value, bool):
        return None
    elif isinstance(value, int):
        if value.bit_length() > 1024:
            return None  # over 256 digits; str() of a huge int may raise
        text = str(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            return None
        text = codec.dumps(value).decode()
    else:
        return None
    if app:
        return text.lower() if _APP_INSTANCE_ID.fullmatch(text) else None
    return text if _CLIENT_ID.fullmatch(text) else None


def instance_id(ev: Event, options: Options = DEFAULT_OPTIONS) -> tuple[str, str]:
    """``("app_instance_id" | "client_id", id)`` of one event."""
    app = is_app(ev.record)
    path = options.ga4_client_id_field
    got = None if path is None else configured_id(ev.field(path), app)
    if app:
        return "app_instance_id", got or app_instance_id(ev.device)
    return "client_id", got or client_id(ev.device)


def _value(v: Any) -> Any:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return v
    if isinstance(v, str):
        return v[:MAX_VALUE]
    return codec.dumps(v).decode()[:MAX_VALUE]


def event(ev: Event) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if ev.session_start is not None:
        params["session_id"] = ev.session_start
        if ev.facts is not None:
            params["session_number"] = ev.facts.number
        params["event_num"] = ev.event_num
    params["engagement_time_msec"] = 1
    for k, v in ev.attributes.items():
        if len(params) >= MAX_PARAMS:
            break
        if v is None:
            continue
        name = sanitise_name(str(k), RESERVED_PARAMS)
        if name in params:
            continue  # two attributes sanitised to one name: the first wins
        params[name] = _value(v)
    return {
        "name": sanitise_name(ev.name),
        "timestamp_micros": ev.ts * 1000,
        "params": params,
    }


def group(
    evs: list[Event], items: list[dict[str, Any]], options: Options = DEFAULT_OPTIONS
) -> list[dict[str, Any]]:
    """One device's events of one record -> bodies of at most 25 consecutive events
    with the same id (``instance_id``)."""
    if not items:
        return []
    user: dict[str, Any] = {}
    cid = evs[0].customer_id
    if cid is not None and len(cid) <= MAX_USER_ID:
        user["user_id"] = cid
    bodies: list[dict[str, Any]] = []
    head = instance_id(evs[0], options)
    run: list[dict[str, Any]] = []
    for ev, item in zip(evs, items, strict=True):
        h = instance_id(ev, options)
        if run and (h != head or len(run) == MAX_EVENTS):
            bodies.append(_body(head, user, run))
            run = []
        head = h
        run.append(item)
    bodies.append(_body(head, user, run))
    return bodies


def _body(
    head: tuple[str, str], user: dict[str, Any], events: list[dict[str, Any]]
) -> dict[str, Any]:
    return {head[0]: head[1], **user, "events": events}


def session(rec: dict[str, Any]) -> list[dict[str, Any]]:
    return []  # session_start is reserved; GA4 sessions come from params.session_id
