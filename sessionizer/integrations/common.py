"""What every destination reads the same way from the §7 outputs (docs/integrations.md).

Everything here is pure: the same §7 record always gives the same bytes. Ids that
a destination deduplicates on are UUIDv5 of the session's ids under fixed
namespaces (changing one would make every earlier delivery look new).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Protocol

import orjson

from .. import codec
from ..core.engine import Engine, identity

# Fixed forever (see the module docstring).
DEDUP_NS = uuid.UUID("a4d2e1f0-6b3c-4e5d-8f7a-1b2c3d4e5f60")
DEVICE_NS = uuid.UUID("3c0e6f5a-1d2b-4b7a-8e4f-9a6b2c1d0e33")

# Synthesized §7.1 events: the §7.2 session records stand for them (richer, and
# exactly one per start/close), so translations skip them to send nothing twice.
SYNTHESIZED = frozenset({"session_start", "session_end"})

# Dead-letter reasons of the integrations (docs/integrations.md#dead-letters), after the
# engine's (core.model.ALL_DEAD_LETTER_REASONS) in schemas/dead-letter.schema.json.
UNSENDABLE = "integration_unsendable"  # a translation (or a pre-send check) cannot make it valid
REJECTED = "integration_rejected"  # the destination answered 4xx (not 429)
DEAD_LETTER_REASONS = (UNSENDABLE, REJECTED)


class Unsendable(Exception):
    """The item cannot be made valid for the destination: a dead letter, with this reason."""


@dataclass(frozen=True, slots=True)
class SessionFacts:
    """What a §7.1 event does not carry about its session; fixed for the session's life (R13)."""

    number: int
    previous_uuid: str | None


class OptionSettings(Protocol):
    """What ``Options.of`` reads of ``sessionizer.settings.Settings`` (which loads the
    registry of integrations: no import back)."""

    @property
    def ga4_client_id_field(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class Options:
    """What the settings choose about translations; every runner passes the same."""

    # Dotted path into an event with its batch fields (§7.1) of GA4's client id
    # (setting ga4_client_id_field); None: always derived from the device.
    ga4_client_id_field: str | None = None

    @classmethod
    def of(cls, settings: OptionSettings) -> Options:
        """The options of a ``sessionizer.settings.Settings``."""
        return cls(ga4_client_id_field=settings.ga4_client_id_field)


DEFAULT_OPTIONS = Options()


# (session key "app/device", session_uuid) -> facts, or None when unknown.
SessionLookup = Callable[[str, str], "SessionFacts | None"]


def engine_lookup(engine: Engine) -> SessionLookup:
    """A lookup into an engine's state (its open and last closed session of each key):
    what a runner passes after an engine step (see ``translate``)."""

    def find(key: str, session_uuid: str) -> SessionFacts | None:
        st = engine.key_state(key)
        if st is None:
            return None
        for s in (st.open, st.last):
            if s is not None and s.uuid == session_uuid:
                return SessionFacts(s.number, s.prev_uuid)
        return None

    return find


class Context:
    """Session facts of one step: the step's own session records first, then ``lookup``."""

    __slots__ = ("facts", "lookup")

    def __init__(self, facts: dict[str, SessionFacts], lookup: SessionLookup | None) -> None:
        self.facts = facts
        self.lookup = lookup

    def session(self, key: str, session_uuid: str) -> SessionFacts | None:
        f = self.facts.get(session_uuid)
        if f is None and self.lookup is not None:
            f = self.lookup(key, session_uuid)
        return f


@dataclass(frozen=True, slots=True)
class Event:
    """One forwarded §7.1 event with what every destination reads of it and its record."""

    record: dict[str, Any]  # the §7.1 record (batch fields; ``events`` for a batch)
    event: dict[str, Any]  # the event object: event_type, data
    index: int  # position in the record's events (0 for a single event)
    app: str
    device: str
    key: str  # session key app/device
    ts: int
    session_uuid: str | None  # None: late, no session (R24)
    session_start: int | None
    event_num: int | None
    facts: SessionFacts | None

    @property
    def data(self) -> dict[str, Any]:
        d = self.event.get("data")
        return d if isinstance(d, dict) else {}

    @property
    def event_type(self) -> str:
        t = self.event.get("event_type")
        return t if isinstance(t, str) else "unknown"

    @property
    def name(self) -> str:
        """The event's name: ``event_name``, the transition type, else ``event_type``."""
        d = self.data
        for k in ("event_name", "application_transition_type"):
            v = d.get(k)
            if isinstance(v, str) and v:
                return v
        return self.event_type

    @property
    def attributes(self) -> dict[str, Any]:
        """The event's own properties: ``custom_attributes`` plus ``screen_name``."""
        d = self.data
        out: dict[str, Any] = {}
        ca = d.get("custom_attributes")
        if isinstance(ca, dict):
            out.update(ca)
        sn = d.get("screen_name")
        if isinstance(sn, str) and "screen_name" not in out:
            out["screen_name"] = sn
        return out

    @property
    def mpid(self) -> Any:
        return self.record.get("mpid")

    @property
    def customer_id(self) -> str | None:
        ui = self.record.get("user_identities")
        if isinstance(ui, dict):
            v = ui.get("customer_id")
            if isinstance(v, str) and v:
                return v
        return None

    @property
    def late(self) -> bool:
        return self.session_uuid is None

    def field(self, path: str) -> Any:
        """The value at dotted ``path`` in the event with its batch fields (as §7.3
        shows one event of a batch: the event's own fields win), None when absent."""
        first, _, rest = path.partition(".")
        if first in self.event:
            cur: Any = self.event[first]
        elif first != "events":
            cur = self.record.get(first)
        else:
            return None
        for seg in rest.split(".") if rest else ():
            if not isinstance(cur, dict):
                return None
            cur = cur.get(seg)
        return cur

    def content_digest(self) -> str:
        """Hex digest of the event as forwarded (device, position, canonical JSON): the
        dedup seed of a late event, which has no session_uuid/event_num."""
        # Sorted keys: the digest must not depend on how a producer ordered the fields.
        body = orjson.dumps([self.device, self.index, self.event], option=orjson.OPT_SORT_KEYS)
        return hashlib.sha256(body).hexdigest()


def device_of(record: Mapping[str, Any]) -> str | None:
    """The record's device, by the identity rule (§1.2) the engine keyed it with."""
    ident = identity(dict(record))
    return None if ident is None else ident[1]


def dedup_uuid(*parts: object) -> str:
    """A lower-case UUIDv5 of ``parts`` joined by "/" (36 chars of [0-9a-f-])."""
    return str(uuid.uuid5(DEDUP_NS, "/".join(str(p) for p in parts)))


def event_dedup_uuid(ev: Event) -> str:
    """The event's dedup id: of (session_uuid, event_num), else of its content (late)."""
    if ev.session_uuid is not None and ev.event_num is not None:
        return dedup_uuid(ev.session_uuid.lower(), ev.event_num)
    return dedup_uuid("late", ev.content_digest())


def device_uuid(device: str) -> uuid.UUID:
    return uuid.uuid5(DEVICE_NS, device)


def iso_ms(ms: int) -> str:
    """``2026-01-01T00:00:00.000+00:00`` (the form analytics-python writes)."""
    dt = datetime.fromtimestamp(ms / 1000, tz=timezone.utc)
    return dt.isoformat(timespec="milliseconds")


def _text(record: Mapping[str, Any], table: str, name: str) -> str | None:
    """``record[table][name]`` when it is a non-empty string."""
    info = record.get(table)
    if isinstance(info, dict):
        v = info.get(name)
        if isinstance(v, str) and v:
            return v
    return None


def platform(record: Mapping[str, Any]) -> str | None:
    return _text(record, "device_info", "platform")


def is_app(record: Mapping[str, Any]) -> bool:
    """An app (not a web page): an ``application_info.package`` or a mobile platform."""
    if _text(record, "application_info", "package") is not None:
        return True
    return (platform(record) or "").lower() in {"ios", "android", "tvos", "fireos", "roku"}


def app_version(record: Mapping[str, Any]) -> str | None:
    return _text(record, "application_info", "application_version")


# What a session_end record's event carries of it (Amplitude, Mixpanel).
END_FIELDS = (
    "session_duration_ms",
    "foreground_duration_ms",
    "event_count",
    "screen_view_count",
    "end_reason",
    "revision",
)


def end_event(rec: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """A session_end record's event name and properties: revision 0 is ``session_end``,
    a later revision ``session_revised`` (docs/integrations.md, "Revised sessions")."""
    name = "session_end" if rec["revision"] == 0 else "session_revised"
    return name, {k: rec[k] for k in END_FIELDS}


def truncate(value: Any, limit: int) -> Any:
    """Strings cut to ``limit`` characters, in lists and dicts too."""
    if isinstance(value, str):
        return value[:limit]
    if isinstance(value, list):
        return [truncate(v, limit) for v in value]
    if isinstance(value, dict):
        return {k: truncate(v, limit) for k, v in value.items()}
    return value


def dead_letter(
    name: str,
    reason: str,
    detail: str,
    topic: str,
    payload: Any,
    *,
    response: dict[str, Any] | None = None,
    source: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """An integration dead letter: a §7.3 dead letter (schemas/dead-letter.schema.json)
    with ``destination`` and, for a refusal, ``response``."""
    dl: dict[str, Any] = {
        "reason": reason,
        "detail": f"{name}: {detail}",
        "destination": name,
        "source": source or {"topic": topic, "partition": None, "offset": None, "timestamp": None},
        "payload": payload if isinstance(payload, str) else codec.dumps(payload).decode(),
        "payload_encoding": "utf-8",
    }
    if response is not None:
        dl["response"] = response
    return dl
