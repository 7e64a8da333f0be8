"""``sessionizer report``: the sessions topic as a static HTML page, for users without Grafana.

Reads the ``sessions`` topic (§7.2) with a group-less consumer, from the first
record written at or after ``--since`` (or from the beginning) up to the end
offsets seen at start, keeps each session's latest record (a ``session_end``
over its ``session_start``, the highest ``revision`` among ends), and renders
the dashboard's session panels: sessions by end reason, the duration
distribution (the buckets of ``sessionizer_session_duration_seconds``),
sessions per app and sessions ended over time. The page is one
self-contained file: inline CSS and SVG, no script, nothing fetched.
"""

from __future__ import annotations

import asyncio
import html
import itertools
import logging
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .. import codec
from ..settings import Settings

__all__ = ["DURATION_BUCKETS_S", "Summary", "read_sessions", "render_html", "run", "summarize"]

# The upper bounds (seconds) of the worker's session duration histogram (stream/metrics.py).
DURATION_BUCKETS_S = (0, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 43200, 86400)
TOP_APPS = 15
TIME_BINS = 48


@dataclass
class Summary:
    """What the page shows, computed from the latest record of each session."""

    sessions: int = 0
    open: int = 0
    revised: int = 0
    events: int = 0
    ended_by_reason: Counter[str] = field(default_factory=Counter)
    durations_s: list[float] = field(default_factory=list)
    per_app: Counter[str] = field(default_factory=Counter)
    ends_ms: list[int] = field(default_factory=list)
    first_ts: int | None = None  # Kafka timestamps of the records read
    last_ts: int | None = None

    @property
    def ended(self) -> int:
        return sum(self.ended_by_reason.values())

    def duration_histogram(self) -> list[tuple[str, int]]:
        """(bucket label, sessions) per bucket of the worker's histogram, not cumulative."""
        bounds = DURATION_BUCKETS_S
        counts = [0] * (len(bounds) + 1)
        for d in self.durations_s:
            i = next((k for k, b in enumerate(bounds) if d <= b), len(bounds))
            counts[i] += 1
        labels = ["0 s"]
        labels += [f"{_short(lo)} to {_short(hi)}" for lo, hi in itertools.pairwise(bounds)]
        labels.append(f"over {_short(bounds[-1])}")
        return list(zip(labels, counts, strict=True))

    def quantile_s(self, q: float) -> float | None:
        if not self.durations_s:
            return None
        ordered = sorted(self.durations_s)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _short(secs: float) -> str:
    secs = int(secs)
    if secs % 86400 == 0 and secs:
        return f"{secs // 86400} d"
    if secs % 3600 == 0 and secs:
        return f"{secs // 3600} h"
    if secs % 60 == 0 and secs:
        return f"{secs // 60} min"
    return f"{secs} s"


def _better(new: dict[str, Any], old: dict[str, Any] | None) -> bool:
    """Whether ``new`` is a later state of its session than ``old`` (§7.2: keep the highest)."""
    if old is None:
        return True
    if new.get("record") != old.get("record"):
        return new.get("record") == "session_end"
    return int(new.get("revision") or 0) >= int(old.get("revision") or 0)


def summarize(records: Iterable[tuple[int | None, bytes | None]]) -> Summary:
    """(Kafka timestamp, value) of sessions-topic records -> the page's numbers."""
    latest: dict[str, dict[str, Any]] = {}
    s = Summary()
    for ts, value in records:
        if ts is not None:
            s.first_ts = ts if s.first_ts is None else min(s.first_ts, ts)
            s.last_ts = ts if s.last_ts is None else max(s.last_ts, ts)
        if value is None:
            continue  # a tombstone
        try:
            rec = codec.loads(value)
        except codec.JSONDecodeError:
            continue
        if type(rec) is not dict or not isinstance(rec.get("session_uuid"), str):
            continue
        uuid = rec["session_uuid"]
        if _better(rec, latest.get(uuid)):
            latest[uuid] = rec
    for rec in latest.values():
        s.sessions += 1
        s.per_app[str(rec.get("app"))] += 1
        if rec.get("record") != "session_end":
            s.open += 1
            continue
        s.ended_by_reason[str(rec.get("end_reason"))] += 1
        if rec.get("revision"):
            s.revised += 1
        duration = rec.get("session_duration_ms")
        if isinstance(duration, int):
            s.durations_s.append(duration / 1000)
        count = rec.get("event_count")
        if isinstance(count, int):
            s.events += count
        end = rec.get("end_unixtime_ms")
        if isinstance(end, int):
            s.ends_ms.append(end)
    return s


# --------------------------------------------------------------------------- HTML

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#1f2933;background:#f5f7fa}
h1{font-size:22px;margin:0 0 4px}p.meta{color:#52606d;margin:0 0 20px}
.tiles{display:flex;flex-wrap:wrap;gap:12px;margin-bottom:20px}
.tile{background:#fff;border-radius:6px;padding:10px 16px;min-width:120px;
box-shadow:0 1px 2px #0002}
.tile b{display:block;font-size:24px}.tile span{color:#52606d}
.panels{display:grid;grid-template-columns:repeat(auto-fit,minmax(460px,1fr));gap:16px}
section{background:#fff;border-radius:6px;padding:12px 16px;box-shadow:0 1px 2px #0002}
h2{font-size:16px;margin:0 0 8px}table{border-collapse:collapse;width:100%}
td{padding:2px 6px;white-space:nowrap}td.n{text-align:right;font-variant-numeric:tabular-nums}
td.bar{width:100%}.bar div{background:#3e7bfa;height:14px;border-radius:2px}
p.none{color:#7b8794}
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _bars(title: str, rows: list[tuple[str, int]], panel_id: str) -> str:
    top = max((n for _, n in rows), default=0)
    body = "".join(
        f'<tr><td>{_e(label)}</td><td class="n">{n:,}</td>'
        f'<td class="bar"><div style="width:{(100 * n / top) if top else 0:.1f}%"></div></td></tr>'
        for label, n in rows
    )
    content = f"<table>{body}</table>" if rows and top else '<p class="none">no sessions</p>'
    return f'<section id="{panel_id}"><h2>{_e(title)}</h2>{content}</section>'


def _ticks(top: int) -> list[int]:
    """Round y-axis values from 0 to at least ``top``: steps of 1, 2 or 5 x 10^k, 2-6 of them."""
    step = 1
    while -(-top // step) > 5:
        step = _next_step(step)
    return list(range(0, max(1, -(-top // step)) * step + 1, step))


def _next_step(step: int) -> int:
    """1, 2, 5, 10, 20, 50, ...: x2.5 from a 2, else x2."""
    return step * 5 // 2 if str(step)[0] == "2" else step * 2


def _span(ms: int) -> str:
    """A bin's width: "90 s", "12 min", "3 h", "2 d"."""
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("min", 60_000), ("s", 1000)):
        if ms >= 2 * size or unit == "s":
            return f"{max(1, round(ms / size))} {unit}"
    raise AssertionError("unreachable")


def _timeline(s: Summary, panel_id: str) -> str:
    title = "Sessions ended over time (event time, UTC)"
    if not s.ends_ms:
        return f'<section id="{panel_id}"><h2>{title}</h2><p class="none">no sessions</p></section>'
    lo, hi = min(s.ends_ms), max(s.ends_ms)
    width = max(1, hi - lo + 1)
    bins = [0] * TIME_BINS
    for t in s.ends_ms:
        bins[min(TIME_BINS - 1, (t - lo) * TIME_BINS // width)] += 1
    ticks = _ticks(max(bins))
    top = ticks[-1]
    # Plot area right of the y-axis labels, below its title.
    left, head, w, h = 44, 14, 600, 160
    step = (w - left) / TIME_BINS
    rects = "".join(
        f'<rect x="{left + i * step:.1f}" y="{head + h - h * n / top:.1f}" '
        f'width="{step - 1:.1f}" height="{h * n / top:.1f}" fill="#3e7bfa">'
        f"<title>{n}</title></rect>"
        for i, n in enumerate(bins)
        if n
    )
    y_axis = f'<line x1="{left - 2}" y1="{head}" x2="{left - 2}" y2="{head + h}" stroke="#7b8794"/>'
    for t in ticks:
        y = head + h - h * t / top
        y_axis += (
            f'<line x1="{left - 2}" y1="{y:.1f}" x2="{w}" y2="{y:.1f}" stroke="#e4e7eb"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end">{t:,}</text>'
        )
    y_title = f"sessions ended per {_span(-(-width // TIME_BINS))}"
    y_axis += f'<text x="0" y="10" font-size="11">{_e(y_title)}</text>'
    x_axis = (
        f'<text x="{left}" y="{head + h + 14}" font-size="11">{_e(_utc(lo))}</text>'
        f'<text x="{w}" y="{head + h + 14}" font-size="11" text-anchor="end">{_e(_utc(hi))}</text>'
    )
    svg = (
        f'<svg viewBox="0 0 {w} {head + h + 18}" width="100%" role="img" '
        f'aria-label="{_e(title)}">{y_axis}{rects}{x_axis}</svg>'
    )
    return f'<section id="{panel_id}"><h2>{title}</h2>{svg}</section>'


def _utc(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _fmt_s(secs: float | None) -> str:
    if secs is None:
        return "-"
    m, sec = divmod(int(secs), 60)
    h, m = divmod(m, 60)
    return f"{h}h {m:02d}m" if h else f"{m}m {sec:02d}s" if m else f"{sec}s"


def render_html(s: Summary, *, source: str, generated_ms: int) -> str:
    """The report page for ``s``; ``source`` says what was read (topic, broker, window)."""
    tiles = [
        ("sessions", f"{s.sessions:,}"),
        ("ended", f"{s.ended:,}"),
        ("open", f"{s.open:,}"),
        ("revised", f"{s.revised:,}"),
        ("events in ended sessions", f"{s.events:,}"),
        ("median duration", _fmt_s(s.quantile_s(0.5))),
        ("p90 duration", _fmt_s(s.quantile_s(0.9))),
    ]
    tile_html = "".join(
        f'<div class="tile" data-name="{_e(k)}"><b>{_e(v)}</b><span>{_e(k)}</span></div>'
        for k, v in tiles
    )
    apps = s.per_app.most_common(TOP_APPS)
    rest = sum(s.per_app.values()) - sum(n for _, n in apps)
    if rest:
        apps.append((f"({len(s.per_app) - TOP_APPS} other apps)", rest))
    panels = [
        _bars("Sessions ended, by reason", s.ended_by_reason.most_common(), "reasons"),
        _bars("Session duration distribution", s.duration_histogram(), "durations"),
        _bars("Sessions per app", apps, "apps"),
        _timeline(s, "timeline"),
    ]
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        "<title>sessionizer report</title>"
        f"<style>{_CSS}</style></head><body>"
        "<h1>sessionizer report</h1>"
        f'<p class="meta">{_e(source)}; records written {_e(_utc(s.first_ts))} to '
        f"{_e(_utc(s.last_ts))} UTC; generated {_e(_utc(generated_ms))} UTC</p>"
        f'<div class="tiles">{tile_html}</div>'
        f'<div class="panels">{"".join(panels)}</div>'
        "</body></html>\n"
    )


# --------------------------------------------------------------------------- reading


async def read_sessions(
    settings: Settings, since_ms: int | None
) -> list[tuple[int | None, bytes | None]]:
    """(Kafka timestamp, value) of the sessions topic's records written at or after ``since_ms``.

    Up to the end offsets seen at start; raises LookupError when the topic does not exist.
    """
    from aiokafka import AIOKafkaConsumer

    from ..kafka.clients import reader_options, topic_partitions
    from ..run.replay import offsets_for_time, read_range, true_end_offsets

    topic = settings.topics.sessions
    consumer = AIOKafkaConsumer(**reader_options(settings), group_id=None, enable_auto_commit=False)
    await consumer.start()
    out: list[tuple[int | None, bytes | None]] = []
    try:
        tps = await topic_partitions(consumer, topic, tries=30)
        if not tps:
            raise LookupError(f"topic {topic} does not exist on {settings.broker_url}")
        consumer.assign(tps)
        starts = await consumer.beginning_offsets(tps)
        ends = await true_end_offsets(consumer, tps, starts)
        if since_ms is not None:
            # A broker whose time index cannot be trusted answers None: read it all, filter.
            found = await offsets_for_time(consumer, tps, since_ms, starts, ends)
            starts = {tp: starts[tp] if found[tp] is None else found[tp] for tp in tps}
        for tp in tps:
            async for got, _position in read_range(consumer, tp, starts[tp], ends[tp]):
                for m in got:
                    if since_ms is None or (m.timestamp is not None and m.timestamp >= since_ms):
                        out.append((m.timestamp, m.value))
    finally:
        await consumer.stop()
    return out


def run(settings: Settings, *, since_ms: int | None, out_path: str, now_ms: int) -> int:
    """The ``report`` command: writes the page, prints one line; returns the exit code."""
    from aiokafka.errors import KafkaError

    from ..run.replay import ReplayError

    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    try:
        records = asyncio.run(read_sessions(settings, since_ms))
    except LookupError as exc:
        print(f"sessionizer: {exc}", file=sys.stderr)
        return 1
    except (KafkaError, OSError, asyncio.TimeoutError, ReplayError) as exc:
        print(
            f"sessionizer: cannot read {settings.topics.sessions} on {settings.broker_url}: "
            f"{exc or type(exc).__name__}",
            file=sys.stderr,
        )
        return 1
    summary = summarize(records)
    window = "from the beginning" if since_ms is None else f"since {_utc(since_ms)} UTC"
    source = f"topic {settings.topics.sessions} on {settings.broker_url}, {window}"
    Path(out_path).write_text(render_html(summary, source=source, generated_ms=now_ms), "utf-8")
    print(
        f"report: {summary.sessions:,} sessions ({summary.ended:,} ended, {summary.open:,} open) "
        f"from {len(records):,} records -> {out_path}",
        flush=True,
    )
    return 0
