"""Golden files: process-file's output bytes are pinned.

Performance work on the engine and the encoder must not change a byte of
what is written. ``tests/golden/`` holds a generated input (2,022 records,
~3 events each, 2 % bad and 5 % late records, opt-outs, attribute changes)
and the files and counts that process-file wrote for it at c899783, before
the hot-path changes of issue 9.

A change that *means* to change the outputs (a rule in docs/rules.md) regenerates them
with ``SESSIONIZER_UPDATE_GOLDEN=1 pytest tests/test_golden.py`` and says so
in its commit message.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest

from sessionizer.core.model import TOPIC_NAMES
from sessionizer.run.files import process_files

GOLDEN = Path(__file__).parent / "golden"
NOW_MS = 1_800_000_000_000  # bounds future timestamps (§1.3); fixed so the run is too
UPDATE = os.environ.get("SESSIONIZER_UPDATE_GOLDEN") == "1"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, object]]:
    work = tmp_path_factory.mktemp("golden")
    src = work / "input.jsonl"
    src.write_bytes(gzip.decompress((GOLDEN / "input.jsonl.gz").read_bytes()))
    _engine, counts = process_files([str(src)], work / "out", now_ms=NOW_MS)
    return work / "out", counts.as_dict()


def _first_difference(got: bytes, want: bytes) -> str:
    for i, (g, w) in enumerate(zip(got.splitlines(), want.splitlines(), strict=False)):
        if g != w:
            return f"line {i + 1}:\n  got  {g[:300]!r}\n  want {w[:300]!r}"
    return f"{len(got.splitlines())} lines written, {len(want.splitlines())} expected"


@pytest.mark.parametrize("topic", TOPIC_NAMES)
def test_output_bytes_are_the_golden_ones(run: tuple[Path, dict[str, object]], topic: str) -> None:
    out, _counts = run
    got = (out / f"{topic}.jsonl").read_bytes()
    path = GOLDEN / f"{topic}.jsonl.gz"
    if UPDATE:
        path.write_bytes(gzip.compress(got, compresslevel=9, mtime=0))
    want = gzip.decompress(path.read_bytes())
    assert got, "the golden input writes every topic"
    assert got == want, _first_difference(got, want)


def test_counts_are_the_golden_ones(run: tuple[Path, dict[str, object]]) -> None:
    _out, counts = run
    path = GOLDEN / "counts.json"
    if UPDATE:
        path.write_text(json.dumps(counts, indent=1, sort_keys=True) + "\n")
    assert counts == json.loads(path.read_text())
