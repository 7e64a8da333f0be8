"""Fuzz process-file's engine and encoder with millions of mutated realistic records.

    python bench/fuzz.py [--records 1000000] [--seed 1] [--mutate 0.5]

Realistic records come from the workload generator (every event kind, sessions,
attributes, opt-outs, late batches); a share of them is mutated: bits flipped,
cut off, two records spliced, bytes inserted, dropped or repeated, digit runs,
padded past 1 MiB, or the record or one of its fields (batch, event or data
level) replaced by a hostile JSON value (huge and negative integers, 64-bit
edges, floats, lone surrogates, deep nesting, wrong types, long strings): the
corpus of ``sessionizer.testing.fuzz``, which tests/test_fuzz.py draws from too.
They run through the loop of ``sessionizer.run.files.run`` (engine, expiry, the
orjson encoder of ``FileSink``), with the output written to /dev/null.

Prints records/s, dead letters by reason and the exceptions: any exception that
escapes the engine or the encoder, and any ``internal_error`` dead letter (a
failure the engine caught). Exit status 1 unless both are 0 and the §7.4 counts
balance. Same arguments, same records: a failure is reproducible by its seed.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import sys
import time
import traceback
from collections import Counter
from collections.abc import Iterator
from typing import Any

import orjson

from sessionizer import codec
from sessionizer.core.config import EngineConfig
from sessionizer.core.engine import MAX_DEPTH, Engine
from sessionizer.core.model import INTERNAL_ERROR
from sessionizer.run import files
from sessionizer.testing.fuzz import (
    BATCH_KEYS,
    DATA_KEYS,
    EVENT_KEYS,
    SPECIAL,
    mutate_bytes,
    nested,
)
from sessionizer.tools import workload

START_MS = workload.DEFAULT_START_MS
NOW_MS = START_MS + 400 * 24 * 3600 * 1000  # fixed "wall clock": runs do not depend on today


# JSON texts of hostile values, spliced in place of a field's value: the corpus' values
# (ASCII-escaped, so lone surrogates stay escaped), then what only JSON text can say.
HOSTILE: list[str] = [
    *(json.dumps(v) for v in SPECIAL),
    "null",
    "true",
    "false",
    "1e400",  # not a double: orjson refuses the record
    "NaN",
    "Infinity",
    "9" * 40,
    "-" + "9" * 40,
    '"é€😀"',  # raw UTF-8
    json.dumps("y" * 300),
    "[]",
    "{}",
    "[1,2,3]",
    '{"a":1}',
    '[{"a":[{"b":null}]}]',
    *(
        nested(d, k)
        for d in (MAX_DEPTH - 4, MAX_DEPTH, 254, 300, 1020)
        for k in ("[", "{", "mixed")
    ),
]
RAW_HOSTILE = [b"\xff\xfe", b"\xed\xa0\x80", b"\x00", b"\n", b"\r", b'"', b"\\", b"{", b"]"]
MARK = "\x00hostile\x00"
MARK_JSON = orjson.dumps(MARK)


def _object(value: bytes) -> dict[str, Any] | None:
    """The record as a JSON object, or None when it is not one."""
    try:
        rec = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    return rec if type(rec) is dict else None


class Mutator:
    def __init__(self, seed: int, recent: list[bytes]) -> None:
        self.rnd = random.Random(seed)
        self.recent = recent  # records seen lately, for splicing
        self.kinds: Counter[str] = Counter()

    def __call__(self, value: bytes) -> bytes:
        rnd = self.rnd
        how = rnd.randrange(8)
        if rnd.random() < 0.001:  # over max_record_bytes (1 MiB): too_large
            kind, out = "huge", value + b" " * (1 << 20)
        elif how < 4:
            kind, out = "value", self._value(value)
        elif how < 7:
            kind, out = mutate_bytes(rnd, value, self.recent)
        else:
            j = rnd.randrange(len(value) + 1)
            kind, out = "insert", value[:j] + rnd.choice(RAW_HOSTILE) + value[j:]
        self.kinds[kind] += 1
        return out

    def _value(self, value: bytes) -> bytes:
        """A field at one of the three levels set to a hostile value, as text."""
        rnd = self.rnd
        rec = _object(value)
        if rec is None:
            return value
        evs = rec.get("events")
        level = rnd.randrange(5)
        if level == 4:  # the record itself: not an object, or nested too deep
            return rnd.choice(HOSTILE).encode("utf-8")
        if level == 0 or type(evs) is not list or not evs:
            rec[rnd.choice(BATCH_KEYS)] = MARK
        else:
            i = rnd.randrange(len(evs))
            ev = evs[i]
            if level == 1 or type(ev) is not dict:
                evs[i] = MARK
            elif level == 2 or type(ev.get("data")) is not dict:
                ev[rnd.choice(EVENT_KEYS)] = MARK
            else:
                ev["data"][rnd.choice(DATA_KEYS)] = MARK
        text = rnd.choice(HOSTILE).encode("utf-8")
        return orjson.dumps(rec).replace(MARK_JSON, text, 1)


WEEK_MS = 7 * 24 * 3600 * 1000


def corpus(n: int, seed: int, devices: int) -> list[bytes]:
    """``n`` realistic records (about 8 events a record) from the workload generator."""
    gen = workload.generate(n * 9, devices=devices, apps=3, seed=seed, start_ms=START_MS)
    return list(itertools.islice(gen, n))


def _later(value: bytes, shift: int) -> bytes:
    """The record with its event times ``shift`` ms later (bad records unchanged)."""
    rec = _object(value)
    if rec is None:
        return value
    if type(rec.get("timestamp_unixtime_ms")) is int:
        rec["timestamp_unixtime_ms"] += shift
    evs = rec.get("events")
    for ev in evs if type(evs) is list else (rec,):
        data = ev.get("data") if type(ev) is dict else None
        if type(data) is dict and type(data.get("timestamp_unixtime_ms")) is int:
            data["timestamp_unixtime_ms"] += shift
    return orjson.dumps(rec)


def records(base: list[bytes], n: int) -> Iterator[bytes]:
    """``n`` records: ``base`` replayed a week later each round, so devices come back
    instead of jumping back in time."""
    made = 0
    for round_ in itertools.count():
        shift = round_ * WEEK_MS
        for value in base:
            yield _later(value, shift) if shift else value
            made += 1
            if made >= n:
                return


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--mutate", type=float, default=0.5, help="share of records mutated")
    ap.add_argument("--devices", type=int, default=5000)
    ap.add_argument("--corpus", type=int, default=100_000, help="records generated, then replayed")
    args = ap.parse_args(argv)

    t_gen = time.perf_counter()
    base = corpus(min(args.records, args.corpus), args.seed, args.devices)
    t_gen = time.perf_counter() - t_gen

    rnd = random.Random(args.seed)
    recent: list[bytes] = []
    mutate = Mutator(args.seed, recent)
    engine = Engine(EngineConfig(), loads=codec.loads, dumps=codec.dumps)
    sink = files.FileSink(None)  # process-file's sink, to the null device
    exceptions: Counter[str] = Counter()
    first: list[str] = []

    def failed(where: str, offset: int, value: bytes | None) -> None:
        exceptions[f"{where}: {type(sys.exc_info()[1]).__name__}"] += 1
        if len(first) < 5:  # the first few in full, to reproduce with --seed
            shown = "" if value is None else f"  value: {value[:300]!r}\n"
            first.append(f"record {offset} ({where}):\n{traceback.format_exc()}{shown}")

    files.tune_gc()
    process = engine.process_record
    encode = sink.encoder.records
    t0 = time.perf_counter()
    n = 0
    # The loop of Driver.feed (sessionizer/run/driver.py), each step guarded so that
    # every failure is counted.
    for value in records(base, args.records):
        if len(recent) < 2000:
            recent.append(value)
        elif rnd.random() < 0.01:
            recent[rnd.randrange(len(recent))] = value
        if rnd.random() < args.mutate:
            value = mutate(value)
        if b"\n" in value or b"\r" in value:  # process-file would read two lines
            value = value.replace(b"\n", b" ").replace(b"\r", b" ")
        try:
            process(value, None, "fuzz.jsonl", 0, n, None, NOW_MS)
        except Exception:
            failed("process_record", n, value)
        try:
            engine.advance()
        except Exception:
            failed("advance", n, value)
        try:
            out = engine.take_output()
            if out:
                sink.write(encode(out, engine))
        except Exception:
            failed("encode", n, value)
        n += 1
    try:
        engine.end_of_input()
        sink.write(encode(engine.take_output(), engine))
    except Exception:
        failed("end_of_input", n, None)
    sink.close()
    seconds = time.perf_counter() - t0

    c = engine.counts
    internal = c.dead_by_reason[INTERNAL_ERROR]
    n_exc = sum(exceptions.values())
    print(
        f"records: {n:,} in {seconds:.1f} s = {n / seconds:,.0f} records/s (seed {args.seed}; "
        f"{len(base):,} generated in {t_gen:.1f} s, replayed a week later each round)"
    )
    print(
        "mutated: "
        + ", ".join(f"{k} {v:,}" for k, v in sorted(mutate.kinds.items()))
        + f" (total {sum(mutate.kinds.values()):,})"
    )
    print(
        f"events: in {c.events_in:,}, forwarded {c.events_forwarded:,} (late {c.events_late:,}), "
        f"control {c.events_control:,}, opted out {c.events_opted_out:,}, "
        f"dead-lettered {c.events_dead_lettered:,}; records dead-lettered "
        f"{c.records_dead_lettered:,}; sessions started {c.sessions_started:,}"
    )
    print("dead letters by reason:")
    for reason, count in sorted(c.dead_by_reason.items(), key=lambda kv: -kv[1]):
        print(f"  {reason:<24} {count:>10,}")
    print(f"exceptions: {n_exc} escaped, {internal} caught by the engine (internal_error)")
    for name, count in exceptions.most_common():
        print(f"  {name}: {count}")
    for text in first:
        print(text, file=sys.stderr)
    balanced = c.balanced()
    if not balanced:
        print("§7.4 counts do not balance:", c.as_dict())
    summary = {
        "records": n,
        "seconds": round(seconds, 3),
        "records_per_s": round(n / seconds),
        "dead_letters": dict(c.dead_by_reason),
        "exceptions": n_exc,
        "internal_errors": internal,
        "balanced": balanced,
    }
    print("FUZZ " + json.dumps(summary, separators=(",", ":")), flush=True)
    return 0 if n_exc == 0 and internal == 0 and balanced else 1


if __name__ == "__main__":
    sys.exit(main())
