"""The fuzz corpus of tests/test_fuzz.py (hypothesis) and bench/fuzz.py (millions of records).

Hostile values, the field names they go into at each level of a record, nesting
too deep to read, and the byte-level mutations of a record.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from . import T0

# Values that break naive code: 32/53/64-bit edges, big and negative integers,
# floats where integers belong, lone surrogates, event and transition names.
SPECIAL: list[Any] = [
    0,
    -1,
    T0,
    2**31,
    2**53 + 1,
    2**63 - 1,
    2**63,
    2**64 - 1,
    2**64,
    -(2**63),
    -(2**63) - 1,
    10**30,
    -(10**30),
    1.5,
    -0.0,
    1e308,
    -1e308,
    5e-324,
    float(T0),
    T0 + 0.5,
    "",
    "\x00",
    "\ud800",  # lone surrogates: orjson reads neither escaped nor raw ones
    "a\udfffb",
    "é€😀",
    "application_initialized",
    "application_foreground",
    "application_background",
    "application_exit",
    "session_start",
    "session_end",
    "session_attribute_change",
    "opt_out",
    "screen_view",
    "custom_event",
    "x" * 5000,
]

# Where a hostile value goes: the fields of a batch, of its application_info, of an
# event and of an event's data ("x-unknown": a field the engine does not know).
BATCH_KEYS = [
    "mpid",
    "mp_deviceid",
    "application_info",
    "api_key",
    "environment",
    "device_info",
    "user_identities",
    "user_attributes",
    "timestamp_unixtime_ms",
    "events",
    "source_request_id",
    "schema_version",
    "event_type",  # makes a batch look like a single event too
    "x-unknown",
]
APP_KEYS = ["package", "application_name", "application_version"]
EVENT_KEYS = ["event_type", "data", "x-unknown"]
DATA_KEYS = [
    "timestamp_unixtime_ms",
    "application_transition_type",
    "session_attribute_name",
    "new",
    "increment",
    "deleted",
    "is_opted_out",
    "custom_attributes",
    "event_name",
    "screen_name",
    "session_uuid",
    "event_num",
    "late",
    "x-unknown",
]


def nested(depth: int, shape: str, leaf: str = "1") -> str:
    """JSON text ``depth`` levels deep: arrays ("["), objects ("{") or both ("mixed")."""
    opens: list[str] = []
    closes: list[str] = []
    for i in range(depth):
        if shape == "[" or (shape == "mixed" and i % 2):
            opens.append("[")
            closes.append("]")
        else:
            opens.append('{"k":')
            closes.append("}")
    return "".join(opens) + leaf + "".join(reversed(closes))


def mutate_bytes(rnd: random.Random, value: bytes, others: Sequence[bytes]) -> tuple[str, bytes]:
    """One byte-level change of ``value`` (``others``: records to splice from): its kind
    and the bytes. Bit flips, truncation, splicing of two records, dropped or repeated
    bytes, a random byte, a digit run; an empty value is left as it is."""
    b = bytearray(value)
    if not b:
        return "none", value
    how = rnd.randrange(6)
    if how == 0:
        kind = "bitflip"
        for _ in range(rnd.randint(1, 4)):
            b[rnd.randrange(len(b))] ^= 1 << rnd.randrange(8)
    elif how == 1:
        kind = "truncate"
        del b[rnd.randrange(len(b)) :]
    elif how == 2:  # the head of this record, the tail of another
        kind = "splice"
        other = rnd.choice(others)
        b = b[: rnd.randrange(len(b) + 1)] + other[rnd.randrange(len(other) + 1) :]
    elif how == 3:
        kind = "drop-repeat"
        j = rnd.randrange(len(b))
        b[j:j] = b[j : j + 1] * rnd.randint(0, 3) if rnd.random() < 0.5 else b""
        if rnd.random() < 0.5:
            del b[j]
    elif how == 4:  # quotes, brackets, digits, UTF-8
        kind = "byte"
        b[rnd.randrange(len(b))] = rnd.choice(b'"{}[],:0123456789-.eE\\ \xc3\xa9\xff\x00')
    else:  # timestamps, ids and counts out of range
        kind = "digits"
        j = rnd.randrange(len(b))
        b[j:j] = rnd.choice([b"9999999999", b"-", b"0", b".5", b"e9", b"00"])
    return kind, bytes(b)
