"""`sessionizer report`: the sessions topic's numbers, and a page a headless Chromium renders."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from sessionizer import codec
from sessionizer.run.files import process_files
from sessionizer.settings import load_settings
from sessionizer.stream.metrics import SESSION_BUCKETS
from sessionizer.tools.report import DURATION_BUCKETS_S, Summary, render_html, summarize
from sessionizer.tools.workload import generate_to_file

T = 1_767_225_600_000
CHROMIUM = next(
    (p for p in ("chromium", "chromium-browser", "google-chrome") if shutil.which(p)), None
)


def _start(uuid: str, app: str = "a") -> dict[str, Any]:
    return {"record": "session_start", "session_uuid": uuid, "app": app}


def _end(uuid: str, revision: int, reason: str = "timeout", ms: int = 60_000) -> dict[str, Any]:
    return {
        "record": "session_end",
        "session_uuid": uuid,
        "app": "a",
        "revision": revision,
        "end_reason": reason,
        "session_duration_ms": ms,
        "event_count": 3,
        "end_unixtime_ms": T + ms,
    }


def _records(*recs: Any) -> list[tuple[int | None, bytes | None]]:
    return [
        (T + i, r if r is None or isinstance(r, bytes) else codec.dumps(r))
        for i, r in enumerate(recs)
    ]


def test_each_session_counts_once_with_its_latest_record() -> None:
    s = summarize(
        _records(
            _start("A"),
            _end("A", 0, "timeout", 60_000),
            _end("A", 1, "timeout", 600_000),  # reopened: the later revision wins
            _end("A", 0, "timeout", 60_000),  # an at-least-once duplicate of revision 0
            _start("A"),  # a duplicate start never undoes the end
            _start("B", "b"),
            _end("C", 0, "exit", 5_000),
            None,  # a tombstone
            b"not json",
        )
    )
    assert (s.sessions, s.ended, s.open, s.revised) == (3, 2, 1, 1)
    assert s.ended_by_reason == Counter({"timeout": 1, "exit": 1})
    assert sorted(s.durations_s) == [5.0, 600.0]
    assert s.per_app == Counter({"a": 2, "b": 1})
    assert (s.first_ts, s.last_ts) == (T, T + 8)


def test_duration_buckets_are_the_workers_histogram() -> None:
    assert tuple(DURATION_BUCKETS_S) == tuple(SESSION_BUCKETS)
    s = Summary(durations_s=[0.0, 5.0, 10.0, 10.5, 86400.0, 90000.0])
    hist = dict(s.duration_histogram())
    assert hist["0 s"] == 1
    assert hist["0 s to 10 s"] == 2  # 5 s and 10 s (upper bounds are inclusive, like le)
    assert hist["10 s to 30 s"] == 1
    assert hist["12 h to 1 d"] == 1
    assert hist["over 1 d"] == 1
    assert sum(hist.values()) == 6


def test_the_page_escapes_user_data_and_handles_nothing() -> None:
    s = summarize(_records(_start("X", app="<script>alert(1)</script>")))
    page = render_html(s, source="topic sessions", generated_ms=T)
    assert "<script>" not in page and "&lt;script&gt;" in page
    empty = render_html(Summary(), source="topic sessions", generated_ms=T)
    assert empty.count('<p class="none">no sessions</p>') == 4


@pytest.fixture(scope="module")
def workload_page(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Summary]:
    d = tmp_path_factory.mktemp("report")
    generate_to_file(d / "in.jsonl", 5000, devices=200)
    process_files([str(d / "in.jsonl")], str(d / "out"), load_settings(env={}).engine)
    lines = (d / "out" / "sessions.jsonl").read_bytes().splitlines()
    summary = summarize([(T + i, v) for i, v in enumerate(lines)])
    page = d / "report.html"
    page.write_text(render_html(summary, source="process-file", generated_ms=T), "utf-8")
    return page, summary


def _chromium(*args: str) -> str:
    assert CHROMIUM is not None
    res = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout


@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (Debian package chromium)")
def test_chromium_renders_the_panels(workload_page: tuple[Path, Summary]) -> None:
    page, s = workload_page
    dom = _chromium("--dump-dom", page.as_uri())
    tiles = dict(re.findall(r'data-name="([^"]+)"><b>([^<]+)</b>', dom))
    assert tiles["sessions"] == f"{s.sessions:,}" and s.sessions > 100
    assert tiles["ended"] == f"{s.ended:,}" and tiles["open"] == f"{s.open:,}"
    for panel in ("reasons", "durations", "apps", "timeline"):
        assert f'<section id="{panel}">' in dom
    reasons = re.search(r'<section id="reasons">(.*?)</section>', dom, re.S)
    assert reasons is not None
    for reason, n in s.ended_by_reason.items():
        assert f'<td>{reason}</td><td class="n">{n:,}</td>' in reasons.group(1)
    assert dom.count("<rect ") >= 10  # the timeline's columns


@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (Debian package chromium)")
def test_chromium_makes_a_png_of_the_page(
    workload_page: tuple[Path, Summary], tmp_path: Path
) -> None:
    page, _ = workload_page
    png = tmp_path / "report.png"
    _chromium(f"--screenshot={png}", "--window-size=1300,1400", page.as_uri())
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000  # drawn, not blank


def test_the_over_time_chart_has_a_y_axis() -> None:
    """Issue 20: the "over time" chart had bars and no scale. The y-axis: round ticks
    from 0 to at least the tallest bar, each drawn at its height, and a title naming
    the bin width; the tallest bar reaches the tick of its count."""
    import re

    from sessionizer.tools.report import TIME_BINS, _timeline

    minute = 60_000
    # Bin widths of 1 minute (48 bins over 48 minutes); 7 sessions end in the first.
    ends = [T] * 7 + [T + i * minute for i in range(1, TIME_BINS)] + [T + TIME_BINS * minute - 1]
    svg = _timeline(Summary(ends_ms=ends), "timeline")
    labels = re.findall(
        r'<text x="\d+" y="([\d.]+)" font-size="11" text-anchor="end">([\d,]+)<', svg
    )
    ticks = [int(v.replace(",", "")) for _, v in labels]
    assert ticks == [0, 2, 4, 6, 8]
    ys = [float(y) - 4 for y, _ in labels]  # a label sits 4 px below its gridline
    assert ys == sorted(ys, reverse=True)  # 0 at the bottom
    assert "sessions ended per 60 s" in svg
    bar = re.search(
        r'<rect x="[\d.]+" y="([\d.]+)" width="[\d.]+" height="([\d.]+)"[^>]*><title>7<', svg
    )
    assert bar is not None
    zero, eight = ys[0], ys[-1]
    assert float(bar.group(1)) + float(bar.group(2)) == pytest.approx(zero)
    assert float(bar.group(1)) == pytest.approx(zero - (zero - eight) * 7 / 8, abs=0.1)
