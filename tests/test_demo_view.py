"""The demo: its view shows the worker's web URL; on a user's broker it keeps to its own names."""

from __future__ import annotations

import io
from pathlib import Path

import orjson
import pytest
from rich.console import Console

from sessionizer.settings import load_settings
from sessionizer.tools.demo import (
    LiveTraffic,
    OutputReader,
    Stats,
    WorkerLog,
    demo_env,
    own_topics_env,
    render,
)
from sessionizer.tools.workload import Upload

READY = (
    "sessionizer worker ready: partitions [0, 1, 2, 3] of raw-events; web http://127.0.0.1:43123"
)


def _text(stats: Stats) -> str:
    console = Console(width=140, record=True, file=io.StringIO())
    console.print(render(stats, stats.started + 5, "127.0.0.1:9092", 30))
    return console.export_text()


def test_the_view_shows_the_worker_web_url_and_partitions() -> None:
    stats = Stats()
    assert "waiting for its ready line" in _text(stats)
    stats.web = "http://127.0.0.1:43123"  # known when the demo starts the worker
    assert "worker web http://127.0.0.1:43123 (/health, /metrics" in _text(stats)
    assert stats.on_ready("[?25l" + READY)
    assert not stats.on_ready("some other line")
    text = _text(stats)
    assert "http://127.0.0.1:43123" in text and "partitions [0, 1, 2, 3]" in text


def test_worker_log_yields_each_ready_line_once(tmp_path: Path) -> None:
    path = tmp_path / "worker.log"
    log = WorkerLog(path)
    assert log.ready_lines() == []  # no file yet
    path.write_text("created topics: a, b\n\x1b[?25l" + READY[:30])
    assert log.ready_lines() == []  # half a line
    with path.open("a") as f:
        f.write(READY[30:] + "\nother\n")
    assert log.ready_lines() == [READY]
    assert log.ready_lines() == []
    with path.open("a") as f:
        f.write(READY.replace("[0, 1, 2, 3]", "[0, 1]") + "\n")
    assert log.ready_lines() == [READY.replace("[0, 1, 2, 3]", "[0, 1]")]


def test_on_a_users_broker_every_topic_and_the_group_get_the_prefix() -> None:
    settings = load_settings(env={"SESSIONIZER_TOPIC_RAW_EVENTS": "mp.raw"})
    env = own_topics_env(settings, "sessionizer-demo-0a1b2c3d")
    assert env == {
        "SESSIONIZER_TOPIC_RAW_EVENTS": "sessionizer-demo-0a1b2c3d.mp.raw",
        "SESSIONIZER_TOPIC_SESSIONIZED_EVENTS": "sessionizer-demo-0a1b2c3d.sessionized-events",
        "SESSIONIZER_TOPIC_SESSIONS": "sessionizer-demo-0a1b2c3d.sessions",
        "SESSIONIZER_TOPIC_DEAD_LETTERS": "sessionizer-demo-0a1b2c3d.dead-letters",
        "SESSIONIZER_TOPIC_OPT_OUT_CONTROL": "sessionizer-demo-0a1b2c3d.opt-out-control",
        "SESSIONIZER_TOPIC_INTEGRATIONS": "sessionizer-demo-0a1b2c3d.integrations",
        "SESSIONIZER_APP_ID": "sessionizer-demo-0a1b2c3d",
    }
    moved = load_settings(env={"SESSIONIZER_APP_ID": "sessionizer", **env})
    assert moved.app_id == "sessionizer-demo-0a1b2c3d"  # a user's own group id never wins
    # The integration topics too: never a live integrations.<name> on a user's broker.
    moved = load_settings(env={**env, "SESSIONIZER_INTEGRATIONS": "ga4"})
    assert moved.topics.integration("ga4") == "sessionizer-demo-0a1b2c3d.integrations.ga4"


def test_the_view_shows_what_each_enabled_integration_produced() -> None:
    """One line: each enabled integration's records (read from its topic by the
    OutputReader) and its dead letters (by the dead letters' ``destination``)."""
    settings = load_settings(env={"SESSIONIZER_INTEGRATIONS": "amplitude,ga4"})
    assert "integrations: none enabled" in _text(Stats())
    stats = Stats(integrations=dict.fromkeys(settings.integrations, 0))
    reader = OutputReader(settings, stats)
    kinds = {topic: kind for topic, kind in reader.kinds.items() if topic.startswith("integ")}
    assert sorted(kinds) == ["integrations.amplitude", "integrations.ga4"]
    for _ in range(1234):
        stats.on_output(kinds["integrations.amplitude"], b'{"event_type": "x"}')
    stats.on_output(kinds["integrations.ga4"], b"{}")
    dead = {"reason": "integration_unsendable", "destination": "amplitude", "detail": "x"}
    for _ in range(2):
        stats.on_output(reader.kinds[settings.topics.dead_letters], orjson.dumps(dead))
    text = _text(stats)
    assert "integrations (records written): amplitude 1,234 (2 dead letters), ga4 1" in text
    assert "amplitude 1,234 (2 dead letters), ga4 1" in stats.line(stats.started + 1)
    assert stats.events_out == 0  # integration records are not counted as events


def test_live_traffic_retries_a_cut_off_upload() -> None:
    traffic = LiveTraffic(20, speed=15.0, seed=2, bad_rate=1.0, clock=lambda: 1_767_225_600.0)
    retried = 0
    for d in traffic.population.devices:
        assert d.next is not None
        d.buf.append(d.next[1])
        events = list(d.buf)
        uploads = list(traffic.upload(Upload(d, d.next[0])))
        if len(uploads) == 2:  # cut off mid-way, then sent again whole
            with pytest.raises(orjson.JSONDecodeError):
                orjson.loads(uploads[0])
            assert orjson.loads(uploads[1])["events"] == events
            retried += 1
        else:
            assert len(uploads) == 1
    assert retried > 0


def test_the_demo_timings_apply_only_where_the_user_set_nothing(tmp_path: Path) -> None:
    assert demo_env(None, {}) == {
        "SESSIONIZER_TIMEOUT": "2m",
        "SESSIONIZER_GRACE": "10s",
        "SESSIONIZER_IDLE_TIMEOUT": "5s",
    }
    # Set to the default value, in the file or the environment: still the user's choice.
    config = tmp_path / "sessionizer.toml"
    config.write_text('[session]\ntimeout = "30m"\n')
    env = demo_env(str(config), {"SESSIONIZER_IDLE_TIMEOUT": "10s"})
    assert env == {"SESSIONIZER_IDLE_TIMEOUT": "10s", "SESSIONIZER_GRACE": "10s"}
    settings = load_settings(str(config), env=env)
    assert (settings.engine.timeout_ms, settings.engine.grace_ms) == (30 * 60_000, 10_000)


def test_live_traffic_logins_give_user_identities() -> None:
    # The workload's scheduler: a login uploads, then the device has a new mpid and user ids.
    traffic = LiveTraffic(200, speed=1e9, seed=4, bad_rate=0.0, clock=lambda: 1_767_225_600.0)
    with_ids = 0
    for _ in range(60_000):
        for up in traffic.scheduler.advance():
            with_ids += "user_identities" in orjson.loads(next(traffic.upload(up)))
        if with_ids:
            break
    assert with_ids
