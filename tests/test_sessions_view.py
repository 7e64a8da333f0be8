"""The worker's `GET /sessions/{app}/{device}` body: each session named for what it is.

`key_view` builds the body from the engine's state; every case is validated
against schemas/sessions-lookup.schema.json, and the example of
docs/operations.md is checked against what the engine answers for it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

from sessionizer import codec
from sessionizer.core.config import EngineConfig
from sessionizer.core.engine import Engine
from sessionizer.core.state import KeyState
from sessionizer.stream.web import key_view
from sessionizer.testing import MIN, NOW, T0, batch, opt_out, screen, set_attr

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = json.loads((ROOT / "schemas" / "sessions-lookup.schema.json").read_text("utf-8"))
VALIDATOR = Draft202012Validator(SCHEMA, format_checker=Draft202012Validator.FORMAT_CHECKER)
APP = "com.example.shop"
DEV = "8d5f3c1e-dev"
URL = "http://127.0.0.1:6066"


class Key:
    """One engine fed record by record, like a worker's partition."""

    def __init__(self) -> None:
        self.engine = Engine(EngineConfig(), loads=codec.loads, dumps=codec.dumps)
        self.offset = 0

    def feed(
        self, record: dict[str, Any] | bytes, device: str = DEV, *, expire: bool = True
    ) -> None:
        value = record if isinstance(record, bytes) else codec.dumps(record)
        self.engine.process_record(value, device.encode(), "raw-events", 3, self.offset, None, NOW)
        self.offset += 1
        if expire:  # as the worker does after each batch
            self.engine.expire()

    def view(self, device: str = DEV) -> dict[str, Any]:
        st = self.engine.keys[f"{APP}/{device}"]
        body = key_view(st, 3, self.engine.watermark, "engine", URL)
        errors = [e.message for e in VALIDATOR.iter_errors(body)]
        assert errors == [], (errors, body)
        return body


def _rec(device: str, *events: dict[str, Any]) -> dict[str, Any]:
    return batch(device, *events, application_info={"package": APP})


def test_the_schema_is_valid() -> None:
    Draft202012Validator.check_schema(SCHEMA)


def test_an_open_session_is_the_open_session() -> None:
    k = Key()
    k.feed(_rec(DEV, screen(T0), screen(T0 + 1000)))
    body = k.view()
    assert body["open_session"]["status"] == "open"
    assert body["open_session"]["end_reason"] is None
    assert body["open_session"]["revision"] is None
    assert body["expired_session"] is None and body["last_closed_session"] is None
    assert (body["source"], body["served_by"], body["partition"]) == ("engine", URL, 3)


def test_a_session_the_watermark_closed_is_expired_not_open() -> None:
    k = Key()
    k.feed(_rec(DEV, screen(T0)))
    k.feed(_rec("other-device", screen(T0 + 60 * MIN)))  # the watermark passes the deadline
    body = k.view()
    assert body["open_session"] is None
    expired = body["expired_session"]
    assert expired["status"] == "expired"
    assert (expired["end_reason"], expired["revision"]) == ("timeout", 0)
    assert body["last_closed_session"] is None

    # R21: the key's next event, before the deadline, reopens it...
    k.feed(_rec(DEV, screen(T0 + 10 * MIN)), expire=False)
    body = k.view()
    assert body["expired_session"] is None
    reopened = body["open_session"]
    assert (reopened["status"], reopened["end_reason"]) == ("open", None)
    assert reopened["session_uuid"] == expired["session_uuid"]
    assert reopened["revision"] == 0  # its latest session_end so far
    # ... and the watermark, already past its new deadline, closes it again: revision 1.
    k.engine.expire()
    again = k.view()["expired_session"]
    assert (again["session_uuid"], again["revision"]) == (expired["session_uuid"], 1)
    assert again["end_unixtime_ms"] == T0 + 10 * MIN


def test_a_final_session_is_the_last_closed_session() -> None:
    k = Key()
    k.feed(_rec(DEV, screen(T0)))
    k.feed(_rec(DEV, screen(T0 + 60 * MIN)))  # after the deadline: a new session
    body = k.view()
    assert body["open_session"]["session_number"] == 2
    closed = body["last_closed_session"]
    assert (closed["status"], closed["session_number"], closed["end_reason"]) == (
        "closed",
        1,
        "timeout",
    )
    assert body["session_count"] == 2


def test_an_opted_out_key_shows_only_the_flag() -> None:
    k = Key()
    k.feed(_rec(DEV, screen(T0), opt_out(T0 + 1000)))
    assert k.view() == {"opted_out": True}


def test_an_answer_from_the_table_has_no_watermark() -> None:
    k = Key()
    k.feed(_rec(DEV, screen(T0)))
    st = k.engine.keys[f"{APP}/{DEV}"]
    restored = KeyState.restore(st.key, codec.loads(codec.dumps(st.snapshot())))
    body = key_view(restored, 3, None, "table", URL)
    assert list(VALIDATOR.iter_errors(body)) == []
    assert body["watermark_ms"] is None and body["source"] == "table"


def _json_block(markdown: str, needle: str) -> dict[str, Any]:
    for block in re.findall(r"```json\n(.*?)```", markdown, re.S):
        if needle in block:
            value: dict[str, Any] = json.loads(block)
            return value
    raise AssertionError(f"no ```json block with {needle} in the document")


def test_the_documented_example_is_what_the_engine_answers() -> None:
    k = Key()
    for line in (ROOT / "docs" / "examples" / "shop.jsonl").read_bytes().splitlines():
        k.feed(line)
    k.feed(
        batch(
            DEV,
            screen(T0 + 50 * MIN + 5000, "Cart"),
            set_attr(T0 + 50 * MIN + 6000, "plan", "pro"),
            mpid=4242,
            application_info={"package": APP},
        )
    )
    doc = (ROOT / "docs" / "operations.md").read_text("utf-8")
    assert _json_block(doc, '"served_by"') == k.view()
