"""``sessionizer replay`` on a real broker: deterministic, equal to process-file, time-bounded."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import OffsetAndTimestamp

from sessionizer import codec
from sessionizer.core.config import EngineConfig
from sessionizer.core.engine import Engine
from sessionizer.core.model import DEAD_LETTERS, TOPIC_NAMES, Counts
from sessionizer.kafka.clients import TopicSpec, ensure_topics
from sessionizer.run.replay import offsets_for_time, output_topics, replay, true_end_offsets
from sessionizer.settings import Settings, load_settings
from sessionizer.testing import MIN, NOW, T0, batch, custom, launch, run, screen
from sessionizer.testing.harness import Names, produce
from sessionizer.tools.workload import generate

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

PARTITIONS = 4
Unique = Callable[[str], str]
# (partition, offset, key, value, timestamp) of one record read back
Rec = tuple[int, int, bytes | None, bytes, int]


def _settings(broker: Any, names: Names) -> Settings:
    return load_settings(
        env={
            **names.env(),
            "SESSIONIZER_BROKER_URL": broker.url,
            "SESSIONIZER_PARTITIONS": str(PARTITIONS),
        }
    )


async def _raw_topic(settings: Settings) -> str:
    topic = settings.topics.raw_events
    await ensure_topics(settings, [TopicSpec(topic, PARTITIONS)])
    return topic


async def _read_to_end(bootstrap: str, topic: str, timeout: float = 60.0) -> list[Rec]:
    """Every record of ``topic``, partition by partition in offset order."""
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await c.start()
    out: list[Rec] = []
    try:
        parts: set[int] | None = None
        for _ in range(100):
            parts = c.partitions_for_topic(topic)
            if parts:
                break
            await c._client.force_metadata_update()
            await asyncio.sleep(0.1)
        assert parts, f"topic {topic} has no partitions"
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        c.assign(tps)
        ends = await true_end_offsets(c, tps)
        deadline = time.monotonic() + timeout
        for tp in tps:
            c.seek(tp, 0)
            got: list[Rec] = []
            while (not got or got[-1][1] + 1 < ends[tp]) and ends[tp] > 0:
                assert time.monotonic() < deadline, f"{tp}: not read to {ends[tp]} in time"
                batch_ = await c.getmany(tp, timeout_ms=300)
                got += [
                    (tp.partition, m.offset, m.key, m.value, m.timestamp)
                    for m in batch_.get(tp, ())
                    if m.offset < ends[tp]
                ]
            out += got
    finally:
        await c.stop()
    return out


async def _outputs(bootstrap: str, settings: Settings, prefix: str) -> dict[str, list[Rec]]:
    return {
        name: await _read_to_end(bootstrap, topic)
        for name, topic in zip(TOPIC_NAMES, output_topics(settings, prefix), strict=True)
    }


def _workload(seed: int) -> list[bytes]:
    recs = list(generate(3000, devices=60, apps=2, seed=seed, bad_rate=0.02, late_rate=0.03))
    # A few records with no Kafka-visible identity and a null key go to dead letters too.
    return [*recs, b"{not json", b"[1, 2]"]


def _multiset(recs: list[Rec]) -> Counter[tuple[bytes | None, bytes]]:
    return Counter((k, v) for _p, _o, k, v, _t in recs)


def _values(recs: list[Rec], drop: str | None = None) -> Counter[bytes]:
    out: Counter[bytes] = Counter()
    for _p, _o, _k, v, _t in recs:
        obj = codec.loads(v)
        if drop is not None:
            obj.pop(drop, None)
        out[codec.dumps(obj, option=orjson.OPT_SORT_KEYS)] += 1
    return out


# --------------------------------------------------------------------------- broker facts


async def test_true_end_offsets_counts_every_record_of_the_last_batch(
    broker: Any, unique: Unique
) -> None:
    """The embedded broker reports ListOffsets(latest) as the last batch's base + 1."""
    names = Names(unique("rp-end"))
    settings = _settings(broker, names)
    topic = await _raw_topic(settings)
    p = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=50)
    await p.start()
    try:
        for _ in range(3):  # three batches of 7 records on partition 1
            await asyncio.gather(*[await p.send(topic, b"x", partition=1) for _ in range(7)])
    finally:
        await p.stop()
    c = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False)
    await c.start()
    try:
        tps = [TopicPartition(topic, i) for i in range(PARTITIONS)]
        c.assign(tps)
        ends = await true_end_offsets(c, tps)
        reported = await c.end_offsets(tps)
    finally:
        await c.stop()
    assert ends == {tp: (21 if tp.partition == 1 else 0) for tp in tps}
    assert reported[tps[1]] in (15, 21)  # 15 on the embedded broker, 21 on a real Kafka


class _FakeConsumer:
    """Just enough of AIOKafkaConsumer for offsets_for_time, with a correct time index."""

    def __init__(self, tp: TopicPartition, timestamps: list[int]) -> None:
        self.tp = tp
        self.ts = timestamps
        self.pos = 0
        self.asked = 0

    async def offsets_for_times(self, query: dict[Any, int]) -> dict[Any, Any]:
        self.asked += 1
        out: dict[Any, Any] = {}
        for tp, t in query.items():
            hit = next((i for i, ts in enumerate(self.ts) if ts >= t), None)
            out[tp] = None if hit is None else OffsetAndTimestamp(hit, self.ts[hit])
        return out

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.pos = offset

    async def getmany(self, tp: TopicPartition, **kw: Any) -> dict[Any, Any]:
        class M:
            def __init__(self, offset: int, timestamp: int) -> None:
                self.offset, self.timestamp = offset, timestamp

        msgs = [M(i, self.ts[i]) for i in range(self.pos, len(self.ts))]
        self.pos = len(self.ts)
        return {tp: msgs} if msgs else {}


async def test_offsets_for_time_trusts_a_broker_whose_answer_checks_out() -> None:
    tp = TopicPartition("t", 0)
    fake = _FakeConsumer(tp, [100, 200, 300, 400])
    starts, ends = {tp: 0}, {tp: 4}
    for t, want in ((50, 0), (100, 0), (150, 1), (400, 3), (401, 4)):
        got = await offsets_for_time(fake, [tp], t, starts, ends)  # type: ignore[arg-type]
        assert got == {tp: want}, t


async def test_offsets_for_times_on_this_broker_is_checked_before_use(
    broker: Any, unique: Unique
) -> None:
    """Records at t = 1000+i: a right answer is used, a wrong one means: scan (None)."""
    names = Names(unique("rp-oft"))
    settings = _settings(broker, names)
    topic = await _raw_topic(settings)
    p = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=20)
    await p.start()
    try:
        for k in range(2):
            futs = [
                await p.send(topic, b"x", partition=0, timestamp_ms=1000 * (k + 1) + i)
                for i in range(10)
            ]
            await asyncio.gather(*futs)
    finally:
        await p.stop()
    c = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, enable_auto_commit=False)
    await c.start()
    try:
        tp = TopicPartition(topic, 0)
        c.assign([tp])
        ends = await true_end_offsets(c, [tp])
        for t, want in ((1000, 0), (1005, 5), (2000, 10), (2003, 13), (9999, 20)):
            got = (await offsets_for_time(c, [tp], t, {tp: 0}, ends))[tp]
            # The embedded broker answers offset 0 for any time: only t <= 1000 checks out.
            assert got in (want, None), (t, got)
    finally:
        await c.stop()


# --------------------------------------------------------------------------- the replay


async def test_two_replays_write_identical_records(broker: Any, unique: Unique) -> None:
    names = Names(unique("rp-twice"))
    settings = _settings(broker, names)
    topic = await _raw_topic(settings)
    recs = _workload(seed=11)
    await produce(broker.bootstrap, topic, recs)

    c1 = await replay(settings, output_prefix="one.", progress=False)
    c2 = await replay(settings, output_prefix="two.", progress=False)
    assert c1.as_dict() == c2.as_dict()
    assert c1.records_in == len(recs)
    assert c1.balanced()

    one = await _outputs(broker.bootstrap, settings, "one.")
    two = await _outputs(broker.bootstrap, settings, "two.")
    for name in TOPIC_NAMES:
        assert one[name], f"{name}: nothing written"
        assert _multiset(one[name]) == _multiset(two[name]), name
        # Stronger: the same records in the same partitions in the same order.
        assert [r[:4] for r in one[name]] == [r[:4] for r in two[name]], name


async def test_replay_equals_process_file_on_the_same_records(broker: Any, unique: Unique) -> None:
    names = Names(unique("rp-eq"))
    settings = _settings(broker, names)
    topic = await _raw_topic(settings)
    recs = _workload(seed=12)
    recs += [
        codec.dumps(batch("watched", launch(T0), screen(T0 + 1000))),
        codec.dumps(batch("watched", custom(T0 + 2000))),
    ]
    await produce(broker.bootstrap, topic, recs)
    # R19: a console opt-out known before the replay starts applies to the replay.
    control_topic = settings.topics.opt_out_control
    await ensure_topics(settings, [TopicSpec(control_topic, 1, compacted=True)])
    await produce(
        broker.bootstrap,
        control_topic,
        [b'{"opted_out": true}'],
        key_fn=lambda _v: b"watched",
    )

    counts = await replay(settings, output_prefix="bf.", progress=False, now_ms=NOW)
    got = await _outputs(broker.bootstrap, settings, "bf.")

    # The order replay reads: partition 0..n-1, each in offset order.
    raw = await _read_to_end(broker.bootstrap, topic)
    assert len(raw) == len(recs) == counts.records_in
    assert [(p, o) for p, o, *_ in raw] == sorted((p, o) for p, o, *_ in raw)

    # process-file on each partition's records (source info aside): one engine
    # per partition, like the worker.
    expected_counts = Counts()
    by_topic: dict[str, list[Any]] = {name: [] for name in TOPIC_NAMES}
    for part in sorted({p for p, *_ in raw}):
        res = run([v for p, _o, _k, v, _t in raw if p == part], control={"watched": True})
        expected_counts.add(res.counts)
        by_topic[TOPIC_NAMES[0]] += res.events
        by_topic[TOPIC_NAMES[1]] += res.sessions
        by_topic[TOPIC_NAMES[2]] += res.dead
    assert counts.as_dict() == expected_counts.as_dict()
    for name, values in by_topic.items():
        drop = "source" if name == TOPIC_NAMES[2] else None
        want: Counter[bytes] = Counter()
        for v in values:
            v = dict(v)
            if drop:
                v.pop(drop)
            want[codec.dumps(v, option=orjson.OPT_SORT_KEYS)] += 1
        assert _values(got[name], drop) == want, name
    assert by_topic[TOPIC_NAMES[2]], "the workload should have dead letters"
    assert all(b"watched" not in v for recs_ in got.values() for *_, v, _t in recs_)

    # Exactly, source and keys included: the engine fed as replay feeds it.
    want_exact: dict[str, Counter[tuple[bytes | None, bytes]]] = {n: Counter() for n in TOPIC_NAMES}
    for part in sorted({p for p, *_ in raw}):
        eng = Engine(EngineConfig(), loads=codec.loads, dumps=codec.dumps)
        eng.control = {"watched": True}
        for p, o, k, v, t in raw:
            if p == part:
                eng.process_record(v, k, topic, p, o, t, NOW)
                eng.expire()
        eng.close_all()
        for idx, key, value in eng.take_output():
            kb = key if idx == DEAD_LETTERS or key is None else key.encode()
            want_exact[TOPIC_NAMES[idx]][(kb, codec.dumps(value))] += 1
    for name in TOPIC_NAMES:
        assert _multiset(got[name]) == want_exact[name], name
    sources = [codec.loads(v)["source"] for *_, v, _t in got[TOPIC_NAMES[2]]]
    assert {s["topic"] for s in sources} == {topic}
    assert all(s["timestamp"] is not None for s in sources)


async def test_since_and_until_select_records_by_kafka_timestamp(
    broker: Any, unique: Unique
) -> None:
    names = Names(unique("rp-time"))
    settings = _settings(broker, names)
    topic = await _raw_topic(settings)
    t_a = 1_700_000_000_000  # Kafka timestamps, independent of the event times
    t_b = t_a + 3_600_000
    p = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=20)
    await p.start()
    sent: list[tuple[int, str]] = []  # (Kafka timestamp, event name)
    try:
        for base, tag in ((t_a, "a"), (t_b, "b")):
            futs = []
            for i in range(40):
                dev = f"dev-{i % 10}"
                name = f"{tag}{i}"
                value = codec.dumps(batch(dev, custom(T0 + (i + 1) * MIN, name=name)))
                futs.append(await p.send(topic, value, key=dev.encode(), timestamp_ms=base + i))
                sent.append((base + i, name))
            await asyncio.gather(*futs)
    finally:
        await p.stop()

    async def names_of(prefix: str, **kw: Any) -> tuple[int, set[str]]:
        counts = await replay(settings, output_prefix=prefix, progress=False, **kw)
        out = await _outputs(broker.bootstrap, settings, prefix)
        got = set()
        for *_, v, _t in out[TOPIC_NAMES[0]]:
            rec = codec.loads(v)
            for ev in rec.get("events", [rec]):
                if ev["event_type"] == "custom_event":
                    got.add(ev["data"]["event_name"])
        return counts.records_in, got

    def want(lo: int | None, hi: int | None) -> set[str]:
        return {n for t, n in sent if (lo is None or t >= lo) and (hi is None or t < hi)}

    cases = [
        ("all.", {}, want(None, None)),
        ("since-b.", {"since_ms": t_b}, want(t_b, None)),
        ("until-b.", {"until_ms": t_b}, want(None, t_b)),
        ("mid.", {"since_ms": t_a + 10, "until_ms": t_b + 25}, want(t_a + 10, t_b + 25)),
        ("none.", {"since_ms": t_b + 1000}, set()),
    ]
    for prefix, kw, expected in cases:
        n, got = await names_of(prefix, **kw)
        assert got == expected, prefix
        assert n == len(expected), prefix
    assert len(want(t_a + 10, t_b + 25)) == 30 + 25


# --------------------------------------------------------------------------- the command


def _env(broker: Any, names: Names) -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("SESSIONIZER_")},
        **names.env(),
        "SESSIONIZER_BROKER_URL": broker.url,
        "SESSIONIZER_PARTITIONS": str(PARTITIONS),
    }


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sessionizer", "replay", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


async def test_cli_replay_prints_the_counts_line(broker: Any, unique: Unique) -> None:
    names = Names(unique("rp-cli"))
    settings = _settings(broker, names)
    topic = await _raw_topic(settings)
    recs = list(generate(500, devices=20, apps=2, seed=13))
    await produce(broker.bootstrap, topic, recs)

    proc = await asyncio.to_thread(
        _cli, _env(broker, names), "--from-beginning", "--output-prefix", "cli."
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, proc.stdout
    counts = codec.loads(lines[0])
    assert counts["records_in"] == len(recs)
    assert counts["events_in"] == 500
    assert "replayed" in proc.stderr
    out = await _outputs(broker.bootstrap, settings, "cli.")
    assert len(out[TOPIC_NAMES[1]]) == (
        counts["sessions_started"]
        + sum(counts["sessions_ended"].values())
        + counts["sessions_revised"]
    )
    assert counts["sessions_ended"]["end_of_input"] > 0

    # --keep-open (§9): what the watermark has not closed stays open.
    proc = await asyncio.to_thread(
        _cli, _env(broker, names), "--from-beginning", "--keep-open", "--output-prefix", "kept."
    )
    assert proc.returncode == 0, proc.stderr
    kept = codec.loads(proc.stdout)
    assert kept["sessions_ended"]["end_of_input"] == 0
    assert kept["sessions_started"] == counts["sessions_started"]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ((), "--from-beginning"),
        (("--from-beginning", "--since", "2026-01-01"), "--since"),
        (("--since", "yesterday"), "--since"),
        (("--from-beginning", "--until", "2026-13-01"), "--until"),
        (("--since", "2026-01-02", "--until", "2026-01-01"), "--until"),
        (("--from-beginning", "--output-prefix", "a b"), "--output-prefix"),
        (("--from-beginning", "--to-live-topics", "--output-prefix", "x."), "--to-live-topics"),
    ],
)
def test_cli_replay_bad_options_exit_2_with_one_line(
    broker: Any, unique: Unique, args: tuple[str, ...], needle: str
) -> None:
    proc = _cli(_env(broker, Names(unique("rp-bad"))), *args)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("sessionizer replay: ") and needle in lines[0], lines[0]
    assert proc.stdout == ""


async def test_cli_replay_progress_counts_the_window_only(broker: Any, unique: Unique) -> None:
    """`--since` replays 6 of 46 records: progress says 6, an empty window says so."""
    names = Names(unique("rp-window"))
    settings = _settings(broker, names)
    topic = await _raw_topic(settings)
    t_a = 1_700_000_000_000
    t_b = t_a + 3_600_000
    p = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=20)
    await p.start()
    try:
        futs = []
        for base, n in ((t_a, 40), (t_b, 6)):
            for i in range(n):
                dev = f"dev-{i % 10}"
                value = codec.dumps(batch(dev, custom(T0 + (i + 1) * MIN)))
                futs.append(await p.send(topic, value, key=dev.encode(), timestamp_ms=base + i))
        await asyncio.gather(*futs)
    finally:
        await p.stop()

    env = _env(broker, names)
    proc = await asyncio.to_thread(_cli, env, "--since", str(t_b), "--output-prefix", "win.")
    assert proc.returncode == 0, proc.stderr
    assert codec.loads(proc.stdout)["records_in"] == 6
    progress = [line for line in proc.stderr.splitlines() if line.startswith("replay: ")]
    assert progress and "all 6/6 records" in progress[-1], proc.stderr
    assert not any("/46" in line or "/40 " in line for line in progress), proc.stderr

    proc = await asyncio.to_thread(_cli, env, "--since", str(t_b + 60_000), "--output-prefix", "e.")
    assert proc.returncode == 0, proc.stderr
    assert codec.loads(proc.stdout)["records_in"] == 0
    assert "replay: no records in the window" in proc.stderr.splitlines(), proc.stderr
