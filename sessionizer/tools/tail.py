"""``sessionizer tail``: follow an output topic and print it for a human (or as JSON lines).

A group-less aiokafka consumer assigned every partition of the topic, from the
end (default) or from the beginning. Human output is one line per session
record, per event or per dead letter, in aligned columns, coloured when stdout
is a terminal (rich; ``NO_COLOR`` is honoured). ``--json`` writes each record
value unchanged, one per line, for piping into ``jq`` and friends.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import heapq
import logging
import os
import signal
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import IO, Any

from .. import codec
from ..settings import Settings

__all__ = [
    "KINDS",
    "Renderer",
    "format_duration",
    "format_time",
    "run",
    "tail",
]

# The command's word -> the attribute of settings.topics.
KINDS = {
    "sessions": "sessions",
    "events": "sessionized_events",
    "dead-letters": "dead_letters",
}

POLL_MS = 200
PREVIEW_CHARS = 100
DETAIL_CHARS = 48
MAX_WIDTH = 36  # a UUID-shaped device id fits; longer values push the columns

REASON_STYLES = {
    "timeout": "yellow",
    "idle": "yellow",
    "relaunch": "cyan",
    "exit": "blue",
    "manual": "blue",
    "opt_out": "magenta",
    "end_of_input": "dim",
}


# --------------------------------------------------------------------------- formatting


def format_duration(ms: Any) -> str:
    """``12m 05s``, ``1h 02m 05s``, ``2d 03h 04m``, ``45s``, ``850ms``; ``-`` if not a number."""
    if isinstance(ms, bool) or not isinstance(ms, (int, float)):
        return "-"
    ms = int(ms)
    sign = "-" if ms < 0 else ""
    ms = abs(ms)
    if ms < 1000:
        return f"{sign}{ms}ms" if ms else "0s"
    s = ms // 1000
    d, s = divmod(s, 86_400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    if d:
        return f"{sign}{d}d {h:02d}h {m:02d}m"
    if h:
        return f"{sign}{h}h {m:02d}m {s:02d}s"
    if m:
        return f"{sign}{m}m {s:02d}s"
    return f"{sign}{s}s"


def format_time(ms: Any) -> str:
    """Epoch ms as ISO 8601 local time to the second, e.g. ``2026-01-01T01:00:00+01:00``."""
    if isinstance(ms, bool) or not isinstance(ms, (int, float)):
        return "-"
    try:
        dt = datetime.fromtimestamp(ms / 1000, tz=timezone.utc).astimezone()
    except (OverflowError, OSError, ValueError):
        return str(ms)
    return dt.isoformat(timespec="seconds")


def _short(uuid: Any) -> str:
    return uuid[:8] if isinstance(uuid, str) and uuid else "-"


def _one_line(text: str, limit: int) -> str:
    text = text.replace("\r", "\\r").replace("\n", "\\n").replace("\t", "\\t")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _attrs(attrs: Any) -> str:
    if not isinstance(attrs, dict) or not attrs:
        return ""
    return " ".join(f"{k}={codec.dumps(v).decode()}" for k, v in attrs.items())


class _Widths:
    """Column widths that grow to the widest value seen (capped), so columns stay aligned."""

    def __init__(self, **minimum: int) -> None:
        self.w = dict(minimum)

    def pad(self, name: str, value: str, cap: int = MAX_WIDTH) -> str:
        width = self.w.get(name, 0)
        if len(value) > width and width < cap:
            width = self.w[name] = min(len(value), cap)
        return value.ljust(width)


class Renderer:
    """Turns one decoded record of a kind into rich ``Text`` lines."""

    def __init__(self, kind: str) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}")
        self.kind = kind
        self.widths = _Widths(device=12, app=16, type=20, detail=14, reason=12, source=20)

    def lines(self, value: bytes, record_ts: int | None = None) -> list[Any]:
        from rich.text import Text

        try:
            obj = codec.loads(value)
        except codec.JSONDecodeError:
            obj = None
        if type(obj) is not dict:
            preview = _one_line(value.decode("utf-8", "replace"), PREVIEW_CHARS)
            return [
                Text.assemble(
                    (format_time(record_ts), "dim"), "  ", ("not a record: ", "red"), preview
                )
            ]
        if self.kind == "sessions":
            return [self.session(obj)]
        if self.kind == "events":
            return self.events(obj)
        return [self.dead_letter(obj, record_ts)]

    # -- sessions

    def session(self, rec: dict[str, Any]) -> Any:
        from rich.text import Text

        pad = self.widths.pad
        t = Text()
        start = rec.get("record") == "session_start"
        when = rec.get("start_unixtime_ms") if start else rec.get("end_unixtime_ms")
        t.append(format_time(when), "dim")
        t.append("  ")
        t.append("START" if start else "END  ", "bold green" if start else "bold")
        t.append("  ")
        t.append(pad("device", str(rec.get("device"))), "bold")
        t.append("  ")
        t.append(pad("app", str(rec.get("app"))))
        t.append("  ")
        t.append(f"#{rec.get('session_number')}".ljust(5))
        t.append(" ")
        t.append(_short(rec.get("session_uuid")), "dim")
        if start:
            t.append(f"  mpid {rec.get('mpid')}")
            prev = rec.get("previous_session_uuid")
            if prev:
                t.append(f"  after {_short(prev)}", "dim")
            return t
        reason = str(rec.get("end_reason"))
        t.append("  ")
        t.append(pad("reason", reason), REASON_STYLES.get(reason, "red"))
        t.append(f"  {format_duration(rec.get('session_duration_ms')):>8}")
        t.append(f"  fg {format_duration(rec.get('foreground_duration_ms')):>8}")
        t.append(f"  {rec.get('event_count')!s:>4} events")
        t.append(f"  {rec.get('screen_view_count')!s:>3} screens")
        revision = rec.get("revision")
        t.append("  ")
        if isinstance(revision, int) and revision > 0:
            t.append(f"rev {revision}", "bold red")
        else:
            t.append(f"rev {revision}", "dim")
        attrs = _attrs(rec.get("session_attributes"))
        if attrs:
            t.append("  ")
            t.append(attrs, "cyan")
        return t

    # -- sessionized events

    def events(self, rec: dict[str, Any]) -> list[Any]:
        evs = rec.get("events")
        if isinstance(evs, list):
            batch_ts = rec.get("timestamp_unixtime_ms")
            return [self.event(rec, ev, batch_ts) for ev in evs if isinstance(ev, dict)]
        return [self.event(rec, rec, rec.get("timestamp_unixtime_ms"))]

    def event(self, batch: dict[str, Any], ev: dict[str, Any], batch_ts: Any) -> Any:
        from rich.text import Text

        pad = self.widths.pad
        data = ev.get("data")
        if not isinstance(data, dict):
            data = {}
        device = batch.get("mp_deviceid") or batch.get("mpid")
        etype = str(ev.get("event_type"))
        synthesized = etype in ("session_start", "session_end")
        ts = data.get("timestamp_unixtime_ms", batch_ts)
        t = Text()
        t.append(format_time(ts), "dim")
        t.append("  ")
        t.append(pad("device", str(device)), "bold")
        t.append("  ")
        t.append(pad("type", etype), "green" if synthesized else "")
        t.append("  ")
        t.append(pad("detail", _event_detail(etype, data)))
        t.append("  ")
        if data.get("late") is True and data.get("session_uuid") is None:
            t.append("late    ", "yellow")
            t.append("     -")
            return t
        t.append(_short(data.get("session_uuid")), "dim")
        num = data.get("event_num")
        t.append(f"  {'#' + str(num) if num is not None else '-':>5}")
        return t

    # -- dead letters

    def dead_letter(self, rec: dict[str, Any], record_ts: int | None) -> Any:
        from rich.text import Text

        pad = self.widths.pad
        src = rec.get("source")
        if not isinstance(src, dict):
            src = {}
        ts = src.get("timestamp")
        t = Text()
        t.append(format_time(ts if ts is not None else record_ts), "dim")
        t.append("  ")
        t.append(pad("reason", str(rec.get("reason"))), "bold red")
        t.append("  ")
        t.append(pad("source", f"{src.get('topic')}/{src.get('partition')}@{src.get('offset')}"))
        t.append("  ")
        t.append(
            pad("why", _one_line(str(rec.get("detail")), DETAIL_CHARS), DETAIL_CHARS), "yellow"
        )
        t.append("  ")
        t.append(_payload_preview(rec), "dim")
        return t


def _event_detail(etype: str, data: dict[str, Any]) -> str:
    if etype == "application_state_transition":
        kind = str(data.get("application_transition_type", "?"))
        return kind.removeprefix("application_")
    if etype == "screen_view":
        return str(data.get("screen_name", ""))
    if etype == "custom_event":
        return str(data.get("event_name", ""))
    if etype == "session_end":
        return format_duration(data.get("session_duration_ms"))
    return ""


def _payload_preview(rec: dict[str, Any]) -> str:
    payload = rec.get("payload")
    if not isinstance(payload, str):
        return "-"
    if rec.get("payload_encoding") == "base64":
        try:
            raw = base64.b64decode(payload, validate=False)
        except ValueError:
            raw = b""
        return f"(base64, {len(raw)} bytes) {_one_line(payload, PREVIEW_CHARS - 20)}"
    return _one_line(payload, PREVIEW_CHARS)


# --------------------------------------------------------------------------- following


class TailError(Exception):
    """A one-line reason why tail cannot run (broker unreachable, topic missing)."""


def _merge(batches: dict[Any, list[Any]]) -> Iterable[Any]:
    """One poll's records, partitions interleaved by record timestamp, each in its own order."""
    if len(batches) == 1:
        return next(iter(batches.values()))
    return heapq.merge(*batches.values(), key=lambda m: m.timestamp)


@dataclass(frozen=True)
class TailOptions:
    """What the ``tail`` command's flags ask for."""

    as_json: bool = False
    from_beginning: bool = False
    max_records: int | None = None
    timeout_s: float | None = None


async def tail(
    settings: Settings,
    kind: str,
    options: TailOptions = TailOptions(),
    *,
    out: IO[str] | None = None,
    err: IO[str] | None = None,
    stop: asyncio.Event | None = None,
) -> int:
    """Follows the topic of ``kind``; returns how many records it printed."""
    from aiokafka import AIOKafkaConsumer
    from aiokafka.errors import KafkaError

    from ..kafka.clients import reader_options, topic_partitions

    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    stop = stop if stop is not None else asyncio.Event()
    as_json, from_beginning = options.as_json, options.from_beginning
    max_records, timeout_s = options.max_records, options.timeout_s
    topic = getattr(settings.topics, KINDS[kind])
    deadline = time.monotonic() + timeout_s if timeout_s is not None else None

    consumer = AIOKafkaConsumer(
        **reader_options(settings),
        enable_auto_commit=False,
        group_id=None,
        request_timeout_ms=15_000,
    )
    try:
        await asyncio.wait_for(consumer.start(), 20.0)
    except (KafkaError, OSError, asyncio.TimeoutError) as exc:
        with contextlib.suppress(Exception):
            await consumer.stop()
        detail = str(exc) or type(exc).__name__
        raise TailError(f"cannot reach the broker {settings.broker_url}: {detail}") from exc
    printed = 0
    try:
        tps = await topic_partitions(consumer, topic, tries=30)
        if not tps:
            raise TailError(f"topic {topic} does not exist on {settings.broker_url}")
        consumer.assign(tps)
        if from_beginning:
            await consumer.seek_to_beginning(*tps)
        else:
            # Explicit offsets, not a lazy reset: nothing produced from now on is missed.
            for tp, offset in (await consumer.end_offsets(tps)).items():
                consumer.seek(tp, offset)
        where = "the beginning" if from_beginning else "now"
        err.write(f"tail: {topic} on {settings.broker_url}, from {where}; Ctrl-C stops\n")
        err.flush()

        console = None
        renderer = None
        sink = None
        if as_json:
            sink = getattr(out, "buffer", None)
        else:
            from rich.console import Console

            console = Console(file=out, highlight=False, emoji=False, soft_wrap=True)
            renderer = Renderer(kind)

        while not stop.is_set():
            if max_records is not None and printed >= max_records:
                break
            wait_ms = POLL_MS
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                wait_ms = max(1, min(POLL_MS, int(left * 1000)))
            batches = await consumer.getmany(timeout_ms=wait_ms, max_records=1000)
            if not batches:
                continue
            for m in _merge(batches):
                if m.value is None:  # a tombstone: nothing to show
                    continue
                if sink is not None:
                    sink.write(m.value + b"\n")
                elif as_json:
                    out.write(m.value.decode("utf-8", "replace") + "\n")
                else:
                    assert renderer is not None and console is not None
                    for line in renderer.lines(m.value, m.timestamp):
                        console.print(line)
                printed += 1
                if max_records is not None and printed >= max_records:
                    break
            (sink or out).flush()
    finally:
        await consumer.stop()
    return printed


def run(settings: Settings, kind: str, options: TailOptions) -> int:
    """The ``tail`` command: returns the exit code (0 also after Ctrl-C or a closed pipe)."""
    # aiokafka logs every failed connection attempt; the command says it once, in one line.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        await tail(settings, kind, options, stop=stop)
        return 0

    try:
        return asyncio.run(main())
    except TailError as exc:
        print(f"sessionizer: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # before the handlers were installed
        return 0
    except BrokenPipeError:
        # `sessionizer tail ... | head`: the reader left; that is a normal end.
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return 0
