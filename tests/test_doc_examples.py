"""The documents' shell examples, run as written, and the outputs they show.

Every ``sh`` block of README.md and docs/*.md whose commands need no broker
(``sessionizer process-file``, ``--help``, ``cat``) runs in a temporary
directory holding a copy of docs/examples, with ``.venv/bin`` on PATH as after
``. .venv/bin/activate``. The records docs/formats.md shows for its example are
compared with what ``process-file`` writes for it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from test_docs import DOCS, code_blocks, shell_commands

from sessionizer import codec

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "docs" / "examples" / "shop.jsonl"
# What README's install block does; the test's interpreter already is that environment.
SETUP = re.compile(r"make install|\. \.venv/bin/activate")
RUNNABLE = re.compile(r"sessionizer (process-file \S.*|(\S+ )*(--help|-h))|cat \S+")


def _runnable_blocks() -> list[tuple[str, str]]:
    found = []
    for doc in DOCS:
        for body in code_blocks(doc, "sh"):
            commands = [c for c in shell_commands(body, False) if not SETUP.match(c.strip())]
            if commands and all(RUNNABLE.fullmatch(c.split("  #")[0].strip()) for c in commands):
                found.append((doc.relative_to(ROOT).as_posix(), "\n".join(commands)))
    return found


BLOCKS = _runnable_blocks()


def _run(script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    bin_dir = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIONIZER_")}
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _workdir(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "docs" / "examples", tmp_path / "docs" / "examples")
    return tmp_path


def test_the_documents_have_runnable_examples() -> None:
    where = {doc for doc, _ in BLOCKS}
    assert {"README.md", "docs/formats.md"} <= where, BLOCKS
    assert any("--help" in script for _, script in BLOCKS)


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
@pytest.mark.parametrize(("doc", "script"), BLOCKS, ids=lambda v: v.splitlines()[0][:50])
def test_shell_example_runs_as_written(tmp_path: Path, doc: str, script: str) -> None:
    if not (Path(sys.executable).parent / "sessionizer").exists():
        pytest.skip("the sessionizer script is not installed next to this interpreter")
    res = _run(script, _workdir(tmp_path))
    assert res.returncode == 0, f"{doc}:\n{script}\n{res.stderr}"


# --------------------------------------------------------------------------- formats.md


@pytest.fixture(scope="module")
def example_out(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = _workdir(tmp_path_factory.mktemp("example"))
    res = subprocess.run(
        [sys.executable, "-m", "sessionizer", "process-file", str(EXAMPLE), "--out", "out"],
        cwd=tmp,
        capture_output=True,
        check=True,
        timeout=120,
    )
    records = []
    for name in ("sessionized-events", "sessions", "dead-letters"):
        records += [
            codec.loads(line) for line in (tmp / "out" / f"{name}.jsonl").read_bytes().splitlines()
        ]
    return {"counts": codec.loads(res.stdout), "records": records}


def _example_blocks() -> list[Any]:
    """formats.md's JSON blocks that show the example's output, whole."""
    text = (ROOT / "docs" / "formats.md").read_text(encoding="utf-8")
    uuids = ("8EE22D68-918A-5247-B5D4-61D74E4080D5", "592E4119-7CD1-58ED-BB5B-B327A3148D33")
    out = []
    for body in code_blocks(ROOT / "docs" / "formats.md", "json"):
        if (any(u in body for u in uuids) and '"..."' not in body) or '"records_in"' in body:
            out.append(json.loads(body))
    assert text.count("```json") > len(out) >= 6
    return out


@pytest.mark.parametrize("shown", _example_blocks(), ids=lambda v: str(v)[:50])
def test_formats_md_shows_what_process_file_writes(shown: Any, example_out: dict[str, Any]) -> None:
    if "records_in" in shown:
        assert shown == example_out["counts"]
    else:
        assert shown in example_out["records"]


# --------------------------------------------------------------------------- integrations.md

# A block about the shop example names its device or its ids.
SHOP_MARKS = (
    "8d5f3c1e-dev",
    "8ee22d68-918a-5247-b5d4-61d74e4080d5",
    "4ba05510a8d35fc19a1e99616bc937c5",
)
DESTINATION_SECTIONS = {
    "Amplitude": ("amplitude",),
    "GA4": ("ga4",),
    "Snowplow": ("snowplow",),
    "Mixpanel": ("mixpanel",),
    "Segment and RudderStack": ("segment", "rudderstack"),
}


@pytest.fixture(scope="module")
def translated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Any]]:
    """What `process-file --integrations` writes for the shop example, by destination."""
    tmp = _workdir(tmp_path_factory.mktemp("integrations"))
    names = sorted({n for ns in DESTINATION_SECTIONS.values() for n in ns})
    subprocess.run(
        [sys.executable, "-m", "sessionizer", "process-file", str(EXAMPLE), "--out", "out",
         "--integrations", ",".join(names)],
        cwd=tmp, capture_output=True, check=True, timeout=120,
    )  # fmt: skip
    return {
        n: [
            json.loads(v)
            for v in (tmp / "out" / "integrations" / f"{n}.jsonl").read_text().split("\n")
            if v
        ]
        for n in names
    }


def _json_values(body: str) -> list[Any]:
    decoder, values, i = json.JSONDecoder(), [], 0
    while i < len(body):
        if body[i].isspace():
            i += 1
            continue
        value, i = decoder.raw_decode(body, i)
        values.append(value)
    return values


def _integration_examples() -> list[tuple[str, Any]]:
    """(destination section, a record shown) of integrations.md's shop examples."""
    text = (ROOT / "docs" / "integrations.md").read_text(encoding="utf-8")
    out = []
    for section in re.split(r"\n## ", text)[1:]:
        title = section.split("\n", 1)[0].strip()
        for body in re.findall(r"```json\n(.*?)```", section, re.S):
            if title in DESTINATION_SECTIONS and any(m in body for m in SHOP_MARKS):
                out += [(title, v) for v in _json_values(body)]
    return out


def test_integrations_md_shows_each_destination_for_the_shop_example() -> None:
    assert {t for t, _ in _integration_examples()} == set(DESTINATION_SECTIONS)


@pytest.mark.parametrize(("section", "shown"), _integration_examples(), ids=lambda v: str(v)[:40])
def test_integrations_md_shows_what_process_file_writes(
    section: str, shown: Any, translated: dict[str, list[Any]]
) -> None:
    """Issue 20: the worked examples reused the shop's ids on made-up events
    (`1c4e5d47-…`, event 1 `application_initialized`, shown as `add_to_cart`)."""
    written = [r for n in DESTINATION_SECTIONS[section] for r in translated[n]]
    assert shown in written


def test_integrations_md_ga4_client_id_example_is_what_translate_gives() -> None:
    """The `ga4_client_id_field` example: its two §7.1 records, translated with the
    setting it names, give the two bodies it shows."""
    from sessionizer.integrations import translate
    from sessionizer.integrations.common import Options

    text = (ROOT / "docs" / "integrations.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```json\n(.*?)```", text, re.S)
    (given,) = [b for b in blocks if '"mp_deviceid": "web-7"' in b]
    (shown,) = [b for b in blocks if '"client_id": "1767225600.123456"' in b]
    field = re.search(r'`ga4_client_id_field = "([^"]+)"`', text)
    assert field is not None
    outputs = [("sessionized-events", None, v) for v in _json_values(given)]
    records, dead = translate("ga4", outputs, options=Options(ga4_client_id_field=field.group(1)))
    assert dead == []
    assert [payload for _key, payload in records] == _json_values(shown)
