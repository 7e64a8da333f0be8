"""The one orjson wrapper: every byte the product reads or writes goes through here.

The names are bound to orjson's C functions directly (no Python frame per
call): they run once or more per record on the hot path.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import orjson

JSONDecodeError = orjson.JSONDecodeError

loads: Any = orjson.loads
dumps: Any = orjson.dumps
# One JSONL line, newline included, without a second copy.
dumps_line: Any = partial(orjson.dumps, option=orjson.OPT_APPEND_NEWLINE)
