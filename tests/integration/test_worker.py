"""The worker end to end on a real broker: live == process-file, crashes, rebalances."""

from __future__ import annotations

import asyncio
import re
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from schema_check import validate_output

from sessionizer import codec
from sessionizer.core.engine import identity
from sessionizer.testing import MIN, T0, batch, custom, launch, run, screen, set_attr
from sessionizer.testing.harness import (
    CLOCK_APP,
    CLOCKS_PER_PARTITION,
    Names,
    WorkerProc,
    clock_records,
    final_sessions,
    http_get,
    max_event_ts,
    optout_device,
    produce,
    produce_clocks,
    read_all,
    running,
    until,
    without_clocks,
)
from sessionizer.tools.workload import generate

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

PARTITIONS = 4


def _workload(seed: int, events: int = 3000) -> list[bytes]:
    recs = list(generate(events, devices=60, apps=2, seed=seed, bad_rate=0.02, late_rate=0.03))
    # A device that opts out mid-session and back in: R17/R18 through Kafka.
    return recs + optout_device(seed)


def _clocks(recs: list[bytes]) -> list[bytes]:
    return clock_records(max_event_ts(recs), PARTITIONS)


def _expected(recs: list[bytes]) -> Any:
    return run(recs)


def _forwarded_by_device(events: list[dict[str, Any]]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for rec in events:
        evs = rec.get("events", [rec])
        for e in evs:
            if e["event_type"] in ("session_start", "session_end"):
                continue
            dev = identity(rec)
            key = dev[1] if dev else "?"
            out.setdefault(key, []).append(e)
    return {k: v for k, v in out.items() if not k.startswith("clock-")}


def _dedupe(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """At-least-once: a replayed batch repeats byte-identical records; keep first copies."""
    seen: set[bytes] = set()
    out = []
    for e in events:
        b = codec.dumps(e)
        if b not in seen:
            seen.add(b)
            out.append(e)
    return out


async def _run_and_compare(
    bootstrap: str, names: Names, recs: list[bytes], *, timeout: float = 180.0
) -> dict[str, list[tuple[bytes | None, Any]]]:
    exp = _expected(recs)
    want = without_clocks(
        {u: {k: v for k, v in r.items() if k != "revision"} for u, r in exp.final().items()}
    )
    topics = [
        names.topics["sessions"],
        names.topics["sessionized_events"],
        names.topics["dead_letters"],
    ]

    def done(out: dict[str, list[tuple[bytes | None, Any]]]) -> bool:
        got = without_clocks(final_sessions(v for _, v in out[names.topics["sessions"]]))
        return got == want and len(out[names.topics["dead_letters"]]) >= len(exp.dead)

    out = await read_all(bootstrap, topics, until=done, timeout=timeout, raise_on_timeout=False)
    for topic in topics:  # every record the worker wrote matches its JSON Schema
        for _key, value in out[topic]:
            validate_output(topic, value)
    got = without_clocks(final_sessions(v for _, v in out[names.topics["sessions"]]))
    assert set(got) == set(want), (
        f"missing {len(set(want) - set(got))}, extra {len(set(got) - set(want))}"
    )
    assert got == want
    live_events = _dedupe([v for _, v in out[names.topics["sessionized_events"]]])
    assert _forwarded_by_device(live_events) == _forwarded_by_device(exp.events)
    dead = sorted((d["reason"], d["payload"]) for _, d in out[names.topics["dead_letters"]])
    assert sorted(set(dead)) == sorted((d["reason"], d["payload"]) for d in exp.dead)
    return out


def _names() -> Names:
    return Names(f"it-{uuid.uuid4().hex[:8]}")


async def test_r0_live_output_equals_process_file(broker: Any, tmp_path: Path) -> None:
    names = _names()
    recs = _workload(seed=11)
    recs += _clocks(recs)
    w = WorkerProc(
        broker.bootstrap,
        names,
        tmp_path,
        partitions=PARTITIONS,
    )
    async with running(w) as (ready,):
        print(f"worker ready after {ready:.1f}s")
        n_clocks = PARTITIONS * CLOCKS_PER_PARTITION
        await produce(broker.bootstrap, names.topics["raw_events"], recs[:-n_clocks])
        await produce_clocks(
            broker.bootstrap, names.topics["raw_events"], recs[-n_clocks:], PARTITIONS
        )
        out = await _run_and_compare(broker.bootstrap, names, recs)
        reasons = {d["reason"] for _, d in out[names.topics["dead_letters"]]}
        assert {"invalid_json", "missing_identity"} <= reasons


async def test_r18_r19_control_topic_opts_out_a_device(broker: Any, tmp_path: Path) -> None:
    names = _names()
    w = WorkerProc(broker.bootstrap, names, tmp_path, partitions=PARTITIONS)
    async with running(w, clean=False):
        await produce(
            broker.bootstrap,
            names.topics["opt_out_control"],
            [codec.dumps({"opted_out": True})],
            key_fn=lambda v: b"secret-device",
        )
        await asyncio.sleep(2)  # the control entry is known before the records arrive
        recs = [
            codec.dumps(batch("secret-device", launch(T0), screen(T0 + 1), mpid=777)),
            codec.dumps(batch("secret-device", {"bad": "event"}, mpid=777)),
            codec.dumps(batch("open-device", launch(T0), screen(T0 + 1), mpid=888)),
        ]
        await produce(broker.bootstrap, names.topics["raw_events"], recs)
        topics = [
            names.topics["sessions"],
            names.topics["sessionized_events"],
            names.topics["dead_letters"],
        ]
        out = await read_all(
            broker.bootstrap,
            topics,
            until=lambda o: len(o[names.topics["sessions"]]) >= 1,
            timeout=60,
        )
        await asyncio.sleep(2)
        out = await read_all(broker.bootstrap, topics, until=lambda o: True, timeout=10)
        blob = b"".join(codec.dumps(v) for t in topics for _, v in out[t])
        assert b"open-device" in blob
        assert b"secret-device" not in blob and b"777" not in blob


@pytest.mark.parametrize("store", ["memory", "rocksdb"])
async def test_restart_recovery_after_sigkill_at_several_points(
    broker: Any, tmp_path: Path, store: str
) -> None:
    """Kill -9 the worker at different points of its work; the final sessions equal
    an uninterrupted run's (docs/operations.md#recovery). With RocksDB the restarted
    worker reuses the killed one's data directory, as on the same machine."""
    names = _names()
    env = {"SESSIONIZER_STORE": store}

    def tag(i: int) -> str:
        return "w" if store == "rocksdb" else f"w{i}"

    recs = _workload(seed=12, events=4000)
    clocks = _clocks(recs)
    n = len(recs)
    chunks = [recs[: n // 4], recs[n // 4 : n // 2], recs[n // 2 : 3 * n // 4], recs[3 * n // 4 :]]
    # Seconds to let the worker run into each chunk before the kill.
    kill_after = [None, 0.05, 0.6, 2.0]
    worker: WorkerProc | None = None
    try:
        for i, (chunk, delay) in enumerate(zip(chunks, kill_after, strict=True)):
            if worker is None:
                worker = WorkerProc(
                    broker.bootstrap, names, tmp_path, partitions=PARTITIONS, env=env, tag=tag(i)
                )
                worker.start()
                await worker.wait_ready()
            await produce(broker.bootstrap, names.topics["raw_events"], chunk)
            if delay is not None:
                await asyncio.sleep(delay)
                worker.kill()  # no goodbye: mid-batch, mid-send or between batches
                worker = None
        if worker is None:
            worker = WorkerProc(
                broker.bootstrap, names, tmp_path, partitions=PARTITIONS, env=env, tag=tag(9)
            )
            worker.start()
            await worker.wait_ready()
        await produce_clocks(broker.bootstrap, names.topics["raw_events"], clocks, PARTITIONS)
        await _run_and_compare(broker.bootstrap, names, recs + clocks, timeout=240)
        assert "restored" in worker.log()
    finally:
        if worker is not None:
            worker.terminate()


async def test_rocksdb_remembers_what_it_holds_so_a_clean_restart_reads_no_changelog(
    broker: Any, tmp_path: Path
) -> None:
    """With store=rocksdb, each acknowledged marker is Faust's persisted changelog
    offset of its partition: after a clean stop every partition's database says it
    holds the changelog up to its end, so recovery starts there instead of at 0
    (docs/performance.md), and the restarted worker's results are still right."""
    import re

    import rocksdict
    from aiokafka import AIOKafkaConsumer

    from sessionizer.kafka.clients import topic_partitions
    from sessionizer.run.replay import true_end_offsets

    names = _names()
    env = {"SESSIONIZER_STORE": "rocksdb"}
    recs = _workload(seed=17)
    clocks = _clocks(recs)
    half = len(recs) // 2
    w = WorkerProc(broker.bootstrap, names, tmp_path, partitions=PARTITIONS, env=env)
    async with running(w):
        await produce(broker.bootstrap, names.topics["raw_events"], recs[:half])
        topic = names.topics["sessionized_events"]
        await read_all(broker.bootstrap, [topic], until=lambda o: len(o[topic]) >= 100)
        await asyncio.sleep(3)  # the last batches' state and markers are written

    c = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False)
    await c.start()
    try:
        tps = await topic_partitions(c, f"{names.app_id}-state-changelog")
        c.assign(tps)
        ends = {tp.partition: end for tp, end in (await true_end_offsets(c, tps)).items()}
    finally:
        await c.stop()
    data = Path(w.env["SESSIONIZER_DATA_DIR"])
    persisted: dict[int, int | None] = {}
    for db_path in data.rglob("state-*.db"):
        partition = int(re.fullmatch(r"state-(\d+)\.db", db_path.name).group(1))  # type: ignore[union-attr]
        db = rocksdict.Rdict(str(db_path), options=rocksdict.Options(raw_mode=True))
        try:
            raw = db.get(b"__faust\0offset__")
        finally:
            db.close()
        persisted[partition] = None if raw is None else int(raw)
    written = {p: end - 1 for p, end in ends.items() if end > 0}
    assert written, "the worker wrote no state"
    assert {p: persisted.get(p) for p in written} == written

    w2 = WorkerProc(broker.bootstrap, names, tmp_path, partitions=PARTITIONS, env=env)
    async with running(w2):
        await produce(broker.bootstrap, names.topics["raw_events"], recs[half:])
        await produce_clocks(broker.bootstrap, names.topics["raw_events"], clocks, PARTITIONS)
        await _run_and_compare(broker.bootstrap, names, recs + clocks, timeout=240)


async def test_two_workers_share_partitions_and_one_takes_over(broker: Any, tmp_path: Path) -> None:
    names = _names()
    recs = _workload(seed=13)
    half = len(recs) // 2
    a = WorkerProc(broker.bootstrap, names, tmp_path, partitions=PARTITIONS, tag="a")
    b = WorkerProc(broker.bootstrap, names, tmp_path, partitions=PARTITIONS, tag="b")
    async with running(a, b, clean=False):
        await produce(broker.bootstrap, names.topics["raw_events"], recs[:half])
        await read_all(
            broker.bootstrap,
            [names.topics["sessions"]],
            until=lambda o: len(o[names.topics["sessions"]]) >= 20,
            timeout=90,
        )
        a.terminate()  # stopped mid-stream: b takes its partitions over
        clocks = _clocks(recs)
        await produce(broker.bootstrap, names.topics["raw_events"], recs[half:])
        await produce_clocks(broker.bootstrap, names.topics["raw_events"], clocks, PARTITIONS)
        await _run_and_compare(broker.bootstrap, names, recs + clocks, timeout=240)


async def test_a_partition_taken_over_with_nothing_applied_is_read_from_offset_0(
    broker: Any, tmp_path: Path
) -> None:
    """A worker that leaves before it applied anything: its partitions' state says
    "start at 0", which aiokafka's seek to committed offsets skips. Every record is
    on the broker before the takeover, so a stream left at the end would stall with
    nothing new to reveal the gap (failed 1 run in 3 before compat.seek)."""
    names = _names()
    recs = _workload(seed=13)
    a = WorkerProc(broker.bootstrap, names, tmp_path, partitions=PARTITIONS, tag="a")
    b = WorkerProc(broker.bootstrap, names, tmp_path, partitions=PARTITIONS, tag="b")
    async with running(a, b, clean=[b]):
        clocks = _clocks(recs)
        await produce(broker.bootstrap, names.topics["raw_events"], recs[: len(recs) // 2])
        a.terminate()
        await produce(broker.bootstrap, names.topics["raw_events"], recs[len(recs) // 2 :])
        await produce_clocks(broker.bootstrap, names.topics["raw_events"], clocks, PARTITIONS)
        await _run_and_compare(broker.bootstrap, names, recs + clocks, timeout=120)


async def test_repartition_when_records_are_not_keyed_by_device(
    broker: Any, tmp_path: Path
) -> None:
    from aiokafka.partitioner import DefaultPartitioner

    names = _names()
    recs = _workload(seed=14)
    w = WorkerProc(
        broker.bootstrap,
        names,
        tmp_path,
        partitions=PARTITIONS,
        env={"SESSIONIZER_REPARTITION": "true"},
    )
    async with running(w):
        # Keys that say nothing about the device: a device's records scatter
        # over the raw partitions, and the worker must bring them together.
        counter = iter(range(10**9))
        await produce(
            broker.bootstrap,
            names.topics["raw_events"],
            recs,
            key_fn=lambda v: str(next(counter)).encode(),
        )

        # The clocks go in once every record is applied: a record in step arriving
        # between two clocks of a partition (the router interleaves raw partitions)
        # would empty their quorum (R26), and that partition's sessions stay open.
        async def applied() -> bool:
            status, text = await http_get(w.web_port, "/metrics")
            m = re.search(r"^sessionizer_records_in_total (\S+)$", text, re.M)
            return status == 200 and m is not None and float(m.group(1)) >= len(recs)

        await until(applied, "every record applied", 120)
        # Clock devices for every engine partition (a quorum each, R26), chosen by
        # the partitioner.
        part = DefaultPartitioner()
        clocks: dict[int, list[bytes]] = {p: [] for p in range(PARTITIONS)}
        clock_ts = max_event_ts(recs) + 24 * 60 * MIN
        i = 0
        while any(len(c) < CLOCKS_PER_PARTITION for c in clocks.values()):
            dev = f"clock-{i}"
            p = part(dev.encode(), list(range(PARTITIONS)), list(range(PARTITIONS)))
            if len(clocks[p]) < CLOCKS_PER_PARTITION:
                clocks[p].append(codec.dumps(batch(dev, custom(clock_ts), app=CLOCK_APP)))
            i += 1
        clock_recs = [v for c in clocks.values() for v in c]
        await produce(broker.bootstrap, names.topics["raw_events"], clock_recs)
        internal = f"{names.app_id}-repartition"
        total = len(recs) + len(clock_recs)
        seen = await read_all(
            broker.bootstrap,
            [internal],
            until=lambda o: len(o[internal]) >= total,
            timeout=120,
            raw=True,
        )
        by_partition: dict[int, list[bytes]] = {}
        for p, _key, value in seen[internal]:
            by_partition.setdefault(p, []).append(value)
        devices: dict[bytes, set[int]] = {}
        for p, key, _value in seen[internal]:
            devices.setdefault(key, set()).add(p)
        assert all(len(ps) == 1 for ps in devices.values())
        # The engines saw each device's records in the internal topic's order.
        order = [v for p in sorted(by_partition) for v in by_partition[p]]
        await _run_and_compare(broker.bootstrap, names, order)


async def test_workers_join_and_leave_a_live_group(broker: Any, tmp_path: Path) -> None:
    """1 -> 2 -> 3 workers join under traffic, then 3 -> 1 leave: no worker exits, and
    after each change the live output catches up with process-file's."""
    names = _names()
    recs = _workload(seed=15, events=5000)
    n = len(recs)
    chunks = [recs[i * n // 5 : (i + 1) * n // 5] for i in range(5)]
    workers = {
        tag: WorkerProc(broker.bootstrap, names, tmp_path, partitions=PARTITIONS, tag=tag)
        for tag in "abc"
    }
    topic = names.topics["sessionized_events"]
    produced: list[bytes] = []

    async def feed(chunk: list[bytes]) -> None:
        # A steady trickle, so records arrive while the group rebalances.
        step = max(1, len(chunk) // 10)
        for i in range(0, len(chunk), step):
            await produce(broker.bootstrap, names.topics["raw_events"], chunk[i : i + step])
            produced.extend(chunk[i : i + step])
            await asyncio.sleep(0.3)

    async def caught_up(step: str) -> None:
        want = _forwarded_by_device(run(produced, keep_open=True).events)
        got: dict[str, list[Any]] = {}

        def done(out: dict[str, list[Any]]) -> bool:
            nonlocal got
            got = _forwarded_by_device(_dedupe([v for _, v in out[topic]]))
            return got == want

        await read_all(broker.bootstrap, [topic], until=done, timeout=120, raise_on_timeout=False)
        missing = {d: len(v) - len(got.get(d, [])) for d, v in want.items() if got.get(d) != v}
        assert got == want, f"after {step}: devices differing: {missing}"
        for tag, w in workers.items():
            if w.proc is not None and tag in alive:
                assert w.proc.poll() is None, f"worker {tag} exited:\n{w.log()[-3000:]}"

    alive: set[str] = set()
    try:
        workers["a"].start()
        alive.add("a")
        await workers["a"].wait_ready()
        await feed(chunks[0])
        await caught_up("1 worker")
        for tag, chunk in (("b", chunks[1]), ("c", chunks[2])):
            workers[tag].start()
            alive.add(tag)
            await asyncio.gather(feed(chunk), workers[tag].wait_ready())
            await caught_up(f"{tag} joined")
        for tag, chunk in (("c", chunks[3]), ("b", chunks[4])):
            alive.discard(tag)
            code = workers[tag].terminate()
            assert code == 0, workers[tag].log()[-3000:]
            await feed(chunk)
            await caught_up(f"{tag} left")
        clocks = _clocks(recs)
        await produce_clocks(broker.bootstrap, names.topics["raw_events"], clocks, PARTITIONS)
        await _run_and_compare(broker.bootstrap, names, recs + clocks, timeout=240)
        assert workers["a"].proc is not None and workers["a"].proc.poll() is None
    finally:
        for w in workers.values():
            w.kill()


async def test_a_failing_worker_exits_non_zero_and_a_restart_resumes(
    broker: Any, tmp_path: Path
) -> None:
    """Crash-only (issue: never half-dead): a failure outside the per-record guard
    stops the worker with a non-zero code; a restarted worker resumes from the state."""
    names = _names()
    recs = _workload(seed=16, events=1500)
    bomb = codec.dumps(batch("bomb-device", launch(T0), custom(T0 + 1000, "BOOM-1")))
    recs.insert(len(recs) // 2, bomb)
    clocks = _clocks(recs)
    w = WorkerProc(
        broker.bootstrap,
        names,
        tmp_path,
        partitions=PARTITIONS,
        env={"SESSIONIZER_TEST_FAULT": "agent:BOOM-1"},
        tag="faulty",
    )
    async with running(w, clean=False):
        await produce(broker.bootstrap, names.topics["raw_events"], recs)
        assert w.proc is not None
        deadline = asyncio.get_running_loop().time() + 180
        while w.proc.poll() is None and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.1)
        assert w.proc.poll() not in (None, 0), w.log()[-3000:]
        assert "the engine loop failed" in w.log()
    healthy = WorkerProc(broker.bootstrap, names, tmp_path, partitions=PARTITIONS, tag="ok")
    async with running(healthy):
        await produce_clocks(broker.bootstrap, names.topics["raw_events"], clocks, PARTITIONS)
        await _run_and_compare(broker.bootstrap, names, recs + clocks, timeout=240)


async def test_r22_an_idle_worker_writes_nothing_to_its_changelog(
    broker: Any, tmp_path: Path
) -> None:
    """Idle partitions move their clock (R22) without a marker per second forever."""
    from aiokafka import AIOKafkaConsumer

    from sessionizer.kafka.clients import topic_partitions
    from sessionizer.run.replay import true_end_offsets

    names = _names()
    w = WorkerProc(
        broker.bootstrap,
        names,
        tmp_path,
        partitions=PARTITIONS,
        env={"SESSIONIZER_IDLE_TIMEOUT": "1s"},
    )
    async with running(w):
        c = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False)
        await c.start()
        try:
            recs = [
                codec.dumps(batch(f"idle-{i}", launch(T0), screen(T0 + 1000))) for i in range(8)
            ]
            await produce(broker.bootstrap, names.topics["raw_events"], recs)
            topic = names.topics["sessionized_events"]
            await read_all(broker.bootstrap, [topic], until=lambda o: len(o[topic]) >= 16)
            changelog = f"{names.app_id}-state-changelog"
            tps = await topic_partitions(c, changelog)
            c.assign(tps)
            await asyncio.sleep(3)  # the last batch's state and marker are written
            before = await true_end_offsets(c, tps)
            await asyncio.sleep(6)  # idle: the watermark moves every second
            after = await true_end_offsets(c, tps)
            assert sum(before.values()) > 0
            assert after == before
        finally:
            await c.stop()


async def test_a_poisoned_record_is_an_internal_error_and_its_partition_flows_on(
    broker: Any, tmp_path: Path
) -> None:
    """A record whose processing raises (an injected bug, in the middle of a batch) is an
    internal_error dead letter with its partition and offset, its key is as if it never
    arrived, the records around it are processed, and the worker goes on."""
    names = _names()
    d = "poisoned-device"
    before = [codec.dumps(batch(d, launch(T0), screen(T0 + 1)))]
    poison = codec.dumps(batch(d, custom(T0 + 2000, "POISON-7"), set_attr(T0 + 2001, "x", 1)))
    after = [
        codec.dumps(batch(d, screen(T0 + 3000), custom(T0 + 4000))),
        codec.dumps(batch("bystander", launch(T0), screen(T0 + 10))),
    ]
    clean = before + after
    clocks = clock_records(T0 + MIN, PARTITIONS)
    w = WorkerProc(
        broker.bootstrap,
        names,
        tmp_path,
        partitions=PARTITIONS,
        # The fault patches the engine: its interpreted source (sessionizer/_native.py).
        env={"SESSIONIZER_TEST_FAULT": "record:POISON-7", "SESSIONIZER_PURE_PYTHON": "1"},
    )
    async with running(w):
        # One produce call: the poisoned record sits in the middle of one batch.
        await produce(broker.bootstrap, names.topics["raw_events"], [*before, poison, *after])
        await produce_clocks(broker.bootstrap, names.topics["raw_events"], clocks, PARTITIONS)
        exp = run(clean + clocks)
        want = without_clocks(final_sessions(exp.sessions))
        topics = [names.topics[t] for t in ("sessions", "sessionized_events", "dead_letters")]

        def done(out: dict[str, list[Any]]) -> bool:
            got = without_clocks(final_sessions(v for _, v in out[topics[0]]))
            return got == want and len(out[topics[2]]) >= 1

        out = await read_all(broker.bootstrap, topics, until=done, timeout=120)
        (dl,) = [v for _, v in out[topics[2]]]
        assert dl["reason"] == "internal_error"
        assert "RuntimeError" in dl["detail"] and "injected" in dl["detail"]
        assert dl["payload"] == poison.decode()
        assert dl["source"]["topic"] == names.topics["raw_events"]
        assert isinstance(dl["source"]["partition"], int) and dl["source"]["offset"] >= 1
        live = _forwarded_by_device(_dedupe([v for _, v in out[topics[1]]]))
        assert live == _forwarded_by_device(exp.events)
        assert w.proc is not None and w.proc.poll() is None
        assert w.log().count("internal_error: RuntimeError") == 1
        async with aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{w.web_port}/metrics"
            async with http.get(url) as resp:
                metrics = await resp.text()
        assert 'sessionizer_dead_letters_total{reason="internal_error"} 1.0' in metrics
