"""``sessionizer demo``: broker, worker, live traffic and a live view of the sessions.

The embedded broker runs in this process's care, the worker as a subprocess in
its own process group (so a terminal's Ctrl-C reaches only us and we stop
things in order: traffic, worker, broker). Ctrl-C, SIGTERM, SIGHUP and a stdout
whose reader went away (``make run | tee log``, then Ctrl-C) all stop it that
way. Traffic is workload.py's devices replayed against the wall clock, so
sessions open and close while you watch.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import os
import re
import secrets
import select
import signal
import stat
import subprocess
import sys
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import codec, procs
from ..core.config import MINUTE_MS
from ..procs import free_port, port_busy
from ..settings import Settings
from .traffic import LiveTraffic, devices_for_rate

__all__ = ["DEMO_TIMINGS", "LiveTraffic", "Output", "Stats", "StopSignals", "run"]

# Demo-friendly timings (by setting), used unless the user sets them (--config or environment).
DEMO_TIMINGS = {"timeout": "2m", "grace": "10s", "idle_timeout": "5s"}
# workload.py draws its gaps around a 30 min timeout: we replay it this much faster
# than real time so that the demo's timeout means the same to its devices.
WORKLOAD_TIMEOUT_MS = 30 * MINUTE_MS
STOP_TIMEOUT_S = 10.0
SUMMARY_EVERY_S = 5.0


# --------------------------------------------------------------------------- what comes out


class _Rate:
    """Events per second over the last few seconds, from a running total."""

    def __init__(self, window_s: float = 5.0) -> None:
        self.window_s = window_s
        self.samples: deque[tuple[float, int]] = deque()

    def sample(self, now: float, total: int) -> float:
        s = self.samples
        s.append((now, total))
        while len(s) > 2 and now - s[1][0] >= self.window_s:
            s.popleft()
        t0, n0 = s[0]
        return (total - n0) / (now - t0) if now > t0 else 0.0


INTEGRATION = "integration:"  # OutputReader's kind of an integration topic: + its name


@dataclass
class Stats:
    """Everything the view shows, updated from the producer and the output topics."""

    started: float = field(default_factory=time.monotonic)
    records_in: int = 0
    events_in: int = 0
    events_out: int = 0
    sessions_started: int = 0
    revised: int = 0
    worker: str = "starting"
    web: str = ""  # the worker's web URL: /health, /metrics, /sessions/{app}/{device}
    partitions: str = ""  # the worker's partitions, from its ready line
    ended_by_reason: Counter[str] = field(default_factory=Counter)
    dead_letters: Counter[str] = field(default_factory=Counter)
    # Each enabled integration -> records written to its topic; its dead letters.
    integrations: dict[str, int] = field(default_factory=dict)
    integration_dead: Counter[str] = field(default_factory=Counter)
    open: dict[str, dict[str, Any]] = field(default_factory=dict)
    recent: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=10))
    rate_in: _Rate = field(default_factory=_Rate)
    rate_out: _Rate = field(default_factory=_Rate)

    @property
    def ended(self) -> int:
        return sum(self.ended_by_reason.values())

    def on_ready(self, line: str) -> bool:
        """Takes the worker's ready line; True when it was one."""
        m = READY.search(line)
        if m is None:
            return False
        self.partitions, self.web = m.group(1), m.group(3)
        return True

    def on_produced(self, records: int, events: int) -> None:
        self.records_in, self.events_in = records, events

    def on_output(self, kind: str, value: bytes | None) -> None:
        if self.worker == "starting":
            self.worker = "running"
        if kind.startswith(INTEGRATION):
            name = kind[len(INTEGRATION) :]
            self.integrations[name] = self.integrations.get(name, 0) + 1
            return
        if value is None:
            return
        try:
            obj = codec.loads(value)
        except codec.JSONDecodeError:
            return
        if type(obj) is not dict:
            return
        if kind == "events":
            evs = obj.get("events")
            if type(evs) is list:
                self.events_out += len(evs)
            elif obj.get("event_type") not in ("session_start", "session_end"):
                self.events_out += 1  # synthesized session events are not traffic
        elif kind == "sessions":
            self._on_session(obj)
        else:
            self.dead_letters[str(obj.get("reason"))] += 1
            dest = obj.get("destination")  # an integration's (docs/integrations.md)
            if isinstance(dest, str):
                self.integration_dead[dest] += 1

    def _on_session(self, rec: dict[str, Any]) -> None:
        uuid = rec.get("session_uuid")
        if not isinstance(uuid, str):
            return
        if rec.get("record") == "session_start":
            self.sessions_started += 1
            self.open[uuid] = rec
        elif rec.get("record") == "session_end":
            self.open.pop(uuid, None)
            if rec.get("revision"):
                self.revised += 1
            else:
                self.ended_by_reason[str(rec.get("end_reason"))] += 1
            self.recent.appendleft(rec)

    def integrations_line(self) -> str:
        """What each enabled integration has produced: records of its topic, dead letters."""
        if not self.integrations:
            return "integrations: none enabled (setting integrations)"
        parts = []
        for name, n in self.integrations.items():
            dead = self.integration_dead.get(name, 0)
            parts.append(f"{name} {n:,}" + (f" ({dead:,} dead letters)" if dead else ""))
        return "integrations (records written): " + ", ".join(parts)

    def rates(self, now: float) -> tuple[float, float]:
        return self.rate_in.sample(now, self.events_in), self.rate_out.sample(now, self.events_out)

    def summary(self) -> str:
        reasons = " ".join(f"{k}={v}" for k, v in sorted(self.ended_by_reason.items()))
        dead = " ".join(f"{k}={v}" for k, v in sorted(self.dead_letters.items()))
        return (
            f"{self.events_in:,} events in, {self.events_out:,} out; "
            f"{self.sessions_started} sessions started, {len(self.open)} open, "
            f"{self.ended} ended{f' ({reasons})' if reasons else ''}, {self.revised} revised; "
            f"{sum(self.dead_letters.values())} dead letters{f' ({dead})' if dead else ''}"
            + (f"; {self.integrations_line()}" if self.integrations else "")
        )

    def line(self, now: float) -> str:
        r_in, r_out = self.rates(now)
        return (
            f"[{_clock(now - self.started)}] worker {self.worker}, "
            f"{r_in:,.0f} events/s in, {r_out:,.0f} out; {self.summary()}"
        )


def _clock(secs: float) -> str:
    m, s = divmod(int(secs), 60)
    return f"{m}:{s:02d}"


def _dur(ms: Any) -> str:
    if not isinstance(ms, int):
        return "-"
    m, s = divmod(ms // 1000, 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"


def _attrs(attrs: Any) -> str:
    if not isinstance(attrs, dict) or not attrs:
        return ""
    return ", ".join(f"{k}={v}" for k, v in attrs.items())


def _start_ms(rec: dict[str, Any]) -> int:
    ms = rec.get("start_unixtime_ms")
    return ms if isinstance(ms, int) else 0


def _hhmmss(ms: Any) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ms / 1000)) if isinstance(ms, int) else "-"


def render(stats: Stats, now: float, broker: str, height: int = 40) -> Any:
    from rich.console import Group
    from rich.markup import escape
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    r_in, r_out = stats.rates(now)
    worker = stats.worker + (" (it takes a while to join)" if stats.worker == "starting" else "")
    dead = ", ".join(f"{k} {v}" for k, v in stats.dead_letters.most_common()) or "none"
    web = (
        f"worker web [bold]{escape(stats.web)}[/] (/health, /metrics, /sessions/APP/DEVICE)"
        + (f", partitions {escape(stats.partitions)}" if stats.partitions else "")
        if stats.web
        else "worker web: waiting for its ready line"
    )
    head = (
        f"broker [bold]{broker}[/] · worker [bold]{worker}[/] · up {_clock(now - stats.started)}"
        " · [dim]Ctrl-C stops[/]\n"
        f"{web}\n"
        f"in [bold green]{r_in:,.0f}[/] events/s ({stats.events_in:,}) · "
        f"out [bold green]{r_out:,.0f}[/] events/s ({stats.events_out:,}) · "
        f"sessions [bold]{len(stats.open)}[/] open, [bold]{stats.ended}[/] ended, "
        f"{stats.revised} revised · dead letters {dead}\n"
        f"{escape(stats.integrations_line())}"
    )
    # Panel, two tables' chrome and the footer take 17 lines; rows share the rest.
    rows = max(2, height - 17)
    n_open = min(6, rows * 2 // 5)
    n_ended = min(10, rows - n_open)
    opened = Table(title=f"Open sessions: {len(stats.open)} (most recent)", expand=True)
    for col, width in (("started", 8), ("device", 13), ("app", 12), ("#", 3), ("mpid", 20)):
        opened.add_column(col, no_wrap=True, min_width=width)
    newest = heapq.nlargest(n_open, stats.open.values(), key=_start_ms)
    for rec in newest:
        opened.add_row(
            _hhmmss(rec.get("start_unixtime_ms")),
            Text(str(rec.get("device"))[:13]),
            Text(str(rec.get("app"))),
            str(rec.get("session_number")),
            str(rec.get("mpid")),
        )
    ended = Table(title="Recently ended sessions", expand=True)
    for col, width in (("ended", 8), ("device", 13), ("app", 12), ("reason", 8)):
        ended.add_column(col, no_wrap=True, min_width=width)
    ended.add_column("duration", no_wrap=True, min_width=8, justify="right")
    ended.add_column("events", no_wrap=True, min_width=6, justify="right")
    # The one column that gives way on narrow terminals.
    ended.add_column("attributes", no_wrap=True, overflow="ellipsis", ratio=1)
    for rec in itertools.islice(stats.recent, n_ended):
        reason = str(rec.get("end_reason"))
        if rec.get("revision"):
            reason += f" (rev {rec['revision']})"
        ended.add_row(
            _hhmmss(rec.get("end_unixtime_ms")),
            Text(str(rec.get("device"))[:13]),
            Text(str(rec.get("app"))),
            reason,
            _dur(rec.get("session_duration_ms")),
            str(rec.get("event_count")),
            Text(_attrs(rec.get("session_attributes"))),  # user data: no markup
        )
    reasons = ", ".join(f"{k} {v}" for k, v in stats.ended_by_reason.most_common())
    return Group(
        Panel(head, title="sessionizer demo", border_style="blue"),
        opened,
        ended,
        f"ended by reason: {reasons or '-'}",
    )


# --------------------------------------------------------------------------- processes


class Worker:
    """The worker subprocess, in its own process group."""

    def __init__(self, proc: subprocess.Popen[bytes], log_path: Path) -> None:
        self.proc = proc
        self.log_path = log_path

    @classmethod
    def start(cls, args: list[str], env: dict[str, str], log_path: Path) -> Worker:
        # Dies with us even if we are SIGKILLed: at once, its state is in our temporary directory.
        proc = procs.spawn(args, log_path, env=env, die_with_parent=signal.SIGKILL)
        return cls(proc, log_path)

    async def stop(self, timeout: float = STOP_TIMEOUT_S) -> int:
        return await procs.stop_async(self.proc, timeout=timeout) or 0

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


READY = re.compile(r"sessionizer worker ready: partitions (\[[^\]]*\]) of (\S+); web (\S+)")


class WorkerLog:
    """The worker's log file, read as it grows, for its ready lines (docs/operations.md)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.pos = 0
        self.partial = b""

    def new_lines(self) -> list[str]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.pos)
                data = f.read(1 << 20)
        except OSError:
            return []
        self.pos += len(data)
        *lines, self.partial = (self.partial + data).split(b"\n")
        return [line.decode("utf-8", "replace").rstrip("\r") for line in lines]

    def ready_lines(self) -> list[str]:
        """The ready lines written since the last call, without anything around them."""
        found = (READY.search(line) for line in self.new_lines())
        return [m.group(0) for m in found if m is not None]


class OutputReader:
    """A group-less consumer of the output topics (the three, and the enabled
    integrations'), from their end at start-up."""

    def __init__(self, settings: Settings, stats: Stats) -> None:
        t = settings.topics
        self.kinds = {t.sessionized_events: "events", t.sessions: "sessions"}
        self.kinds[t.dead_letters] = "dead"
        for name in settings.integrations:
            self.kinds[t.integration(name)] = INTEGRATION + name
        self.settings = settings
        self.stats = stats
        self.consumer: Any = None

    async def start(self) -> None:
        from aiokafka import AIOKafkaConsumer

        from ..kafka.clients import reader_options, topic_partitions

        c = AIOKafkaConsumer(**reader_options(self.settings), enable_auto_commit=False)
        await c.start()
        self.consumer = c
        tps = []
        for topic in self.kinds:
            tps += await topic_partitions(c, topic)
        c.assign(tps)
        # Only this run's outputs: an existing broker may hold older ones.
        for tp, offset in (await c.end_offsets(tps)).items():
            c.seek(tp, offset)

    async def run(self) -> None:
        on_output = self.stats.on_output
        kinds = self.kinds
        while True:
            batches = await self.consumer.getmany(timeout_ms=250, max_records=5000)
            for tp, msgs in batches.items():
                kind = kinds[tp.topic]
                for m in msgs:
                    on_output(kind, m.value)

    async def stop(self) -> None:
        if self.consumer is not None:
            await self.consumer.stop()


# --------------------------------------------------------------------------- the demo


@dataclass
class Options:
    duration: float | None = None
    rate: float = 50.0
    view: bool = True
    seed: int | None = None
    config: str | None = None
    # On a user's broker: the prefix of every topic and group the demo uses; its
    # topics are deleted when it stops.
    own_prefix: str | None = None


def demo_env(config: str | None, base: dict[str, str]) -> dict[str, str]:
    """``base`` plus the demo's timings where neither it nor the config file sets them."""
    from ..settings import env_var, load_settings

    env = dict(base)
    current = load_settings(config, env=env)
    for key, value in DEMO_TIMINGS.items():
        if not current.is_set(key):
            env[env_var(key)] = value
    return env


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class StopSignals:
    """SIGINT, SIGTERM and SIGHUP (a closed terminal) all stop the demo, in order.

    Before the event loop runs, the first one raises KeyboardInterrupt so that
    the broker start unwinds; while it runs, they set its stop event (a plain
    handler, not ``loop.add_signal_handler``: closing the loop would reset that
    to the default action, which kills us with the broker still running).
    Once stopping, further ones are ignored so they cannot cut the clean-up short.
    """

    def __init__(self) -> None:
        self.received: str | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._stopping = False
        self._saved: dict[int, Any] = {}

    def install(self) -> None:
        for sig in STOP_SIGNALS:
            self._saved[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)
        self._saved.clear()

    def attach(self, loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
        self._loop, self._stop = loop, stop

    def detach(self) -> None:
        self._loop = self._stop = None
        self._stopping = True

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is None:
            self.received = signal.Signals(signum).name
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closing
                loop.call_soon_threadsafe(stop.set)
        elif not self._stopping:
            self._stopping = True
            raise KeyboardInterrupt


class Output:
    """The demo's stdout and stderr, which may go away under it.

    A reader that exits (``make run | tee``, then Ctrl-C; ``| head``) makes
    writes fail with EPIPE, a closed terminal with EIO. Either must not stop the
    clean-up half way: the stream is sent to /dev/null and ``on_lost`` asks
    the demo to stop.
    """

    def __init__(self) -> None:
        self.lost: set[int] = set()
        self.on_lost: Callable[[], None] = lambda: None

    def say(self, text: str, *, err: bool = False) -> None:
        stream = sys.stderr if err else sys.stdout
        try:
            print(text, file=stream, flush=True)
        except OSError:
            self.lose(2 if err else 1)

    def lose(self, fd: int) -> None:
        if fd not in self.lost:
            self.lost.add(fd)
            with contextlib.suppress(OSError):
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, fd)
                os.close(devnull)
        self.on_lost()

    def watch(self, loop: asyncio.AbstractEventLoop) -> Callable[[], None]:
        """Notice a pipe's reader leaving at once, not at the next write; returns the undo."""
        watched: list[int] = []
        if not sys.platform.startswith("linux"):
            return lambda: None
        for fd in (1, 2):
            try:
                if not stat.S_ISFIFO(os.fstat(fd).st_mode):
                    continue
                # epoll reports EPOLLERR on a pipe's write end once no reader is left.
                loop.add_reader(fd, self._check_pipe, loop, fd)
            except (OSError, ValueError):
                continue
            watched.append(fd)

        def undo() -> None:
            for fd in watched:
                loop.remove_reader(fd)

        return undo

    def _check_pipe(self, loop: asyncio.AbstractEventLoop, fd: int) -> None:
        poller = select.poll()
        poller.register(fd, 0)
        gone = any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poller.poll(0))
        loop.remove_reader(fd)  # level-triggered: once is all we need
        if gone:
            self.lose(fd)


async def _every(secs: float, fn: Callable[[], None], stop: asyncio.Event) -> None:
    while not stop.is_set():
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), secs)
        fn()


async def run_demo(
    settings: Settings,
    env: dict[str, str],
    opts: Options,
    data_dir: Path,
    *,
    out: Output | None = None,
    signals: StopSignals | None = None,
) -> int:
    """Worker, traffic and view until ``opts.duration``, a stop signal or a lost stdout.

    Returns the exit code. The worker is a ``procs`` child: ``procs.kill_all()``
    kills it whatever happens here.
    """
    from ..kafka.clients import ensure_topics

    out = out or Output()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    if signals is not None:
        signals.attach(loop, stop)
    out.on_lost = stop.set
    unwatch = out.watch(loop)
    try:
        stats = Stats(integrations=dict.fromkeys(settings.integrations, 0))
        await ensure_topics(settings)
        reader = OutputReader(settings, stats)
        await reader.start()
        web_port = free_port()
        args = [sys.executable, "-m", "sessionizer", "worker", "--broker", settings.broker_url]
        args += ["--app-id", settings.app_id, "--web-port", str(web_port)]
        if opts.config:
            args += ["--config", opts.config]
        worker = Worker.start(args, env, data_dir / "worker.log")
        web = f"http://{settings.web_host}:{web_port}"
        try:
            failure = await _supervise(settings, opts, stats, reader, worker, stop, out, web)
        finally:
            why = signals.received if signals is not None and signals.received else ""
            out.say(f"demo: {why + ', ' if why else ''}stopping the worker...")
            worker_rc = await worker.stop()
            await reader.stop()
            if opts.own_prefix:
                await delete_own_topics(settings, opts.own_prefix, out)
    finally:
        unwatch()
        if signals is not None:
            signals.detach()
    if failure:
        out.say(f"demo: {failure}", err=True)
        if failure.startswith("worker"):
            out.say(f"demo: worker exited with {worker_rc}; its log ends with:", err=True)
            out.say(worker.log_tail(), err=True)
    out.say(f"demo: ran {_clock(time.monotonic() - stats.started)}; {stats.summary()}")
    return 1 if failure else 0


async def delete_own_topics(settings: Settings, prefix: str, out: Output) -> None:
    """Deletes the topics whose names start with ``prefix`` (the demo's, on a user's broker)."""
    from aiokafka.admin import AIOKafkaAdminClient

    from ..kafka.clients import client_options

    admin = AIOKafkaAdminClient(**client_options(settings), request_timeout_ms=10_000)
    mine: list[str] = []
    try:
        await asyncio.wait_for(admin.start(), 15)
        mine = sorted(t for t in await admin.list_topics() if t.startswith(prefix))
        if mine:
            await asyncio.wait_for(admin.delete_topics(mine), 30)
        out.say(f"demo: deleted its topics {', '.join(mine) or '(none)'}")
    except Exception as exc:  # the user's cluster may forbid deletes: say what is left
        out.say(
            f"demo: could not delete its topics ({exc or type(exc).__name__}); "
            f"delete the topics starting with {prefix} yourself",
            err=True,
        )
    finally:
        with contextlib.suppress(Exception):
            await admin.close()


async def _supervise(
    settings: Settings,
    opts: Options,
    stats: Stats,
    reader: OutputReader,
    worker: Worker,
    stop: asyncio.Event,
    out: Output,
    web: str,
) -> str:
    """Runs traffic and view until told to stop; what failed, or "" for a normal stop."""
    from .produce import produce_records

    speed = WORKLOAD_TIMEOUT_MS / settings.engine.timeout_ms
    traffic = LiveTraffic(devices_for_rate(opts.rate, speed), speed=speed, seed=opts.seed)
    broker = ",".join(settings.broker_hosts)
    out.say(
        f"demo: broker {broker}, worker pid {worker.proc.pid} (app id {settings.app_id}, "
        f"log {worker.log_path}, web {web}), {traffic.devices} devices, "
        f"session timeout {settings.engine.timeout_ms / 1000:g} s"
    )
    if opts.own_prefix:
        t = settings.topics
        out.say(
            f"demo: on your broker it uses only its own topics ({t.raw_events}, "
            f"{t.sessionized_events}, {t.sessions}, {t.dead_letters}, {t.opt_out_control}) "
            f"and group {settings.app_id}, and deletes them when it stops"
        )
    worker_log = WorkerLog(worker.log_path)
    stats.web = web

    def ready_lines() -> None:
        for line in worker_log.ready_lines():
            stats.on_ready(line)
            if live is None:  # the live view shows it in its header
                out.say(f"demo: {line}")

    producer = produce_records(
        settings, traffic.records(), progress=stats.on_produced, create_topics=False
    )
    tasks = {
        "producer": asyncio.create_task(producer),
        "output reader": asyncio.create_task(reader.run()),
        "worker": asyncio.create_task(procs.wait_async(worker.proc, poll=0.2)),
    }
    live: Any = None
    if opts.view:
        from rich.live import Live

        # Refreshed by our ticker only: a refresh thread's write error would go unseen.
        live = Live(render(stats, time.monotonic(), broker), auto_refresh=False)
        try:
            live.start(refresh=True)
        except OSError:
            out.lose(1)

        def tick() -> None:
            ready_lines()
            if 1 in out.lost:
                return
            try:
                live.update(
                    render(stats, time.monotonic(), broker, live.console.height), refresh=True
                )
            except OSError:
                out.lose(1)
    else:

        def tick() -> None:
            ready_lines()
            out.say(stats.line(time.monotonic()))

    ticker = asyncio.create_task(_every(0.5 if live else SUMMARY_EVERY_S, tick, stop))
    stopper = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait(
            [*tasks.values(), stopper], timeout=opts.duration, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        stop.set()
        for task in (*tasks.values(), ticker, stopper):
            task.cancel()
        await asyncio.gather(*tasks.values(), ticker, stopper, return_exceptions=True)
        if live is not None:
            tick()
            try:
                live.stop()
            except OSError:
                out.lose(1)
    for name, task in tasks.items():
        if task.done() and not task.cancelled():
            exc = task.exception()
            return f"{name} stopped unexpectedly" + (f": {exc!r}" if exc else "")
    return ""


def run(
    broker_url: str | None,
    *,
    port: int | None = None,
    config: str | None = None,
    duration: float | None = None,
    rate: float = 50.0,
    view: bool | None = None,
    seed: int | None = None,
) -> int:
    """The ``demo`` command: returns the exit code."""
    if view is None:
        view = sys.stdout.isatty()
    opts = Options(duration=duration, rate=rate, view=view, seed=seed, config=config)
    signals = StopSignals()
    signals.install()  # before anything starts: a stop signal at any point unwinds
    try:
        return _run(broker_url, port, opts, signals)
    except KeyboardInterrupt:
        return 0
    finally:
        signals.restore()


def _run(broker_url: str | None, port: int | None, opts: Options, signals: StopSignals) -> int:
    from aiokafka.errors import KafkaError

    from ..settings import env_var, load_settings
    from .broker import BrokerError, BrokerUnavailable, EmbeddedBroker, PortInUse

    out = Output()
    with (
        procs.tied_tempdir("sessionizer-demo-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        env = demo_env(opts.config, dict(os.environ))
        env[env_var("data_dir")] = str(tmp)
        env.setdefault(env_var("app_id"), f"sessionizer-demo-{os.getpid()}-{int(time.time())}")
        if broker_url is not None:
            # A user's broker: its live topics and groups are not ours to touch.
            opts.own_prefix = f"sessionizer-demo-{secrets.token_hex(4)}"
            env.update(own_topics_env(load_settings(opts.config, env=env), opts.own_prefix))
        if broker_url is None:
            if port is None:
                port = 0 if port_busy(9092) else 9092
            broker = EmbeddedBroker("127.0.0.1", port)
            # Registered before start(): an interrupt while it waits for readiness
            # must still stop the process it spawned.
            stack.callback(broker.stop)
            try:
                broker.start()
            except PortInUse as err:
                out.say(f"sessionizer demo: --port: {err}", err=True)
                return 2  # a usage error (§9)
            except (BrokerError, BrokerUnavailable) as err:
                out.say(f"sessionizer: {err}", err=True)
                return 1
            broker_url = broker.url
        # Runs before the broker stops: whatever went wrong, no worker outlives us.
        stack.callback(procs.kill_all)
        settings = load_settings(opts.config, env=env, broker_url=broker_url)
        try:
            return asyncio.run(run_demo(settings, env, opts, tmp, out=out, signals=signals))
        except (KafkaError, OSError, asyncio.TimeoutError) as err:
            out.say(f"sessionizer: cannot use the broker {broker_url}: {err}", err=True)
            return 1
        finally:
            signals.detach()  # stopping now: later signals must not cut the clean-up short


def own_topics_env(settings: Settings, prefix: str) -> dict[str, str]:
    """Environment that moves every topic and the group of the demo under ``prefix``."""
    from ..settings import env_var, setting_values

    topics = setting_values(settings.topics)
    env = {env_var(key): f"{prefix}.{name}" for key, name in topics.items()}
    # Faust names its changelog and assignor topics after the app id: the same prefix.
    env[env_var("app_id")] = prefix
    return env
