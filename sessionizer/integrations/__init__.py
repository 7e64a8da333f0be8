"""Translations of the §7 outputs into each destination's terms (docs/integrations.md).

``translate(name, outputs, lookup, options)`` is the one entry point of every runner (the
worker and replay after each engine step, ``process-file --integrations`` over
its output files): a pure function of the step's §7 outputs that returns the
records of the topic ``integrations.<name>`` (key: device; one event object,
or for ``ga4`` one Measurement Protocol body) and the integration dead letters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from .. import codec
from ..core.engine import identity
from ..core.model import DEAD_LETTERS, EVENTS, SESSIONS, TOPIC_NAMES
from . import amplitude, ga4, mixpanel, segment, snowplow
from .common import (
    DEFAULT_OPTIONS,
    SYNTHESIZED,
    UNSENDABLE,
    Context,
    Event,
    Options,
    SessionFacts,
    SessionLookup,
    Unsendable,
    dead_letter,
    engine_lookup,
)

__all__ = [
    "NAMES",
    "REGISTRY",
    "Options",
    "SessionFacts",
    "SessionLookup",
    "engine_lookup",
    "parse_names",
    "topic_name",
    "translate",
    "translate_keyed",
    "write_files",
]

# name -> module with event(Event) -> dict, session(record) -> [dict] and,
# for ga4, group(events, items, options) -> bodies. RudderStack takes Segment's calls.
REGISTRY: dict[str, ModuleType] = {
    "amplitude": amplitude,
    "ga4": ga4,
    "mixpanel": mixpanel,
    "rudderstack": segment,
    "segment": segment,
    "snowplow": snowplow,
}
NAMES = tuple(sorted(REGISTRY))

Output = tuple[Any, Any, dict[str, Any]]
Payload = tuple[str, dict[str, Any]]
Grouper = Callable[[list[Event], list[dict[str, Any]], Options], list[dict[str, Any]]]

_KINDS: dict[Any, int] = {EVENTS: EVENTS, SESSIONS: SESSIONS, DEAD_LETTERS: DEAD_LETTERS}
for _i, _n in enumerate(TOPIC_NAMES):
    _KINDS[_n] = _i
    _KINDS[_n.replace("-", "_")] = _i


def topic_name(name: str, base: str = "integrations") -> str:
    """The topic a destination's records go to: ``<base>.<name>``, ``base`` the
    setting ``topics.integrations`` (``Settings.topics.integration(name)``)."""
    return f"{base}.{name}"


def parse_names(text: str) -> list[str]:
    """``"amplitude,ga4"`` -> ``["amplitude", "ga4"]``; unknown names raise ValueError."""
    names: list[str] = []
    for n in (n.strip().lower() for n in text.split(",")):
        if n and n not in names:
            names.append(n)
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        raise ValueError(f"unknown integration(s) {unknown}; known: {list(NAMES)}")
    return names


def _kind(kind: Any) -> int:
    k = _KINDS.get(kind)
    if k is None:
        raise ValueError(f"not a §7 output topic: {kind!r} (one of {TOPIC_NAMES})")
    return k


def _ts(data: dict[str, Any], record: dict[str, Any]) -> int:
    for v in (data.get("timestamp_unixtime_ms"), record.get("timestamp_unixtime_ms")):
        if type(v) is int:
            return v
        if type(v) is float and v.is_integer():
            return int(v)
    raise Unsendable("the event's time is not in the record (it came from the Kafka timestamp)")


def _identity_payload(record: dict[str, Any], event: dict[str, Any]) -> dict[str, Any]:
    """The event with its batch fields (as a §7.3 dead letter of one event shows it)."""
    if "events" not in record:
        return record
    return {**{k: v for k, v in record.items() if k != "events"}, **event}


def _events_of(record: dict[str, Any]) -> Iterator[tuple[int, dict[str, Any]]]:
    evs = record.get("events")
    if isinstance(evs, list):
        for i, e in enumerate(evs):
            if isinstance(e, dict):
                yield i, e
    else:
        yield 0, record


def _record(
    name: str,
    mod: ModuleType,
    record: dict[str, Any],
    ctx: Context,
    out: list[Payload],
    dead: list[tuple[Any, dict[str, Any]]],
    key: Any = None,
    options: Options = DEFAULT_OPTIONS,
) -> None:
    ident = identity(record)
    topic = TOPIC_NAMES[EVENTS]
    evs: list[Event] = []
    items: list[dict[str, Any]] = []
    for index, e in _events_of(record):
        if e.get("event_type") in SYNTHESIZED:
            continue  # the session records stand for these
        data = e.get("data")
        data = data if isinstance(data, dict) else {}
        try:
            if ident is None:
                raise Unsendable("the record names no device (§1.2)")
            app, device = ident
            skey = f"{app}/{device}"
            suuid = data.get("session_uuid")
            suuid = suuid if isinstance(suuid, str) else None
            ev = Event(
                record=record,
                event=e,
                index=index,
                app=app,
                device=device,
                key=skey,
                ts=_ts(data, record),
                session_uuid=suuid,
                session_start=data.get("session_start_unixtime_ms") if suuid else None,
                event_num=data.get("event_num") if suuid else None,
                facts=ctx.session(skey, suuid) if suuid else None,
            )
            items.append(mod.event(ev))
            evs.append(ev)
        except Unsendable as err:
            dead.append(
                (key, dead_letter(name, UNSENDABLE, str(err), topic, _identity_payload(record, e)))
            )
    if not items:
        return
    group: Grouper | None = getattr(mod, "group", None)
    device = evs[0].device
    for payload in group(evs, items, options) if group is not None else items:
        out.append((device, payload))


def translate(
    name: str,
    outputs: Iterable[Output],
    lookup: SessionLookup | None = None,
    options: Options = DEFAULT_OPTIONS,
) -> tuple[list[Payload], list[dict[str, Any]]]:
    """The records of ``integrations.<name>`` for the §7 outputs of one engine step.

    ``outputs``: ``(topic, key, value)`` with ``topic`` a ``core.model`` topic
    (``EVENTS``/``SESSIONS``/``DEAD_LETTERS``) or its name (``"sessionized-events"``,
    ``"sessionized_events"``, ...). ``lookup`` tells the session number of a
    session whose records are not in the step: runners pass
    ``engine_lookup(engine)`` (the facts never change, R13, so every runner gets the
    same bytes). ``options``: what the settings choose (``Options.of(settings)``),
    the same in every runner. Returns ``([(device, payload)], [dead letter])``; §7.3
    dead letters translate to nothing. Deterministic; never raises on a §7 record.
    """
    out, dead = translate_keyed(name, outputs, lookup, options)
    return out, [dl for _key, dl in dead]


def translate_keyed(
    name: str,
    outputs: Iterable[Output],
    lookup: SessionLookup | None = None,
    options: Options = DEFAULT_OPTIONS,
) -> tuple[list[Payload], list[tuple[Any, dict[str, Any]]]]:
    """``translate``, each dead letter with the key of the §7 output it was made
    from (§7.3: the source record's key), as a runner writes it."""
    mod = REGISTRY[name]
    steps = [(_kind(k), key, v) for k, key, v in outputs]
    facts: dict[str, SessionFacts] = {}
    for kind, _key, v in steps:
        if kind == SESSIONS and isinstance(v.get("session_uuid"), str):
            facts[v["session_uuid"]] = SessionFacts(
                v.get("session_number", 0), v.get("previous_session_uuid")
            )
    ctx = Context(facts, lookup)
    out: list[Payload] = []
    dead: list[tuple[Any, dict[str, Any]]] = []
    for kind, key, v in steps:
        if kind == EVENTS:
            _record(name, mod, v, ctx, out, dead, key, options)
        elif kind == SESSIONS:
            try:
                payloads = mod.session(v)
            except Unsendable as err:
                dl = dead_letter(name, UNSENDABLE, str(err), TOPIC_NAMES[SESSIONS], v)
                dead.append((key, dl))
                continue
            out.extend((str(v["device"]), p) for p in payloads)
    return out, dead


def _lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [codec.loads(line) for line in path.read_bytes().splitlines() if line]


def file_outputs(out_dir: str | Path) -> list[Output]:
    """The §7 outputs of a ``process-file`` run in the engine's own order.

    The engine writes each session record right after its synthesized
    ``session_start``/``session_end`` event (§7.1), so the two files merge back
    into the one sequence a streaming runner sees."""
    d = Path(out_dir)
    sessions = iter(_lines(d / f"{TOPIC_NAMES[SESSIONS]}.jsonl"))
    steps: list[Output] = []
    for rec in _lines(d / f"{TOPIC_NAMES[EVENTS]}.jsonl"):
        steps.append((EVENTS, None, rec))
        if "events" not in rec and rec.get("event_type") in SYNTHESIZED:
            s = next(sessions, None)
            if s is not None:
                steps.append((SESSIONS, s.get("session_uuid"), s))
    steps.extend((SESSIONS, s.get("session_uuid"), s) for s in sessions)
    return steps


def write_files(
    out_dir: str | Path, names: Iterable[str], options: Options = DEFAULT_OPTIONS
) -> dict[str, int]:
    """Writes DIR/integrations/<name>.jsonl (one record value a line) and
    <name>.dead-letters.jsonl from DIR's §7 output files, through ``translate``
    with ``options``. Returns the payload count per name."""
    d = Path(out_dir)
    steps = file_outputs(d)
    (d / "integrations").mkdir(exist_ok=True)
    counts: dict[str, int] = {}
    for name in names:
        out, dead = translate(name, steps, None, options)
        (d / "integrations" / f"{name}.jsonl").write_bytes(
            b"".join(codec.dumps_line(p) for _k, p in out)
        )
        (d / "integrations" / f"{name}.dead-letters.jsonl").write_bytes(
            b"".join(map(codec.dumps_line, dead))
        )
        counts[name] = len(out)
    return counts
