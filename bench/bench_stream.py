"""Stream benchmark: the sessionizer worker against a raw aiokafka passthrough.

    python bench/bench_stream.py [--records 100000] [--events-per-record 3] [--workers 2]
                                 [--broker embedded|kafka|both]

One broker (the embedded one by default; ``kafka``: one Apache Kafka node from
sessionizer/tools/apache_kafka.py; ``both``: the whole run on each, one after the
other, with a side-by-side summary), one synthetic workload (``sessionizer.tools.workload``: mobile
SDK uploads with lifecycle events, background/foreground cycles, attribute
changes, occasional opt-outs, a few late and bad records), keyed by device.
Each pipeline gets its own input topic, filled before it starts, and runs as
its own process:

* **raw** — ``bench/raw_passthrough.py``: aiokafka group consumer → ``orjson.loads``
  → ``orjson.dumps`` → aiokafka producer, committing each fetch: the ceiling for a
  Python client.
* **worker** — ``python -m sessionizer worker`` with its default settings.
* **2 workers** (``--workers 2``) — two such workers in one group, started
  together so they join in one generation, on their own copy of the input.
* **naive Faust** (``--naive``) — ``bench/naive_faust.py`` on a prefix: a
  send and a table write per event, the "per-event tax" reference.

A pipeline's rate runs from the CreateTime of its first output record to that
of its last (for the worker: ``sessionized-events`` and ``dead-letters``, which
it writes as it applies records, up to the moment its group committed the whole
input; idle timers write later). Outputs stamped in the first millisecond are
left out of the count: they stand for input read before the clock started.
CPU (cores, from /proc) of the pipeline's processes, the broker and the whole
machine cover the same span.

Prints records/s and events/s, the worker's ratio to raw (exit status 1 below
``--target``), and one ``BENCH_STREAM k=v ...`` line for scripts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import (
    ROOT,
    CpuSampler,
    Names,
    Rate,
    Worker,
    Workload,
    build_workload,
    create_topics,
    embedded_broker,
    free_port,
    metric_sum,
    produce,
    profile_summary,
    rate,
    read_timestamps,
    scrape,
    wait_committed,
)

from sessionizer import procs

TARGET_RATIO = 0.33  # issue 9: the worker at >= 0.33 of raw, ~3 events per record
EOS_TARGET = 0.8  # exactly once / at least once, issue 21
SPY = ROOT / ".venv" / "bin" / "py-spy"


@dataclass
class Result:
    name: str
    rate: Rate | None = None
    ready_s: float | None = None  # process start -> first output
    cores: dict[str, float | None] = field(default_factory=dict)  # process/broker/machine
    notes: list[str] = field(default_factory=list)
    ok: bool = False
    probes: dict[str, Any] = field(default_factory=dict)  # bench/worker_probe.py summaries

    @property
    def rps(self) -> float:
        return self.rate.records_per_s if self.rate else 0.0

    @property
    def eps(self) -> float:
        return self.rate.events_per_s if self.rate else 0.0

    @property
    def per_cpu_s(self) -> float | None:
        """Records per CPU-second of the pipeline's own processes (not the broker's)."""
        used = [c for k, c in self.cores.items() if k not in ("broker", "machine")]
        if not self.rate or not used or None in used or not sum(used):  # type: ignore[arg-type]
            return None
        return self.rps / sum(used)  # type: ignore[arg-type]


@dataclass
class Ctx:
    args: argparse.Namespace
    bootstrap: str
    broker_pid: int | None
    work: Path
    say: Any
    profiled: bool = False


def env_without_sessionizer() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SESSIONIZER_", "NAIVE_"))}
    return {**env, "PYTHONUNBUFFERED": "1"}


def spawn(cmd: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """A pipeline's process (``sessionizer.procs``: stopped when main() ends, whatever happens)."""
    return procs.spawn(cmd, log, env=env, cwd=ROOT)


async def measure(
    ctx: Ctx,
    res: Result,
    w: Workload,
    *,
    pipeline: dict[str, subprocess.Popen[bytes]],
    started: float,
    group: str,
    in_topic: str,
    ends: dict[int, int],
    out_topics: list[str],
    before_stop: Any = None,
) -> None:
    """Waits for ``group`` to commit the input, stops ``pipeline``, rates their outputs."""
    sampler = CpuSampler({"broker": ctx.broker_pid, **{n: p.pid for n, p in pipeline.items()}})
    task = asyncio.create_task(sampler.run())

    def alive() -> str | None:
        dead = [f"{n} exited ({p.returncode})" for n, p in pipeline.items() if p.poll() is not None]
        return "; ".join(dead) or None

    done_ms = None
    try:
        done = await wait_committed(
            ctx.bootstrap, group, in_topic, ends, alive=alive, timeout=ctx.args.timeout
        )
        done_ms = int(done * 1000)
        res.ok = True
        if before_stop is not None:
            await before_stop()
    except (RuntimeError, TimeoutError) as exc:
        res.notes.append(str(exc))
    finally:
        task.cancel()
        sampler.sample()
        for p in pipeline.values():
            procs.stop(p)
    stamps = await read_timestamps(ctx.bootstrap, out_topics)
    n_out = sum(len(s) for s in stamps.values())
    # Outputs after the input was committed come from timers (R22 idle partitions), not input.
    kept = [t for s in stamps.values() for t in s if done_ms is None or t <= done_ms]
    res.rate = rate(kept, w.records, w.events)
    if res.rate is None:
        res.ok = False
        res.notes.append(f"{n_out} output records: no rate")
        return
    res.ready_s = res.rate.first_ms / 1000 - started
    t0, t1 = res.rate.first_ms / 1000, res.rate.last_ms / 1000
    for name in pipeline:
        res.cores[name] = sampler.cores(name, t0, t1)
    res.cores["broker"] = sampler.cores("broker", t0, t1)
    res.cores["machine"] = sampler.cores(None, t0, t1)


async def fill(ctx: Ctx, topic: str, w: Workload) -> dict[int, int]:
    await create_topics(ctx.bootstrap, [topic], ctx.args.partitions)
    t0 = time.perf_counter()
    ends = await produce(ctx.bootstrap, topic, zip(w.keys, w.values, strict=True))
    ctx.say(f"[dim]  {topic}: {w.records:,} records in {time.perf_counter() - t0:.1f} s[/]")
    return ends


# ------------------------------------------------------------------ raw passthrough


async def run_raw(ctx: Ctx, w: Workload, run: str) -> Result:
    t_in, t_out = f"{run}-raw-in", f"{run}-raw-out"
    ends = await fill(ctx, t_in, w)
    await create_topics(ctx.bootstrap, [t_out], ctx.args.partitions)
    spec = {"bootstrap": ctx.bootstrap, "in": t_in, "out": t_out, "group": f"{run}-raw"}
    spec["records"] = w.records
    cmd = [sys.executable, str(ROOT / "bench" / "raw_passthrough.py"), json.dumps(spec)]
    res = Result("raw")
    started = time.time()
    proc = spawn(cmd, ctx.work / f"{run}-raw.log", env_without_sessionizer())
    await measure(
        ctx,
        res,
        w,
        pipeline={"raw": proc},
        started=started,
        group=spec["group"],
        in_topic=t_in,
        ends=ends,
        out_topics=[t_out],
    )
    return res


# ------------------------------------------------------------------ the worker


def ready_lines(log: str) -> list[str]:
    return [ln for ln in log.splitlines() if ln.startswith("sessionizer worker ready:")]


async def start_py_spy(ctx: Ctx, worker: Worker) -> subprocess.Popen[bytes] | None:
    """py-spy on ``worker`` from its "Ready" on: Faust start-up is not in the profile."""
    while "Worker]: Ready" not in worker.log():
        if worker.proc is None or worker.proc.poll() is not None:
            return None
        await asyncio.sleep(0.05)
    assert worker.proc is not None
    dest = Path(ctx.args.py_spy).resolve()
    cmd = [str(SPY if SPY.exists() else "py-spy"), "record", "--pid", str(worker.proc.pid)]
    cmd += ["--format", "raw", "--output", str(dest)]
    # --native (orjson's frames) needs blocking samples: fewer of them.
    cmd += (
        ["--rate", "100", "--native"]
        if ctx.args.py_spy_native
        else ["--rate", "200", "--nonblocking"]
    )
    ctx.say(f"[dim]  py-spy → {dest}[/]")
    return spawn(cmd, ctx.work / "py-spy.log", env_without_sessionizer())


async def run_workers(
    ctx: Ctx, w: Workload, run: str, n: int, *, exactly_once: bool = False
) -> Result:
    names = Names(f"{run}-ses{n}{'-eos' if exactly_once else ''}")
    t = names.topics
    ends = await fill(ctx, t["raw_events"], w)
    workers = []
    probes = [ctx.work / f"{names.prefix}-w{i}-probe.json" for i in range(n)]
    for i in range(n):
        wrapper = (
            [str(ROOT / "bench" / "worker_probe.py"), str(probes[i])] if ctx.args.probe else None
        )
        wp = Worker(
            ctx.bootstrap,
            names,
            ctx.work,
            partitions=ctx.args.partitions,
            tag=f"w{i}",
            wrapper=wrapper,
        )
        wp.env.update(dict(kv.split("=", 1) for kv in ctx.args.worker_env))
        if exactly_once:
            wp.env["SESSIONIZER_PROCESSING_GUARANTEE"] = "exactly_once"
        workers.append(wp)
    res = Result(
        ("worker" if n == 1 else f"{n} workers") + (", exactly once" if exactly_once else "")
    )
    started = time.time()
    for wp in workers:
        wp.start()
    pipeline = {f"w{i}": wp.proc for i, wp in enumerate(workers) if wp.proc is not None}
    spy_task = None
    if ctx.args.py_spy and n == 1 and not ctx.profiled:
        ctx.profiled = True
        spy_task = asyncio.create_task(start_py_spy(ctx, workers[0]))
    applied: dict[str, float] = {}

    async def before_stop() -> None:
        for i, wp in enumerate(workers):
            try:
                text, _ = await asyncio.to_thread(scrape, wp.web_port)
                applied[f"w{i}"] = metric_sum(text, "sessionizer_records_in_total")
            except OSError:
                pass
        if spy_task is not None:
            spy = await spy_task
            if spy is not None:
                procs.stop(spy, signal.SIGINT, 30)  # py-spy writes its profile on SIGINT

    await measure(
        ctx,
        res,
        w,
        pipeline=pipeline,
        started=started,
        group=names.app_id,
        in_topic=t["raw_events"],
        ends=ends,
        out_topics=[t["sessionized_events"], t["dead_letters"]],
        before_stop=before_stop,
    )
    for i, wp in enumerate(workers):
        lines = ready_lines(wp.log())
        parts = lines[0].split("partitions ", 1)[1].split(" of ")[0] if lines else "?"
        got = applied.get(f"w{i}")
        res.notes.append(
            f"w{i}: partitions {parts}, {'?' if got is None else f'{got:,.0f}'} records"
            + (f", {len(lines)} assignments (rebalanced)" if len(lines) > 1 else "")
        )
        if probes[i].exists():
            res.probes[f"w{i}"] = json.loads(probes[i].read_text())
    return res


def probe_lines(name: str, p: dict[str, dict[str, float]]) -> list[str]:
    """What bench/worker_probe.py saw in one worker, in a few lines."""

    def g(key: str, stat: str = "mean") -> float:
        return p.get(key, {}).get(stat, 0.0)

    batches = g("batch.records", "n") or 1
    busy, idle = g("batch.seconds", "sum"), g("batch.wait_before", "sum")
    return [
        f"{name}: Faust fetches {g('fetch.records', 'n'):,.0f}, {g('fetch.records'):,.0f} records "
        f"each (p50 {g('fetch.records', 'p50'):,.0f}) from {g('fetch.partitions'):.1f} "
        f"partitions, {g('fetch.seconds') * 1000:.1f} ms each",
        f"{name}: batches {batches:,.0f}: {g('batch.records'):,.0f} records (p50 "
        f"{g('batch.records', 'p50'):,.0f}, max {g('batch.records', 'max'):,.0f}) over "
        f"{g('batch.partitions'):.1f} partitions; {g('batch.seconds') * 1000:.1f} ms inside "
        f"(publish {g('publish.seconds', 'sum') / batches * 1000:.1f} ms), "
        f"{g('batch.wait_before') * 1000:.1f} ms waiting before each: "
        f"{busy / max(busy + idle, 1e-9):.0%} of the time in batches",
        f"{name}: sends {g('send.messages', 'n') / batches:.1f} per batch, "
        f"{g('send.messages'):,.0f} messages each, {g('send.seconds') * 1000:.1f} ms each "
        f"until acknowledged ({g('send.seconds', 'sum') / max(busy, 1e-9):.0%} of batch time)",
    ]


# ------------------------------------------------------------------ naive Faust


async def run_naive(ctx: Ctx, w: Workload, run: str) -> Result:
    w = w.prefix(ctx.args.naive_events)
    t_in, t_out = f"{run}-naive-in", f"{run}-naive-out"
    ends = await fill(ctx, t_in, w)
    app_id = f"{run}-naive"
    env = env_without_sessionizer()
    env.update(
        NAIVE_BROKER_URL=f"kafka://{ctx.bootstrap}",
        NAIVE_APP_ID=app_id,
        NAIVE_TOPIC_IN=t_in,
        NAIVE_TOPIC_OUT=t_out,
        NAIVE_PARTITIONS=str(ctx.args.partitions),
        NAIVE_WEB_PORT=str(free_port()),
        NAIVE_DATA_DIR=str(ctx.work / f"{run}-naive-data"),
    )
    cmd = [sys.executable, str(ROOT / "bench" / "naive_faust.py"), "worker", "-l", "info"]
    res = Result(f"naive Faust ({w.events:,} events)")
    started = time.time()
    proc = spawn(cmd, ctx.work / f"{run}-naive.log", env)
    await measure(
        ctx,
        res,
        w,
        pipeline={"naive": proc},
        started=started,
        group=app_id,
        in_topic=t_in,
        ends=ends,
        out_topics=[t_out],
    )
    return res


# ------------------------------------------------------------------ report


def fmt(v: float | None, spec: str = ",.0f") -> str:
    return "n/a" if v is None else format(v, spec)


def report(ctx: Ctx, results: dict[str, list[Result]], w: Workload) -> int:
    from rich.markup import escape
    from rich.table import Table

    a = ctx.args
    best = {k: max(v, key=lambda r: (r.ok, r.rps)) for k, v in results.items()}
    raw, one = best.get("raw"), best.get("worker")
    table = Table(
        title=f"bench-stream: {w.records:,} records, {w.events:,} events "
        f"({w.events / w.records:.2f} per record), {a.partitions} partitions"
        + (f", best of {a.reps}" if a.reps > 1 else "")
    )
    cols = ("pipeline", "s", "records/s", "events/s", "ratio to raw", "records/CPU-s", "ready (s)")
    for col in cols:
        table.add_column(col, justify="left" if col == "pipeline" else "right")
    table.add_column("CPU cores: pipeline / broker / machine", justify="right")
    table.add_column("notes")
    for key, r in best.items():
        ratio = (
            r.rps / raw.rps
            if raw and raw.ok and r.ok and key in ("worker", "workers", "eos")
            else None
        )
        used = [v for k, v in r.cores.items() if k not in ("broker", "machine")]
        cpu = " + ".join(fmt(c, ".2f") for c in used)
        cpu += f" / {fmt(r.cores.get('broker'), '.2f')} / {fmt(r.cores.get('machine'), '.2f')}"
        runs = " ".join(fmt(x.rps) for x in results[key]) if a.reps > 1 else ""
        notes = escape("; ".join(r.notes) + (f" (every run, records/s: {runs})" if runs else ""))
        table.add_row(
            r.name,
            fmt(r.rate.seconds if r.rate else None, ".2f"),
            fmt(r.rps if r.rate else None),
            fmt(r.eps if r.rate else None),
            fmt(ratio, ".3f"),
            fmt(r.per_cpu_s),
            fmt(r.ready_s, ".1f"),
            cpu,
            notes if r.ok else f"[red]FAILED[/] {notes}",
        )
    ctx.say(table)
    two = best.get("workers")
    ratio = one.rps / raw.rps if one and raw and one.ok and raw.ok else None
    scale = two.rps / one.rps if two and one and two.ok and one.ok else None
    passed = ratio is not None and ratio >= a.target
    verdict = "[green]PASS[/]" if passed else "[red]FAIL[/]"
    cpu_ratio = None
    if one and raw and one.per_cpu_s and raw.per_cpu_s:
        cpu_ratio = one.per_cpu_s / raw.per_cpu_s
    ctx.say(
        f"worker / raw: {fmt(ratio, '.3f')} (target {a.target}) → {verdict}; "
        f"per CPU-second of each: {fmt(cpu_ratio, '.3f')}"
    )
    if two:
        ctx.say(f"{a.workers} workers / 1 worker: {fmt(scale, '.2f')} x")
    eos = best.get("eos")
    eos_ratio = eos.rps / one.rps if eos and one and eos.ok and one.ok else None
    if a.exactly_once:
        eos_pass = eos_ratio is not None and eos_ratio >= EOS_TARGET
        passed = passed and eos_pass
        ctx.say(
            f"exactly once / at least once: {fmt(eos_ratio, '.3f')} (target {EOS_TARGET}) → "
            + ("[green]PASS[/]" if eos_pass else "[red]FAIL[/]")
        )
    fields = {
        "records": w.records,
        "events": w.events,
        "events_per_record": f"{w.events / w.records:.2f}",
        "raw_rps": fmt(raw.rps if raw else None, ".0f"),
        "raw_eps": fmt(raw.eps if raw else None, ".0f"),
        "worker_rps": fmt(one.rps if one else None, ".0f"),
        "worker_eps": fmt(one.eps if one else None, ".0f"),
        "ratio": fmt(ratio, ".3f"),
        "cpu_ratio": fmt(cpu_ratio, ".3f"),
        "workers": a.workers,
        "workers_rps": fmt(two.rps if two else None, ".0f"),
        "scale": fmt(scale, ".2f"),
        "eos_rps": fmt(eos.rps if eos else None, ".0f"),
        "eos_ratio": fmt(eos_ratio, ".3f"),
        "target": a.target,
        "pass": str(passed).lower(),
    }
    print("BENCH_STREAM " + " ".join(f"{k}={v}" for k, v in fields.items()), flush=True)
    for r in best.values():
        for name, p in r.probes.items():
            for line in probe_lines(f"{r.name} {name}", p):
                ctx.say(line, markup=False, highlight=False)
    if a.py_spy and Path(a.py_spy).exists():
        cats, leaves = profile_summary(Path(a.py_spy))
        ctx.say("py-spy profile of the worker (on-CPU samples, by category):")
        for name, share in cats:
            ctx.say(f"  {share:6.1%}  {name}")
        ctx.say("top leaf frames:")
        for name, share in leaves:
            ctx.say(f"  {share:6.1%}  {name}", markup=False, highlight=False)
    return 0 if passed else 1


# ------------------------------------------------------------------ main


async def bench(ctx: Ctx, w: Workload) -> dict[str, list[Result]]:
    a = ctx.args
    results: dict[str, list[Result]] = {}
    run_id = f"bench-{int(time.time()) % 1_000_000}"

    def done(key: str, r: Result) -> None:
        results.setdefault(key, []).append(r)
        status = "ok" if r.ok else "[red]FAILED[/]"
        ctx.say(
            f"{r.name}: {fmt(r.rps if r.rate else None)} records/s, "
            f"{fmt(r.eps if r.rate else None)} events/s over "
            f"{fmt(r.rate.seconds if r.rate else None, '.2f')} s — {status} {'; '.join(r.notes)}"
        )

    for rep in range(a.reps):
        run = f"{run_id}-r{rep + 1}"
        if not a.no_raw:
            done("raw", await run_raw(ctx, w, run))
        if a.naive and rep == 0:
            done("naive", await run_naive(ctx, w, run))
        done("worker", await run_workers(ctx, w, run, 1))
        if a.exactly_once:
            done("eos", await run_workers(ctx, w, run, 1, exactly_once=True))
        if a.workers > 1:
            done("workers", await run_workers(ctx, w, run, a.workers))
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--records", type=int, default=100_000, help="about this many input records")
    ap.add_argument("--events", type=int, help="this many events instead (overrides --records)")
    ap.add_argument(
        "--events-per-record", type=float, default=3.0, help="~3: mobile uploads; 8: the old shape"
    )
    ap.add_argument("--workers", type=int, default=1, help="also run N workers in one group")
    ap.add_argument(
        "--exactly-once",
        action="store_true",
        help="also run the worker with processing_guarantee=exactly_once (Kafka only)",
    )
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--devices", type=int, default=5000)
    ap.add_argument("--apps", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--reps", type=int, default=1, help="runs of each pipeline; the best counts")
    ap.add_argument("--target", type=float, default=TARGET_RATIO, help="worker/raw to pass")
    ap.add_argument("--timeout", type=float, default=600, help="bound on each pipeline (s)")
    ap.add_argument("--no-raw", action="store_true", help="skip the raw passthrough")
    ap.add_argument("--naive", action="store_true", help="also run naive Faust on a prefix")
    ap.add_argument("--naive-events", type=int, default=30_000)
    ap.add_argument("--worker-env", action="append", default=[], metavar="K=V")
    ap.add_argument("--probe", action="store_true", help="run workers via bench/worker_probe.py")
    ap.add_argument("--py-spy", metavar="FILE", help="profile the worker (collapsed stacks)")
    ap.add_argument("--py-spy-native", action="store_true", help="with native frames (orjson)")
    ap.add_argument("--out", help="keep logs here (default: a temporary directory)")
    ap.add_argument("--broker", choices=("embedded", "kafka", "both"), default="embedded")
    args = ap.parse_args(argv)
    if any("=" not in kv for kv in args.worker_env):
        ap.error("--worker-env wants K=V")

    from rich.console import Console

    console = Console() if sys.stdout.isatty() else Console(width=220)

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt  # CI cancel: unwind, stopping every child

    signal.signal(signal.SIGTERM, on_term)
    t0 = time.perf_counter()
    events = args.events or round(args.records * args.events_per_record)
    w = build_workload(
        events, args.events_per_record, devices=args.devices, apps=args.apps, seed=args.seed
    )
    upload = "default" if w.upload_ms is None else f"{w.upload_ms / 1000:.0f} s"
    console.print(
        f"workload: {w.records:,} records, {w.events:,} events "
        f"({w.events / w.records:.2f} per record, SDK upload interval {upload}), "
        f"{w.bytes / 1e6:.0f} MB, generated in {time.perf_counter() - t0:.1f} s; "
        f"{os.cpu_count()} cores"
    )
    work = Path(args.out or tempfile.mkdtemp(prefix="bench-stream-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    kinds = ("embedded", "kafka") if args.broker == "both" else (args.broker,)
    status, failed, summary = 0, False, []
    try:
        for kind in kinds:
            with broker_of(kind, work) as (name, bootstrap, pid):
                console.print(f"broker: {name} at {bootstrap} (pid {pid})")
                ctx = Ctx(args, bootstrap, pid, work, console.print)
                try:
                    results = asyncio.run(bench(ctx, w))
                finally:
                    procs.stop_all(timeout=10)
            status |= report(ctx, results, w)
            failed |= any(not r.ok for rs in results.values() for r in rs)
            summary.append((name, results))
    except KeyboardInterrupt:
        console.print(f"[red]interrupted[/]; logs in {work}")
        return 130
    if len(summary) > 1:
        for name, results in summary:
            best = {k: max(v, key=lambda r: (r.ok, r.rps)) for k, v in results.items()}
            raw, one, two = best.get("raw"), best.get("worker"), best.get("workers")
            ratio = one.rps / raw.rps if one and raw and one.ok and raw.ok else None
            scale = two.rps / one.rps if two and one and two.ok and one.ok else None
            console.print(
                f"{name}: raw {fmt(raw.rps if raw else None)} records/s, worker "
                f"{fmt(one.rps if one else None)} records/s, worker/raw {fmt(ratio, '.3f')}"
                + (f", {args.workers} workers / 1: {fmt(scale, '.2f')} x" if two else "")
            )
    if args.out or failed:
        console.print(f"[dim]logs in {work}[/]")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return status


@contextlib.contextmanager
def broker_of(kind: str, work: Path) -> Iterator[tuple[str, str, int | None]]:
    """(name, bootstrap, pid) of a fresh broker of this kind, stopped on the way out."""
    if kind == "embedded":
        with embedded_broker(work / "broker.log") as broker:
            yield "embedded (Tansu)", broker.bootstrap, broker.pid
        return
    from sessionizer.tools.apache_kafka import KafkaCluster, kafka_version

    # Kafka's default initial rebalance delay (the tests' 0 made two workers starting
    # together join in two generations: one took all partitions first).
    delay = {"group.initial.rebalance.delay.ms": "3000"}
    with KafkaCluster(nodes=1, heap_mb=1024, settings=delay, base_dir=work / "kafka") as kafka:
        node = kafka.members[0]
        yield (
            f"Apache Kafka {kafka_version()}",
            kafka.bootstrap,
            node.proc.pid if node.proc else None,
        )


if __name__ == "__main__":
    sys.exit(main())
