"""JSON Schema checks of sessionizer's records against ``schemas/*.schema.json``.

For tests: ``validate_output(topic_name, value)`` raises ``SchemaMismatch`` (an
``AssertionError``) naming the topic, the schema, every failing JSON path and the
record. The schemas are loaded once, with ``format`` checking on (``uuid``).

Topic names may be the defaults (``sessionized-events``, ``sessions``,
``dead-letters``), a prefixed name such as the integration tests' unique
``<prefix>-sessions``, or a role name (``sessionized_events``).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, relevance

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"

# Default topic name -> schema file. Longest names first: "-sessions" must not
# shadow "-sessionized-events" when matching suffixes.
SCHEMA_FILES = {
    "sessionized-events": "sessionized-event.schema.json",
    "dead-letters": "dead-letter.schema.json",
    "raw-events": "raw-event.schema.json",
    "sessions": "session.schema.json",
}
OUTPUT_TOPICS = ("sessionized-events", "sessions", "dead-letters")

_MAX_ERRORS = 8
_MAX_SHOWN = 2000


class SchemaMismatch(AssertionError):
    """A record does not match its topic's schema."""


def schema_path(topic: str) -> Path:
    return SCHEMA_DIR / SCHEMA_FILES[topic_kind(topic)]


@functools.cache
def load_schema(file_name: str) -> dict[str, Any]:
    with open(SCHEMA_DIR / file_name, encoding="utf-8") as f:
        schema: dict[str, Any] = json.load(f)
    return schema


def validator(topic: str) -> Draft202012Validator:
    """The validator of a topic's records (one per schema, built once)."""
    return _validator(SCHEMA_FILES[topic_kind(topic)])


@functools.cache
def _validator(file_name: str) -> Draft202012Validator:
    schema = load_schema(file_name)
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


def topic_kind(topic_name: str) -> str:
    """The default topic name a (possibly prefixed or role-named) topic stands for."""
    name = topic_name.replace("_", "-")
    for kind in SCHEMA_FILES:
        if name == kind or name.endswith(("-" + kind, "." + kind)):
            return kind
    raise ValueError(
        f"no schema for topic {topic_name!r}: expected one of {sorted(SCHEMA_FILES)}, "
        "or a name ending with '-<one of them>'"
    )


def _decode(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return json.loads(bytes(value).decode("utf-8"))
    if isinstance(value, str):
        return json.loads(value)
    return value


def _where(path: Iterable[Any]) -> str:
    out = "$"
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else f".{p}"
    return out


def _leaves(err: ValidationError) -> list[ValidationError]:
    """The most specific errors under ``err`` (oneOf/anyOf wrap their branches' errors).

    Branches whose discriminator failed (a ``const`` such as ``record`` or
    ``event_type``) are left out when another branch got past its discriminator.
    """
    if not err.context:
        return [err]
    branches: dict[Any, list[ValidationError]] = {}
    for sub in err.context:
        branches.setdefault(sub.relative_schema_path[0], []).append(sub)
    chosen = [b for b in branches.values() if not any(e.validator == "const" for e in b)]
    out: list[ValidationError] = []
    for branch in chosen or list(branches.values()):
        for sub in sorted(branch, key=relevance):
            out.extend(_leaves(sub))
    return out


def errors(topic_name: str, value: Any) -> list[str]:
    """Every schema violation of ``value`` (a dict, or its JSON text/bytes), as lines."""
    v = validator(topic_name)
    found = sorted(v.iter_errors(_decode(value)), key=relevance)
    lines: list[str] = []
    for err in found:
        where = _where(err.absolute_path)
        rule = "/".join(str(p) for p in err.absolute_schema_path)
        if err.context:
            lines.append(f"{where}: matches no branch of {err.validator} (schema: {rule})")
            for leaf in _leaves(err)[:_MAX_ERRORS]:
                lines.append(f"    {_where(leaf.absolute_path)}: {leaf.message}")
        else:
            lines.append(f"{where}: {err.message} (schema: {rule})")
    return lines


def validate(topic_name: str, value: Any) -> None:
    """Raises SchemaMismatch when ``value`` does not match the topic's schema."""
    problems = errors(topic_name, value)
    if not problems:
        return
    shown = value if isinstance(value, (str, bytes)) else json.dumps(value, sort_keys=True)
    if isinstance(shown, bytes):
        shown = shown.decode("utf-8", "replace")
    if len(shown) > _MAX_SHOWN:
        shown = shown[:_MAX_SHOWN] + "…"
    kind = topic_kind(topic_name)
    raise SchemaMismatch(
        f"record on {topic_name!r} does not match schemas/{SCHEMA_FILES[kind]}:\n  "
        + "\n  ".join(problems[: 4 * _MAX_ERRORS])
        + f"\n  record: {shown}"
    )


def validate_output(topic_name: str, value: Any) -> None:
    """Checks one output record (§7) against its topic's schema; raises SchemaMismatch.

    ``topic_name`` is the topic it was read from (default or prefixed name);
    ``value`` the decoded record value (bytes or str are decoded first).
    """
    kind = topic_kind(topic_name)
    if kind not in OUTPUT_TOPICS:
        raise ValueError(f"{topic_name!r} is not an output topic: {OUTPUT_TOPICS}")
    validate(topic_name, value)


def validate_input(value: Any) -> None:
    """Checks one raw-events record value (§1.1); raises SchemaMismatch."""
    validate("raw-events", value)
