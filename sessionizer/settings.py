"""Settings (§8): defaults < TOML file < ``SESSIONIZER_*`` environment < command line.

Loaded once at start-up into frozen values. Every bad setting raises one
``ConfigError`` whose message is a single line naming the setting and where
its value came from; unknown keys are errors so that typos cannot pass silently.

One table of ``_Spec`` rows drives parsing, the environment names and the
generated reference (``python -m sessionizer.settings --markdown``).
"""

from __future__ import annotations

import argparse
import difflib
import hmac
import json
import os
import re
import ssl
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Literal, TypeVar, cast

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
    "Topics",
    "describe_settings",
    "load_settings",
    "main",
    "parse_duration_ms",
    "parse_size_bytes",
    "render_markdown",
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

_T = TypeVar("_T")


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
class Topics:
    raw_events: str = "raw-events"
    sessionized_events: str = "sessionized-events"
    sessions: str = "sessions"
    dead_letters: str = "dead-letters"
    opt_out_control: str = "opt-out-control"


@dataclass(frozen=True, slots=True)
class Security:
    """Kafka connection security; validated here, applied by the broker clients."""

    protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism | None = None
    sasl_username: str | None = None
    sasl_password: Secret | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None

    @property
    def uses_ssl(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    @property
    def uses_sasl(self) -> bool:
        return self.protocol in ("SASL_PLAINTEXT", "SASL_SSL")


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a command needs; ``Settings()`` is the built-in defaults."""

    broker_url: str = "kafka://127.0.0.1:9092"
    broker_hosts: tuple[str, ...] = ("127.0.0.1:9092",)
    topics: Topics = field(default_factory=Topics)
    partitions: int = 8
    replication_factor: int = 1
    engine: EngineConfig = field(default_factory=EngineConfig)
    idle_timeout_ms: int = 10_000
    store: Store = "memory"
    processing_guarantee: ProcessingGuarantee = "at_least_once"
    web_port: int = 6066
    web_host: str = "127.0.0.1"
    web_token: Secret | None = None
    stall_timeout_ms: int = 60_000
    data_dir: Path = Path(".data")
    broker_bin: Path | None = None
    app_id: str = "sessionizer"
    repartition: bool = False
    batch_size: int = 1000
    batch_within_ms: int = 100
    security: Security = field(default_factory=Security)
    config_file: Path | None = None
    # Flat key -> where its value came from ("SESSIONIZER_X", "in FILE", "command line").
    sources: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    def label(self, key: str) -> str:
        """``name (source)`` of a setting by flat key, as configuration errors name it."""
        spec = _BY_KEY[key]
        return f"{spec.name} ({self.sources.get(key, spec.env)})"


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


def _duration(minimum: int, example: str) -> _Parse:
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


def _size(raw: object) -> int:
    size = parse_size_bytes(raw)
    if size is None or size < 1:
        raise _Bad(f'must be a positive size such as 1048576 or "1MiB", got {_show(raw)}')
    return size


def _integer(minimum: int, maximum: int | None = None) -> _Parse:
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


def _typed(source: str) -> bool:
    return source.startswith("in ") or source == APPS_ENV


def _parse(parse: _Parse, raw: object, source: str) -> object:
    """``parse(raw)``, refusing a quoted number or boolean from a typed source."""
    value = parse(raw)
    native = _NATIVE.get(parse)
    if native is not None and isinstance(raw, str) and _typed(source):
        raise _Bad(f"must be {native} without quotes, got the string {_show(raw)}")
    return value


def _refuse_exactly_once(raw: object) -> str:
    choice = _choice("at_least_once", "exactly_once")(raw)
    if choice == "exactly_once":
        # Outputs are plain record batches, not Kafka transactions (docs/decisions.md#worker).
        raise _Bad(
            "exactly_once is not supported: outputs are not written in Kafka transactions; "
            "use at_least_once (duplicates after a crash are byte-identical)"
        )
    return str(choice)


def _choice(*options: str) -> _Parse:
    # Case-insensitive in, canonical spelling out.
    canonical = {o.lower(): o for o in options}

    def parse(raw: object) -> str:
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


def _existing_file(raw: object) -> Path:
    path = _path(raw)
    if not path.is_file():
        raise _Bad(f"file not found: {json.dumps(str(path))}")
    return path


def _topic(raw: object) -> str:
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


# --------------------------------------------------------------------------- the table


@dataclass(frozen=True, slots=True)
class _Spec:
    key: str  # flat name: env var suffix and load_settings() keyword
    path: tuple[str, ...]  # where it lives in the TOML file
    type: str
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


def _spec(
    key: str,
    type_: str,
    default: object,
    description: str,
    parse: _Parse,
    *,
    table: str | None = None,
    name: str | None = None,
    doc_default: str | None = None,
    optional: bool = False,
) -> _Spec:
    leaf = name or key
    return _Spec(
        key=key,
        path=(table, leaf) if table else (leaf,),
        type=type_,
        default=default,
        doc_default=doc_default if doc_default is not None else str(default),
        description=description,
        parse=parse,
        optional=optional,
    )


def _topic_spec(name: str, default: str, role: str) -> _Spec:
    return _spec(f"topic_{name}", "topic name", default, role, _topic, table="topics", name=name)


_SPECS: tuple[_Spec, ...] = (
    _spec(
        "broker_url",
        "broker list",
        "kafka://127.0.0.1:9092",
        'Kafka bootstrap servers: "kafka://host:port[,host:port]" or "host:port[,host:port]".',
        _broker,
    ),
    _topic_spec("raw_events", "raw-events", "Input topic of raw mParticle records (§1)."),
    _topic_spec(
        "sessionized_events", "sessionized-events", "Output: events enriched with sessions (§7.1)."
    ),
    _topic_spec("sessions", "sessions", "Output: session start and end records (§7.2)."),
    _topic_spec("dead_letters", "dead-letters", "Output: records that could not be used (§7.3)."),
    _topic_spec("opt_out_control", "opt-out-control", "Compacted console opt-out topic (R19)."),
    _spec(
        "partitions",
        "integer >= 1",
        8,
        "Partitions of the topics the worker creates.",
        _integer(1),
    ),
    _spec(
        "replication_factor",
        "integer >= 1",
        1,
        "Replication factor of the topics the worker creates.",
        _integer(1),
    ),
    _spec(
        "timeout",
        "duration > 0",
        "30m",
        "Session timeout after a background, or after the last event without lifecycle "
        "events (R4, R5, R8).",
        _duration(1, "30m"),
        table="session",
    ),
    _spec(
        "foreground_idle_timeout",
        "duration > 0",
        None,
        "Inactivity timeout of a foregrounded session that never sends its background (R5).",
        _duration(1, "2h"),
        table="session",
        doc_default="4 x timeout",
        optional=True,
    ),
    _spec(
        "resume_on_launch",
        "bool",
        False,
        "A launch resumes the open session instead of starting a new one (R2).",
        _boolean,
        table="session",
        doc_default="false",
    ),
    _spec(
        "grace",
        "duration >= 0",
        "2m",
        "How far the watermark must pass a deadline before the session closes (R21).",
        _duration(0, "2m"),
        table="session",
    ),
    _spec(
        "state_ttl",
        "duration > 0",
        "30d",
        "Keys idle this long (watermark time) are forgotten, opt-out flags excepted (§2).",
        _duration(1, "30d"),
        table="session",
    ),
    _spec(
        "max_session_attributes",
        "integer >= 1",
        100,
        "Most session attribute names per session (R15).",
        _integer(1),
        table="session",
    ),
    _spec(
        "max_record_bytes",
        "size > 0",
        "1MiB",
        "Larger input records are dead-lettered as too_large (§7.3).",
        _size,
        table="session",
    ),
    _spec(
        "max_future_skew",
        "duration >= 0",
        "24h",
        "How far past the wall clock an event time may lie (§1.3).",
        _duration(0, "24h"),
        table="session",
    ),
    _spec(
        "idle_timeout",
        "duration > 0",
        "10s",
        "Live mode: a partition silent this long advances its watermark by wall clock (R22).",
        _duration(1, "10s"),
    ),
    _spec(
        "store",
        "memory | rocksdb",
        "memory",
        "State store of the worker's tables: memory (rebuilt from the changelog at every "
        "start) or rocksdb (on disk in data_dir; needs the rocksdict package, else the "
        "worker refuses it at start-up).",
        _choice("memory", "rocksdb"),
    ),
    _spec(
        "processing_guarantee",
        "at_least_once",
        "at_least_once",
        "Kafka processing guarantee of the worker. Only at_least_once is supported: "
        "exactly_once is refused at start-up (outputs are not written in Kafka transactions; "
        "duplicates after a crash are byte-identical, see [decisions.md](decisions.md#worker)).",
        _refuse_exactly_once,
    ),
    _spec(
        "web_port", "integer 0-65535", 6066, "Port of the worker's web server.", _integer(0, 65535)
    ),
    _spec("web_host", "host", "127.0.0.1", "Address the worker's web server binds.", _host),
    _spec(
        "web_token",
        "secret",
        None,
        "Bearer token that `/sessions` requires (`Authorization: Bearer <token>`); "
        "unset: `/sessions` answers only when web_host is loopback. Never printed.",
        _token,
        doc_default="(unset)",
        optional=True,
    ),
    _spec(
        "stall_timeout",
        "duration > 0",
        "60s",
        "`/health` reports a partition stalled when it has lag and has made no progress "
        "for this long.",
        _duration(1, "60s"),
    ),
    _spec("data_dir", "path", ".data", "Directory for local state (tables, broker data).", _path),
    _spec(
        "broker_bin",
        "path",
        None,
        "Broker executable for `sessionizer broker`, if not built in.",
        _path,
        doc_default="(unset)",
        optional=True,
    ),
    _spec(
        "app_id",
        "text",
        "sessionizer",
        "Worker group id; also names the state changelog topic. Workers sharing it share "
        "the partitions.",
        _text,
    ),
    _spec(
        "repartition",
        "bool",
        False,
        "Re-key raw records by device through an internal topic before sessionizing; "
        "needed when producers do not key records by device (§1.2).",
        _boolean,
        doc_default="false",
    ),
    _spec(
        "batch_size",
        "integer >= 1",
        1000,
        "Most records the worker processes per batch.",
        _integer(1),
    ),
    _spec(
        "batch_within",
        "duration > 0",
        "100ms",
        "Longest the worker waits to fill a batch.",
        _duration(1, "100ms"),
    ),
    _spec(
        "security_protocol",
        "PLAINTEXT | SSL | SASL_PLAINTEXT | SASL_SSL",
        "PLAINTEXT",
        "Kafka connection security.",
        _choice("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"),
    ),
    _spec(
        "sasl_mechanism",
        "PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512",
        None,
        "SASL mechanism; required with SASL_PLAINTEXT and SASL_SSL.",
        _choice("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"),
        doc_default="(unset)",
        optional=True,
    ),
    _spec(
        "sasl_username",
        "string",
        None,
        "SASL user; required with SASL_*.",
        _text,
        doc_default="(unset)",
        optional=True,
    ),
    _spec(
        "sasl_password",
        "secret",
        None,
        "SASL password; required with SASL_*. Never printed.",
        _secret,
        doc_default="(unset)",
        optional=True,
    ),
    _spec(
        "ssl_cafile",
        "file",
        None,
        "CA bundle for SSL and SASL_SSL (default: system CAs).",
        _existing_file,
        doc_default="(unset)",
        optional=True,
    ),
    _spec(
        "ssl_certfile",
        "file",
        None,
        "Client certificate (PEM) for SSL and SASL_SSL.",
        _existing_file,
        doc_default="(unset)",
        optional=True,
    ),
    _spec(
        "ssl_keyfile",
        "file",
        None,
        "Client private key (PEM); needs ssl_certfile.",
        _existing_file,
        doc_default="(unset)",
        optional=True,
    ),
)

_BY_KEY = {s.key: s for s in _SPECS}
_BY_PATH = {s.path: s for s in _SPECS}
_TABLES = frozenset(s.path[0] for s in _SPECS if len(s.path) == 2)
_KNOWN_ENV = frozenset({s.env for s in _SPECS} | {APPS_ENV})

_APP_FIELDS: dict[str, tuple[_Parse, str]] = {
    "timeout": (_duration(1, "30m"), "This app's session.timeout (R8)."),
    "foreground_idle_timeout": (
        _duration(1, "2h"),
        "This app's session.foreground_idle_timeout (R8); unset: 4 x the app's timeout.",
    ),
    "resume_on_launch": (_boolean, "This app's session.resume_on_launch (R2)."),
}

# --------------------------------------------------------------------------- loading

# A raw value and where it came from, e.g. ("-5", "SESSIONIZER_TIMEOUT").
_Raw = tuple[object, str]


def load_settings(
    config_file: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    **overrides: object,
) -> Settings:
    """Load and validate the settings; raise ConfigError on the first bad one.

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
            raw[spec.key] = (env[spec.env], spec.env)
        value = overrides.get(spec.key)
        if value is not None:
            raw[spec.key] = (value, "command line")

    values: dict[str, object] = {}
    sources: dict[str, str] = {}
    for spec in _SPECS:
        value, source = raw.get(spec.key, (spec.default, spec.env))
        sources[spec.key] = source
        if spec.optional and (value is None or value == ""):
            values[spec.key] = None
            continue
        try:
            values[spec.key] = _parse(spec.parse, value, source)
        except _Bad as bad:
            raise ConfigError(f"{spec.name} ({source})", str(bad)) from None

    apps = _merge_apps(file_apps, _env_apps(env))
    return _build(values, sources, apps, path)


def _label(key: str, sources: Mapping[str, str]) -> str:
    return f"{_BY_KEY[key].name} ({sources[key]})"


def _check_env_names(env: Mapping[str, str]) -> None:
    for name in sorted(env):
        if (
            not name.startswith(ENV_PREFIX)
            or name == CONFIG_ENV
            or name.startswith(TEST_ENV_PREFIX)
            or name in _KNOWN_ENV
        ):
            continue
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

    where = f"in {_quote(str(path))}"
    raw: dict[str, _Raw] = {}
    apps: dict[str, dict[str, _Raw]] = {}
    known = [s.name for s in _SPECS] + sorted(_TABLES) + ["apps"]
    for key, value in doc.items():
        if key == "apps":
            apps = _apps_table(value, where)
        elif key in _TABLES:
            if not isinstance(value, dict):
                raise ConfigError(f"{_toml_name(key)} ({where})", f"must be a table [{key}]")
            for sub, sub_value in value.items():
                spec = _BY_PATH.get((key, sub))
                if spec is None:
                    name = _toml_name(key, sub)
                    raise ConfigError(
                        f"{name} ({where})", "unknown setting" + _did_you_mean(name, known)
                    )
                raw[spec.key] = (sub_value, where)
        else:
            spec = _BY_PATH.get((key,))
            if spec is None:
                name = _toml_name(key)
                raise ConfigError(
                    f"{name} ({where})", "unknown setting" + _did_you_mean(name, known)
                )
            raw[spec.key] = (value, where)
    return raw, apps


def _apps_table(value: object, where: str) -> dict[str, dict[str, _Raw]]:
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
    return _apps_table(value, APPS_ENV)


def _merge_apps(*layers: dict[str, dict[str, _Raw]]) -> dict[str, AppOverrides]:
    # Later layers win field by field, like every other setting.
    merged: dict[str, dict[str, _Raw]] = {}
    for layer in layers:
        for app, fields in layer.items():
            merged.setdefault(app, {}).update(fields)
    apps: dict[str, AppOverrides] = {}
    for app in sorted(merged):
        parsed: dict[str, object] = {}
        for key, (raw, source) in merged[app].items():
            try:
                parsed[key] = _parse(_APP_FIELDS[key][0], raw, source)
            except _Bad as bad:
                raise ConfigError(f"{_app_name(app)}.{key} ({source})", str(bad)) from None
        apps[app] = AppOverrides(
            timeout_ms=_opt(parsed, "timeout", int),
            foreground_idle_timeout_ms=_opt(parsed, "foreground_idle_timeout", int),
            resume_on_launch=_opt(parsed, "resume_on_launch", bool),
        )
    return apps


def _get(values: Mapping[str, object], key: str, kind: type[_T]) -> _T:
    value = values[key]
    assert isinstance(value, kind), (key, kind)
    return value


def _opt(values: Mapping[str, object], key: str, kind: type[_T]) -> _T | None:
    return None if values.get(key) is None else _get(values, key, kind)


def _build(
    values: Mapping[str, object],
    sources: Mapping[str, str],
    apps: Mapping[str, AppOverrides],
    config_file: Path | None,
) -> Settings:
    topics = Topics(
        raw_events=_get(values, "topic_raw_events", str),
        sessionized_events=_get(values, "topic_sessionized_events", str),
        sessions=_get(values, "topic_sessions", str),
        dead_letters=_get(values, "topic_dead_letters", str),
        opt_out_control=_get(values, "topic_opt_out_control", str),
    )
    _check_topics_distinct(values, sources)
    security = Security(
        protocol=cast(SecurityProtocol, _get(values, "security_protocol", str)),
        sasl_mechanism=cast("SaslMechanism | None", _opt(values, "sasl_mechanism", str)),
        sasl_username=_opt(values, "sasl_username", str),
        sasl_password=_opt(values, "sasl_password", Secret),
        ssl_cafile=_opt(values, "ssl_cafile", Path),
        ssl_certfile=_opt(values, "ssl_certfile", Path),
        ssl_keyfile=_opt(values, "ssl_keyfile", Path),
    )
    _check_security(security, sources)
    _check_tls(security, sources)
    engine = EngineConfig(
        timeout_ms=_get(values, "timeout", int),
        foreground_idle_timeout_ms=_opt(values, "foreground_idle_timeout", int),
        resume_on_launch=_get(values, "resume_on_launch", bool),
        apps=dict(apps),
        grace_ms=_get(values, "grace", int),
        state_ttl_ms=_get(values, "state_ttl", int),
        max_session_attributes=_get(values, "max_session_attributes", int),
        max_record_bytes=_get(values, "max_record_bytes", int),
        max_future_skew_ms=_get(values, "max_future_skew", int),
    )
    hosts = _get(values, "broker_url", tuple)
    return Settings(
        broker_url="kafka://" + ",".join(hosts),
        broker_hosts=hosts,
        topics=topics,
        partitions=_get(values, "partitions", int),
        replication_factor=_get(values, "replication_factor", int),
        engine=engine,
        idle_timeout_ms=_get(values, "idle_timeout", int),
        store=cast(Store, _get(values, "store", str)),
        processing_guarantee=cast(ProcessingGuarantee, _get(values, "processing_guarantee", str)),
        web_port=_get(values, "web_port", int),
        web_host=_get(values, "web_host", str),
        web_token=_opt(values, "web_token", Secret),
        stall_timeout_ms=_get(values, "stall_timeout", int),
        data_dir=_get(values, "data_dir", Path),
        broker_bin=_opt(values, "broker_bin", Path),
        app_id=_get(values, "app_id", str),
        repartition=_get(values, "repartition", bool),
        batch_size=_get(values, "batch_size", int),
        batch_within_ms=_get(values, "batch_within", int),
        security=security,
        config_file=config_file,
        sources=dict(sources),
    )


def _check_topics_distinct(values: Mapping[str, object], sources: Mapping[str, str]) -> None:
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


def _check_security(sec: Security, sources: Mapping[str, str]) -> None:
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


def _check_tls(sec: Security, sources: Mapping[str, str]) -> None:
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
    docs = [SettingDoc(s.name, s.env, s.type, s.doc_default, s.description) for s in _SPECS]
    app_types = {
        "timeout": "duration > 0",
        "foreground_idle_timeout": "duration > 0",
        "resume_on_launch": "bool",
    }
    for key, (_parse, description) in _APP_FIELDS.items():
        docs.append(
            SettingDoc(
                f'apps."<app>".{key}', APPS_ENV, app_types[key], f"session.{key}", description
            )
        )
    return docs


_EXAMPLE_TOML = """\
broker_url = "kafka://kafka-1:9092,kafka-2:9092"
partitions = 12
replication_factor = 3
data_dir = "/var/lib/sessionizer"
# store = "rocksdb"   # state on disk in data_dir; needs the rocksdict package

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
        f"`SESSIONIZER_CONFIG` and variables starting with `{TEST_ENV_PREFIX}` are not"
        " settings and are never rejected.",
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
        " every command at start-up with one line naming the setting (exit code 2)."
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
