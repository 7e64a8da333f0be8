"""`sessionizer replay`'s progress counts the replayed window, not whole partitions."""

from __future__ import annotations

import pytest
from aiokafka import TopicPartition

from sessionizer.run import replay
from sessionizer.run.replay import _Part, _Progress


@pytest.fixture(autouse=True)
def every_update_prints(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(replay, "LINE_EVERY_S", 0.0)


def _parts(n: int, start: int, end: int, **kw: int) -> list[_Part]:
    return [_Part(TopicPartition("raw-events", p), start, end, **kw) for p in range(n)]


def _lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return capsys.readouterr().err.splitlines()


def test_a_known_window_counts_only_its_own_records(capsys: pytest.CaptureFixture[str]) -> None:
    parts = _parts(2, 300, 380)  # the broker found the window: offsets 300-379
    with _Progress(parts, True) as bar:
        for p in parts:
            p.done = 40
            bar.update(p, replayed=40)
            p.done = 80
            bar.update(p, finished=True, replayed=80)
    lines = _lines(capsys)
    assert lines[0].startswith("replay: raw-events[0] 40/80 records; all 40/160 records")
    assert lines[-1].startswith("replay: raw-events[1] 80/80 records; all 160/160 records")


def test_a_scanned_window_never_counts_skipped_records(capsys: pytest.CaptureFixture[str]) -> None:
    """--since on a broker whose time index is not trusted: 14 of 380 replayed."""
    parts = _parts(1, 0, 380, skip_before=1_767_225_600_000)
    (p,) = parts
    with _Progress(parts, True) as bar:
        p.done = 200
        bar.update(p, replayed=0)
        p.done = 380
        bar.update(p, finished=True, replayed=14)
    first, last = _lines(capsys)
    assert first.startswith("replay: raw-events[0] 0 records (read 200/380 to find the window)")
    assert "all 0 records so far" in first
    assert last.startswith("replay: raw-events[0] 14/14 records; all 14/14 records")
    # The scanned 380 are no count of it; the rate (wall-clock dependent, once
    # "380,383 records/s") is left out of the check.
    counts = last.split(" records/s")[0].rsplit(", ", 1)[0]
    assert counts.endswith("records") and "380" not in counts


def test_an_empty_window_says_so_once(capsys: pytest.CaptureFixture[str]) -> None:
    parts = _parts(3, 2270, 2270)
    with _Progress(parts, True) as bar:
        for p in parts:
            bar.update(p, finished=True, replayed=0)
    assert _lines(capsys) == ["replay: no records in the window"]


def test_an_empty_scanned_window_says_so_once(capsys: pytest.CaptureFixture[str]) -> None:
    parts = _parts(2, 0, 1135, skip_before=1, stop_at=2)
    with _Progress(parts, True) as bar:
        for p in parts:
            p.done = p.total
            bar.update(p, finished=True, replayed=0)
    assert _lines(capsys) == ["replay: no records in the window"]


def test_progress_off_prints_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    parts = _parts(1, 0, 0)
    with _Progress(parts, False) as bar:
        bar.update(parts[0], finished=True, replayed=0)
    assert capsys.readouterr().err == ""


def test_a_failed_replay_does_not_claim_an_empty_window(
    capsys: pytest.CaptureFixture[str],
) -> None:
    parts = _parts(1, 0, 10)
    with pytest.raises(RuntimeError), _Progress(parts, True):
        raise RuntimeError("broker gone")
    assert capsys.readouterr().err == ""


def test_the_summary_names_the_integration_topics_written() -> None:
    """The final line lists every topic replay wrote: the §7 outputs', then each
    enabled destination's."""
    from sessionizer.core.model import Counts
    from sessionizer.settings import load_settings

    settings = load_settings(env={"SESSIONIZER_INTEGRATIONS": "ga4,amplitude"})
    topics = replay.written_topics(settings, "backfill.")
    assert topics == [
        "backfill.sessionized-events",
        "backfill.sessions",
        "backfill.dead-letters",
        "backfill.integrations.ga4",
        "backfill.integrations.amplitude",
    ]
    line = replay.summary(Counts(), topics, 1.0)
    assert line.endswith("-> " + ", ".join(topics))
    plain = replay.written_topics(load_settings(env={}), "")
    assert plain == ["sessionized-events", "sessions", "dead-letters"]
