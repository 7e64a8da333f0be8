"""One driver, one encoder: process-file, replay and the worker write the same bytes.

The same input (one raw partition) goes through ``process-file``, through the
replay's per-partition loop (a fake consumer and producer in place of the
broker) and through the worker's ``Pipeline`` (a fake table and producer in
place of Faust, one record per batch so that expiry runs after every record,
as in the bounded runners, and a restart from the table in the middle). The
records handed to the producer must be byte-identical in value, key and
partition, and equal to the files' lines.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition

from sessionizer import codec
from sessionizer.core.model import DEAD_LETTERS, EVENTS, SESSIONS, TOPIC_NAMES
from sessionizer.kafka.sender import BatchSender
from sessionizer.run import replay
from sessionizer.run.encode import Message, OutputEncoder, partition_for
from sessionizer.run.files import process_files
from sessionizer.settings import Settings, load_settings
from sessionizer.stream import worker
from sessionizer.stream.runtime import BareRuntime
from sessionizer.testing import (
    MIN,
    NOW,
    SEC,
    T0,
    background,
    batch,
    custom,
    exit_,
    foreground,
    incr_attr,
    launch,
    opt_out,
    screen,
    set_attr,
)

OUT_PARTITIONS = 4
CHANGELOG = "sessionizer-state-changelog"

# --------------------------------------------------------------------------- input


def _records(n: int = 700, seed: int = 11) -> list[tuple[bytes | None, bytes]]:
    """(key, value) of realistic records: sessions that time out, late events,
    attribute changes, an opt-out, and records that become dead letters, some
    without a key."""
    rnd = random.Random(seed)
    devices = [f"dev-{i}" for i in range(12)]
    clock = dict.fromkeys(devices, T0)
    makers = [launch, screen, custom, background, foreground, exit_]
    out: list[tuple[bytes | None, bytes]] = []
    for i in range(n):
        roll = rnd.random()
        if roll < 0.02:
            out.append((None, b'{"events": [not json'))  # invalid_json, no key
            continue
        if roll < 0.04:
            rec = batch(None, screen(T0 + i * SEC), mpid=None)  # missing_identity
            out.append((None if rnd.random() < 0.5 else b"who", codec.dumps(rec)))
            continue
        dev = rnd.choice(devices)
        key = dev.encode()
        if roll < 0.06:
            out.append((key, codec.dumps({**batch(dev), "events": "nope"})))  # bad_event
            continue
        clock[dev] += rnd.choice((SEC, 20 * SEC, 2 * MIN, 45 * MIN, 3 * 60 * MIN))
        ts = clock[dev]
        if rnd.random() < 0.05:
            ts -= 10 * MIN  # late (R24)
        evs: list[dict[str, Any]] = []
        for j in range(rnd.randint(1, 4)):
            t = ts + j * 100
            r = rnd.random()
            if r < 0.1:
                evs.append(set_attr(t, "plan", rnd.choice(("free", "pro"))))
            elif r < 0.15:
                evs.append(incr_attr(t, "taps", rnd.randint(1, 3)))
            else:
                evs.append(rnd.choice(makers)(t))
        if dev == "dev-3" and i > n * 2 // 3 and rnd.random() < 0.2:
            evs.append(opt_out(ts + 500))
        app = "com.example.shop" if dev < "dev-8" else "com.example.news"
        out.append((key, codec.dumps(batch(dev, *evs, app=app))))
    return out


# --------------------------------------------------------------------------- fakes


class _Batch:
    def __init__(self) -> None:
        self.items: list[tuple[bytes | None, bytes | None]] = []

    def append(self, *, key: bytes | None, value: bytes | None, timestamp: Any) -> object:
        self.items.append((key, value))
        return object()

    def close(self) -> None:
        pass


@dataclass
class _Metadata:
    offset: int


class _Producer:
    """What BatchSender uses of aiokafka's producer; remembers every record sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, int, bytes | None, bytes | None]] = []

    async def partitions_for(self, topic: str) -> set[int]:
        return set(range(OUT_PARTITIONS))

    def create_batch(self) -> _Batch:
        return _Batch()

    async def send_batch(
        self, batch: _Batch, topic: str, partition: int
    ) -> asyncio.Future[_Metadata]:
        base = sum(1 for t, q, _, _ in self.sent if (t, q) == (topic, partition))
        self.sent += [(topic, partition, k, v) for k, v in batch.items]
        fut: asyncio.Future[_Metadata] = asyncio.get_running_loop().create_future()
        fut.set_result(_Metadata(base))  # the batch's base offset, as a broker acknowledges
        return fut

    async def flush(self) -> None:
        pass


@dataclass
class _Msg:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: Any = None
    headers: list[Any] = field(default_factory=list)


class _Consumer:
    """What the replay's loop uses of aiokafka's consumer, over one partition."""

    def __init__(self, msgs: list[_Msg]) -> None:
        self.msgs = msgs
        self.pos = 0

    def assign(self, tps: list[TopicPartition]) -> None:
        pass

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.pos = offset

    async def getmany(
        self, tp: TopicPartition, timeout_ms: int = 0, max_records: int = 500
    ) -> dict[TopicPartition, list[_Msg]]:
        got = self.msgs[self.pos : self.pos + min(max_records, 97)]
        self.pos += len(got)
        return {tp: got} if got else {}

    def highwater(self, tp: TopicPartition) -> int:
        return len(self.msgs)

    async def position(self, tp: TopicPartition) -> int:
        return self.pos


def _capture(monkeypatch: pytest.MonkeyPatch) -> list[Message]:
    """Every message handed to a BatchSender, in order (the producer groups them)."""
    handed: list[Message] = []
    real = BatchSender.send

    async def send(self: BatchSender, messages: Any) -> list[Any]:
        messages = list(messages)
        handed.extend(messages)
        return await real(self, messages)

    monkeypatch.setattr(BatchSender, "send", send)
    return handed


# --------------------------------------------------------------------------- runners


def _process_file(
    tmp_path: Path, settings: Settings, recs: list[tuple[bytes | None, bytes]]
) -> dict[int, list[bytes]]:
    src = tmp_path / settings.topics.raw_events  # the file's name is the source topic
    src.write_bytes(b"".join(v + b"\n" for _k, v in recs))
    out = tmp_path / "out"
    process_files([str(src)], out, settings.engine, now_ms=NOW)
    return {
        i: (out / f"{name}.jsonl").read_bytes().splitlines(keepends=True)
        for i, name in enumerate(TOPIC_NAMES)
    }


def _replay(
    settings: Settings, recs: list[tuple[bytes | None, bytes]], handed: list[Message]
) -> tuple[list[Message], _Producer, list[str]]:
    topics = replay.output_topics(settings, replay.DEFAULT_PREFIX)
    producer = _Producer()
    tp = TopicPartition(settings.topics.raw_events, 0)
    consumer = _Consumer([_Msg(0, i, k, v) for i, (k, v) in enumerate(recs)])
    part = replay._Part(tp, 0, len(recs))

    async def go() -> None:
        out = replay._Output(producer, topics)  # type: ignore[arg-type]
        bar = replay._Progress([part], enabled=False)
        await replay._replay_partition(
            consumer,  # type: ignore[arg-type]
            settings,
            {},
            part,
            out,
            bar,
            NOW,
            False,
        )
        await out.flush()

    handed.clear()
    asyncio.run(go())
    return list(handed), producer, topics


def _worker(
    settings: Settings,
    recs: list[tuple[bytes | None, bytes]],
    handed: list[Message],
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[list[Message], _Producer]:
    monkeypatch.setattr(worker, "wall_ms", lambda: NOW)
    producer = _Producer()
    runtime = BareRuntime(producer, input_topic=settings.topics.raw_events, changelog=CHANGELOG)
    pipe = worker.Worker(settings, runtime)
    pipe.assigned = {0}

    async def go() -> None:
        for i, (k, v) in enumerate(recs):
            if i == len(recs) // 2:
                pipe.drop([0])  # a restart: the next batch restores the task from the table
            # One record per batch: expiry after every record, as in the bounded runners.
            await pipe.apply(0, [(i, k, v, None, None)])
        # A bounded input's end, through the engine's surface as the runners end it.
        r = pipe.runners[0]
        r.engine.end_of_input()
        await pipe._checkpoint(r)

    handed.clear()
    asyncio.run(go())
    return [m for m in handed if m[0] != CHANGELOG], producer


# --------------------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def recs() -> list[tuple[bytes | None, bytes]]:
    return _records()


def _by_topic(msgs: list[Message], topics: list[str] | tuple[str, ...]) -> dict[int, list[Any]]:
    index = {name: i for i, name in enumerate(topics)}
    out: dict[int, list[Any]] = {i: [] for i in range(len(TOPIC_NAMES))}
    for topic, key, value, _p in msgs:
        out[index[topic]].append((key, value))
    return out


def test_process_file_replay_and_worker_write_the_same_bytes(
    tmp_path: Path, recs: list[tuple[bytes | None, bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = load_settings(None)
    handed = _capture(monkeypatch)
    lines = _process_file(tmp_path, settings, recs)
    replayed, rprod, rtopics = _replay(settings, recs, handed)
    live, wprod = _worker(settings, recs, handed, monkeypatch)
    t = settings.topics
    wtopics = (t.sessionized_events, t.sessions, t.dead_letters)

    rep = _by_topic(replayed, rtopics)
    wrk = _by_topic(live, wtopics)
    for i in range(len(TOPIC_NAMES)):
        assert lines[i], f"no {TOPIC_NAMES[i]} in the test input"
        # process-file's lines are the broker values plus a newline.
        assert [v + b"\n" for _k, v in rep[i]] == lines[i], TOPIC_NAMES[i]
        # The worker writes what the replay writes: same keys, same values.
        assert wrk[i] == rep[i], TOPIC_NAMES[i]

    # Keys (§7): events by device, sessions by session_uuid, dead letters by the
    # source record's key bytes (or none).
    source_keys = [k for k, _v in recs]
    for key, value in rep[EVENTS]:
        obj = codec.loads(value)
        assert key == str(obj.get("mp_deviceid") or obj.get("mpid")).encode()
    for key, value in rep[SESSIONS]:
        assert key == codec.loads(value)["session_uuid"].encode()
    keyless = 0
    for key, value in rep[DEAD_LETTERS]:
        assert key == source_keys[codec.loads(value)["source"]["offset"]]
        keyless += key is None
    assert keyless, "no keyless dead letter in the test input"

    # Partitions: the shared rule, in both runners, keyless records included.
    for prod in (rprod, wprod):
        sent = [s for s in prod.sent if s[0] != CHANGELOG]
        assert len(sent) == sum(len(v) for v in lines.values())
        for _topic, partition, key, value in sent:
            assert partition == partition_for(key, value, OUT_PARTITIONS)
    # And in the same order in each topic partition.
    strip = len(replay.DEFAULT_PREFIX)
    by_tp: dict[tuple[str, int], list[Any]] = {}
    for topic, partition, key, value in rprod.sent:
        by_tp.setdefault((topic[strip:], partition), []).append((key, value))
    wby_tp: dict[tuple[str, int], list[Any]] = {}
    for topic, partition, key, value in wprod.sent:
        if topic != CHANGELOG:
            wby_tp.setdefault((topic, partition), []).append((key, value))
    assert by_tp == wby_tp
    assert len({p for _t, p in by_tp}) == OUT_PARTITIONS


def test_the_encoder_is_the_one_rule(recs: list[tuple[bytes | None, bytes]]) -> None:
    """The file encoder and the broker encoder differ by the newline only."""
    from sessionizer.core.engine import Engine
    from sessionizer.run.encode import Record
    from sessionizer.run.task import PartitionTask

    class Keep:
        def __init__(self, encoder: OutputEncoder) -> None:
            self.encoder = encoder
            self.records: list[Record] = []

        def write(self, records: list[Record]) -> None:
            self.records += records

    def drive(encoder: OutputEncoder) -> list[Record]:
        eng = Engine(load_settings(None).engine, loads=codec.loads, dumps=codec.dumps)
        sink = Keep(encoder)
        task = PartitionTask(eng, encoder, "raw-events", 0)
        task.step(((i, k, v, None, None) for i, (k, v) in enumerate(recs)), sink, NOW)
        task.finish(sink)
        return sink.records

    broker = drive(OutputEncoder(("e", "s", "d")))
    files = drive(OutputEncoder(line=True))
    assert broker
    assert [(TOPIC_NAMES["esd".index(t)], k, v + b"\n", p) for t, k, v, p in broker] == files
    assert all(p is None for _t, _k, _v, p in broker)
    with pytest.raises(ValueError):
        OutputEncoder(("only", "two"))


def test_keyless_partition_is_the_value_hash() -> None:
    v = b'{"reason":"invalid_json"}'
    assert partition_for(None, v, 7) == partition_for(v, None, 7)
    assert partition_for(None, v, 7) == partition_for(None, v, 7)
    assert 0 <= partition_for(None, b"", 3) < 3
