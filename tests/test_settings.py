"""Settings (§8, R8): layering, validation, one-line errors, secrets, docs."""

from __future__ import annotations

import dataclasses
import gc
import subprocess
import sys
from pathlib import Path

import pytest

from sessionizer.core.config import (
    DAY_MS,
    HOUR_MS,
    MINUTE_MS,
    AppOverrides,
    ConfigError,
    EngineConfig,
)
from sessionizer.integrations import REGISTRY
from sessionizer.settings import (
    Secret,
    Settings,
    Source,
    describe_settings,
    env_var,
    load_settings,
    parse_duration_ms,
    parse_size_bytes,
    render_markdown,
    setting_values,
)

ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "hunter2-Sup3rS3cret"


def write(tmp_path: Path, text: str, name: str = "sessionizer.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def error(*args: object, **kwargs: object) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_settings(*args, **kwargs)  # type: ignore[arg-type]
    err = info.value
    message = str(err)
    assert "\n" not in message and "\r" not in message, message
    assert message.startswith("invalid setting "), message
    return err


def file_error(tmp_path: Path, toml: str, name: str) -> ConfigError:
    """The error of a file holding ``toml``, which must name the setting ``name`` in the file."""
    path = write(tmp_path, toml + "\n")
    err = error(path, env={})
    assert err.setting == f"{name} (in {path})"
    return err


# --------------------------------------------------------------------------- defaults


def test_defaults_without_file_or_env() -> None:
    s = load_settings(env={})
    assert s == Settings()
    assert s.broker_url == "kafka://127.0.0.1:9092"
    assert s.broker_hosts == ("127.0.0.1:9092",)
    assert s.topics.raw_events == "raw-events"
    assert s.topics.sessionized_events == "sessionized-events"
    assert s.topics.sessions == "sessions"
    assert s.topics.dead_letters == "dead-letters"
    assert s.topics.opt_out_control == "opt-out-control"
    assert (s.partitions, s.replication_factor) == (8, 1)
    assert s.idle_timeout_ms == 10_000
    assert (s.store, s.processing_guarantee) == ("memory", "at_least_once")
    assert (s.web_host, s.web_port) == ("127.0.0.1", 6066)
    assert s.data_dir == Path(".data")
    assert s.broker_bin is None
    assert (s.batch_size, s.batch_within_ms) == (1000, 100)
    assert s.security.protocol == "PLAINTEXT"
    assert s.config_file is None
    e = s.engine
    assert e.grace_ms == 2 * MINUTE_MS
    assert e.state_ttl_ms == 30 * DAY_MS
    assert e.max_session_attributes == 100
    assert e.max_record_bytes == 1024 * 1024
    assert e.max_future_skew_ms == 24 * HOUR_MS
    assert e.apps == {}


def test_r8_default_timeout_is_30_minutes_and_idle_4x() -> None:
    rules = load_settings(env={}).engine.rules_for("any.app")
    assert rules.timeout_ms == 30 * MINUTE_MS
    assert rules.idle_timeout_ms == 4 * 30 * MINUTE_MS
    assert rules.resume_on_launch is False


def test_settings_are_frozen() -> None:
    s = load_settings(env={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.web_port = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.topics.raw_events = "x"  # type: ignore[misc]


# --------------------------------------------------------------------------- file


FULL_FILE = """
broker_url = "kafka://kafka-1:9092,kafka-2:9093"
partitions = 12
replication_factor = 3
idle_timeout = "30s"
store = "rocksdb"
processing_guarantee = "at_least_once"
web_port = 8080
web_host = "0.0.0.0"
data_dir = "/var/lib/sessionizer"
broker_bin = "/opt/broker/bin/broker"
batch_size = 500
batch_within = "250ms"

[topics]
raw_events = "mp.raw"
sessionized_events = "mp.sessionized"
sessions = "mp.sessions"
dead_letters = "mp.dlq"
opt_out_control = "mp.opt_out"

[session]
timeout = "15m"
foreground_idle_timeout = "2h"
resume_on_launch = true
grace = "30s"
state_ttl = "7d"
max_session_attributes = 20
max_record_bytes = "512KiB"
max_future_skew = "1h"
"""


def test_file_sets_every_setting(tmp_path: Path) -> None:
    path = write(tmp_path, FULL_FILE)
    s = load_settings(path, env={})
    assert s.config_file == path
    assert s.broker_url == "kafka://kafka-1:9092,kafka-2:9093"
    assert s.broker_hosts == ("kafka-1:9092", "kafka-2:9093")
    assert s.topics.raw_events == "mp.raw"
    assert s.topics.sessionized_events == "mp.sessionized"
    assert s.topics.sessions == "mp.sessions"
    assert s.topics.dead_letters == "mp.dlq"
    assert s.topics.opt_out_control == "mp.opt_out"
    assert (s.partitions, s.replication_factor) == (12, 3)
    assert s.idle_timeout_ms == 30_000
    assert (s.store, s.processing_guarantee) == ("rocksdb", "at_least_once")
    assert (s.web_host, s.web_port) == ("0.0.0.0", 8080)
    assert s.data_dir == Path("/var/lib/sessionizer")
    assert s.broker_bin == Path("/opt/broker/bin/broker")
    assert (s.batch_size, s.batch_within_ms) == (500, 250)
    e = s.engine
    assert e.timeout_ms == 15 * MINUTE_MS
    assert e.foreground_idle_timeout_ms == 2 * HOUR_MS
    assert e.resume_on_launch is True
    assert e.grace_ms == 30_000
    assert e.state_ttl_ms == 7 * DAY_MS
    assert e.max_session_attributes == 20
    assert e.max_record_bytes == 512 * 1024
    assert e.max_future_skew_ms == HOUR_MS


def test_config_file_from_sessionizer_config(tmp_path: Path) -> None:
    path = write(tmp_path, "partitions = 3\n")
    s = load_settings(env={"SESSIONIZER_CONFIG": str(path)})
    assert s.partitions == 3
    assert s.config_file == path


def test_explicit_config_file_wins_over_sessionizer_config(tmp_path: Path) -> None:
    a = write(tmp_path, "partitions = 3\n", "a.toml")
    b = write(tmp_path, "partitions = 4\n", "b.toml")
    assert load_settings(b, env={"SESSIONIZER_CONFIG": str(a)}).partitions == 4


def test_empty_sessionizer_config_means_no_file() -> None:
    assert load_settings(env={"SESSIONIZER_CONFIG": ""}) == Settings()


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, "")
    assert dataclasses.replace(load_settings(path, env={}), config_file=None) == Settings()


# --------------------------------------------------------------------------- layering


def test_env_overrides_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'broker_url = "a:1"\nweb_port = 7000\n[topics]\nraw_events = "from-file"\n'
        '[session]\ntimeout = "15m"\ngrace = "1m"\n',
    )
    env = {
        "SESSIONIZER_WEB_PORT": "7001",
        "SESSIONIZER_TOPIC_RAW_EVENTS": "from-env",
        "SESSIONIZER_TIMEOUT": "20m",
    }
    s = load_settings(path, env=env)
    assert s.web_port == 7001
    assert s.topics.raw_events == "from-env"
    assert s.engine.timeout_ms == 20 * MINUTE_MS
    # Untouched by env: the file's value stays.
    assert s.engine.grace_ms == MINUTE_MS
    assert s.broker_hosts == ("a:1",)


def test_command_line_overrides_env_and_file(tmp_path: Path) -> None:
    path = write(tmp_path, 'web_port = 7000\ndata_dir = "file-dir"\n')
    env = {"SESSIONIZER_WEB_PORT": "7001", "SESSIONIZER_BROKER_URL": "env:1"}
    s = load_settings(path, env=env, web_port=7002, broker_url="kafka://cli:2", data_dir=None)
    assert s.web_port == 7002
    assert s.broker_url == "kafka://cli:2"
    # None means "flag not given".
    assert s.data_dir == Path("file-dir")


def test_command_line_accepts_any_flat_setting_name() -> None:
    s = load_settings(env={}, timeout="5m", topic_sessions="s2", store="rocksdb")
    assert s.engine.timeout_ms == 5 * MINUTE_MS
    assert s.topics.sessions == "s2"
    assert s.store == "rocksdb"


def test_unknown_override_keyword_is_a_programming_error() -> None:
    with pytest.raises(TypeError, match="web_prot"):
        load_settings(env={}, web_prot=1)


def test_bad_command_line_value_names_the_command_line() -> None:
    err = error(env={}, web_port="http")
    assert (
        str(err)
        == 'invalid setting web_port (command line): must be an integer 0-65535, got "http"'
    )


def test_empty_env_unsets_an_optional_file_value(tmp_path: Path) -> None:
    path = write(tmp_path, 'broker_bin = "/opt/b"\n[session]\nforeground_idle_timeout = "1h"\n')
    env = {"SESSIONIZER_BROKER_BIN": "", "SESSIONIZER_FOREGROUND_IDLE_TIMEOUT": ""}
    s = load_settings(path, env=env)
    assert s.broker_bin is None
    assert s.engine.foreground_idle_timeout_ms is None


def test_env_booleans_and_choices_are_case_insensitive() -> None:
    env = {
        "SESSIONIZER_RESUME_ON_LAUNCH": "Yes",
        "SESSIONIZER_STORE": "RocksDB",
        "SESSIONIZER_PROCESSING_GUARANTEE": "AT_LEAST_ONCE",
    }
    s = load_settings(env=env)
    assert s.engine.resume_on_launch is True
    assert s.store == "rocksdb"
    assert s.processing_guarantee == "at_least_once"


@pytest.mark.parametrize("raw", ["exactly_once", "EXACTLY_ONCE", " exactly_once "])
def test_exactly_once_is_a_setting_the_broker_decides_on(raw: str) -> None:
    # Accepted here; the worker refuses it at start-up on a broker without
    # transactions (kafka.clients.prepare_broker, tests/integration/test_exactly_once_refused.py).
    s = load_settings(env={"SESSIONIZER_PROCESSING_GUARANTEE": raw})
    assert s.processing_guarantee == "exactly_once"


@pytest.mark.parametrize(
    ("raw", "ms"), [(None, 100), ("10ms", 10), ("250ms", 250), ("1.5s", 1500), ("1m", 60_000)]
)
def test_transaction_interval(raw: str | None, ms: int) -> None:
    env = {} if raw is None else {"SESSIONIZER_TRANSACTION_INTERVAL": raw}
    assert load_settings(env=env).transaction_interval_ms == ms


# --------------------------------------------------------------------------- per-app (R8)

APPS_FILE = """
[session]
timeout = "30m"

[apps."com.example.web"]
timeout = "10m"
resume_on_launch = true

[apps."com.example.game"]
foreground_idle_timeout = "4h"

[apps."com.example.both"]
timeout = "5m"
foreground_idle_timeout = "7m"
"""


def test_r8_per_app_overrides_resolve_through_rules_for(tmp_path: Path) -> None:
    engine = load_settings(write(tmp_path, APPS_FILE), env={}).engine
    web = engine.rules_for("com.example.web")
    assert (web.timeout_ms, web.idle_timeout_ms, web.resume_on_launch) == (
        10 * MINUTE_MS,
        40 * MINUTE_MS,  # only the timeout overridden: 4x of the app's timeout
        True,
    )
    game = engine.rules_for("com.example.game")
    assert (game.timeout_ms, game.idle_timeout_ms, game.resume_on_launch) == (
        30 * MINUTE_MS,
        4 * HOUR_MS,
        False,
    )
    both = engine.rules_for("com.example.both")
    assert (both.timeout_ms, both.idle_timeout_ms) == (5 * MINUTE_MS, 7 * MINUTE_MS)
    other = engine.rules_for("com.example.other")
    assert (other.timeout_ms, other.idle_timeout_ms) == (30 * MINUTE_MS, 120 * MINUTE_MS)


def test_r8_per_app_overrides_from_env_json() -> None:
    env = {
        "SESSIONIZER_APPS": '{"com.example.web": {"timeout": "10m", "resume_on_launch": true},'
        ' "com.example.game": {"foreground_idle_timeout": "4h"}}'
    }
    engine = load_settings(env=env).engine
    assert engine.apps == {
        "com.example.game": AppOverrides(foreground_idle_timeout_ms=4 * HOUR_MS),
        "com.example.web": AppOverrides(timeout_ms=10 * MINUTE_MS, resume_on_launch=True),
    }
    assert engine.rules_for("com.example.game").idle_timeout_ms == 4 * HOUR_MS


def test_r8_env_apps_win_over_file_field_by_field(tmp_path: Path) -> None:
    path = write(tmp_path, APPS_FILE)
    env = {
        "SESSIONIZER_APPS": '{"com.example.web": {"timeout": "20m"}, "new.app": {"timeout": "60s"}}'
    }
    engine = load_settings(path, env=env).engine
    web = engine.rules_for("com.example.web")
    assert web.timeout_ms == 20 * MINUTE_MS
    assert web.resume_on_launch is True  # the file's field survives
    assert engine.rules_for("new.app").timeout_ms == MINUTE_MS
    assert engine.rules_for("com.example.game").idle_timeout_ms == 4 * HOUR_MS


def test_r8_global_foreground_idle_timeout(tmp_path: Path) -> None:
    engine = load_settings(env={"SESSIONIZER_FOREGROUND_IDLE_TIMEOUT": "3h"}).engine
    assert engine.rules_for("x").idle_timeout_ms == 3 * HOUR_MS


@pytest.mark.parametrize(
    ("env", "setting"),
    [
        ({"SESSIONIZER_TIMEOUT": "0"}, "session.timeout (SESSIONIZER_TIMEOUT)"),
        ({"SESSIONIZER_TIMEOUT": "-5"}, "session.timeout (SESSIONIZER_TIMEOUT)"),
        ({"SESSIONIZER_TIMEOUT": "0m"}, "session.timeout (SESSIONIZER_TIMEOUT)"),
        (
            {"SESSIONIZER_FOREGROUND_IDLE_TIMEOUT": "0s"},
            "session.foreground_idle_timeout (SESSIONIZER_FOREGROUND_IDLE_TIMEOUT)",
        ),
        ({"SESSIONIZER_APPS": '{"a.b": {"timeout": 0}}'}, 'apps."a.b".timeout (SESSIONIZER_APPS)'),
        (
            {"SESSIONIZER_APPS": '{"a.b": {"foreground_idle_timeout": "-1m"}}'},
            'apps."a.b".foreground_idle_timeout (SESSIONIZER_APPS)',
        ),
    ],
)
def test_r8_non_positive_timeouts_are_config_errors(env: dict[str, str], setting: str) -> None:
    err = error(env=env)
    assert err.setting == setting
    assert "must be a positive duration" in err.problem


def test_r8_non_positive_app_timeout_in_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[apps."com.example.web"]\ntimeout = -5\n')
    err = error(path, env={})
    assert str(err) == (
        f'invalid setting apps."com.example.web".timeout (in {path}): '
        'must be a positive duration such as "30m", got -5'
    )


def test_the_example_error_line() -> None:
    err = error(env={"SESSIONIZER_TIMEOUT": "-5"})
    assert str(err) == (
        "invalid setting session.timeout (SESSIONIZER_TIMEOUT): "
        'must be a positive duration such as "30m", got "-5"'
    )


# --------------------------------------------------------------------------- bad values


@pytest.mark.parametrize(
    ("var", "value", "name", "problem"),
    [
        ("BROKER_URL", "http://h:1", "broker_url", "must be"),
        ("BROKER_URL", "kafka://h", "broker_url", "must be"),
        ("BROKER_URL", "h:1,,h:2", "broker_url", "must be"),
        ("BROKER_URL", "h:0", "broker_url", "port must be 1-65535"),
        ("BROKER_URL", "h:70000", "broker_url", "port must be 1-65535"),
        ("BROKER_URL", "bad host:1", "broker_url", "must be"),
        ("BROKER_URL", "[nope]:1", "broker_url", "must be"),
        ("BROKER_URL", "", "broker_url", "must be"),
        ("TOPIC_RAW_EVENTS", "raw events", "topics.raw_events", "Kafka topic name"),
        ("TOPIC_SESSIONS", "..", "topics.sessions", "Kafka topic name"),
        ("TOPIC_DEAD_LETTERS", "x" * 250, "topics.dead_letters", "Kafka topic name"),
        ("TOPIC_OPT_OUT_CONTROL", "", "topics.opt_out_control", "Kafka topic name"),
        ("PARTITIONS", "0", "partitions", "integer >= 1"),
        ("PARTITIONS", "eight", "partitions", "integer >= 1"),
        ("PARTITIONS", "8.0", "partitions", "integer >= 1"),
        ("REPLICATION_FACTOR", "-1", "replication_factor", "integer >= 1"),
        ("TIMEOUT", "30 minutes", "session.timeout", "positive duration"),
        ("TIMEOUT", "1.0005s", "session.timeout", "positive duration"),
        ("TIMEOUT", "1.5", "session.timeout", "positive duration"),
        ("RESUME_ON_LAUNCH", "maybe", "session.resume_on_launch", "true or false"),
        ("GRACE", "-1s", "session.grace", "duration of 0 or more"),
        ("STATE_TTL", "0d", "session.state_ttl", "positive duration"),
        ("MAX_SESSION_ATTRIBUTES", "0", "session.max_session_attributes", "integer >= 1"),
        ("MAX_RECORD_BYTES", "1MB", "session.max_record_bytes", "positive size"),
        ("MAX_RECORD_BYTES", "0", "session.max_record_bytes", "positive size"),
        ("MAX_FUTURE_SKEW", "soon", "session.max_future_skew", "duration of 0 or more"),
        ("IDLE_TIMEOUT", "0", "idle_timeout", "positive duration"),
        ("STORE", "redis", "store", "one of memory, rocksdb"),
        ("PROCESSING_GUARANTEE", "exactly-twice", "processing_guarantee", "one of"),
        ("TRANSACTION_INTERVAL", "5ms", "transaction_interval", "from 10ms to 1m"),
        ("TRANSACTION_INTERVAL", "61s", "transaction_interval", "from 10ms to 1m"),
        ("TRANSACTION_INTERVAL", "0ms", "transaction_interval", "from 10ms to 1m"),
        ("TRANSACTION_INTERVAL", "soon", "transaction_interval", "from 10ms to 1m"),
        ("TRANSACTION_INTERVAL", "100", "transaction_interval", "needs a unit"),
        ("WEB_PORT", "65536", "web_port", "integer 0-65535"),
        ("WEB_PORT", "-1", "web_port", "integer 0-65535"),
        ("WEB_HOST", "local host", "web_host", "host name"),
        ("WEB_HOST", "", "web_host", "host name"),
        ("DATA_DIR", "", "data_dir", "non-empty path"),
        ("BATCH_SIZE", "0", "batch_size", "integer >= 1"),
        ("STANDBY_REPLICAS", "-1", "standby_replicas", "integer >= 0"),
        ("STANDBY_REPLICAS", "one", "standby_replicas", "integer >= 0"),
        ("BATCH_WITHIN", "0ms", "batch_within", "positive duration"),
        ("SECURITY_PROTOCOL", "TLS", "security_protocol", "one of PLAINTEXT"),
        ("SASL_MECHANISM", "GSSAPI", "sasl_mechanism", "one of PLAIN"),
        ("SSL_CAFILE", "/no/such/ca.pem", "ssl_cafile", "file not found"),
    ],
)
def test_bad_env_value_is_one_line_naming_the_setting(
    var: str, value: str, name: str, problem: str
) -> None:
    env_var = "SESSIONIZER_" + var
    err = error(env={env_var: value})
    assert err.setting == f"{name} ({env_var})"
    assert problem in err.problem
    assert str(err).startswith(f"invalid setting {name} ({env_var}): ")


@pytest.mark.parametrize(
    ("toml", "name", "problem"),
    [
        ("partitions = true", "partitions", "got true"),
        ("partitions = 1.5", "partitions", "got 1.5"),
        ('partitions = "many"', "partitions", 'got "many"'),
        ("web_port = 99999", "web_port", "got 99999"),
        ("broker_url = 9092", "broker_url", "got 9092"),
        ("broker_url = ['a:1']", "broker_url", "got an array"),
        ("store = 1", "store", "one of memory, rocksdb"),
        ("transaction_interval = 100", "transaction_interval", "needs a unit"),
        ("[session]\ntimeout = true", "session.timeout", "got true"),
        ("[session]\ntimeout = 1.5", "session.timeout", "got 1.5"),
        ('[session]\nresume_on_launch = "perhaps"', "session.resume_on_launch", "true or false"),
        ("[session]\nmax_record_bytes = -1", "session.max_record_bytes", "got -1"),
        ("[topics]\nsessions = 5", "topics.sessions", "Kafka topic name"),
        ("session = 5", "session", "must be a table [session]"),
        ("topics = 'x'", "topics", "must be a table [topics]"),
        ("apps = 3", "apps", "must be a table of apps"),
        ("[apps]\nweb = 3", 'apps."web"', "must be a table of"),
        ('[apps."a.b"]\nresume_on_launch = "si"', 'apps."a.b".resume_on_launch', "true or false"),
    ],
)
def test_bad_file_value_names_the_setting_and_file(
    tmp_path: Path, toml: str, name: str, problem: str
) -> None:
    err = file_error(tmp_path, toml, name)
    assert problem in err.problem


def test_values_with_newlines_stay_on_one_line() -> None:
    err = error(env={"SESSIONIZER_STORE": "mem\nory\r\u2028"})
    assert '"mem\\nory\\r\\u2028"' in str(err)


def test_long_values_are_cut_short() -> None:
    err = error(env={"SESSIONIZER_STORE": "x" * 5000})
    assert len(str(err)) < 200


def test_duplicate_topics_are_an_error() -> None:
    err = error(env={"SESSIONIZER_TOPIC_SESSIONIZED_EVENTS": "raw-events"})
    assert str(err) == (
        "invalid setting topics.sessionized_events (SESSIONIZER_TOPIC_SESSIONIZED_EVENTS): "
        'must differ from topics.raw_events (both are "raw-events")'
    )


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("{not json", "not valid JSON"),
        ('["a.b"]', "must be a JSON object"),
        ('{"a.b": 5}', "must be a table of"),
        ('{"": {"timeout": "1m"}}', "must not be empty"),
    ],
)
def test_bad_sessionizer_apps(value: str, problem: str) -> None:
    err = error(env={"SESSIONIZER_APPS": value})
    assert err.setting.endswith("(SESSIONIZER_APPS)")
    assert problem in err.problem


# --------------------------------------------------------------------------- unknown keys


@pytest.mark.parametrize(
    ("toml", "name", "hint"),
    [
        ("partitons = 8", "partitons", "did you mean partitions?"),
        ("[session]\ntimout = '5m'", "session.timout", "did you mean session.timeout?"),
        ("timeout = '5m'", "timeout", "did you mean session.timeout?"),
        ("[topics]\nraw_event = 'r'", "topics.raw_event", "did you mean topics.raw_events?"),
        ("[sesion]\ntimeout = '5m'", "sesion", "did you mean session?"),
        ("zzz = 1", "zzz", ""),
        ('"odd key" = 1', '"odd key"', ""),
    ],
)
def test_unknown_file_key_is_an_error_naming_it(
    tmp_path: Path, toml: str, name: str, hint: str
) -> None:
    err = file_error(tmp_path, toml, name)
    assert err.problem.startswith("unknown setting")
    assert hint in err.problem


def test_unknown_per_app_key(tmp_path: Path) -> None:
    path = write(tmp_path, '[apps."a.b"]\ntimout = "5m"\n')
    err = error(path, env={})
    assert err.setting == f'apps."a.b".timout (in {path})'
    assert "did you mean timeout?" in err.problem


def test_unquoted_dotted_app_name_gets_a_hint(tmp_path: Path) -> None:
    path = write(tmp_path, '[apps.com.example.app]\ntimeout = "5m"\n')
    err = error(path, env={})
    assert 'quote app names that contain dots: [apps."com.example.app"]' in str(err)


def test_unknown_per_app_key_in_env_json() -> None:
    err = error(env={"SESSIONIZER_APPS": '{"a.b": {"grace": "1m"}}'})
    assert err.setting == 'apps."a.b".grace (SESSIONIZER_APPS)'


def test_unknown_env_var_is_an_error_with_a_suggestion() -> None:
    err = error(env={"SESSIONIZER_TIMOUT": "5m"})
    assert str(err) == (
        "invalid setting SESSIONIZER_TIMOUT: unknown environment variable; "
        "did you mean SESSIONIZER_TIMEOUT?"
    )
    assert err.setting == "SESSIONIZER_TIMOUT"


def test_env_vars_that_are_not_settings_are_allowed() -> None:
    env = {
        "SESSIONIZER_CONFIG": "",
        "SESSIONIZER_TEST_BROKER": "whatever",
        "SESSIONIZERX": "1",
        "PATH": "/bin",
        "sessionizer_timeout": "-5",  # env names are case-sensitive; not ours
    }
    assert load_settings(env=env) == Settings()


# --------------------------------------------------------------------------- the file itself


def test_missing_config_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    err = error(path, env={})
    assert (
        str(err)
        == f'invalid setting config file "{path}": cannot read it: No such file or directory'
    )


def test_missing_config_file_from_env(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    err = error(env={"SESSIONIZER_CONFIG": str(path)})
    assert str(path) in str(err)


def test_config_file_is_a_directory(tmp_path: Path) -> None:
    err = error(tmp_path, env={})
    assert str(tmp_path) in str(err) and "cannot read it" in str(err)


def test_invalid_toml(tmp_path: Path) -> None:
    path = write(tmp_path, 'partitions = 8\nbroker_url = "unterminated\n')
    err = error(path, env={})
    assert err.setting == f'config file "{path}"'
    assert err.problem.startswith("not valid TOML")
    assert "line 2" in err.problem


def test_duplicate_toml_key_is_invalid_toml(tmp_path: Path) -> None:
    err = error(write(tmp_path, "partitions = 8\npartitions = 9\n"), env={})
    assert "not valid TOML" in err.problem


def test_config_file_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes('web_host = "caf\xe9"\n'.encode("latin-1"))
    err = error(path, env={})
    assert err.problem == "not UTF-8 text"


# --------------------------------------------------------------------------- security


def test_secret_never_shows_itself() -> None:
    secret = Secret(PASSWORD)
    assert repr(secret) == "Secret('***')"
    assert str(secret) == "***"
    assert f"{secret}" == "***"
    assert secret.reveal() == PASSWORD
    assert secret == Secret(PASSWORD)
    assert secret != Secret("other")


SASL_ENV = {
    "SESSIONIZER_SECURITY_PROTOCOL": "sasl_ssl",
    "SESSIONIZER_SASL_MECHANISM": "scram-sha-512",
    "SESSIONIZER_SASL_USERNAME": "svc-sessionizer",
    "SESSIONIZER_SASL_PASSWORD": PASSWORD,
}


def test_sasl_settings(tmp_path: Path) -> None:
    s = load_settings(env=SASL_ENV)
    sec = s.security
    assert sec.protocol == "SASL_SSL"
    assert sec.sasl_mechanism == "SCRAM-SHA-512"
    assert sec.sasl_username == "svc-sessionizer"
    assert sec.sasl_password is not None and sec.sasl_password.reveal() == PASSWORD
    assert sec.uses_sasl and sec.uses_ssl
    assert PASSWORD not in repr(s)
    assert PASSWORD not in str(s)
    assert "Secret('***')" in repr(s)


def test_password_from_file_is_hidden_too(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f'security_protocol = "SASL_PLAINTEXT"\nsasl_mechanism = "PLAIN"\n'
        f'sasl_username = "u"\nsasl_password = "{PASSWORD}"\n',
    )
    s = load_settings(path, env={})
    assert s.security.sasl_password == Secret(PASSWORD)
    assert PASSWORD not in repr(s)


@pytest.mark.parametrize(
    ("env", "setting", "problem"),
    [
        (
            {**SASL_ENV, "SESSIONIZER_SASL_MECHANISM": ""},
            "sasl_mechanism (SESSIONIZER_SASL_MECHANISM)",
            "required when security_protocol is SASL_SSL",
        ),
        (
            {k: v for k, v in SASL_ENV.items() if k != "SESSIONIZER_SASL_USERNAME"},
            "sasl_username (SESSIONIZER_SASL_USERNAME)",
            "required when",
        ),
        (
            {k: v for k, v in SASL_ENV.items() if k != "SESSIONIZER_SASL_PASSWORD"},
            "sasl_password (SESSIONIZER_SASL_PASSWORD)",
            "required when",
        ),
        (
            {**SASL_ENV, "SESSIONIZER_SECURITY_PROTOCOL": "PLAINTEXT"},
            "sasl_mechanism (SESSIONIZER_SASL_MECHANISM)",
            "only used with SASL_PLAINTEXT or SASL_SSL, but security_protocol is PLAINTEXT",
        ),
        (
            {"SESSIONIZER_SASL_PASSWORD": PASSWORD},
            "sasl_password (SESSIONIZER_SASL_PASSWORD)",
            "only used with SASL_PLAINTEXT or SASL_SSL",
        ),
        (
            {**SASL_ENV, "SESSIONIZER_SASL_MECHANISM": PASSWORD},
            "sasl_mechanism (SESSIONIZER_SASL_MECHANISM)",
            "must be one of",
        ),
    ],
)
def test_sasl_combinations(env: dict[str, str], setting: str, problem: str) -> None:
    err = error(env=env)
    assert err.setting == setting
    assert problem in err.problem


def test_secrets_never_appear_in_errors(tmp_path: Path) -> None:
    errors = [
        error(env={"SESSIONIZER_SASL_PASSWORD": PASSWORD}),
        error(env={**SASL_ENV, "SESSIONIZER_SASL_USERNAME": ""}),
        error(env={**SASL_ENV, "SESSIONIZER_SECURITY_PROTOCOL": "SSL"}),
        error(env={**SASL_ENV, "SESSIONIZER_SASL_PASSWORD": ""}),
        error(write(tmp_path, "sasl_password = 12345678\n", "int.toml"), env={}),
        error(write(tmp_path, f'sasl_pasword = "{PASSWORD}"\n', "typo.toml"), env={}),
        error(env={**SASL_ENV, "SESSIONIZER_SASL_PASWORD": PASSWORD}),
    ]
    for err in errors:
        assert PASSWORD not in str(err) and PASSWORD not in repr(err)
        assert "12345678" not in str(err)
    assert errors[4].problem == "must be a non-empty string"


def test_ssl_files(tmp_path: Path, pki: dict[str, Path]) -> None:
    ca, cert, key = pki["cert"], pki["cert"], pki["key"]
    env = {
        "SESSIONIZER_SECURITY_PROTOCOL": "SSL",
        "SESSIONIZER_SSL_CAFILE": str(ca),
        "SESSIONIZER_SSL_CERTFILE": str(cert),
        "SESSIONIZER_SSL_KEYFILE": str(key),
    }
    sec = load_settings(env=env).security
    assert (sec.ssl_cafile, sec.ssl_certfile, sec.ssl_keyfile) == (ca, cert, key)
    assert sec.uses_ssl and not sec.uses_sasl

    err = error(env={**env, "SESSIONIZER_SSL_CERTFILE": ""})
    assert err.setting == "ssl_certfile (SESSIONIZER_SSL_CERTFILE)"
    assert err.problem == "required when ssl_keyfile is set"

    err = error(env={**env, "SESSIONIZER_SECURITY_PROTOCOL": "PLAINTEXT"})
    assert err.setting == "ssl_cafile (SESSIONIZER_SSL_CAFILE)"
    assert "only used with SSL or SASL_SSL" in err.problem

    err = error(env={**env, "SESSIONIZER_SSL_KEYFILE": str(tmp_path / "gone.pem")})
    assert err.setting == "ssl_keyfile (SESSIONIZER_SSL_KEYFILE)"
    assert err.problem == f'file not found: "{tmp_path / "gone.pem"}"'


def test_ssl_without_files_uses_system_cas() -> None:
    sec = load_settings(env={"SESSIONIZER_SECURITY_PROTOCOL": "SSL"}).security
    assert sec.protocol == "SSL" and sec.ssl_cafile is None


# --------------------------------------------------------------------------- web


TOKEN = "wEb-t0ken_Xq9-ZZ4m7Rk2"


def test_web_defaults() -> None:
    s = load_settings(env={})
    assert s.web_token is None
    assert s.stall_timeout_ms == 60_000
    assert Settings().stall_timeout_ms == 60_000 and Settings().web_token is None


def test_web_token_from_env_is_a_secret() -> None:
    s = load_settings(env={"SESSIONIZER_WEB_TOKEN": TOKEN})
    assert s.web_token == Secret(TOKEN) and s.web_token.reveal() == TOKEN
    for text in (repr(s), str(s), repr(s.web_token), f"{s.web_token}"):
        assert TOKEN not in text
    assert "web_token=Secret('***')" in repr(s)


def test_web_token_from_file_and_unset_by_empty_env(tmp_path: Path) -> None:
    path = write(tmp_path, f'web_token = "{TOKEN}"\n')
    assert load_settings(path, env={}).web_token == Secret(TOKEN)
    assert load_settings(path, env={"SESSIONIZER_WEB_TOKEN": ""}).web_token is None


@pytest.mark.parametrize(
    "bad",
    [
        "Sh0rt-T0ken-15c",  # 16 is the least
        "has a space in the middle",
        "tab\tseparated-token-value",
        "non-ascii-t\u00f6ken-value-1234",
        "newline-token-value\n1234",
    ],
)
def test_bad_web_tokens_are_refused_without_showing_them(bad: str) -> None:
    err = error(env={"SESSIONIZER_WEB_TOKEN": bad})
    assert err.setting == "web_token (SESSIONIZER_WEB_TOKEN)"
    assert err.problem == "must be at least 16 printable ASCII characters without spaces"
    assert bad not in str(err) and bad not in repr(err)


def test_web_token_of_the_wrong_type_in_the_file(tmp_path: Path) -> None:
    err = error(write(tmp_path, "web_token = 12345678901234567890\n"), env={})
    assert err.setting == f"web_token (in {tmp_path / 'sessionizer.toml'})"
    assert "12345678901234567890" not in str(err)


@pytest.mark.parametrize(
    ("raw", "ms"), [("90s", 90_000), ("2m", 120_000), ("1500ms", 1500), ("0.5s", 500)]
)
def test_stall_timeout(raw: str, ms: int) -> None:
    assert load_settings(env={"SESSIONIZER_STALL_TIMEOUT": raw}).stall_timeout_ms == ms


def test_stall_timeout_from_file_and_command_line(tmp_path: Path) -> None:
    path = write(tmp_path, 'stall_timeout = "5m"\n')
    assert load_settings(path, env={}).stall_timeout_ms == 5 * MINUTE_MS
    assert load_settings(path, env={}, stall_timeout="10s").stall_timeout_ms == 10_000


@pytest.mark.parametrize("raw", ["0", "0s", "-1s", "soon", "1.5", "1500"])
def test_bad_stall_timeouts(raw: str) -> None:
    err = error(env={"SESSIONIZER_STALL_TIMEOUT": raw})
    assert err.setting == "stall_timeout (SESSIONIZER_STALL_TIMEOUT)"
    assert 'such as "60s"' in err.problem or 'such as "1500s"' in err.problem


# --------------------------------------------------------------------------- formats


@pytest.mark.parametrize(
    ("raw", "ms"),
    [
        (0, 0),
        (1500, 1500),
        ("1500", 1500),
        ("250ms", 250),
        ("10s", 10_000),
        ("30m", 30 * MINUTE_MS),
        ("2h", 2 * HOUR_MS),
        ("30d", 30 * DAY_MS),
        ("1.5h", 90 * MINUTE_MS),
        ("0.5s", 500),
        (" 30 M ", 30 * MINUTE_MS),
        ("10S", 10_000),
    ],
)
def test_durations(raw: object, ms: int) -> None:
    assert parse_duration_ms(raw) == ms


@pytest.mark.parametrize(
    "raw", ["", "m", "-5", "-5m", "5w", "1.5", "0.0001s", "5 m s", "1e3", True, 1.5, None, "٣m"]
)
def test_not_durations(raw: object) -> None:
    assert parse_duration_ms(raw) is None


@pytest.mark.parametrize(
    ("raw", "size"),
    [
        (1, 1),
        ("1048576", 1048576),
        ("100B", 100),
        ("512KiB", 512 * 1024),
        ("1MiB", 1024 * 1024),
        ("1mib", 1024 * 1024),
        ("2GiB", 2 * 1024**3),
        (" 64 KiB ", 64 * 1024),
    ],
)
def test_sizes(raw: object, size: int) -> None:
    assert parse_size_bytes(raw) == size


@pytest.mark.parametrize("raw", ["", "1MB", "1.5MiB", "-1", "KiB", True, 1.0, None])
def test_not_sizes(raw: object) -> None:
    assert parse_size_bytes(raw) is None


@pytest.mark.parametrize(
    ("url", "hosts"),
    [
        ("kafka://127.0.0.1:9092", ("127.0.0.1:9092",)),
        ("KAFKA://broker:9092", ("broker:9092",)),
        ("localhost:9092", ("localhost:9092",)),
        ("kafka://a:1,b.example.com:2", ("a:1", "b.example.com:2")),
        (" a:1 , b:2 ", ("a:1", "b:2")),
        ("kafka_1:9092", ("kafka_1:9092",)),
        ("[::1]:9092", ("[::1]:9092",)),
        ("a:09092", ("a:9092",)),
    ],
)
def test_broker_url_forms(url: str, hosts: tuple[str, ...]) -> None:
    s = load_settings(env={"SESSIONIZER_BROKER_URL": url})
    assert s.broker_hosts == hosts
    assert s.broker_url == "kafka://" + ",".join(hosts)


# --------------------------------------------------------------------------- docs


def test_describe_settings_covers_every_setting() -> None:
    docs = describe_settings()
    names = [d.name for d in docs]
    assert len(names) == len(set(names))
    for expected in [
        "broker_url",
        "topics.raw_events",
        "topics.opt_out_control",
        "partitions",
        "replication_factor",
        "session.timeout",
        "session.foreground_idle_timeout",
        "session.resume_on_launch",
        "session.grace",
        "session.state_ttl",
        "session.max_session_attributes",
        "session.max_record_bytes",
        "session.max_future_skew",
        'apps."<app>".timeout',
        'apps."<app>".foreground_idle_timeout',
        'apps."<app>".resume_on_launch',
        "idle_timeout",
        "store",
        "processing_guarantee",
        "transaction_interval",
        "web_port",
        "web_host",
        "web_token",
        "stall_timeout",
        "data_dir",
        "broker_bin",
        "batch_size",
        "batch_within",
        "security_protocol",
        "sasl_mechanism",
        "sasl_username",
        "sasl_password",
        "ssl_cafile",
        "ssl_certfile",
        "ssl_keyfile",
    ]:
        assert expected in names
    assert all(d.description and d.type and d.default for d in docs)
    env_names = {d.env for d in docs if not d.name.startswith("apps.")}
    assert len(env_names) == len(docs) - 3
    assert "SESSIONIZER_TIMEOUT" in env_names
    assert "SESSIONIZER_TOPIC_RAW_EVENTS" in env_names


def test_every_documented_env_var_is_accepted() -> None:
    for doc in describe_settings():
        if doc.env == "SESSIONIZER_APPS":
            continue
        # An empty value is either accepted (optional) or a value error, never "unknown".
        try:
            load_settings(env={doc.env: ""})
        except ConfigError as err:
            assert "unknown" not in err.problem


def test_markdown_example_file_loads(tmp_path: Path) -> None:
    text = render_markdown()
    example = text.split("```toml\n", 1)[1].split("```", 1)[0]
    s = load_settings(write(tmp_path, example), env={})
    assert s.engine.rules_for("com.example.web").resume_on_launch is True


def test_docs_configuration_md_is_current() -> None:
    path = ROOT / "docs" / "configuration.md"
    assert path.read_text(encoding="utf-8") == render_markdown(), (
        "regenerate: python -m sessionizer.settings --markdown > docs/configuration.md"
    )


def test_module_prints_markdown() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "sessionizer.settings", "--markdown"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    assert out.stdout == render_markdown()
    assert "| `session.timeout` | `SESSIONIZER_TIMEOUT` |" in out.stdout


# --------------------------------------------------------------------------- TLS files load


JSONL = '{"mpid": 1, "event_type": "custom_event", "data": {}}\n'


@pytest.mark.parametrize("content", [JSONL, "", "-----BEGIN-----\n"])
def test_a_ca_file_that_is_not_pem_is_a_config_error(tmp_path: Path, content: str) -> None:
    bad = tmp_path / "events.jsonl"
    bad.write_text(content)
    err = error(env={"SESSIONIZER_SECURITY_PROTOCOL": "SSL", "SESSIONIZER_SSL_CAFILE": str(bad)})
    assert err.setting == "ssl_cafile (SESSIONIZER_SSL_CAFILE)"
    assert err.problem.startswith(f'no PEM CA certificate in "{bad}"')
    assert "_ssl.c" not in err.problem


def test_a_bad_tls_file_in_the_config_file_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "events.jsonl"
    bad.write_text(JSONL)
    path = write(tmp_path, f'security_protocol = "SSL"\nssl_cafile = "{bad}"\n')
    err = error(path, env={})
    assert err.setting == f"ssl_cafile (in {path})"


def test_a_client_certificate_that_does_not_load(tmp_path: Path, pki: dict[str, Path]) -> None:
    bad = tmp_path / "cert.jsonl"
    bad.write_text(JSONL)
    env = {"SESSIONIZER_SECURITY_PROTOCOL": "SSL", "SESSIONIZER_SSL_CERTFILE": str(bad)}
    err = error(env=env)
    assert err.setting == "ssl_certfile (SESSIONIZER_SSL_CERTFILE)"
    assert "cannot load the client certificate" in err.problem
    # A key that is not the certificate's.
    env = {
        "SESSIONIZER_SECURITY_PROTOCOL": "SSL",
        "SESSIONIZER_SSL_CERTFILE": str(pki["cert"]),
        "SESSIONIZER_SSL_KEYFILE": str(pki["other_key"]),
    }
    assert error(env=env).setting == "ssl_certfile (SESSIONIZER_SSL_CERTFILE)"


def test_an_encrypted_key_is_a_config_error_without_a_prompt(pki: dict[str, Path]) -> None:
    env = {
        "SESSIONIZER_SECURITY_PROTOCOL": "SSL",
        "SESSIONIZER_SSL_CERTFILE": str(pki["cert"]),
        "SESSIONIZER_SSL_KEYFILE": str(pki["enc_key"]),
    }
    err = error(env=env)
    assert err.setting == "ssl_keyfile (SESSIONIZER_SSL_KEYFILE)"
    assert err.problem == "the private key is encrypted; give an unencrypted PEM key"


# --------------------------------------------------------------------------- sources


def test_settings_remember_where_each_value_came_from(tmp_path: Path) -> None:
    path = write(tmp_path, 'store = "rocksdb"\n[session]\ntimeout = "15m"\n')
    s = load_settings(path, env={"SESSIONIZER_PARTITIONS": "4"}, web_port=7000)
    assert s.label("store") == f"store (in {path})"
    assert s.label("timeout") == f"session.timeout (in {path})"
    assert s.label("partitions") == "partitions (SESSIONIZER_PARTITIONS)"
    assert s.label("web_port") == "web_port (command line)"
    assert s.label("grace") == "session.grace (SESSIONIZER_GRACE)"  # a default
    assert Settings().label("store") == "store (SESSIONIZER_STORE)"
    assert s == dataclasses.replace(s, sources={})  # not part of the value


@pytest.mark.parametrize(
    ("toml", "env"),
    [
        ('processing_guarantee = "exactly_once"\n', {}),
        ("", {"SESSIONIZER_PROCESSING_GUARANTEE": "exactly_once"}),
    ],
)
def test_exactly_once_without_transactions_is_refused_naming_its_source(
    tmp_path: Path, toml: str, env: dict[str, str]
) -> None:
    from sessionizer.kafka.clients import check_guarantee
    from sessionizer.stream.compat import KAFKA, TANSU

    path = write(tmp_path, toml)
    s = load_settings(path, env=env)
    check_guarantee(s, KAFKA)
    with pytest.raises(ConfigError) as info:
        check_guarantee(s, TANSU)
    where = "SESSIONIZER_PROCESSING_GUARANTEE" if env else f"in {path}"
    assert info.value.setting == f"processing_guarantee ({where})"
    assert info.value.problem.startswith("exactly_once needs Kafka transactions, which Tansu")
    assert "\n" not in str(info.value)
    check_guarantee(load_settings(env={}), TANSU)  # at_least_once runs anywhere


def test_the_reference_says_what_is_supported() -> None:
    docs = {d.name: d for d in describe_settings()}
    assert docs["processing_guarantee"].type == "at_least_once | exactly_once"
    assert "read_committed" in docs["processing_guarantee"].description
    assert "refuses it at start-up" in docs["processing_guarantee"].description
    # rocksdict is a pinned dependency (issue 20): nothing to install; one worker per dir.
    assert "rocksdict" not in docs["store"].description
    assert "one worker per directory" in docs["store"].description


# --------------------------------------------------------------------------- units and types


@pytest.mark.parametrize(
    ("toml", "name"),
    [
        ("[session]\ntimeout = 30", "session.timeout"),
        ('[session]\ntimeout = "30"', "session.timeout"),
        ("[session]\ngrace = 120", "session.grace"),
        ("idle_timeout = 10", "idle_timeout"),
        ("batch_within = 250", "batch_within"),
        ("stall_timeout = 60", "stall_timeout"),
        ('[apps."a.b"]\ntimeout = 30', 'apps."a.b".timeout'),
    ],
)
def test_a_bare_number_in_a_duration_is_an_error_with_a_hint(
    tmp_path: Path, toml: str, name: str
) -> None:
    err = file_error(tmp_path, toml, name)
    n = toml.rsplit("=", 1)[1].strip().strip('"')
    assert err.problem.startswith(f'needs a unit, such as "{n}s" or "{n}m"'), err.problem


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"SESSIONIZER_TIMEOUT": "30"}, "session.timeout (SESSIONIZER_TIMEOUT)"),
        ({"SESSIONIZER_IDLE_TIMEOUT": "10"}, "idle_timeout (SESSIONIZER_IDLE_TIMEOUT)"),
        ({"SESSIONIZER_APPS": '{"a.b": {"timeout": 30}}'}, 'apps."a.b".timeout (SESSIONIZER_APPS)'),
    ],
)
def test_the_environment_needs_units_too(env: dict[str, str], name: str) -> None:
    err = error(env=env)
    assert err.setting == name
    assert err.problem.startswith("needs a unit")


def test_zero_needs_no_unit(tmp_path: Path) -> None:
    path = write(tmp_path, "[session]\ngrace = 0\nmax_future_skew = 0\n")
    s = load_settings(path, env={})
    assert (s.engine.grace_ms, s.engine.max_future_skew_ms) == (0, 0)
    assert load_settings(env={"SESSIONIZER_GRACE": "0"}).engine.grace_ms == 0


def test_the_demo_timings_and_documented_durations_have_units() -> None:
    s = load_settings(env={"SESSIONIZER_TIMEOUT": "2m", "SESSIONIZER_BATCH_WITHIN": "50ms"})
    assert (s.engine.timeout_ms, s.batch_within_ms) == (2 * MINUTE_MS, 50)


@pytest.mark.parametrize(
    ("toml", "name", "shown"),
    [
        ('partitions = "8"', "partitions", '"8"'),
        ('replication_factor = "3"', "replication_factor", '"3"'),
        ('web_port = "6066"', "web_port", '"6066"'),
        ('[session]\nmax_session_attributes = "100"', "session.max_session_attributes", '"100"'),
        ('repartition = "true"', "repartition", '"true"'),
        ('[session]\nresume_on_launch = "false"', "session.resume_on_launch", '"false"'),
        ('[apps."a.b"]\nresume_on_launch = "true"', 'apps."a.b".resume_on_launch', '"true"'),
    ],
)
def test_a_quoted_number_or_boolean_in_the_file_is_an_error(
    tmp_path: Path, toml: str, name: str, shown: str
) -> None:
    err = file_error(tmp_path, toml, name)
    assert err.problem.endswith(f"without quotes, got the string {shown}")


def test_sessionizer_apps_json_is_typed_like_the_file() -> None:
    err = error(env={"SESSIONIZER_APPS": '{"a.b": {"resume_on_launch": "true"}}'})
    assert err.setting == 'apps."a.b".resume_on_launch (SESSIONIZER_APPS)'
    assert "without quotes" in err.problem


def test_environment_values_are_text_and_stay_accepted() -> None:
    env = {
        "SESSIONIZER_PARTITIONS": "8",
        "SESSIONIZER_WEB_PORT": "7000",
        "SESSIONIZER_REPARTITION": "true",
        "SESSIONIZER_RESUME_ON_LAUNCH": "yes",
    }
    s = load_settings(env=env)
    assert (s.partitions, s.web_port, s.repartition) == (8, 7000, True)
    assert s.engine.resume_on_launch is True


# --------------------------------------------------------------------------- declared once


def test_the_engine_defaults_are_the_declared_ones() -> None:
    # core/config.py has defaults of its own for library use: they must agree.
    assert Settings().engine == EngineConfig()
    assert load_settings(env={}).engine == EngineConfig()


def test_every_value_knows_its_origin(tmp_path: Path) -> None:
    path = write(tmp_path, '[session]\ntimeout = "30m"\n')  # the default value, set by the user
    s = load_settings(path, env={"SESSIONIZER_GRACE": "2m"}, web_port=6066)
    assert s.source("timeout") == Source("file", str(path))
    assert s.source("grace") == Source("env", "SESSIONIZER_GRACE")
    assert s.source("web_port") == Source("command line")
    assert s.source("idle_timeout") == Source("default", "SESSIONIZER_IDLE_TIMEOUT")
    assert s.is_set("timeout") and s.is_set("grace") and s.is_set("web_port")
    assert not s.is_set("idle_timeout") and not Settings().is_set("timeout")
    assert s.engine == Settings().engine  # same values, yet set
    assert str(s.source("timeout")) == f"in {path}"


def test_environment_names_come_from_the_declarations() -> None:
    assert env_var("timeout") == "SESSIONIZER_TIMEOUT"
    assert env_var("topic_raw_events") == "SESSIONIZER_TOPIC_RAW_EVENTS"
    assert setting_values(Settings().topics)["topic_dead_letters"] == "dead-letters"
    assert setting_values(Settings())["idle_timeout"] == 10_000


def test_integrations(tmp_path: Path) -> None:
    assert Settings().integrations == ()
    s = load_settings(env={"SESSIONIZER_INTEGRATIONS": "amplitude, GA4,,amplitude"})
    assert s.integrations == ("amplitude", "ga4")
    assert load_settings(env={"SESSIONIZER_INTEGRATIONS": ""}).integrations == ()
    path = write(tmp_path, 'integrations = ["segment", "snowplow", "mixpanel"]\n')
    assert load_settings(path, env={}).integrations == ("segment", "snowplow", "mixpanel")


@pytest.mark.parametrize(
    ("toml", "env", "shown"),
    [
        ("", {"SESSIONIZER_INTEGRATIONS": "amplitude,heap"}, '"heap"'),
        ('integrations = ["ga4", "Heap"]\n', {}, '"Heap"'),
    ],
)
def test_an_unknown_integration_is_named(
    tmp_path: Path, toml: str, env: dict[str, str], shown: str
) -> None:
    path = write(tmp_path, toml)
    err = error(path, env=env)
    where = "SESSIONIZER_INTEGRATIONS" if env else f"in {path}"
    assert err.setting == f"integrations ({where})"
    known = ", ".join(sorted(REGISTRY))  # amplitude, ga4, mixpanel, segment, snowplow, ...
    assert err.problem == f"unknown destination {shown}; known: {known}"


def test_integrations_must_be_a_list_in_the_file(tmp_path: Path) -> None:
    err = error(write(tmp_path, "integrations = 3\n"), env={})
    assert err.problem.startswith("must be a list of destinations")


def test_standby_replicas(tmp_path: Path) -> None:
    # Unset: a standby only where it shortens a takeover (docs/performance.md).
    assert Settings().standby_replicas is None
    assert Settings().table_standby_replicas == 0
    assert Settings(store="rocksdb").table_standby_replicas == 1
    assert load_settings(env={"SESSIONIZER_STORE": "rocksdb"}).table_standby_replicas == 1
    s = load_settings(env={"SESSIONIZER_STANDBY_REPLICAS": "0", "SESSIONIZER_STORE": "rocksdb"})
    assert (s.standby_replicas, s.table_standby_replicas) == (0, 0)
    path = write(tmp_path, "standby_replicas = 2\n")
    assert load_settings(path, env={}).table_standby_replicas == 2
    assert load_settings(path, env={}, standby_replicas=1).table_standby_replicas == 1
    unset = load_settings(path, env={"SESSIONIZER_STANDBY_REPLICAS": ""})
    assert (unset.standby_replicas, unset.table_standby_replicas) == (None, 0)


def test_the_worker_gives_standby_replicas_to_faust(tmp_path: Path) -> None:
    from sessionizer.stream.worker import build_app

    threshold = gc.get_threshold()
    try:
        for settings, n in [
            (Settings(data_dir=tmp_path), 0),
            (Settings(standby_replicas=2, data_dir=tmp_path), 2),
        ]:
            assert build_app(settings, web=False).conf.table_standby_replicas == n
    finally:  # build_app tunes the collector for a worker process
        gc.unfreeze()
        gc.set_threshold(*threshold)


@pytest.mark.parametrize(
    ("toml", "env", "problem"),
    [
        ("", {"SESSIONIZER_STANDBY_REPLICAS": "-1"}, 'must be an integer >= 0, got "-1"'),
        ("", {"SESSIONIZER_STANDBY_REPLICAS": "1.5"}, "must be an integer >= 0"),
        ("", {"SESSIONIZER_STANDBY_REPLICAS": "yes"}, "must be an integer >= 0"),
        ("standby_replicas = -1", {}, "must be an integer >= 0, got -1"),
        ("standby_replicas = true", {}, "must be an integer >= 0, got true"),
        ('standby_replicas = "1"', {}, "must be an integer without quotes"),
    ],
)
def test_bad_standby_replicas_are_named(
    tmp_path: Path, toml: str, env: dict[str, str], problem: str
) -> None:
    err = error(write(tmp_path, toml + "\n"), env=env)
    where = "SESSIONIZER_STANDBY_REPLICAS" if env else f"in {tmp_path / 'sessionizer.toml'}"
    assert err.setting == f"standby_replicas ({where})"
    assert err.problem.startswith(problem), err.problem


def test_ga4_client_id_field(tmp_path: Path) -> None:
    assert Settings().ga4_client_id_field is None
    env = {"SESSIONIZER_GA4_CLIENT_ID_FIELD": "user_attributes.ga_client_id"}
    assert load_settings(env=env).ga4_client_id_field == "user_attributes.ga_client_id"
    assert load_settings(env={"SESSIONIZER_GA4_CLIENT_ID_FIELD": ""}).ga4_client_id_field is None
    path = write(tmp_path, 'ga4_client_id_field = "device_info.ios_advertising_id"\n')
    assert load_settings(path, env={}).ga4_client_id_field == "device_info.ios_advertising_id"


@pytest.mark.parametrize(
    ("toml", "env", "problem"),
    [
        ("", {"SESSIONIZER_GA4_CLIENT_ID_FIELD": "user_attributes..id"}, "must be a dotted field"),
        ("", {"SESSIONIZER_GA4_CLIENT_ID_FIELD": "user attributes"}, "must be a dotted field"),
        ("", {"SESSIONIZER_GA4_CLIENT_ID_FIELD": "events.data.x"}, "must name an event's field"),
        ("ga4_client_id_field = 3", {}, "must be a dotted field path"),
        ('ga4_client_id_field = ["a"]', {}, "must be a dotted field path"),
        ('ga4_client_id_field = ".a"', {}, "must be a dotted field path"),
    ],
)
def test_a_bad_ga4_client_id_field_is_named(
    tmp_path: Path, toml: str, env: dict[str, str], problem: str
) -> None:
    path = write(tmp_path, toml + "\n")
    err = error(path, env=env)
    where = "SESSIONIZER_GA4_CLIENT_ID_FIELD" if env else f"in {path}"
    assert err.setting == f"ga4_client_id_field ({where})"
    assert err.problem.startswith(problem), err.problem


def test_forwarder_settings(tmp_path: Path) -> None:
    s = Settings()
    assert (s.forward_endpoint, s.forward_api_key, s.forward_batch_size) == ("", None, 0)
    assert (s.forward_timeout_ms, s.forward_max_backoff_ms) == (10_000, 60_000)
    path = write(
        tmp_path,
        'forward_endpoint = "https://eu.example.com/batch"\nforward_api_key = "k-123"\n'
        'forward_batch_size = 500\nforward_timeout = "3s"\nforward_max_backoff = "5m"\n',
    )
    s = load_settings(path, env={})
    assert s.forward_endpoint == "https://eu.example.com/batch"
    assert s.forward_api_key == Secret("k-123") and "k-123" not in repr(s)
    assert (s.forward_batch_size, s.forward_timeout_ms, s.forward_max_backoff_ms) == (
        500,
        3000,
        5 * MINUTE_MS,
    )
    assert load_settings(env={"SESSIONIZER_FORWARD_API_KEY": ""}).forward_api_key is None


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ({"SESSIONIZER_FORWARD_TIMEOUT": "10"}, "needs a unit"),
        ({"SESSIONIZER_FORWARD_MAX_BACKOFF": "0"}, "must be a positive duration"),
        ({"SESSIONIZER_FORWARD_BATCH_SIZE": "-1"}, "must be an integer >= 0"),
        ({"SESSIONIZER_FORWARD_ENDPOINT": "eu.example.com"}, "must be an http(s) URL"),
    ],
)
def test_bad_forwarder_settings(env: dict[str, str], problem: str) -> None:
    err = error(env=env)
    assert err.setting.endswith(f"({next(iter(env))})")
    assert err.problem.startswith(problem), err.problem


def test_the_forwarder_key_never_shows() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(
            env={"SESSIONIZER_FORWARD_API_KEY": "sk-live-1", "SESSIONIZER_PARTITIONS": "x"}
        )
    assert "sk-live-1" not in str(info.value)
    assert "sk-live-1" not in repr(load_settings(env={"SESSIONIZER_FORWARD_API_KEY": "sk-live-1"}))


# --------------------------------------------------------------------------- the advertised web URL


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
def test_a_wildcard_web_host_is_never_advertised(host: str) -> None:
    import socket

    s = load_settings(env={"SESSIONIZER_WEB_HOST": host, "SESSIONIZER_WEB_PORT": "7001"})
    assert s.web_url == f"http://{socket.gethostname()}:7001"


def test_the_advertised_url_is_what_the_worker_advertises() -> None:
    env = {"SESSIONIZER_WEB_HOST": "0.0.0.0", "SESSIONIZER_WEB_ADVERTISED_URL": "http://w1:80/"}
    assert load_settings(env=env).web_url == "http://w1:80"
    assert load_settings(env={"SESSIONIZER_WEB_HOST": "::1"}).web_url == "http://[::1]:6066"
    assert load_settings(env={}).web_url == "http://127.0.0.1:6066"


@pytest.mark.parametrize(
    "url", ["http://0.0.0.0:6066", "http://[::]:6066", "worker-1:6066", "ftp://w1", "http://"]
)
def test_an_advertised_url_nobody_can_reach_is_refused(url: str) -> None:
    err = error(env={"SESSIONIZER_WEB_ADVERTISED_URL": url})
    assert err.setting == "web_advertised_url (SESSIONIZER_WEB_ADVERTISED_URL)"


def test_the_worker_app_advertises_the_url() -> None:
    from sessionizer.stream.worker import build_app

    env = {"SESSIONIZER_WEB_HOST": "0.0.0.0", "SESSIONIZER_WEB_ADVERTISED_URL": "http://w1:7002"}
    app = build_app(load_settings(env=env))
    assert str(app.conf.canonical_url) == "http://w1:7002"
    app = build_app(load_settings(env={"SESSIONIZER_WEB_HOST": "0.0.0.0"}))
    assert app.conf.canonical_url.host not in ("0.0.0.0", "", None)


def test_a_removed_setting_says_why_in_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "old.toml"
    cfg.write_text('input_reader = "direct"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(cfg)
    assert str(info.value).count("\n") == 0
    assert "input_reader" in str(info.value) and "removed in v3" in str(info.value)


def test_a_removed_environment_variable_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SESSIONIZER_INPUT_READER", "faust")
    with pytest.raises(ConfigError) as info:
        load_settings(None)
    assert "SESSIONIZER_INPUT_READER" in str(info.value) and "unset it" in str(info.value)
