"""The one orjson wrapper: every byte the product reads or writes goes through here."""

from __future__ import annotations

from typing import Any

import orjson

_OPTIONS = 0

JSONDecodeError = orjson.JSONDecodeError


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    return orjson.loads(data)


def dumps(value: Any) -> bytes:
    return orjson.dumps(value, option=_OPTIONS)


def dumps_line(value: Any) -> bytes:
    """One JSONL line, newline included, without a second copy."""
    return orjson.dumps(value, option=_OPTIONS | orjson.OPT_APPEND_NEWLINE)
