"""processing_guarantee = exactly_once on Apache Kafka: every output once for a
read_committed reader, across SIGKILLs, and a SIGSTOPped zombie commits nothing."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from sessionizer import codec
from sessionizer.core.engine import identity
from sessionizer.testing import run
from sessionizer.testing.harness import (
    Names,
    WorkerProc,
    clock_records,
    final_sessions,
    http_get,
    max_event_ts,
    produce,
    produce_clocks,
    read_all,
    until,
    without_clocks,
)
from sessionizer.tools.workload import generate

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

PARTITIONS = 4
EOS = {"SESSIONIZER_PROCESSING_GUARANTEE": "exactly_once"}


def _names() -> Names:
    return Names(f"eos-{uuid.uuid4().hex[:8]}")


def _workload(seed: int, events: int) -> list[bytes]:
    return list(generate(events, devices=60, apps=2, seed=seed, bad_rate=0.02, late_rate=0.03))


async def _exactly_once(bootstrap: str, names: Names, recs: list[bytes]) -> None:
    """The committed outputs are process-file's, each record once (no copies at all)."""
    exp = run(recs)
    want = without_clocks(
        {u: {k: v for k, v in r.items() if k != "revision"} for u, r in exp.final().items()}
    )
    t = names.topics
    topics = [t["sessions"], t["sessionized_events"], t["dead_letters"]]

    def done(out: dict[str, list[tuple[bytes | None, Any]]]) -> bool:
        got = without_clocks(final_sessions(v for _, v in out[t["sessions"]]))
        return got == want and len(out[t["dead_letters"]]) >= len(exp.dead)

    out = await read_all(bootstrap, topics, until=done, timeout=240, raise_on_timeout=False)
    got = without_clocks(final_sessions(v for _, v in out[t["sessions"]]))
    assert set(got) == set(want), f"missing {len(set(want) - set(got))}"
    assert got == want
    # Each record as many times as process-file writes it (the input repeats some).
    live = [v for _k, v in out[t["sessionized_events"]]]
    assert _events(live) == _events(exp.events)
    # (Dead letters name their source: topic, partition and offset differ from a file's.)
    dead = Counter((d["reason"], d["payload"]) for _k, d in out[t["dead_letters"]])
    assert dead == Counter((d["reason"], d["payload"]) for d in exp.dead)
    # Session records: batches may revise a session at other moments than
    # process-file's steps, but no record is ever written twice more than it made.
    want_s = Counter(codec.dumps(v) for v in exp.sessions)
    copies = Counter(codec.dumps(v) for _k, v in out[t["sessions"]])
    extra = {v: n for v, n in copies.items() if n > max(1, want_s[v])}
    assert not extra, f"{len(extra)} session records written more than once"


def _events(records: list[dict[str, Any]]) -> Counter[bytes]:
    """The sessionized event records, the clock devices' left out."""
    out: Counter[bytes] = Counter()
    for rec in records:
        ident = identity(rec)
        if ident is None or not ident[1].startswith("clock-"):
            out[codec.dumps(rec)] += 1
    return out


async def test_sigkills_leave_no_duplicate_for_read_committed_readers(
    kafka: Any, tmp_path: Path
) -> None:
    names = _names()
    recs = _workload(seed=21, events=4000)
    clocks = clock_records(max_event_ts(recs), PARTITIONS)
    n = len(recs)
    chunks = [recs[: n // 3], recs[n // 3 : 2 * n // 3], recs[2 * n // 3 :]]
    worker: WorkerProc | None = None
    try:
        for i, chunk in enumerate(chunks):
            worker = WorkerProc(
                kafka.bootstrap, names, tmp_path, partitions=PARTITIONS, env=EOS, tag=f"w{i}"
            )
            worker.start()
            await worker.wait_ready()
            await produce(kafka.bootstrap, names.topics["raw_events"], chunk)
            if i < len(chunks) - 1:
                await asyncio.sleep(1.0 + i)  # mid-stream: open transactions, pending work
                worker.kill()
                worker = None
        assert worker is not None
        await produce_clocks(kafka.bootstrap, names.topics["raw_events"], clocks, PARTITIONS)
        await _exactly_once(kafka.bootstrap, names, recs + clocks)
        status, text = await http_get(worker.web_port, "/metrics")
        committed = re.search(r'sessionizer_transactions_total\{result="committed"\} (\S+)', text)
        assert status == 200 and committed is not None and float(committed.group(1)) > 0
        assert worker.terminate() == 0
    finally:
        if worker is not None:
            worker.kill()


async def test_a_sigstopped_zombie_cannot_commit_after_it_resumes(
    kafka: Any, tmp_path: Path
) -> None:
    """A is stopped inside a transaction, B takes its partitions over past the
    session timeout, A resumes: its transaction is fenced, nothing of it commits."""
    names = _names()
    recs = _workload(seed=22, events=3000)
    marked = recs[len(recs) // 2]  # A waits inside the transaction writing its outputs
    device = codec.loads(marked)["mp_deviceid"].encode()
    clocks = clock_records(max_event_ts(recs), PARTITIONS)
    env_a = {**EOS, "SESSIONIZER_TEST_FAULT": "txn:" + device.decode()}
    a = WorkerProc(kafka.bootstrap, names, tmp_path, partitions=PARTITIONS, env=env_a, tag="a")
    b: WorkerProc | None = None
    try:
        a.start()
        await a.wait_ready()
        await produce(kafka.bootstrap, names.topics["raw_events"], recs)

        async def in_log(w: WorkerProc, text: str) -> bool | None:
            return text in w.log() or None

        await until(lambda: in_log(a, "waits inside its transaction"), "A inside a transaction")
        assert a.proc is not None
        os.kill(a.proc.pid, signal.SIGSTOP)
        b = WorkerProc(kafka.bootstrap, names, tmp_path, partitions=PARTITIONS, env=EOS, tag="b")
        b.start()
        await b.wait_ready()

        async def b_owns_all() -> bool | None:
            status, body = await http_get(b.web_port, "/health")
            return (status == 200 and len(body.get("partitions", [])) == PARTITIONS) or None

        # A's session (10 s) runs out while it sleeps; B gets every partition.
        await until(b_owns_all, "B owns every partition", timeout=120)
        os.kill(a.proc.pid, signal.SIGCONT)
        await until(lambda: in_log(a, "fenced by a newer owner"), "A fenced", timeout=60)
        await produce_clocks(kafka.bootstrap, names.topics["raw_events"], clocks, PARTITIONS)
        await _exactly_once(kafka.bootstrap, names, recs + clocks)
    finally:
        if a.proc is not None and a.proc.poll() is None:
            os.kill(a.proc.pid, signal.SIGCONT)
        a.kill()
        if b is not None:
            b.kill()
