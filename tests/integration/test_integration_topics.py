"""The ``integrations.<name>`` topics (§10, issue #8) on a real broker: the worker's and
``replay``'s equal what ``process-file --integrations`` writes for the same records.

One workload goes to the raw topic (keyed by device, two partitions, a clock record
per partition so every session closes the same way everywhere, and a device too
long for Amplitude and Mixpanel, whose records become translation dead letters).
Then:

* **process-file**: each partition's records (read back in offset order) through
  ``process_files`` and ``integrations.write_files``, as the command does: one engine
  per partition, as the worker and replay keep them;
* **replay** into ``bf.`` topics;
* **the worker**, with every destination enabled.

Each integration topic must hold exactly the records (key: the device, value: the
bytes) of the files: replay as a multiset (it writes each record once), the worker
as a set (at-least-once: a redelivered batch repeats records byte for byte). The
translation dead letters in the dead-letters topic likewise.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from schema_check import validate_output

from sessionizer import codec
from sessionizer.core.model import TOPIC_NAMES
from sessionizer.integrations import NAMES, file_outputs, translate_keyed, write_files
from sessionizer.integrations.common import DEAD_LETTER_REASONS
from sessionizer.run.files import process_files
from sessionizer.run.replay import integration_topics, output_topics, replay
from sessionizer.settings import Settings, load_settings
from sessionizer.testing import MIN, batch, custom, launch, screen
from sessionizer.testing.harness import (
    Names,
    WorkerProc,
    clock_records,
    max_event_ts,
    produce,
    produce_clocks,
    read_all,
    running,
)
from sessionizer.tools.workload import generate

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

PARTITIONS = 2
PREFIX = "bf."
KV = tuple[bytes | None, bytes]
LONG_DEVICE = "long-" + "x" * 1100  # over Amplitude's 1024 and Mixpanel's 255 characters


def _env(names: Names) -> dict[str, str]:
    return {
        **names.env(),
        "SESSIONIZER_INTEGRATIONS": ",".join(NAMES),
        "SESSIONIZER_PARTITIONS": str(PARTITIONS),
        # No wall-clock expiry (R22): event time alone, as in process-file and replay.
        "SESSIONIZER_IDLE_TIMEOUT": "1h",
    }


def _workload() -> tuple[list[bytes], list[bytes]]:
    # No late uploads: a late record can find its session closed provisionally (R21)
    # by the expiry after an earlier record (process-file, replay) but still open at
    # the end of the worker's batch, so the §7 outputs themselves (revisions) would
    # differ; R0 holds for the final sessions there (test_worker.py). Here the §7
    # outputs are the same, and the test is about their translation.
    recs = list(generate(1500, devices=30, apps=2, seed=23, bad_rate=0.02, late_rate=0.0))
    hi = max_event_ts(recs)
    recs += [
        codec.dumps(batch(LONG_DEVICE, launch(hi - 5 * MIN), screen(hi - 4 * MIN))),
        codec.dumps(batch(LONG_DEVICE, custom(hi - 3 * MIN))),
    ]
    return recs, clock_records(hi, PARTITIONS)


def _bounded_only(kv: KV) -> bool:
    """The end_of_input close of a clock device's session: only bounded runs have it."""
    key, value = kv
    return (key or b"").startswith(b"clock-") and b'"end_of_input"' in value


def _integration_dead(values: list[KV]) -> Counter[KV]:
    return Counter(kv for kv in values if codec.loads(kv[1])["reason"] in DEAD_LETTER_REASONS)


def _process_file(raw: list[tuple[int, bytes | None, bytes]], tmp: Path) -> dict[str, Any]:
    """Per integration topic: the Counter of (key, value) that process-file's translation
    gives, checked against the .jsonl files it writes; the dead letters' values."""
    want: dict[str, Counter[KV]] = {n: Counter() for n in NAMES}
    dead: Counter[bytes] = Counter()
    for part in range(PARTITIONS):
        d = tmp / f"p{part}"
        d.mkdir()
        (d / "in.jsonl").write_bytes(b"".join(v + b"\n" for p, _k, v in raw if p == part))
        process_files([str(d / "in.jsonl")], d / "out")
        counts = write_files(d / "out", NAMES)
        outputs = file_outputs(d / "out")
        for n in NAMES:
            lines = (d / "out" / "integrations" / f"{n}.jsonl").read_bytes().splitlines()
            payloads, letters = translate_keyed(n, outputs)
            assert [codec.dumps(p) for _k, p in payloads] == lines, n
            assert counts[n] == len(lines)
            want[n].update((k.encode(), codec.dumps(p)) for k, p in payloads)
            dl_file = d / "out" / "integrations" / f"{n}.dead-letters.jsonl"
            dead.update(dl_file.read_bytes().splitlines())
            assert len(letters) == len(dl_file.read_bytes().splitlines())
    return {"records": want, "dead": dead}


def _topics(settings: Settings, prefix: str) -> dict[str, str]:
    return integration_topics(settings, prefix)


async def _read(bootstrap: str, topics: list[str], until: Any, timeout: float) -> Any:
    got = await read_all(bootstrap, topics, until=until, timeout=timeout, raw=True)
    return {t: [(k, v) for _p, k, v in recs] for t, recs in got.items()}


async def test_worker_replay_and_process_file_write_the_same_integration_records(
    broker: Any, unique: Callable[[str], str], tmp_path: Path
) -> None:
    names = Names(unique("itopics"))
    env = _env(names)
    settings = load_settings(env={**env, "SESSIONIZER_BROKER_URL": broker.url})
    topics = _topics(settings, "")
    assert topics == {n: f"{names.prefix}-integrations.{n}" for n in NAMES}
    recs, clocks = _workload()

    w = WorkerProc(broker.bootstrap, names, tmp_path, partitions=PARTITIONS, env=env)
    async with running(w):
        raw_topic = names.topics["raw_events"]
        await produce(broker.bootstrap, raw_topic, recs)
        await produce_clocks(broker.bootstrap, raw_topic, clocks, PARTITIONS)
        n_raw = len(recs) + len(clocks)

        # process-file on each partition's records, in offset order.
        raw_read = await read_all(
            broker.bootstrap,
            [raw_topic],
            until=lambda o: len(o[raw_topic]) >= n_raw,
            timeout=60,
            raw=True,
        )
        raw = raw_read[raw_topic]
        assert len(raw) == n_raw and {p for p, _k, _v in raw} == set(range(PARTITIONS))
        with tempfile.TemporaryDirectory(dir=tmp_path) as tmp:
            expected = _process_file(raw, Path(tmp))
        want: dict[str, Counter[KV]] = expected["records"]
        want_dead: Counter[bytes] = expected["dead"]
        for n in NAMES:
            assert want[n], f"{n}: process-file translated nothing"
        assert {codec.loads(v)["destination"] for v in want_dead} == {"amplitude", "mixpanel"}
        for n in ("amplitude", "mixpanel"):
            assert all(LONG_DEVICE.encode() not in v for _k, v in want[n]), n

        # replay: each record exactly once.
        counts = await replay(settings, output_prefix=PREFIX, progress=False)
        assert counts.records_in == n_raw
        bf = _topics(settings, PREFIX)
        bf_dead = output_topics(settings, PREFIX)[TOPIC_NAMES.index("dead-letters")]
        got = await _read(
            broker.bootstrap,
            [*bf.values(), bf_dead],
            until=lambda o: all(len(o[bf[n]]) >= want[n].total() for n in NAMES),
            timeout=120,
        )
        for n in NAMES:
            assert Counter(got[bf[n]]) == want[n], n
        replay_dead = _integration_dead(got[bf_dead])
        assert Counter(v for _k, v in replay_dead.elements()) == want_dead
        # Keyed as the §7 output they were made from (§7.3: the source record's key):
        # an event by its device, a session record by its session_uuid.
        kinds = set()
        for k, v in replay_dead:
            payload = codec.loads(codec.loads(v)["payload"])
            kinds.add("record" in payload)
            want_key = payload["session_uuid"] if "record" in payload else LONG_DEVICE
            assert k == want_key.encode()
        assert kinds == {True, False}

        # The worker: at least once, so the same distinct records; but a live worker
        # never reaches the end of its input, so the clock devices' own sessions stay
        # open there (process-file and replay close them with end_of_input).
        for n in NAMES:
            want[n] = Counter({kv: c for kv, c in want[n].items() if not _bounded_only(kv)})
        dead_topic = names.topics["dead_letters"]

        def caught_up(o: dict[str, list[Any]]) -> bool:
            ok = all({(k, v) for _p, k, v in o[topics[n]]} >= set(want[n]) for n in NAMES)
            have = {v for _p, _k, v in o[dead_topic]}
            return ok and have >= set(want_dead)

        got_live = await read_all(
            broker.bootstrap,
            [*topics.values(), dead_topic],
            until=caught_up,
            timeout=180,
            raw=True,
            raise_on_timeout=False,
        )
        live = {t: [(k, v) for _p, k, v in recs] for t, recs in got_live.items()}
        for n in NAMES:
            have, need = set(live[topics[n]]), set(want[n])
            assert have == need, (
                f"{n}: {len(need - have)} missing, e.g. {sorted(need - have)[:2]}; "
                f"{len(have - need)} extra, e.g. {sorted(have - need)[:2]}"
            )
        live_dead = _integration_dead(live[dead_topic])
        assert set(live_dead) == set(replay_dead)
        for _k, v in live[dead_topic]:
            validate_output("dead-letters", v)
