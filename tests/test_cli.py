"""The command line of §9: process-file's files, counts line and exit codes."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sessionizer import codec
from sessionizer.testing import T0, batch, custom, launch, screen

D = "dev-cli"
RECORDS = [
    codec.dumps(batch(D, launch(T0), screen(T0 + 1000))),
    b"not json",
    codec.dumps(batch(D, custom(T0 + 2000))),
]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIONIZER_")}
    env.update(extra)
    return env


def sessionizer(*args: str, stdin: bytes | None = None, **env: str) -> Any:
    return subprocess.run(
        [sys.executable, "-m", "sessionizer", *args],
        input=stdin,
        capture_output=True,
        env=_env(**env),
        timeout=120,
        check=False,
    )


def _lines(path: Path) -> list[dict[str, Any]]:
    return [codec.loads(line) for line in path.read_bytes().splitlines()]


def test_process_file_writes_three_files_and_prints_the_counts(tmp_path: Path) -> None:
    src = tmp_path / "input.jsonl"
    src.write_bytes(b"\n".join(RECORDS) + b"\n")
    out = tmp_path / "out"
    res = sessionizer("process-file", str(src), "--out", str(out))
    assert res.returncode == 0, res.stderr
    counts = codec.loads(res.stdout)
    assert counts["records_in"] == 3 and counts["events_in"] == 3
    assert counts["events_forwarded"] == 3 and counts["records_dead_lettered"] == 1
    assert counts["sessions_ended"]["end_of_input"] == 1
    assert sorted(p.name for p in out.iterdir()) == [
        "dead-letters.jsonl",
        "sessionized-events.jsonl",
        "sessions.jsonl",
    ]
    (dead,) = _lines(out / "dead-letters.jsonl")
    # Offline source: the file's name (not its path), partition 0, line number, no timestamp.
    assert dead["source"] == {
        "topic": "input.jsonl",
        "partition": 0,
        "offset": 1,
        "timestamp": None,
    }
    ends = [r for r in _lines(out / "sessions.jsonl") if r["record"] == "session_end"]
    assert [r["end_reason"] for r in ends] == ["end_of_input"]


def test_process_file_reads_stdin_and_gzip_and_several_inputs(tmp_path: Path) -> None:
    gz = tmp_path / "part2.jsonl.gz"
    with gzip.open(gz, "wb") as f:
        f.write(RECORDS[2] + b"\n")
    out = tmp_path / "out"
    res = sessionizer(
        "process-file", "-", str(gz), "--out", str(out), stdin=b"\n".join(RECORDS[:2])
    )
    assert res.returncode == 0, res.stderr
    assert codec.loads(res.stdout)["records_in"] == 3
    (dead,) = _lines(out / "dead-letters.jsonl")
    assert dead["source"]["topic"] == "stdin"


def test_process_file_keep_open_leaves_sessions_open(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_bytes(RECORDS[0])
    out = tmp_path / "out"
    res = sessionizer("process-file", str(src), "--out", str(out), "--keep-open")
    assert res.returncode == 0, res.stderr
    records = _lines(out / "sessions.jsonl")
    assert [r["record"] for r in records] == ["session_start"]


@pytest.mark.parametrize(
    ("args", "env", "names"),
    [
        (["process-file", "--out", "x"], {}, "INPUTS"),
        (["process-file", "missing.jsonl", "--out", "x"], {}, "missing.jsonl"),
        (["process-file", "in.jsonl", "--out", "x"], {"SESSIONIZER_TIMEOUT": "-5"}, "timeout"),
        (["process-file", "in.jsonl", "--out", "x", "--config", "nope.toml"], {}, "nope.toml"),
        (["worker"], {"SESSIONIZER_PROCESSING_GUARANTEE": "exactly-twice"}, "processing_guarantee"),
    ],
)
def test_r8_usage_and_configuration_errors_exit_2_with_one_line(
    tmp_path: Path, args: list[str], env: dict[str, str], names: str
) -> None:
    (tmp_path / "in.jsonl").write_bytes(RECORDS[0])
    res = subprocess.run(
        [sys.executable, "-m", "sessionizer", *args],
        capture_output=True,
        cwd=tmp_path,
        env=_env(**env),
        timeout=120,
        check=False,
    )
    assert res.returncode == 2, res.stderr
    assert names in res.stderr.decode()
    if "SESSIONIZER_TIMEOUT" in env or "SESSIONIZER_PROCESSING_GUARANTEE" in env:
        assert len(res.stderr.decode().strip().splitlines()) == 1


# --------------------------------------------------------------------------- configuration errors

# Every command that talks to Kafka; none gets as far as connecting.
KAFKA_COMMANDS = [
    ["tail", "sessions"],
    ["produce", "--generate", "10"],
    ["worker"],
    ["replay", "--from-beginning"],
    ["demo", "--no-view", "--duration", "1"],
    ["report", "--since", "1h"],
]


def _one_line_exit_2(res: Any) -> str:
    err = res.stderr.decode()
    assert res.returncode == 2, (res.returncode, err)
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err and "cannot reach" not in err
    return err.strip()


@pytest.mark.parametrize("args", KAFKA_COMMANDS, ids=lambda a: a[0])
def test_a_bad_tls_file_is_a_config_error_for_every_command(
    tmp_path: Path, args: list[str]
) -> None:
    (tmp_path / "events.jsonl").write_bytes(RECORDS[0] + b"\n")
    res = subprocess.run(
        [sys.executable, "-m", "sessionizer", *args],
        capture_output=True,
        cwd=tmp_path,
        env=_env(SESSIONIZER_SECURITY_PROTOCOL="SSL", SESSIONIZER_SSL_CAFILE="events.jsonl"),
        timeout=120,
        check=False,
    )
    err = _one_line_exit_2(res)
    assert err.startswith(
        "sessionizer: invalid setting ssl_cafile (SESSIONIZER_SSL_CAFILE): "
        'no PEM CA certificate in "events.jsonl"'
    ), err


@pytest.mark.parametrize(
    ("toml", "args", "setting"),
    [
        (
            'security_protocol = "SSL"\nssl_cafile = "events.jsonl"\n',
            ["tail", "events"],
            "ssl_cafile",
        ),
        ('transaction_interval = "5ms"\n', ["worker"], "transaction_interval"),
        (
            "[session]\ntimeout = 30\n",
            ["process-file", "events.jsonl", "--out", "o"],
            "session.timeout",
        ),
        ('partitions = "8"\n', ["produce", "--generate", "10"], "partitions"),
    ],
)
def test_a_bad_value_in_the_file_names_the_file(
    tmp_path: Path, toml: str, args: list[str], setting: str
) -> None:
    (tmp_path / "events.jsonl").write_bytes(RECORDS[0] + b"\n")
    (tmp_path / "s.toml").write_text(toml)
    res = subprocess.run(
        [sys.executable, "-m", "sessionizer", *args, "--config", "s.toml"],
        capture_output=True,
        cwd=tmp_path,
        env=_env(),
        timeout=120,
        check=False,
    )
    err = _one_line_exit_2(res)
    assert err.startswith(f"sessionizer: invalid setting {setting} (in s.toml): "), err


def test_a_missing_rocksdict_names_where_store_was_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sessionizer.cli import _worker_unsupported
    from sessionizer.settings import load_settings

    monkeypatch.setitem(sys.modules, "rocksdict", None)  # import rocksdict fails
    path = tmp_path / "s.toml"
    path.write_text('store = "rocksdb"\n')
    problem = _worker_unsupported(load_settings(path, env={}))
    assert problem is not None
    assert problem.startswith(f"invalid setting store (in {path}): rocksdb needs the rocksdict")
    problem = _worker_unsupported(load_settings(env={"SESSIONIZER_STORE": "rocksdb"}))
    assert problem is not None and "store (SESSIONIZER_STORE)" in problem
    assert _worker_unsupported(load_settings(env={})) is None


def test_a_rocksdb_data_dir_in_use_is_one_line_naming_the_setting(tmp_path: Path) -> None:
    """The image's store (rocksdb) locks its tables: a second worker on the same data_dir
    died in Faust's recovery with a RocksDB LOCK traceback; now one line, exit 2."""
    from sessionizer.stream import datadir

    data = tmp_path / "state"
    try:
        assert datadir.hold(data) is None
        assert datadir.hold(data) == os.getpid()  # a second holder is refused
        res = sessionizer(
            "worker",
            SESSIONIZER_STORE="rocksdb",
            SESSIONIZER_DATA_DIR=str(data),
            SESSIONIZER_BROKER_URL="kafka://127.0.0.1:1",
        )
        err = _one_line_exit_2(res)
        assert err == (
            f"sessionizer: invalid setting data_dir (SESSIONIZER_DATA_DIR): {data} is in use "
            f"by another worker (pid {os.getpid()}) with store = rocksdb; give each worker "
            "its own data_dir"
        ), err
        # The memory store keeps nothing there: workers may share it.
        res = sessionizer(
            "worker",
            SESSIONIZER_STORE="memory",
            SESSIONIZER_DATA_DIR=str(data),
            SESSIONIZER_BROKER_URL="kafka://127.0.0.1:1",
        )
        assert "is in use" not in res.stderr.decode()
    finally:
        datadir.release()
    assert datadir.hold(data) is None
    datadir.release()


def test_report_since_must_be_a_duration_or_a_time(tmp_path: Path) -> None:
    res = sessionizer("report", "--since", "yesterday")
    err = _one_line_exit_2(res)
    assert err.startswith("sessionizer report: --since: cannot read 'yesterday': give a"), err


# --------------------------------------------------------------------- the broker's usage errors


def test_broker_on_a_non_loopback_host_is_a_usage_error() -> None:
    err = _one_line_exit_2(sessionizer("broker", "--host", "0.0.0.0", "--port", "0"))
    assert err.startswith("sessionizer broker: --host:") and "0.0.0.0" in err


def test_broker_on_a_taken_port_is_a_usage_error() -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        err = _one_line_exit_2(sessionizer("broker", "--port", str(port)))
    assert err == f"sessionizer broker: --port: 127.0.0.1:{port} is already in use"


def test_a_second_worker_on_a_taken_web_port_is_one_line_naming_web_port() -> None:
    """Before it reaches the broker (none runs here): the port is checked first."""
    import socket

    with socket.socket() as first_worker:
        first_worker.bind(("127.0.0.1", 0))
        first_worker.listen()
        port = first_worker.getsockname()[1]
        err = _one_line_exit_2(sessionizer("worker", SESSIONIZER_WEB_PORT=str(port)))
    assert err.startswith(
        f"sessionizer: invalid setting web_port (SESSIONIZER_WEB_PORT): 127.0.0.1:{port} "
        "is already in use"
    )


def test_a_web_host_this_machine_does_not_have_is_one_line_naming_web_host() -> None:
    # TEST-NET-2 (RFC 5737): never a local address; nothing is sent to it.
    err = _one_line_exit_2(sessionizer("worker", SESSIONIZER_WEB_HOST="198.51.100.7"))
    assert err.startswith(
        "sessionizer: invalid setting web_host (SESSIONIZER_WEB_HOST): cannot listen on "
        "198.51.100.7:6066: "
    )


def test_replay_takes_since_and_until_as_report_does() -> None:
    """Issue 20: `replay --since 30m` was refused while `report --since 30m` worked.
    Read, both are durations back from now: an hour ago is before 30 minutes ago."""
    err = _one_line_exit_2(sessionizer("replay", "--since", "30m", "--until", "1h"))
    assert err == "sessionizer replay: --until must be after --since", err
    err = _one_line_exit_2(sessionizer("replay", "--since", "yesterday"))
    assert err.startswith("sessionizer replay: --since: cannot read 'yesterday': give a"), err
    from sessionizer.run.replay import parse_since_ms

    now = 1_800_000_000_000
    assert parse_since_ms("30m", now) == now - 30 * 60_000
    assert parse_since_ms("7d", now) == now - 7 * 86_400_000
    assert parse_since_ms("1767225600000", now) == 1_767_225_600_000  # epoch ms, not a duration
    assert parse_since_ms("2026-01-01", now) == 1_767_225_600_000


def test_process_file_takes_the_tls_example_config_it_never_connects_with(
    tmp_path: Path,
) -> None:
    """Issue 20: `process-file --config` with docs/security.md's SASL_SSL example stopped
    on ssl_cafile (a CA file of the cluster's, absent here), though it never connects.
    A command that connects still stops on it, with one line."""
    docs = Path(__file__).resolve().parent.parent / "docs"
    text = (docs / "security.md").read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```toml\n")[1:]]
    (example,) = [b for b in blocks if "ssl_cafile" in b]
    config = tmp_path / "cluster.toml"
    config.write_text(example)
    shop = docs / "examples" / "shop.jsonl"
    res = sessionizer("process-file", str(shop), "--out", str(tmp_path / "out"),
                      "--config", str(config))  # fmt: skip
    assert res.returncode == 0, res.stderr.decode()
    assert codec.loads(res.stdout)["records_in"] == len(shop.read_bytes().splitlines())
    err = _one_line_exit_2(sessionizer("tail", "sessions", "--config", str(config)))
    assert "ssl_cafile" in err and "file not found" in err, err
