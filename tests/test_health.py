"""What /health reports as problems: a dead control reader, a stalled partition."""

from __future__ import annotations

import asyncio
from typing import Any

from sessionizer.run.task import Marker, PartitionTask
from sessionizer.settings import load_settings
from sessionizer.stream.runtime import BareRuntime
from sessionizer.stream.worker import Slot, Worker, wall_ms


def _pipe(**overrides: Any) -> Worker:
    settings = load_settings(None, **overrides)
    pipe = Worker(settings, BareRuntime(None))
    pipe.control_reader.ready.set()
    return pipe


def _runner(pipe: Worker, partition: int, idle_ms: int) -> Slot:
    task = PartitionTask(
        pipe._new_engine(), pipe.encoder, "raw-events", partition, marker=Marker(10, 0)
    )
    r = Slot(task)
    r.progress_wall = wall_ms() - idle_ms
    pipe.runners[partition] = r
    return r


def test_healthy_when_partitions_with_lag_make_progress() -> None:
    pipe = _pipe()
    _runner(pipe, 0, idle_ms=1_000)
    _runner(pipe, 1, idle_ms=10 * 60_000)  # idle, but nothing to read
    assert pipe.problems({0: 500, 1: 0}) == []


def test_a_partition_with_lag_and_no_progress_is_a_problem() -> None:
    pipe = _pipe()
    _runner(pipe, 3, idle_ms=61_000)
    problems = pipe.problems({3: 42})
    assert len(problems) == 1 and problems[0].startswith("partition 3: 42 records behind")
    assert pipe.problems({3: None}) == []  # lag not known yet: no verdict


def test_stall_timeout_is_a_setting(monkeypatch: Any) -> None:
    monkeypatch.setenv("SESSIONIZER_STALL_TIMEOUT", "10s")
    pipe = _pipe()
    _runner(pipe, 0, idle_ms=20_000)
    assert pipe.problems({0: 1})
    monkeypatch.setenv("SESSIONIZER_STALL_TIMEOUT", "30s")
    pipe.settings = load_settings(None)
    assert pipe.problems({0: 1}) == []


def test_control_reader_not_ready_or_dead_is_a_problem() -> None:
    pipe = _pipe()
    pipe.control_reader.ready.clear()
    assert pipe.problems({}) == ["opt-out control topic not read yet"]

    async def boom() -> None:
        raise ConnectionError("broker gone")

    async def run() -> None:
        task = asyncio.ensure_future(boom())
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        pipe.control_reader._task = task
        assert pipe.problems({}) == ["opt-out control reader stopped: ConnectionError: broker gone"]

    asyncio.run(run())


def test_a_failed_agent_is_a_problem() -> None:
    pipe = _pipe()
    pipe.agent_failure = "RuntimeError: x"
    assert pipe.problems({}) == ["engine agent stopped: RuntimeError: x"]


def test_a_partition_with_no_data_exports_no_watermark() -> None:
    """Issue 20 item 4: a watermark of 0 is "no event yet", not 1970: exported as a
    sample it made the dashboard's event-time lag panel show 56 years."""
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    pipe = _pipe()
    _runner(pipe, 0, idle_ms=0)
    _runner(pipe, 1, idle_ms=0).engine.advance(1_765_000_000_000)
    pipe.metrics.watch(pipe, "raw-events")
    text = generate_latest(pipe.metrics.registry).decode()
    samples = [s for fam in text_string_to_metric_families(text) for s in fam.samples]
    wms = {s.labels["partition"]: s.value for s in samples if s.name == "sessionizer_watermark_ms"}
    assert wms == {"1": 1_765_000_000_000}
    offsets = {s.labels["partition"] for s in samples if s.name == "sessionizer_applied_offset"}
    assert offsets == {"0", "1"}  # the partition itself is still there


def test_a_dead_engine_agent_is_a_metric_to_alert_on() -> None:
    """deploy/alerts.yml's SessionizerEngineAgentDead: the process lives on and answers
    scrapes after its engine agent died, so `up` alone does not say it."""
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    pipe = _pipe()
    pipe.metrics.watch(pipe, "raw-events")

    def running() -> float:
        text = generate_latest(pipe.metrics.registry).decode()
        fams = {f.name: f for f in text_string_to_metric_families(text)}
        return fams["sessionizer_agent_running"].samples[0].value

    assert running() == 1
    pipe.agent_failure = "RuntimeError: x"
    assert running() == 0
