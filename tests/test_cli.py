"""The command line of SPEC §9: process-file's files, counts line and exit codes."""

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
        (["worker"], {"SESSIONIZER_PROCESSING_GUARANTEE": "exactly_once"}, "processing_guarantee"),
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
