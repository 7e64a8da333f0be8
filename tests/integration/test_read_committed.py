"""Our readers on transactional topics (issue 21): read_committed, done by position.

Each topic gets three transactions from one aiokafka transactional producer:
committed, aborted, committed. The log ends with a commit marker, an offset no
consumer ever receives, so a reader that waits for "last record's offset + 1 >=
end" never finishes; and a read_uncommitted reader would show the aborted
records. Every reader here must finish and show the committed records only.
The same readers on plain topics are the other integration tests (test_tail,
test_replay, test_report_topic, test_forward_broker), on either broker.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from sessionizer import codec
from sessionizer.integrations.forward import ForwardConfig, Forwarder
from sessionizer.kafka.clients import ControlReader, TopicSpec, ensure_topics
from sessionizer.run.replay import output_topics, replay
from sessionizer.settings import Settings, load_settings
from sessionizer.testing import MIN, NOW, T0, batch, custom, launch, run, screen
from sessionizer.testing.harness import Names, read_all
from sessionizer.tools.report import read_sessions
from sessionizer.tools.tail import TailOptions, tail

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

Unique = Callable[[str], str]
KV = tuple[bytes | None, bytes]
# Done well within this, or the reader waited for an offset no record comes from.
FINISH_S = 20.0


def _settings(broker: Any, names: Names, partitions: int = 2) -> Settings:
    return load_settings(
        env={
            **names.env(),
            "SESSIONIZER_BROKER_URL": broker.url,
            "SESSIONIZER_PARTITIONS": str(partitions),
        }
    )


async def _transactions(
    bootstrap: str,
    topic: str,
    committed: Sequence[KV],
    aborted: Sequence[KV],
    last: Sequence[KV],
    *,
    partitions: int,
) -> None:
    """``committed``, then ``aborted``, then ``last`` in three transactions, each record
    to every partition of ``topic``: every partition ends with a commit marker."""
    p = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=f"tx-{topic}")
    await p.start()
    try:
        for records, commit in ((committed, True), (aborted, False), (last, True)):
            await p.begin_transaction()
            for key, value in records:
                for part in range(partitions):
                    await p.send(topic, value, key=key, partition=part)
            if commit:
                await p.commit_transaction()
            else:
                await p.abort_transaction()
    finally:
        await p.stop()
    # The claim the test rests on: each partition ends with an offset no record has.
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_uncommitted")
    await c.start()
    try:
        tps = [TopicPartition(topic, part) for part in range(partitions)]
        c.assign(tps)
        ends = await c.end_offsets(tps)
        n = len(committed) + len(aborted) + len(last)
        assert all(end == n + 3 for end in ends.values()), ends  # + 3 markers
    finally:
        await c.stop()


def _json(tag: str, i: int) -> bytes:
    return codec.dumps({"record": "session_start", "tag": tag, "i": i})


async def test_tail_shows_committed_records_only_and_stops(
    broker: Any, unique: Unique, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = Names(unique("tailrc"))
    settings = _settings(broker, names)
    topic = settings.topics.sessions
    await ensure_topics(settings, [TopicSpec(topic, 2)])
    committed = [(b"k", _json("ok", i)) for i in range(3)]
    aborted = [(b"k", _json("aborted", i)) for i in range(2)]
    last = [(b"k", _json("ok", 3))]
    await _transactions(broker.bootstrap, topic, committed, aborted, last, partitions=2)

    want = sorted(v.decode() for _k, v in committed + last for _part in range(2))
    out = io.StringIO()
    opts = TailOptions(as_json=True, from_beginning=True, max_records=len(want))
    printed = await asyncio.wait_for(tail(settings, "sessions", opts, out=out), FINISH_S)
    assert printed == len(want)
    # Now for a while longer: nothing else comes, the aborted records least of all.
    out = io.StringIO()
    opts = TailOptions(as_json=True, from_beginning=True, timeout_s=3.0)
    await tail(settings, "sessions", opts, out=out)
    assert sorted(out.getvalue().splitlines()) == want


async def test_report_reads_committed_sessions_to_the_end(broker: Any, unique: Unique) -> None:
    names = Names(unique("reportrc"))
    settings = _settings(broker, names)
    topic = settings.topics.sessions
    await ensure_topics(settings, [TopicSpec(topic, 2)])
    committed = [(b"k", _json("ok", i)) for i in range(4)]
    aborted = [(b"k", _json("aborted", i)) for i in range(3)]
    last = [(b"k", _json("ok", 4))]
    await _transactions(broker.bootstrap, topic, committed, aborted, last, partitions=2)

    got = await asyncio.wait_for(read_sessions(settings, None), FINISH_S)
    assert sorted(v for _ts, v in got if v is not None) == sorted(
        v for _k, v in committed + last for _part in range(2)
    )


async def test_control_reader_is_ready_without_the_aborted_entries(
    broker: Any, unique: Unique
) -> None:
    names = Names(unique("controlrc"))
    settings = _settings(broker, names)
    topic = settings.topics.opt_out_control
    await ensure_topics(settings, [TopicSpec(topic, 2, compacted=True)])

    def entry(key: str, opted_out: bool) -> KV:
        return key.encode(), codec.dumps({"opted_out": opted_out})

    committed = [entry("dev-a", True), entry("dev-b", True)]
    aborted = [entry("dev-a", False), entry("dev-c", True)]
    last = [entry("dev-d", True)]
    await _transactions(broker.bootstrap, topic, committed, aborted, last, partitions=2)

    control: dict[str, bool] = {}
    reader = ControlReader(settings, control)
    await reader.start()
    try:
        await asyncio.wait_for(reader.ready.wait(), FINISH_S)
        assert control == {"dev-a": True, "dev-b": True, "dev-d": True}
        assert reader.failure() is None
    finally:
        await reader.stop()


async def test_replay_reads_committed_input_only_and_finishes(broker: Any, unique: Unique) -> None:
    names = Names(unique("replayrc"))
    settings = _settings(broker, names, partitions=1)
    t = settings.topics
    await ensure_topics(
        settings, [TopicSpec(t.raw_events, 1), TopicSpec(t.opt_out_control, 1, compacted=True)]
    )
    ok = [batch("dev-ok", launch(T0), screen(T0 + MIN)), batch("dev-ok", custom(T0 + 2 * MIN))]
    gone = [batch("dev-aborted", launch(T0 + 3 * MIN), screen(T0 + 4 * MIN))]
    late = [batch("dev-ok", custom(T0 + 5 * MIN))]

    def kv(records: list[dict[str, Any]]) -> list[KV]:
        return [(b"dev", codec.dumps(r)) for r in records]

    await _transactions(broker.bootstrap, t.raw_events, kv(ok), kv(gone), kv(late), partitions=1)
    # The control topic too: an aborted opt-out must not opt dev-ok out.
    opted = [(b"other", codec.dumps({"opted_out": True}))]
    await _transactions(
        broker.bootstrap,
        t.opt_out_control,
        opted,
        [(b"dev-ok", codec.dumps({"opted_out": True}))],
        opted,
        partitions=1,
    )

    counts = await asyncio.wait_for(
        replay(settings, output_prefix="rc.", progress=False, now_ms=NOW), 60.0
    )
    want = run(ok + late, keep_open=False)
    assert counts.records_in == len(ok + late)
    assert counts.events_in == want.counts.events_in
    # What it wrote names no event of the aborted transaction.
    events = await read_all(
        broker.bootstrap,
        [output_topics(settings, "rc.")[0]],
        until=lambda out: sum(len(v) for v in out.values()) >= len(want.events),
        timeout=FINISH_S,
    )
    seen = [value for values in events.values() for _key, value in values]
    assert len(seen) == len(want.events)
    assert "dev-aborted" not in json.dumps(seen) and "dev-ok" in json.dumps(seen)


async def test_forward_never_sends_an_aborted_record(broker: Any, unique: Unique) -> None:
    received: list[dict[str, Any]] = []

    async def handle(request: web.Request) -> web.Response:
        body = await request.json()
        received.extend(body["events"])
        return web.json_response({"code": 200, "events_ingested": len(body["events"])})

    app = web.Application()
    app.router.add_post("/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    topic = unique("integrations.amplitude")
    names = Names(unique("forwardrc"))
    await ensure_topics(_settings(broker, names), [TopicSpec(topic, 1)])

    def amp(tag: str, i: int) -> KV:
        event = {"device_id": "d", "event_type": "e", "insert_id": f"{tag}-{i}", "time": T0}
        return b"d", codec.dumps(event)

    committed = [amp("ok", i) for i in range(5)]
    aborted = [amp("aborted", i) for i in range(5)]
    last = [amp("ok", 5)]
    await _transactions(broker.bootstrap, topic, committed, aborted, last, partitions=1)

    cfg = ForwardConfig(
        name="amplitude",
        client={"bootstrap_servers": broker.bootstrap},
        topic=topic,
        dead_letters_topic=unique("dead-letters"),
        group_id=unique("forward"),
        endpoint=f"http://127.0.0.1:{port}",
        api_key="amp-key",
        batch_size=2,
        timeout_s=5.0,
        max_backoff_s=0.2,
        progress_s=60.0,
    )
    fw = Forwarder(cfg, out=io.StringIO())
    task = asyncio.create_task(fw.run())
    deadline = asyncio.get_running_loop().time() + FINISH_S
    try:
        # One partition, sent in order: once the last transaction's record is in,
        # the aborted ones before it were passed over.
        while not any(e["insert_id"] == "ok-5" for e in received):
            assert not task.done(), task
            assert asyncio.get_running_loop().time() < deadline, received
            await asyncio.sleep(0.1)
    finally:
        fw.stop.set()
        await asyncio.wait_for(task, 30)
        await runner.cleanup()
    assert sorted(e["insert_id"] for e in received) == [f"ok-{i}" for i in range(6)]
    # Its group's offset is past the last commit marker: no lag left for lag tools.
    c = AIOKafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=cfg.group_id)
    await c.start()
    try:
        tp = TopicPartition(topic, 0)
        end = (await c.end_offsets([tp]))[tp]
        assert await c.committed(tp) == end
    finally:
        await c.stop()
