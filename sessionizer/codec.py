"""The one orjson wrapper: every byte the product reads or writes goes through here.

The names are bound to orjson's C functions directly (no Python frame per
call): they run once or more per record on the hot path.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import orjson

JSONDecodeError = orjson.JSONDecodeError

loads: Callable[[bytes | bytearray | memoryview | str], Any] = orjson.loads
dumps: Callable[[Any], bytes] = orjson.dumps
# One JSONL line, newline included, without a second copy.
dumps_line: Callable[[Any], bytes] = partial(orjson.dumps, option=orjson.OPT_APPEND_NEWLINE)
