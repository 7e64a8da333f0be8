"""Settings (§8): defaults < TOML file < ``SESSIONIZER_*`` environment < command line.

Loaded once at start-up into frozen values. Every bad setting raises one
``ConfigError`` whose message is a single line naming the setting and where
its value came from; unknown keys are errors so that typos cannot pass silently.

Each setting is declared once, as a field of ``Settings`` (or of one of its
groups: ``Topics``, ``Security``, the ``[session]`` table that becomes
``Settings.engine``): its flat name, TOML path, default, parse rule and
description. The typed object's defaults, the environment names, parsing,
``Settings.sources`` and the generated reference
(``python -m sessionizer.settings --markdown``) all come from those fields.
"""

# The settings are dataclass fields made by _setting/_optional/_group (dataclasses.field()s).
# ruff: noqa: RUF009

from __future__ import annotations

import argparse
import dataclasses
import difflib
import hmac
import importlib
import json
import os
import re
import ssl
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal, TypeVar

from . import _native
from .core.config import DAY_MS, HOUR_MS, MINUTE_MS, AppOverrides, ConfigError, EngineConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib  # type: ignore[import-not-found, no-redef, unused-ignore]

__all__ = [
    "CONFIG_ENV",
    "ENV_PREFIX",
    "Secret",
    "Security",
    "SettingDoc",
    "Settings",
    "Source",
    "Topics",
    "describe_settings",
    "env_var",
    "load_settings",
    "main",
    "parse_duration_ms",
    "parse_size_bytes",
    "render_markdown",
    "setting_values",
]

ENV_PREFIX = "SESSIONIZER_"
CONFIG_ENV = "SESSIONIZER_CONFIG"
# Reserved for test harnesses, so they can pass their own knobs through the environment.
TEST_ENV_PREFIX = "SESSIONIZER_TEST_"
APPS_ENV = "SESSIONIZER_APPS"

Store = Literal["memory", "rocksdb"]
ProcessingGuarantee = Literal["at_least_once", "exactly_once"]
SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
Origin = Literal["default", "file", "env", "command line"]

_T = TypeVar("_T")
_S = TypeVar("_S", bound=str)


# --------------------------------------------------------------------------- values


class Secret:
    """A string that never shows itself in repr, str or error messages."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:
        return "***"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True, slots=True)
class Source:
    """Where a setting's value came from: ``origin`` and the variable or file behind it."""

    origin: Origin
    where: str = (
        ""  # the environment variable (for a default: the one that would set it), or the file
    )

    @property
    def user_set(self) -> bool:
        """Set by the user (file, environment or command line), not left at its default."""
        return self.origin != "default"

    @property
    def typed(self) -> bool:
        """A source with types of its own (the TOML file, SESSIONIZER_APPS), not plain text."""
        return self.origin == "file" or self.where == APPS_ENV

    def __str__(self) -> str:
        # As errors name it: the environment variable, "in FILE" or "command line".
        if self.origin == "file":
            return f"in {_quote(self.where)}"
        if self.origin == "command line":
            return "command line"
        return self.where


@dataclass(frozen=True, slots=True)
class SettingDoc:
    name: str
    env: str
    type: str
    default: str
    description: str


# --------------------------------------------------------------------------- parsers


class _Bad(Exception):
    """A value's problem, raised before we know which setting and source to name."""


_Parse = Callable[[object], object]

_DURATION_UNITS = {"ms": 1, "s": 1000, "m": MINUTE_MS, "h": HOUR_MS, "d": DAY_MS}
_DURATION_RE = re.compile(r"([0-9]{1,15}(?:\.[0-9]{1,9})?)\s*(ms|s|m|h|d)?", re.IGNORECASE)
_SIZE_UNITS = {"b": 1, "kib": 1024, "mib": 1024**2, "gib": 1024**3}
_SIZE_RE = re.compile(r"([0-9]{1,15})\s*(b|kib|mib|gib)?", re.IGNORECASE)
_INT_RE = re.compile(r"[0-9]{1,15}")
_TOPIC_RE = re.compile(r"[a-zA-Z0-9._-]{1,249}")
_HOST_RE = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?")
_BARE_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")
_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})


def _show(value: object) -> str:
    """A value for an error message: quoted, escaped to one line, cut short."""
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value[:60] + "..." if len(value) > 60 else value)
    return " ".join(repr(value).split())[:60]


def _quote(text: str) -> str:
    """Quote a name only when it would not read as one plain word."""
    return text if text and re.fullmatch(r"[\w./:@+-]+", text) else json.dumps(text)


def _amount(raw: object, pattern: re.Pattern[str]) -> int | tuple[str, str | None] | None:
    """An int as it is, (number, unit) of a matching string, or None."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        return raw
    if not isinstance(raw, str):
        return None
    m = pattern.fullmatch(raw.strip())
    return None if m is None else (m.group(1), m.group(2))


def parse_duration_ms(raw: object) -> int | None:
    """Integer milliseconds, or a string such as "100ms", "10s", "30m", "2h", "1.5h", "30d".

    Returns None when ``raw`` is not a duration (negative numbers are not).
    """
    amount = _amount(raw, _DURATION_RE)
    if not isinstance(amount, tuple):
        return amount
    number, unit = amount
    if unit is None and "." in number:
        return None
    ms = Fraction(number) * _DURATION_UNITS[(unit or "ms").lower()]
    return int(ms) if ms.denominator == 1 else None


def parse_size_bytes(raw: object) -> int | None:
    """Integer bytes, or a string such as "512KiB", "1MiB" (units B, KiB, MiB, GiB)."""
    amount = _amount(raw, _SIZE_RE)
    if not isinstance(amount, tuple):
        return amount
    number, unit = amount
    return int(number) * _SIZE_UNITS[(unit or "b").lower()]


def _bare_number(raw: object) -> int | None:
    """An integer without a unit (``30``, ``"30"``), else None."""
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and _INT_RE.fullmatch(raw.strip()):
        return int(raw)
    return None


def _duration(minimum: int, example: str) -> Callable[[object], int]:
    what = "a positive duration" if minimum > 0 else "a duration of 0 or more"

    def parse(raw: object) -> int:
        bare = _bare_number(raw)
        # A unit is required: `timeout = 30` read as 30 ms split every visit into sessions.
        if bare is not None and bare > 0:
            raise _Bad(
                f'needs a unit, such as "{bare}s" or "{bare}m" (units ms, s, m, h, d): '
                f"a bare number is not a duration, got {_show(raw)}"
            )
        ms = parse_duration_ms(raw)
        if ms is None or ms < minimum:
            raise _Bad(f'must be {what} such as "{example}", got {_show(raw)}')
        return ms

    return parse


def _duration_between(minimum: int, maximum: int, example: str) -> Callable[[object], int]:
    """A duration with a unit, from ``minimum`` to ``maximum`` ms."""
    needs_unit = _duration(0, example)  # its one line for a bare number
    what = f"a duration from {_ms_text(minimum)} to {_ms_text(maximum)}"

    def parse(raw: object) -> int:
        ms = parse_duration_ms(raw) if _bare_number(raw) in (None, 0) else needs_unit(raw)
        if ms is None or not minimum <= ms <= maximum:
            raise _Bad(f'must be {what} such as "{example}", got {_show(raw)}')
        return ms

    return parse


def _ms_text(ms: int) -> str:
    for unit in ("d", "h", "m", "s"):
        if ms % _DURATION_UNITS[unit] == 0:
            return f"{ms // _DURATION_UNITS[unit]}{unit}"
    return f"{ms}ms"


def _size(raw: object) -> int:
    size = parse_size_bytes(raw)
    if size is None or size < 1:
        raise _Bad(f'must be a positive size such as 1048576 or "1MiB", got {_show(raw)}')
    return size


def _integer(minimum: int, maximum: int | None = None) -> Callable[[object], int]:
    what = f"an integer >= {minimum}" if maximum is None else f"an integer {minimum}-{maximum}"

    def parse(raw: object) -> int:
        value = _bare_number(raw)
        if value is None or value < minimum or (maximum is not None and value > maximum):
            raise _Bad(f"must be {what}, got {_show(raw)}")
        return value

    _NATIVE[parse] = "an integer"
    return parse


def _boolean(raw: object) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str):
        word = raw.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
    raise _Bad(f"must be true or false, got {_show(raw)}")


# Parsers whose values a typed source (the TOML file, SESSIONIZER_APPS) must not quote:
# `partitions = "8"` is a string where the file means a number.
_NATIVE: dict[_Parse, str] = {_boolean: "true or false"}


def _parse(parse: _Parse, raw: object, source: Source) -> object:
    """``parse(raw)``, refusing a quoted number or boolean from a typed source."""
    value = parse(raw)
    native = _NATIVE.get(parse)
    if native is not None and isinstance(raw, str) and source.typed:
        raise _Bad(f"must be {native} without quotes, got the string {_show(raw)}")
    return value


def _choice(*options: _S) -> Callable[[object], _S]:
    # Case-insensitive in, canonical spelling out.
    canonical = {o.lower(): o for o in options}

    def parse(raw: object) -> _S:
        if isinstance(raw, str) and raw.strip().lower() in canonical:
            return canonical[raw.strip().lower()]
        raise _Bad(f"must be one of {', '.join(options)}, got {_show(raw)}")

    return parse


def _text(raw: object) -> str:
    if isinstance(raw, str) and raw.strip() and raw == raw.strip():
        return raw
    raise _Bad(f"must be a non-empty string without surrounding spaces, got {_show(raw)}")


def _host(raw: object) -> str:
    if isinstance(raw, str) and raw and not any(c.isspace() for c in raw):
        return raw
    raise _Bad(f'must be a host name or address such as "127.0.0.1", got {_show(raw)}')


def _secret(raw: object) -> Secret:
    # Never echo the value, not even a wrong one.
    if isinstance(raw, str) and raw:
        return Secret(raw)
    raise _Bad("must be a non-empty string")


_TOKEN_RE = re.compile(r"[\x21-\x7e]{16,}")


def _token(raw: object) -> Secret:
    # Sent in an HTTP header: printable ASCII, no spaces; long enough not to be guessed.
    if isinstance(raw, str) and _TOKEN_RE.fullmatch(raw):
        return Secret(raw)
    raise _Bad("must be at least 16 printable ASCII characters without spaces")


def _path(raw: object) -> Path:
    if isinstance(raw, str) and raw.strip():
        return Path(raw)
    raise _Bad(f"must be a non-empty path, got {_show(raw)}")


def _topic_name(raw: object) -> str:
    if isinstance(raw, str) and _TOPIC_RE.fullmatch(raw) and raw not in (".", ".."):
        return raw
    raise _Bad(
        f"must be a Kafka topic name (1-249 characters of a-z A-Z 0-9 . _ -), got {_show(raw)}"
    )


def _broker(raw: object) -> tuple[str, ...]:
    problem = (
        'must be "kafka://host:port[,host:port...]" or "host:port[,host:port...]", '
        f"got {_show(raw)}"
    )
    if not isinstance(raw, str):
        raise _Bad(problem)
    rest = raw.strip()
    if "://" in rest:
        scheme, _, rest = rest.partition("://")
        if scheme.lower() != "kafka":
            raise _Bad(problem)
    hosts = []
    for part in rest.split(","):
        host, sep, port = part.strip().rpartition(":")
        if not sep or not _valid_host(host) or not _INT_RE.fullmatch(port):
            raise _Bad(problem)
        if not 1 <= int(port) <= 65535:
            raise _Bad(f"port must be 1-65535, got {_show(raw)}")
        hosts.append(f"{host}:{int(port)}")
    return tuple(hosts)


def _valid_host(host: str) -> bool:
    if host.startswith("[") and host.endswith("]"):
        import ipaddress

        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return False
        return True
    return _HOST_RE.fullmatch(host) is not None


_URL_RE = re.compile(r"https?://[^\s/?#]+[^\s]*", re.IGNORECASE)


def _url(raw: object) -> str:
    # Empty: the destination's documented public endpoint.
    if isinstance(raw, str) and (raw == "" or _URL_RE.fullmatch(raw)):
        return raw
    raise _Bad(f'must be an http(s) URL such as "https://api.example.com/batch", got {_show(raw)}')


# Addresses a server binds to mean "every interface": nobody can connect to them.
WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", "[::]", "*", ""})


def _advertised_url(raw: object) -> str:
    if isinstance(raw, str) and _URL_RE.fullmatch(raw):
        from urllib.parse import urlsplit

        try:
            host = urlsplit(raw).hostname
        except ValueError:
            host = None
        if (
            host is not None
            and host not in WILDCARD_HOSTS
            and _valid_host(f"[{host}]" if ":" in host else host)
        ):
            return raw.rstrip("/")
    raise _Bad(
        "must be the http(s) URL other workers reach this one at, such as "
        f'"http://worker-1.internal:6066" (not a wildcard address), got {_show(raw)}'
    )


def _destinations() -> tuple[str, ...]:
    # Imported when needed: the integrations may read the settings themselves.
    registry = importlib.import_module("sessionizer.integrations").REGISTRY
    return tuple(sorted(registry))


_FIELD_PATH_RE = re.compile(r"[^.\s]+(?:\.[^.\s]+)*")


def _field_path(raw: object) -> str:
    """A dotted path into an event with its batch fields: ``user_attributes.ga_client_id``."""
    if not (isinstance(raw, str) and len(raw) <= 256 and _FIELD_PATH_RE.fullmatch(raw)):
        raise _Bad(
            f'must be a dotted field path such as "user_attributes.ga_client_id", got {_show(raw)}'
        )
    if raw.split(".")[0] == "events":
        raise _Bad(
            'must name an event\'s field without "events.", such as '
            f'"data.custom_attributes.ga_client_id", got {_show(raw)}'
        )
    return raw


def _integrations(raw: object) -> tuple[str, ...]:
    """Destination names: a TOML array, or comma-separated text (the environment)."""
    if isinstance(raw, str):
        names = [n.strip() for n in raw.split(",")]
    elif isinstance(raw, list) and all(isinstance(n, str) for n in raw):
        names = [n.strip() for n in raw]
    else:
        raise _Bad(f'must be a list of destinations such as ["amplitude", "ga4"], got {_show(raw)}')
    chosen: list[str] = []
    for name in names:
        if not name and isinstance(raw, str):
            continue  # "amplitude,,ga4", "" (none)
        known = _destinations()  # only when there is a name: not at import time
        if name.lower() not in known:
            raise _Bad(f"unknown destination {_show(name)}; known: {', '.join(known)}")
        if name.lower() not in chosen:
            chosen.append(name.lower())
    return tuple(chosen)


# --------------------------------------------------------------------------- declarations


@dataclass(frozen=True, slots=True)
class _Spec:
    key: str  # flat name: env var suffix and load_settings() keyword
    path: tuple[str, ...]  # where it lives in the TOML file
    type: str | Callable[[], str]  # for the reference; a function when it is worked out late
    default: object  # raw, fed through ``parse``; None = unset
    doc_default: str
    description: str
    parse: _Parse
    optional: bool = False  # an empty value means "unset"

    @property
    def name(self) -> str:
        return ".".join(self.path)

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.key.upper()


_SETTING = "sessionizer.setting"  # field metadata: the field's _Spec
_GROUP = "sessionizer.group"  # field metadata: the class declaring a group's settings


def _spec(
    key: str,
    type_: str | Callable[[], str],
    default: object,
    description: str,
    parse: _Parse,
    *,
    table: str | None,
    name: str | None,
    doc_default: str | None,
    optional: bool = False,
) -> dict[str, Any]:
    """Field metadata declaring one setting."""
    leaf = name or key
    shown = _show(default) if isinstance(default, bool) else str(default)
    spec = _Spec(
        key,
        (table, leaf) if table else (leaf,),
        type_,
        default,
        shown if doc_default is None else doc_default,
        description,
        parse,
        optional,
    )
    return {_SETTING: spec}


def _setting(
    key: str,
    type_: str | Callable[[], str],
    default: object,
    description: str,
    parse: Callable[[object], _T],
    *,
    table: str | None = None,
    name: str | None = None,
    doc_default: str | None = None,
) -> _T:
    """A field declaring one setting; its default is ``parse(default)``."""
    meta = _spec(
        key, type_, default, description, parse, table=table, name=name, doc_default=doc_default
    )
    return field(default=parse(default), metadata=meta)


def _optional(
    key: str,
    type_: str,
    description: str,
    parse: Callable[[object], _T],
    *,
    table: str | None = None,
    doc_default: str = "(unset)",
) -> _T | None:
    """A field declaring a setting that is unset (None) by default."""
    meta = _spec(
        key,
        type_,
        None,
        description,
        parse,
        table=table,
        name=None,
        doc_default=doc_default,
        optional=True,
    )
    return field(default=None, metadata=meta)


def _group(declared_by: type, factory: Callable[[], _T]) -> _T:
    """A field holding a group of settings, declared as the fields of ``declared_by``."""
    return field(default_factory=factory, metadata={_GROUP: declared_by})


def _topic(name: str, default: str, role: str) -> str:
    return _setting(
        f"topic_{name}", "topic name", default, role, _topic_name, table="topics", name=name
    )


@dataclass(frozen=True, slots=True)
class Topics:
    raw_events: str = _topic(
        "raw_events", "raw-events", "Input topic of raw mParticle records (§1)."
    )
    sessionized_events: str = _topic(
        "sessionized_events", "sessionized-events", "Output: events enriched with sessions (§7.1)."
    )
    sessions: str = _topic("sessions", "sessions", "Output: session start and end records (§7.2).")
    dead_letters: str = _topic(
        "dead_letters", "dead-letters", "Output: records that could not be used (§7.3)."
    )
    opt_out_control: str = _topic(
        "opt_out_control", "opt-out-control", "Compacted console opt-out topic (R19)."
    )
    integrations: str = _topic(
        "integrations",
        "integrations",
        "Output: each enabled destination's records go to `<this>.<destination>` "
        "([integrations.md](integrations.md)).",
    )

    def integration(self, name: str) -> str:
        """The topic of destination ``name``'s records: ``integrations.amplitude``."""
        return f"{self.integrations}.{name}"


@dataclass(frozen=True, slots=True)
class _Session:
    """The ``[session]`` table: the fields of ``EngineConfig`` by the same names, but ``apps``.

    ``Settings.engine`` is the EngineConfig of these values and the per-app overrides.
    """

    timeout_ms: int = _setting(
        "timeout",
        "duration > 0",
        "30m",
        "Session timeout after a background, or after the last event without lifecycle "
        "events (R4, R5, R8).",
        _duration(1, "30m"),
        table="session",
    )
    foreground_idle_timeout_ms: int | None = _optional(
        "foreground_idle_timeout",
        "duration > 0",
        "Inactivity timeout of a foregrounded session that never sends its background (R5).",
        _duration(1, "2h"),
        table="session",
        doc_default="4 x timeout",
    )
    resume_on_launch: bool = _setting(
        "resume_on_launch",
        "bool",
        False,
        "A launch resumes the open session instead of starting a new one (R2).",
        _boolean,
        table="session",
    )
    grace_ms: int = _setting(
        "grace",
        "duration >= 0",
        "2m",
        "How far the watermark must pass a deadline before the session closes (R21).",
        _duration(0, "2m"),
        table="session",
    )
    state_ttl_ms: int = _setting(
        "state_ttl",
        "duration > 0",
        "30d",
        "Keys idle this long (watermark time) are forgotten, opt-out flags excepted (§2).",
        _duration(1, "30d"),
        table="session",
    )
    max_session_attributes: int = _setting(
        "max_session_attributes",
        "integer >= 1",
        100,
        "Most session attribute names per session (R15).",
        _integer(1),
        table="session",
    )
    max_record_bytes: int = _setting(
        "max_record_bytes",
        "size > 0",
        "1MiB",
        "Larger input records are dead-lettered as too_large (§7.3).",
        _size,
        table="session",
    )
    max_future_skew_ms: int = _setting(
        "max_future_skew",
        "duration >= 0",
        "24h",
        "How far past the wall clock an event time may lie (§1.3).",
        _duration(0, "24h"),
        table="session",
    )


def _default_engine() -> EngineConfig:
    return EngineConfig(**_field_values(_Session()))


@dataclass(frozen=True, slots=True)
class Security:
    """Kafka connection security; validated here, applied by the broker clients."""

    protocol: SecurityProtocol = _setting(
        "security_protocol",
        "PLAINTEXT | SSL | SASL_PLAINTEXT | SASL_SSL",
        "PLAINTEXT",
        "Kafka connection security.",
        _choice("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"),
    )
    sasl_mechanism: SaslMechanism | None = _optional(
        "sasl_mechanism",
        "PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512",
        "SASL mechanism; required with SASL_PLAINTEXT and SASL_SSL.",
        _choice("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"),
    )
    sasl_username: str | None = _optional(
        "sasl_username", "string", "SASL user; required with SASL_*.", _text
    )
    sasl_password: Secret | None = _optional(
        "sasl_password", "secret", "SASL password; required with SASL_*. Never printed.", _secret
    )
    ssl_cafile: Path | None = _optional(
        "ssl_cafile",
        "file",
        "CA bundle for SSL and SASL_SSL (default: system CAs).",
        _path,
    )
    ssl_certfile: Path | None = _optional(
        "ssl_certfile", "file", "Client certificate (PEM) for SSL and SASL_SSL.", _path
    )
    ssl_keyfile: Path | None = _optional(
        "ssl_keyfile", "file", "Client private key (PEM); needs ssl_certfile.", _path
    )

    @property
    def uses_ssl(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    @property
    def uses_sasl(self) -> bool:
        return self.protocol in ("SASL_PLAINTEXT", "SASL_SSL")


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a command needs; ``Settings()`` is the built-in defaults."""

    broker_url: str = ""  # "": kafka:// and broker_hosts
    broker_hosts: tuple[str, ...] = _setting(
        "broker_url",
        "broker list",
        "kafka://127.0.0.1:9092",
        'Kafka bootstrap servers: "kafka://host:port[,host:port]" or "host:port[,host:port]".',
        _broker,
    )
    topics: Topics = _group(Topics, Topics)
    partitions: int = _setting(
        "partitions", "integer >= 1", 8, "Partitions of the topics the worker creates.", _integer(1)
    )
    replication_factor: int = _setting(
        "replication_factor",
        "integer >= 1",
        1,
        "Replication factor of the topics the worker creates.",
        _integer(1),
    )
    engine: EngineConfig = _group(_Session, _default_engine)
    idle_timeout_ms: int = _setting(
        "idle_timeout",
        "duration > 0",
        "10s",
        "Live mode: a partition silent this long advances its watermark by wall clock (R22).",
        _duration(1, "10s"),
    )
    store: Store = _setting(
        "store",
        "memory | rocksdb",
        "memory",
        "State store of the worker's tables: memory (rebuilt from the changelog at every "
        "start) or rocksdb (on disk in data_dir, one worker per directory: a restart reads "
        "no changelog; the Docker image's store, [operations.md](operations.md#state-store)).",
        _choice("memory", "rocksdb"),
    )
    standby_replicas: int | None = _optional(
        "standby_replicas",
        "integer >= 0",
        "Standby replicas of the worker's state table (Faust's table_standby_replicas): "
        "this many other workers of the group also read each partition's changelog, so "
        "one that takes the partition over holds its state already. This shortens a "
        "takeover only with store = rocksdb; with memory, Faust reads the whole changelog "
        "again anyway, and a standby only costs memory and CPU ([performance.md]"
        "(performance.md#failover-and-standby-replicas-make-bench-failover)).",
        _integer(0),
        doc_default="1 with store = rocksdb, 0 with memory",
    )
    processing_guarantee: ProcessingGuarantee = _setting(
        "processing_guarantee",
        "at_least_once | exactly_once",
        "at_least_once",
        "Kafka processing guarantee of the worker. at_least_once: after a crash some "
        "outputs are written again, byte-identical. exactly_once: each batch's outputs, "
        "state and marker are one Kafka transaction, so a consumer reading with "
        "`isolation.level=read_committed` sees each output once; Apache Kafka only (the "
        "embedded broker has no transactions: the worker refuses it at start-up), see "
        "[operations.md](operations.md#exactly-once-readers).",
        _choice("at_least_once", "exactly_once"),
    )
    transaction_interval_ms: int = _setting(
        "transaction_interval",
        "duration 10ms-1m",
        "100ms",
        "With exactly_once: how often a worker commits its open transaction. Outputs "
        "become visible to read_committed consumers only at the commit, so this adds up "
        "to its length to their end-to-end latency; shorter costs throughput (a commit "
        "per interval and partition), see "
        "[performance.md](performance.md#exactly-once-transaction-interval). Ignored "
        "with at_least_once.",
        _duration_between(10, 60_000, "100ms"),
    )
    web_port: int = _setting(
        "web_port",
        "integer 0-65535",
        6066,
        "Port of the worker's web server; 0: any free port, shown in the ready line. A port "
        "already in use (a second worker on the host) stops start-up with one line naming "
        "this setting.",
        _integer(0, 65535),
    )
    web_host: str = _setting(
        "web_host", "host", "127.0.0.1", "Address the worker's web server binds.", _host
    )
    web_advertised_url: str | None = _optional(
        "web_advertised_url",
        "http(s) URL",
        "The URL other workers use to reach this worker's web server (they forward "
        "`/sessions` to it) and that the ready line and `/health` show. Unset: "
        "`http://web_host:web_port`, with this machine's host name when web_host is "
        "`0.0.0.0` or `::`, which no one can connect to.",
        _advertised_url,
    )
    web_token: Secret | None = _optional(
        "web_token",
        "secret",
        "Bearer token that `/sessions` requires (`Authorization: Bearer <token>`); "
        "unset: `/sessions` answers only when web_host is loopback. Never printed.",
        _token,
    )
    stall_timeout_ms: int = _setting(
        "stall_timeout",
        "duration > 0",
        "60s",
        "`/health` reports a partition stalled when it has lag and has made no progress "
        "for this long.",
        _duration(1, "60s"),
    )
    data_dir: Path = _setting(
        "data_dir", "path", ".data", "Directory for local state (tables, broker data).", _path
    )
    broker_bin: Path | None = _optional(
        "broker_bin", "path", "Broker executable for `sessionizer broker`, if not built in.", _path
    )
    app_id: str = _setting(
        "app_id",
        "text",
        "sessionizer",
        "Worker group id; also names the state changelog topic. Workers sharing it share "
        "the partitions.",
        _text,
    )
    repartition: bool = _setting(
        "repartition",
        "bool",
        False,
        "Re-key raw records by device through an internal topic before sessionizing; "
        "needed when producers do not key records by device (§1.2).",
        _boolean,
    )
    batch_size: int = _setting(
        "batch_size",
        "integer >= 1",
        1000,
        "Most records the worker processes per batch.",
        _integer(1),
    )
    batch_within_ms: int = _setting(
        "batch_within",
        "duration > 0",
        "100ms",
        "Longest the worker waits to fill a batch.",
        _duration(1, "100ms"),
    )
    security: Security = _group(Security, Security)
    integrations: tuple[str, ...] = _setting(
        "integrations",
        lambda: "list of " + ", ".join(_destinations()),
        "",
        "Destinations the sessionized events are forwarded to ([integrations.md]"
        '(integrations.md)); in the file an array, `integrations = ["amplitude"]`, in '
        "`SESSIONIZER_INTEGRATIONS` comma-separated.",
        _integrations,
        doc_default="(none)",
    )
    ga4_client_id_field: str | None = _optional(
        "ga4_client_id_field",
        "dotted field path",
        "The field of each sessionized event (with its batch fields) that holds GA4's "
        "`client_id` or `app_instance_id`, e.g. `user_attributes.ga_client_id`; unset, "
        "absent or not a valid id: derived from the device "
        "([integrations.md](integrations.md#ga4-client-id)).",
        _field_path,
    )
    forward_endpoint: str = _setting(
        "forward_endpoint",
        "URL",
        "",
        "Where the forwarder sends; empty: the destination's documented public endpoint.",
        _url,
        doc_default="(the destination's)",
    )
    forward_api_key: Secret | None = _optional(
        "forward_api_key",
        "secret",
        "API key (or write key, measurement secret) of the destination. Never printed.",
        _secret,
    )
    forward_batch_size: int = _setting(
        "forward_batch_size",
        "integer >= 0",
        0,
        "Most events per request to the destination; 0: the destination's documented maximum.",
        _integer(0),
    )
    forward_timeout_ms: int = _setting(
        "forward_timeout",
        "duration > 0",
        "10s",
        "Longest the forwarder waits for one request to the destination.",
        _duration(1, "10s"),
    )
    forward_max_backoff_ms: int = _setting(
        "forward_max_backoff",
        "duration > 0",
        "60s",
        "Longest pause between the forwarder's retries of a failed request (the pauses "
        "double up to it).",
        _duration(1, "60s"),
    )
    config_file: Path | None = None
    # Flat key -> where its value came from; a key not in it has its default.
    sources: Mapping[str, Source] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.broker_url:
            object.__setattr__(self, "broker_url", "kafka://" + ",".join(self.broker_hosts))

    @property
    def table_standby_replicas(self) -> int:
        """``standby_replicas``, unset: 1 with store = rocksdb, 0 with memory (where Faust
        re-reads the changelog on a takeover whatever a standby holds)."""
        if self.standby_replicas is not None:
            return self.standby_replicas
        return 1 if self.store == "rocksdb" else 0

    @property
    def web_url(self) -> str:
        """What this worker advertises for its web server (``web_advertised_url``)."""
        if self.web_advertised_url is not None:
            return self.web_advertised_url
        host = self.web_host
        if host in WILDCARD_HOSTS:
            import socket

            host = socket.gethostname()
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"http://{host}:{self.web_port}"

    def source(self, key: str) -> Source:
        """Where the setting of flat name ``key`` came from."""
        return self.sources.get(key) or Source("default", _BY_KEY[key].env)

    def is_set(self, key: str) -> bool:
        """Set by the user (file, environment or command line), even to its default value."""
        return self.source(key).user_set

    def label(self, key: str) -> str:
        """``name (source)`` of a setting by flat key, as configuration errors name it."""
        return f"{_BY_KEY[key].name} ({self.source(key)})"


def _declared(cls: type) -> Iterator[tuple[dataclasses.Field[Any], _Spec | None, type | None]]:
    for f in dataclasses.fields(cls):
        yield f, f.metadata.get(_SETTING), f.metadata.get(_GROUP)


def _walk(cls: type) -> Iterator[_Spec]:
    """The settings ``cls`` declares, groups expanded where they stand."""
    for _, spec, group in _declared(cls):
        if spec is not None:
            yield spec
        elif group is not None:
            yield from _walk(group)


def _field_values(obj: Any) -> dict[str, Any]:
    """Field name -> value of the settings a group object declares (not its groups)."""
    return {f.name: getattr(obj, f.name) for f, spec, _ in _declared(type(obj)) if spec}


def setting_values(obj: Any) -> dict[str, Any]:
    """Flat setting name -> value of the settings a ``Settings``, ``Topics`` or ``Security``
    declares directly, e.g. ``{"topic_raw_events": "raw-events", ...}`` for ``settings.topics``."""
    return {spec.key: getattr(obj, f.name) for f, spec, _ in _declared(type(obj)) if spec}


def env_var(key: str) -> str:
    """The environment variable of the setting of flat name ``key``."""
    return _BY_KEY[key].env


_SPECS: tuple[_Spec, ...] = tuple(_walk(Settings))
_BY_KEY = {s.key: s for s in _SPECS}
_BY_PATH = {s.path: s for s in _SPECS}
_TABLES = frozenset(s.path[0] for s in _SPECS if len(s.path) == 2)
_KNOWN_ENV = frozenset({s.env for s in _SPECS} | {APPS_ENV})
# Field names of the [session] settings: EngineConfig's and AppOverrides' too.
_SESSION_FIELDS = {spec.path[-1]: f.name for f, spec, _ in _declared(_Session) if spec}

# Per-app overrides: these [session] settings, with the same parse rules.
_APP_DOCS = {
    "timeout": "This app's session.timeout (R8).",
    "foreground_idle_timeout": (
        "This app's session.foreground_idle_timeout (R8); unset: 4 x the app's timeout."
    ),
    "resume_on_launch": "This app's session.resume_on_launch (R2).",
}
_APP_FIELDS = {leaf: _BY_PATH[("session", leaf)] for leaf in _APP_DOCS}
# --------------------------------------------------------------------------- loading

# A raw value and where it came from, e.g. ("-5", Source("env", "SESSIONIZER_TIMEOUT")).
_Raw = tuple[object, Source]
_COMMAND_LINE = Source("command line")


def load_settings(
    config_file: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    *,
    connects: bool = True,
    **overrides: object,
) -> Settings:
    """Load and validate the settings; raise ConfigError on the first bad one.

    ``connects=False`` (process-file, which never connects) leaves the connection
    security settings unchecked: a TLS file of the cluster's need not exist here.
    ``overrides`` are command-line values by flat name (``broker_url``,
    ``web_port``, ``timeout``, ... as in the ``SESSIONIZER_*`` names, lower
    case); ``None`` means "not given".
    """
    env = os.environ if env is None else env
    for key in overrides:
        if key not in _BY_KEY:
            raise TypeError(f"load_settings() got an unexpected keyword argument {key!r}")
    _check_env_names(env)

    path_text = os.fspath(config_file) if config_file is not None else env.get(CONFIG_ENV, "")
    path = Path(path_text) if path_text else None
    raw: dict[str, _Raw] = {}
    file_apps: dict[str, dict[str, _Raw]] = {}
    if path is not None:
        raw, file_apps = _read_file(path)
    for spec in _SPECS:
        if spec.env in env:
            raw[spec.key] = (env[spec.env], Source("env", spec.env))
        value = overrides.get(spec.key)
        if value is not None:
            raw[spec.key] = (value, _COMMAND_LINE)

    values: dict[str, object] = {}
    sources: dict[str, Source] = {}
    for spec in _SPECS:
        value, source = raw.get(spec.key, (spec.default, Source("default", spec.env)))
        sources[spec.key] = source
        if spec.optional and (value is None or value == ""):
            values[spec.key] = None
            continue
        try:
            values[spec.key] = _parse(spec.parse, value, source)
        except _Bad as bad:
            raise ConfigError(f"{spec.name} ({source})", str(bad)) from None

    apps = _merge_apps(file_apps, _env_apps(env))
    return _build(values, sources, apps, path, connects=connects)


def _label(key: str, sources: Mapping[str, Source]) -> str:
    return f"{_BY_KEY[key].name} ({sources[key]})"


#: Settings an older version had: why each went, for the one-line error.
REMOVED = {
    "input_reader": "removed in v3: the worker has one input path (docs/decisions.md#worker); "
    "delete the line",
}


def _check_env_names(env: Mapping[str, str]) -> None:
    for name in sorted(env):
        if (
            not name.startswith(ENV_PREFIX)
            or name in (CONFIG_ENV, _native.PURE_ENV)
            or name.startswith(TEST_ENV_PREFIX)
            or name in _KNOWN_ENV
        ):
            continue
        removed = REMOVED.get(name[len(ENV_PREFIX) :].lower())
        if removed is not None:
            raise ConfigError(_quote(name), removed.replace("delete the line", "unset it"))
        raise ConfigError(
            _quote(name), "unknown environment variable" + _did_you_mean(name, _KNOWN_ENV)
        )


def _did_you_mean(name: str, candidates: Iterable[str]) -> str:
    options = sorted(candidates)
    leaf = name.rpartition(".")[2]
    # A known key in the wrong table, e.g. a top-level ``timeout``.
    same_leaf = [c for c in options if c != name and c.rpartition(".")[2] == leaf]
    close = same_leaf or difflib.get_close_matches(name, options, n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def _toml_name(*parts: str) -> str:
    return ".".join(p if _BARE_KEY_RE.fullmatch(p) else json.dumps(p) for p in parts)


def _app_name(app: str) -> str:
    return f"apps.{json.dumps(app)}"


def _read_file(path: Path) -> tuple[dict[str, _Raw], dict[str, dict[str, _Raw]]]:
    label = f"config file {json.dumps(str(path))}"
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ConfigError(label, f"cannot read it: {err.strerror or type(err).__name__}") from None
    try:
        doc = tomllib.loads(data.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise ConfigError(label, "not UTF-8 text") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(label, "not valid TOML: " + " ".join(str(err).split())) from None

    where = Source("file", str(path))
    raw: dict[str, _Raw] = {}
    apps: dict[str, dict[str, _Raw]] = {}
    known = [s.name for s in _SPECS] + sorted(_TABLES) + ["apps"]
    for key, value in doc.items():
        if key == "apps":
            apps = _apps_table(value, where)
            continue
        if key in _TABLES:
            if not isinstance(value, dict):
                raise ConfigError(f"{_toml_name(key)} ({where})", f"must be a table [{key}]")
            entries: list[tuple[tuple[str, ...], object]] = [
                ((key, sub), sub_value) for sub, sub_value in value.items()
            ]
        else:
            entries = [((key,), value)]
        for spec_path, spec_value in entries:
            spec = _BY_PATH.get(spec_path)
            if spec is None:
                name = _toml_name(*spec_path)
                if name in REMOVED:
                    raise ConfigError(f"{name} ({where})", REMOVED[name])
                raise ConfigError(
                    f"{name} ({where})", "unknown setting" + _did_you_mean(name, known)
                )
            raw[spec.key] = (spec_value, where)
    return raw, apps


def _apps_table(value: object, where: Source) -> dict[str, dict[str, _Raw]]:
    """``{app: {field: raw}}`` from the file's ``[apps."<app>"]`` tables or SESSIONIZER_APPS."""
    if not isinstance(value, dict):
        raise ConfigError(
            f"apps ({where})", 'must be a table of apps such as [apps."com.example.app"]'
        )
    apps: dict[str, dict[str, _Raw]] = {}
    for app, fields in value.items():
        name = _app_name(app)
        if not app.strip():
            raise ConfigError(f"{name} ({where})", "the app name must not be empty")
        if not isinstance(fields, dict):
            raise ConfigError(
                f"{name} ({where})",
                f"must be a table of {', '.join(_APP_FIELDS)}, got {_show(fields)}",
            )
        apps[app] = {}
        for key, raw in fields.items():
            if key not in _APP_FIELDS:
                hint = _did_you_mean(key, _APP_FIELDS)
                if isinstance(raw, dict) and not hint:
                    # [apps.com.example] nests tables; the app name needs quotes.
                    hint = '; quote app names that contain dots: [apps."com.example.app"]'
                raise ConfigError(
                    f"{name}.{_toml_name(key)} ({where})", "unknown per-app setting" + hint
                )
            apps[app][key] = (raw, where)
    return apps


def _env_apps(env: Mapping[str, str]) -> dict[str, dict[str, _Raw]]:
    text = env.get(APPS_ENV, "")
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(
            f"apps ({APPS_ENV})",
            f"not valid JSON: {err.msg} at line {err.lineno} column {err.colno}",
        ) from None
    if not isinstance(value, dict):
        raise ConfigError(
            f"apps ({APPS_ENV})",
            'must be a JSON object such as {"com.example.app": {"timeout": "10m"}}',
        )
    return _apps_table(value, Source("env", APPS_ENV))


def _merge_apps(*layers: dict[str, dict[str, _Raw]]) -> dict[str, AppOverrides]:
    # Later layers win field by field, like every other setting.
    merged: dict[str, dict[str, _Raw]] = {}
    for layer in layers:
        for app, fields in layer.items():
            merged.setdefault(app, {}).update(fields)
    apps: dict[str, AppOverrides] = {}
    for app in sorted(merged):
        parsed: dict[str, Any] = {}
        for key, (raw, source) in merged[app].items():
            try:
                parsed[_SESSION_FIELDS[key]] = _parse(_APP_FIELDS[key].parse, raw, source)
            except _Bad as bad:
                raise ConfigError(f"{_app_name(app)}.{key} ({source})", str(bad)) from None
        apps[app] = AppOverrides(**parsed)
    return apps


def _group_values(cls: type, values: Mapping[str, object]) -> dict[str, Any]:
    """Keyword arguments of ``cls``: its settings' parsed values by field name."""
    return {f.name: values[spec.key] for f, spec, _ in _declared(cls) if spec}


def _build(
    values: Mapping[str, object],
    sources: Mapping[str, Source],
    apps: Mapping[str, AppOverrides],
    config_file: Path | None,
    *,
    connects: bool = True,
) -> Settings:
    _check_topics_distinct(values, sources)
    security = Security(**_group_values(Security, values))
    if connects:
        _check_security(security, sources)
        _check_tls(security, sources)
    return Settings(
        **_group_values(Settings, values),
        topics=Topics(**_group_values(Topics, values)),
        engine=EngineConfig(**_group_values(_Session, values), apps=dict(apps)),
        security=security,
        config_file=config_file,
        sources=dict(sources),
    )


def _check_topics_distinct(values: Mapping[str, object], sources: Mapping[str, Source]) -> None:
    # Two roles on one topic would loop outputs into the input or mix record kinds.
    seen: dict[object, str] = {}
    for spec in _SPECS:
        if spec.path[0] != "topics":
            continue
        topic = values[spec.key]
        if topic in seen:
            other = _BY_KEY[seen[topic]].name
            raise ConfigError(
                _label(spec.key, sources),
                f"must differ from {other} (both are {_show(topic)})",
            )
        seen[topic] = spec.key


def _check_security(sec: Security, sources: Mapping[str, Source]) -> None:
    for key in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        path = getattr(sec, key)
        if path is not None and not path.is_file():
            raise ConfigError(_label(key, sources), f"file not found: {json.dumps(str(path))}")
    protocol = f"security_protocol is {sec.protocol}"
    sasl = {
        "sasl_mechanism": sec.sasl_mechanism,
        "sasl_username": sec.sasl_username,
        "sasl_password": sec.sasl_password,
    }
    ssl = {
        "ssl_cafile": sec.ssl_cafile,
        "ssl_certfile": sec.ssl_certfile,
        "ssl_keyfile": sec.ssl_keyfile,
    }
    for key, value in sasl.items():
        if sec.uses_sasl and value is None:
            raise ConfigError(_label(key, sources), f"required when {protocol}")
        # Credentials that would be silently ignored are a configuration mistake.
        if not sec.uses_sasl and value is not None:
            raise ConfigError(
                _label(key, sources),
                f"only used with SASL_PLAINTEXT or SASL_SSL, but {protocol}",
            )
    for key, path in ssl.items():
        if not sec.uses_ssl and path is not None:
            raise ConfigError(
                _label(key, sources), f"only used with SSL or SASL_SSL, but {protocol}"
            )
    if sec.ssl_keyfile is not None and sec.ssl_certfile is None:
        raise ConfigError(_label("ssl_certfile", sources), "required when ssl_keyfile is set")


class _EncryptedKey(Exception):
    """OpenSSL asked for a password: the key is encrypted."""


def _no_password() -> str:
    # Without this callback OpenSSL would prompt on a terminal.
    raise _EncryptedKey


def _tls_reason(err: Exception) -> str:
    text = re.sub(r"\s*\(_ssl\.c:\d+\)$", "", getattr(err, "strerror", None) or str(err))
    text = re.sub(r"^\[[^\]]*\]\s*", "", text)
    return "not PEM, or the key does not belong to the certificate" if text == "PEM lib" else text


def _check_tls(sec: Security, sources: Mapping[str, Source]) -> None:
    """Loads the TLS files once: a wrong file is a configuration error at start-up.

    Every command (tail, produce, worker, replay, demo) then stops with one line
    naming the setting, not with a traceback or "cannot reach the broker" later.
    """
    if not sec.uses_ssl:
        return
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if sec.ssl_cafile is not None:
        try:
            ctx.load_verify_locations(cafile=str(sec.ssl_cafile))
        except (ssl.SSLError, OSError, ValueError) as err:
            raise ConfigError(
                _label("ssl_cafile", sources),
                f"no PEM CA certificate in {json.dumps(str(sec.ssl_cafile))}: {_tls_reason(err)}",
            ) from None
    if sec.ssl_certfile is not None:
        keyfile = sec.ssl_keyfile or sec.ssl_certfile
        try:
            ctx.load_cert_chain(
                str(sec.ssl_certfile),
                str(sec.ssl_keyfile) if sec.ssl_keyfile is not None else None,
                password=_no_password,
            )
        except _EncryptedKey:
            raise ConfigError(
                _label("ssl_keyfile" if sec.ssl_keyfile else "ssl_certfile", sources),
                "the private key is encrypted; give an unencrypted PEM key",
            ) from None
        except (ssl.SSLError, OSError, ValueError) as err:
            raise ConfigError(
                _label("ssl_certfile", sources),
                f"cannot load the client certificate {json.dumps(str(sec.ssl_certfile))} "
                f"with the key {json.dumps(str(keyfile))}: {_tls_reason(err)}",
            ) from None


# --------------------------------------------------------------------------- docs


def describe_settings() -> list[SettingDoc]:
    """One entry per setting, in file order, per-app overrides last."""
    docs = [SettingDoc(s.name, s.env, _type_of(s), s.doc_default, s.description) for s in _SPECS]
    for key, description in _APP_DOCS.items():
        spec = _APP_FIELDS[key]
        docs.append(
            SettingDoc(f'apps."<app>".{key}', APPS_ENV, _type_of(spec), spec.name, description)
        )
    return docs


def _type_of(spec: _Spec) -> str:
    return spec.type if isinstance(spec.type, str) else spec.type()


_EXAMPLE_TOML = """\
broker_url = "kafka://kafka-1:9092,kafka-2:9092"
partitions = 12
replication_factor = 3
data_dir = "/var/lib/sessionizer"
# store = "rocksdb"   # state on disk in data_dir: a restart reads no changelog

[topics]
raw_events = "mparticle-raw"

[session]
timeout = "30m"
grace = "2m"
max_record_bytes = "512KiB"

[apps."com.example.web"]
timeout = "10m"
resume_on_launch = true

[apps."com.example.game"]
foreground_idle_timeout = "4h"
"""


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render_markdown() -> str:
    """The configuration reference (docs/configuration.md)."""
    lines = [
        "# Configuration reference",
        "",
        "<!-- Generated by `python -m sessionizer.settings --markdown`;"
        " edit sessionizer/settings.py, not this file. -->",
        "",
        "Settings come from, lowest to highest precedence: built-in defaults, a TOML"
        " file (`--config FILE`, else the file named by `SESSIONIZER_CONFIG`),"
        " `SESSIONIZER_*` environment variables, and command-line flags.",
        "",
        "Setting names are TOML paths: `session.timeout` is `timeout` in the `[session]`"
        " table. Environment variables are flat: `SESSIONIZER_` and the last part in"
        " upper case, except topics (`SESSIONIZER_TOPIC_RAW_EVENTS`).",
        "",
        "An invalid setting, an unknown key in the file or an unknown `SESSIONIZER_*`"
        " variable stops start-up with one line naming the setting and where its value"
        " came from (an environment variable, `in FILE` or `command line`), e.g.",
        "",
        "```",
        "invalid setting session.timeout (SESSIONIZER_TIMEOUT): must be a positive"
        ' duration such as "30m", got "-5"',
        "```",
        "",
        f"`SESSIONIZER_CONFIG`, `{_native.PURE_ENV}` (`1`: run the engine's Python sources"
        " even when a compiled build is present,"
        " [performance.md](performance.md#the-compiled-hot-path)) and variables starting"
        f" with `{TEST_ENV_PREFIX}` are not settings and are never rejected.",
        "",
        "Value formats:",
        "",
        "* **duration** — a number with a unit, `ms`, `s`, `m`, `h` or `d`:"
        ' `"100ms"`, `"10s"`, `"30m"`, `"1.5h"`, `"30d"` (in the file, a string). A bare'
        " number is refused, in the file and in the environment alike (only `0` needs no"
        " unit): `timeout = 30` stops start-up with"
        ' `needs a unit, such as "30s" or "30m"` instead of meaning 30 ms.',
        '* **size** — an integer of bytes or a string: `"512KiB"`, `"1MiB"`, `"1GiB"`.',
        "* **integer** and **bool** — in the file, TOML numbers and `true`/`false`, not"
        ' strings: `partitions = "8"` is an error (`partitions = 8`). In the environment'
        " every value is text: `SESSIONIZER_PARTITIONS=8`; booleans also take `1`/`0`,"
        " `yes`/`no`, `on`/`off`. `SESSIONIZER_APPS` is JSON, typed like the file.",
        "* Choices are case-insensitive. An empty environment variable unsets an optional"
        " setting. Relative paths are relative to the working directory.",
        "",
        "| Setting | Environment variable | Type | Default | Description |",
        "|---|---|---|---|---|",
    ]
    for doc in describe_settings():
        lines.append(
            f"| `{doc.name}` | `{doc.env}` | {_cell(doc.type)} | `{_cell(doc.default)}` |"
            f" {_cell(doc.description)} |"
        )
    lines += [
        "",
        "## Per-app overrides (R2, R8)",
        "",
        "An app (the app part of the session key,"
        " [§1.2](rules.md#s1-2)) may override `timeout`,"
        " `foreground_idle_timeout` and `resume_on_launch` in a table"
        ' `[apps."<app>"]`; quote the app name, it contains dots. An app that overrides'
        " only its `timeout` keeps the 4 x ratio for its foreground idle timeout.",
        "",
        "The environment variable `SESSIONIZER_APPS` holds the same as JSON and wins"
        " over the file field by field:",
        "",
        "```sh",
        'SESSIONIZER_APPS=\'{"com.example.web": {"timeout": "10m", "resume_on_launch": true}}\'',
        "```",
        "",
        "## Connection security",
        "",
        "`SASL_PLAINTEXT` and `SASL_SSL` need `sasl_mechanism`, `sasl_username` and"
        " `sasl_password`; SASL settings with another protocol are an error, as are SSL"
        " files with a protocol other than `SSL`/`SASL_SSL`. SSL files must exist and"
        " load: `ssl_cafile` must hold PEM CA certificates, `ssl_certfile` (with"
        " `ssl_keyfile`, unencrypted) a PEM certificate and its key; anything else stops"
        " every command that connects at start-up with one line naming the setting (exit"
        " code 2); `process-file`, which never connects, does not check them."
        " `ssl_keyfile` needs `ssl_certfile`. The password is never printed: it shows as"
        " `Secret('***')`. Prefer `SESSIONIZER_SASL_PASSWORD` over writing it in the file.",
        "",
        "## Web token",
        "",
        "`web_token` guards `GET /sessions/{app}/{device}` (user data): requests need"
        " `Authorization: Bearer <web_token>`; workers forward lookups to each other with"
        " it, so every worker of a group needs the same one. Without a token, `/sessions`"
        " answers 401 unless `web_host` is a loopback address (`127.0.0.1`, `::1`,"
        " `localhost`). `/health` and `/metrics` stay open. Like the password, the token"
        " shows as `Secret('***')` and is kept out of logs; set it through"
        " `SESSIONIZER_WEB_TOKEN`, e.g. `python -c 'import secrets;"
        " print(secrets.token_urlsafe(32))'`. See [security.md](security.md#the-web-port).",
        "",
        "## Example file",
        "",
        "```toml",
        _EXAMPLE_TOML.rstrip("\n"),
        "```",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sessionizer.settings",
        description="Print the configuration reference, or check the effective settings.",
    )
    parser.add_argument("--markdown", action="store_true", help="print the reference table")
    parser.add_argument("--config", default=None, help="TOML settings file to check")
    args = parser.parse_args(argv)
    if args.markdown:
        sys.stdout.write(render_markdown())
        return 0
    try:
        settings = load_settings(args.config)
    except ConfigError as err:
        print(f"sessionizer: {err}", file=sys.stderr)
        return 2
    print(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
