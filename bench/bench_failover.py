"""Failover benchmark: how long a killed worker's partitions wait, with and without standbys.

    python bench/bench_failover.py [--devices 200000] [--standby 0,1] [--store memory]

For each ``standby_replicas`` setting (``SESSIONIZER_STANDBY_REPLICAS``), on a fresh
embedded broker: two workers in one group (same app id, 8 partitions, each its own
data directory) read one upload from each of N devices (bench_state's ``uploads()``:
every device then has an open session), until the group has committed the whole
input and both workers are idle again (a standby has caught up with the other's
changelog). Then one worker is SIGKILLed and a probe record is sent at once to one of
its partitions. From the kill, in the survivor's log and ``/metrics``:

* **rebalance**: it gives up its partitions (aiokafka's "Revoking previously assigned
  partitions"): the group noticed the death, after the dead member's session timeout
  (``broker_session_timeout``, 10 s);
* **assigned**: it has its new assignment ("Setting newly assigned partitions"): the
  rejoin, which Tansu holds for half the session timeout (docs/broker.md);
* **ready**: it announces all 8 partitions (``sessionizer worker ready: partitions``),
  after Faust's table recovery;
* **restored**: the engine of every partition it took over is rebuilt (its
  ``restored N keys`` lines);
* **processing**: the probe is processed (the survivor's ``sessionizer_records_in``
  passes its value from before the kill).

Also per worker: RSS and CPU seconds from start to idle (what a standby costs), keys
held, and where the survivor's recovery of each changelog partition started (Faust's
"Reading Starts At - Active" table) against the partition's end. The wall clock is
kept out of event time (``SESSIONIZER_IDLE_TIMEOUT=24h``), as in bench_state. Prints
a table and one ``BENCH_FAILOVER {json}`` line per setting.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench_state import SPREAD_MS, START_MS, upload, uploads
from common import (
    CpuSampler,
    Names,
    Worker,
    cpu_seconds,
    create_topics,
    dir_bytes,
    embedded_broker,
    metric_sum,
    produce,
    rss_bytes,
    run_rounds,
    running,
    scrape,
    wait_committed,
)

SESSION_TIMEOUT_S = 10.0  # FAUST_TUNING's broker_session_timeout (sessionizer/stream/compat.py)
READY = re.compile(r"sessionizer worker ready: partitions \[([\d, ]*)\]")
RESTORED = re.compile(r"partition (\d+): restored (\d+) keys")
REVOKING = "Revoking previously assigned partitions"
ASSIGNED = "Setting newly assigned partitions"


def partitions_of(log: str) -> list[int] | None:
    """The partitions of a worker's last ready line, None before its first."""
    lines = READY.findall(log)
    if not lines:
        return None
    return [int(p) for p in lines[-1].split(",") if p.strip()]


def probe_key(partition: int, partitions: int, tag: str) -> bytes:
    """A device id that the default partitioner (murmur2, as produce()) puts in ``partition``."""
    from aiokafka.partitioner import DefaultPartitioner

    every = list(range(partitions))
    for i in range(100_000):
        key = f"probe-{tag}-{i}".encode()
        if DefaultPartitioner()(key, every, every) == partition:
            return key
    raise RuntimeError(f"no probe key for partition {partition}")


@dataclass
class Held:
    """What one worker held before the kill."""

    tag: str
    partitions: list[int] = field(default_factory=list)
    rss_mib: float | None = None
    cpu_s: float | None = None  # from start until both workers were idle
    keys: float = 0
    records_in: float = 0
    data_mib: float | None = None  # store=rocksdb


@dataclass
class Failover:
    standby: int
    store: str
    devices: int
    load_s: float = 0.0  # first record produced -> all committed
    idle_s: float = 0.0  # all committed -> both workers idle
    workers: list[Held] = field(default_factory=list)
    killed: str = ""
    dead_partitions: list[int] = field(default_factory=list)
    probe_partition: int | None = None
    # Seconds from the SIGKILL:
    rebalance: float | None = None
    assigned: float | None = None
    ready: float | None = None
    restored: float | None = None
    processing: float | None = None
    keys_restored: int = 0  # of the partitions taken over
    keys_after: float | None = None  # the survivor's keys once it processes the probe
    rss_after_mib: float | None = None
    # Changelog partition -> (last offset read before the survivor's recovery, last offset).
    recovery_reads: dict[int, tuple[int, int]] = field(default_factory=dict)
    loadavg_before: tuple[float, float, float] | None = None
    loadavg_after: tuple[float, float, float] | None = None
    machine_cores_load: float | None = None  # while the workers loaded the input
    machine_cores_failover: float | None = None  # from the kill to processing
    note: str = ""

    def changelog_read(self, taken_over: bool) -> int | None:
        """Records the survivor's recovery read from the changelog partitions it took over
        (``taken_over``) or from its own."""
        dead = set(self.dead_partitions)
        reads = [
            max(0, last - start)
            for p, (start, last) in self.recovery_reads.items()
            if (p in dead) == taken_over
        ]
        return sum(reads) if self.recovery_reads else None


def mib(v: int | None) -> float | None:
    return None if v is None else round(v / 2**20, 1)


async def until_idle(wps: list[Worker], timeout: float, below: float = 0.1) -> float:
    """Waits until every worker used less than ``below`` cores over 2 s; the seconds waited."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        before = [cpu_seconds(wp.proc.pid if wp.proc else None) for wp in wps]
        await asyncio.sleep(2)
        after = [cpu_seconds(wp.proc.pid if wp.proc else None) for wp in wps]
        if all(
            a is not None and b is not None and (a - b) / 2 < below
            for a, b in zip(after, before, strict=True)
        ):
            return time.monotonic() - t0
    raise TimeoutError(f"workers not idle after {timeout:.0f} s")


async def settled_assignment(wps: list[Worker], partitions: int, timeout: float) -> list[list[int]]:
    """Each worker's partitions once they cover all, disjoint, unchanged for 3 s."""
    t0 = time.monotonic()
    last: list[list[int] | None] = []
    since = time.monotonic()
    while time.monotonic() - t0 < timeout:
        for wp in wps:
            if wp.proc is not None and wp.proc.poll() is not None:
                raise RuntimeError(f"{wp.log_path.name}: exited\n{wp.log()[-2000:]}")
        now = [partitions_of(wp.log()) for wp in wps]
        if now != last:
            last, since = now, time.monotonic()
        got = [p for p in now if p is not None]
        flat = sorted(x for p in got for x in p)
        stable = time.monotonic() - since >= 3
        if stable and len(got) == len(wps) and flat == list(range(partitions)):
            return [list(p) for p in got]
        await asyncio.sleep(0.2)
    raise TimeoutError(f"no stable assignment of {partitions} partitions: {last}")


async def watch_failover(
    res: Failover, wp: Worker, log_from: int, t_kill: float, baseline: float, partitions: int
) -> None:
    """Follows the survivor from the kill until it processed the probe (or 15 min)."""
    assert wp.proc is not None
    seen: dict[int, int] = {}
    dead = set(res.dead_partitions)
    deadline = t_kill + 900
    while time.monotonic() < deadline:
        if wp.proc.poll() is not None:
            res.note = f"survivor exited ({wp.proc.returncode})"
            return
        with open(wp.log_path, "rb") as f:
            f.seek(log_from)
            log = f.read().decode(errors="replace")
        now = time.monotonic() - t_kill
        if res.rebalance is None and REVOKING in log:
            res.rebalance = now
        if res.assigned is None and ASSIGNED in log:
            res.assigned = now
        mine = partitions_of(log)
        if res.ready is None and mine is not None and len(mine) == partitions:
            res.ready = now
        if res.ready is not None:
            # Only lines after the ready line: the rebuilds of the new assignment.
            after = log[log.rfind("sessionizer worker ready: partitions") :]
            for m in RESTORED.finditer(after):
                seen[int(m[1])] = int(m[2])
            if res.restored is None and dead <= set(seen):
                res.restored = now
                res.keys_restored = sum(seen[p] for p in dead)
        if res.restored is not None:
            try:
                text, _ = await asyncio.to_thread(scrape, wp.web_port, 60)
            except OSError:
                text = ""
            if metric_sum(text, "sessionizer_records_in_total") >= baseline + 1:
                res.processing = time.monotonic() - t_kill
                res.keys_after = metric_sum(text, "sessionizer_state_keys")
                res.rss_after_mib = mib(rss_bytes(wp.proc.pid))
                res.recovery_reads = recovery_starts(log, set(range(partitions)))
                return
        await asyncio.sleep(0.05)
    res.note = "probe not processed 15 min after the kill"


def log_table(log: str, title: str) -> dict[int, int]:
    """Partition -> number of the last Faust log table ``title`` (topic, partition, number)."""
    at = log.rfind("+" + title)
    out: dict[int, int] = {}
    if at < 0:
        return out
    for line in log[at:].splitlines()[1:]:
        if not line.startswith(("|", "+")):
            break
        cells = [c.strip() for c in line.strip("|+ ").split("|")]
        if len(cells) == 3 and cells[1].isdigit() and cells[2].lstrip("-").isdigit():
            out[int(cells[1])] = int(cells[2])
    return out


def recovery_starts(log: str, partitions: set[int]) -> dict[int, tuple[int, int]]:
    """(last offset already read, last offset) of each changelog partition in the last
    recovery (Faust's highwater - 1: Tansu under-reports it, but the marker is written last
    and alone)."""
    starts = log_table(log, "Reading Starts At - Active")
    ends = log_table(log, "Highwater - Active")
    return {p: (starts[p], ends.get(p, -1)) for p in sorted(partitions) if p in starts}


async def bench_one(args: argparse.Namespace, standby: int, work: Path, say: Any) -> Failover:
    res = Failover(standby, args.store, args.devices)
    names = Names(f"failover-s{standby}-{int(time.time()) % 100_000}")
    env = {
        "SESSIONIZER_STORE": args.store,
        "SESSIONIZER_IDLE_TIMEOUT": "24h",
        "SESSIONIZER_STANDBY_REPLICAS": str(standby),
    }
    tags = ("a", "b")
    with embedded_broker(work / f"broker-s{standby}.log") as broker:
        bootstrap = broker.bootstrap
        topic = names.topics["raw_events"]
        await create_topics(bootstrap, [topic], args.partitions)
        wps = [
            Worker(bootstrap, names, work, partitions=args.partitions, env=env, tag=t) for t in tags
        ]
        sampler = CpuSampler({"broker": broker.pid, **{t: None for t in tags}})
        sampling = asyncio.create_task(sampler.run(0.5))
        try:
            async with running(*wps, timeout=300, clean=False, stop_timeout=120):
                for t, wp in zip(tags, wps, strict=True):
                    assert wp.proc is not None
                    sampler.pids[t] = wp.proc.pid
                parts = await settled_assignment(wps, args.partitions, 300)
                say(f"standby={standby}: workers ready, partitions {parts}; producing")
                t0 = time.monotonic()
                w0 = time.time()
                ends = await produce(bootstrap, topic, uploads(args.devices))

                def alive() -> str | None:
                    for wp in wps:
                        code = wp.proc.poll() if wp.proc else None
                        if code is not None:
                            return f"{wp.log_path.name}: exited ({code})"
                    return None

                await wait_committed(
                    bootstrap, names.app_id, topic, ends, alive=alive, timeout=7200
                )
                res.load_s = time.monotonic() - t0
                res.machine_cores_load = sampler.cores(None, w0, time.time())
                res.idle_s = await until_idle(wps, 1800)
                say(
                    f"standby={standby}: {args.devices:,} records applied and committed in "
                    f"{res.load_s:.0f} s; workers idle {res.idle_s:.0f} s later"
                )
                now_parts = [partitions_of(wp.log()) for wp in wps]
                if now_parts != parts:
                    res.note = f"reassigned while loading: {parts} -> {now_parts}; "
                    parts = [p or [] for p in now_parts]
                for t, wp, p in zip(tags, wps, parts, strict=True):
                    assert wp.proc is not None
                    text, _ = await asyncio.to_thread(scrape, wp.web_port, 120)
                    data = Path(wp.env["SESSIONIZER_DATA_DIR"])
                    res.workers.append(
                        Held(
                            t,
                            p,
                            mib(rss_bytes(wp.proc.pid)),
                            cpu_seconds(wp.proc.pid),
                            metric_sum(text, "sessionizer_state_keys"),
                            metric_sum(text, "sessionizer_records_in_total"),
                            mib(dir_bytes(data))
                            if args.store == "rocksdb" and data.exists()
                            else None,
                        )
                    )
                # Kill the one with partitions (both have 4 when the group is balanced).
                victim = 1 if parts[1] else 0
                dead, survivor = wps[victim], wps[1 - victim]
                res.killed = tags[victim]
                res.dead_partitions = sorted(parts[victim])
                res.probe_partition = res.dead_partitions[0]
                key = probe_key(res.probe_partition, args.partitions, f"s{standby}")
                value = upload(random.Random(standby), 0, key.decode(), START_MS + SPREAD_MS)
                baseline = res.workers[1 - victim].records_in
                log_from = survivor.log_path.stat().st_size
                res.loadavg_before = os.getloadavg()
                w_kill = time.time()
                t_kill = time.monotonic()
                dead.kill()
                await produce(bootstrap, topic, [(key, value)])
                await watch_failover(res, survivor, log_from, t_kill, baseline, args.partitions)
                res.loadavg_after = os.getloadavg()
                res.machine_cores_failover = sampler.cores(None, w_kill, time.time())
                say(
                    f"standby={standby}: killed {res.killed} {res.dead_partitions}; from the kill: "
                    f"rebalance {fmt(res.rebalance)} s, assigned {fmt(res.assigned)} s, "
                    f"ready {fmt(res.ready)} s, restored {fmt(res.restored)} s "
                    f"({res.keys_restored:,} keys), processing {fmt(res.processing)} s {res.note}"
                )
        finally:
            sampling.cancel()
    return res


# ------------------------------------------------------------------ report


def fmt(v: float | None, spec: str = ".1f") -> str:
    return "n/a" if v is None else format(v, spec)


def between(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else b - a


def rounded(v: Any) -> Any:
    """``v`` with its floats to 3 decimals, for the BENCH line."""
    if isinstance(v, float):
        return round(v, 3)
    if isinstance(v, dict):
        return {k: rounded(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [rounded(x) for x in v]
    return v


def report(results: list[Failover], say: Any) -> None:
    from rich.table import Table

    r0 = results[0]
    t = Table(
        title=f"bench-failover: {r0.devices:,} devices, 2 workers, store={r0.store}, "
        f"session timeout {SESSION_TIMEOUT_S:.0f} s"
    )
    t.add_column("")
    for r in results:
        t.add_column(f"standby_replicas={r.standby}", justify="right")

    def row(label: str, f: Any) -> None:
        t.add_row(label, *(f(r) for r in results))

    row("load: produce → all committed (s)", lambda r: f"{r.load_s:.0f}")
    row("committed → both workers idle (s)", lambda r: f"{r.idle_s:.0f}")
    row(
        "RSS per worker before the kill (MiB)",
        lambda r: " / ".join(fmt(w.rss_mib, ",.0f") for w in r.workers),
    )
    row(
        "CPU s per worker, start → idle",
        lambda r: " / ".join(fmt(w.cpu_s, ",.0f") for w in r.workers),
    )
    if r0.store == "rocksdb":
        row(
            "data dir per worker (MiB)",
            lambda r: " / ".join(fmt(w.data_mib, ",.0f") for w in r.workers),
        )
    row("keys per worker (engines)", lambda r: " / ".join(f"{w.keys:,.0f}" for w in r.workers))
    row("killed (its partitions)", lambda r: f"{r.killed} {r.dead_partitions}")
    row("kill → rebalance (s)", lambda r: fmt(r.rebalance))
    row("rebalance → assigned (s)", lambda r: fmt(between(r.rebalance, r.assigned)))
    row("assigned → ready line (recovery, s)", lambda r: fmt(between(r.assigned, r.ready)))
    row("ready → engines restored (s)", lambda r: fmt(between(r.ready, r.restored)))
    row("restored → probe processed (s)", lambda r: fmt(between(r.restored, r.processing)))
    row("[bold]kill → probe processed (s)[/]", lambda r: f"[bold]{fmt(r.processing)}[/]")
    row("rebalance → probe processed (s)", lambda r: fmt(between(r.rebalance, r.processing)))
    row(
        "changelog records recovery read: taken over / own",
        lambda r: f"{fmt(r.changelog_read(True), ',.0f')} / {fmt(r.changelog_read(False), ',.0f')}",
    )
    row(
        "keys restored (taken over) / held after",
        lambda r: f"{r.keys_restored:,} / {fmt(r.keys_after, ',.0f')}",
    )
    row("survivor RSS after (MiB)", lambda r: fmt(r.rss_after_mib, ",.0f"))
    row(
        "machine cores used: load / failover",
        lambda r: f"{fmt(r.machine_cores_load, '.2f')} / {fmt(r.machine_cores_failover, '.2f')}",
    )
    row(
        "load average 1/5/15 min at the kill",
        lambda r: " ".join(f"{x:.2f}" for x in r.loadavg_before) if r.loadavg_before else "n/a",
    )
    row("notes", lambda r: r.note)
    say(t)
    for r in results:
        d = asdict(r)
        d["changelog_read_taken_over"] = r.changelog_read(True)
        d["changelog_read_own"] = r.changelog_read(False)
        d["kill_to_rebalance_s"] = r.rebalance
        d["rebalance_to_processing_s"] = between(r.rebalance, r.processing)
        d["cpus"] = os.cpu_count()
        print("BENCH_FAILOVER " + json.dumps(rounded(d), separators=(",", ":")), flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--devices", type=int, default=200_000)
    ap.add_argument(
        "--standby", default="0,1", help="comma-separated standby_replicas values to compare"
    )
    ap.add_argument("--store", choices=("memory", "rocksdb"), default="memory")
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--out", help="keep logs and data here (default: a temporary directory)")
    args = ap.parse_args(argv)
    try:
        settings = [int(s) for s in args.standby.split(",") if s.strip()]
    except ValueError:
        ap.error("--standby takes integers >= 0, e.g. 0,1")
    if not settings or any(s < 0 for s in settings):
        ap.error("--standby takes integers >= 0, e.g. 0,1")

    return run_rounds(
        "bench-failover-",
        args.out,
        settings,
        lambda r, work, say: bench_one(args, r, work, say),
        report,
        header=f"[dim]{os.cpu_count()} cores, load average {os.getloadavg()}[/]",
    )


if __name__ == "__main__":
    sys.exit(main())
