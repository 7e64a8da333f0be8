"""State benchmark: worker memory per device and restart time, store=memory vs rocksdb.

    python bench/bench_state.py [--devices 1000000] [--stores memory,rocksdb]

For each store, on a fresh embedded broker, one worker (``SESSIONIZER_STORE``,
its own ``SESSIONIZER_DATA_DIR``) reads one upload from each of N devices
(launch, a screen view, a session attribute; every other device then goes to
the background), so it holds N keys, each with an open session. Then:

* **memory**: the worker's RSS before and after, and (after - before) / N as
  bytes per device, live and once restarted after a SIGTERM (the restored
  worker holds the same state without what loading left behind); the data
  directory's size; the keys and open sessions the
  worker's ``/metrics`` reports, and how long a ``/metrics`` scrape takes.
* **restart**: the worker is stopped (SIGTERM, then in a second round SIGKILL)
  and started again on the same data directory; from the new process's start:
  Faust's ``Worker]: Ready``, the ``sessionizer worker ready: partitions`` line,
  every partition's engine restored (its ``restored N keys`` log line), and a
  new record processed (``sessionizer_records_in`` in ``/metrics``). After a
  SIGKILL the old member never left the group: the new one waits for its
  session timeout (``broker_session_timeout``, 10 s) first, whatever the store.

The wall clock is kept out of event time (``SESSIONIZER_IDLE_TIMEOUT=24h``, no
R22 advance), so no session expires while the bench runs and the state stays
the same across restarts. Prints a table and one ``BENCH_STATE`` line per store.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from common import (
    Names,
    Worker,
    create_topics,
    dir_bytes,
    embedded_broker,
    metric_sum,
    produce,
    rss_bytes,
    run_rounds,
    scrape,
    wait_committed,
)

START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z, as sessionizer.tools.workload
SPREAD_MS = 10 * 60_000  # every device's upload within 10 minutes of event time
APPS = (
    ("shop", "com.example.shop", "iOS"),
    ("news", "com.example.news", "Android"),
    ("fitness", "com.example.fitness", "Android"),
)
API_KEYS = ("5f1e0c2a9b7d4e61", "a03c9e7b12f4d855", "7c2d4b8e90a1f336")
DEVICE_INFO = (
    {"platform": "iOS", "brand": "Apple", "device_model": "iPhone15,2", "os_version": "17.2"},
    {"platform": "Android", "brand": "Google", "device_model": "Pixel 8", "os_version": "14"},
    {"platform": "Android", "brand": "samsung", "device_model": "SM-S911B", "os_version": "14"},
)


def _event(kind: str, ts: int, **data: Any) -> dict[str, Any]:
    return {"event_type": kind, "data": {**data, "timestamp_unixtime_ms": ts}}


def upload(rng: random.Random, i: int, device: str, t: int) -> bytes:
    """Device ``device``'s first upload at event time ``t``: a launch, a screen, an
    attribute and, for every other device, a background."""
    name, package, os_name = APPS[i % len(APPS)]
    events = [
        _event(
            "application_state_transition",
            t,
            application_transition_type="application_initialized",
            is_first_run=True,
        ),
        _event("screen_view", t + 1500, screen_name=rng.choice(("Home", "Feed", "Search"))),
        _event(
            "session_attribute_change",
            t + 2000,
            session_attribute_name="ab_bucket",
            new=rng.choice(("A", "B", "control")),
        ),
    ]
    if i % 2:
        kind = "application_background"
        events.append(
            _event("application_state_transition", t + 9000, application_transition_type=kind)
        )
    record = {
        "events": events,
        "source_request_id": f"{rng.getrandbits(128):032x}",
        "environment": "production",
        "api_key": API_KEYS[i % len(APPS)],
        "mpid": rng.getrandbits(63) or 1,
        "mp_deviceid": device,
        "timestamp_unixtime_ms": t + 9500,
        "application_info": {
            "application_name": name.capitalize(),
            "package": package,
            "application_version": rng.choice(("5.1.0", "5.2.1")),
            "os": os_name,
        },
        "device_info": DEVICE_INFO[i % len(DEVICE_INFO)],
        "schema_version": 2,
    }
    return orjson.dumps(record)


def uploads(n: int, seed: int = 1) -> Iterator[tuple[bytes, bytes]]:
    """(device key, record) of one first upload per device, in event-time order."""
    rng = random.Random(seed)
    for i in range(n):
        h = f"{rng.getrandbits(128):032x}"
        device = f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{h[16:20]}-{h[20:]}"
        yield device.encode(), upload(rng, i, device, START_MS + i * SPREAD_MS // max(1, n))


# ------------------------------------------------------------------ one worker start


@dataclass
class Start:
    """What one (re)start of the worker took, in seconds from its process start."""

    how: str
    stop_s: float | None = None  # SIGTERM until the old process exited
    faust_ready: float | None = None
    ready_line: float | None = None
    restored: float | None = None  # every partition's engine rebuilt
    keys_restored: int = 0
    processing: float | None = None  # a new record processed
    rss: int | None = None  # after the restore
    note: str = ""


RESTORED = re.compile(r"partition (\d+): restored (\d+) keys")


async def watch_start(
    wp: Worker, log_from: int, start: Start, t0: float, partitions: int, probe: Any, stall: float
) -> None:
    """Follows the worker's new log lines and /metrics until it processed a new record.

    ``probe(i)`` sends the i-th new record. When the first is not processed
    ``stall`` seconds after the restore, a second one is sent (and noted).
    """
    assert wp.proc is not None
    seen: dict[int, int] = {}
    probed = False
    second = None
    deadline = time.monotonic() + 1800
    while time.monotonic() < deadline:
        if wp.proc.poll() is not None:
            start.note = f"exited ({wp.proc.returncode})"
            return
        now = time.monotonic() - t0
        with open(wp.log_path, "rb") as f:
            f.seek(log_from)
            log = f.read().decode(errors="replace")
        if start.faust_ready is None and "Worker]: Ready" in log:
            start.faust_ready = now
        if start.ready_line is None and "sessionizer worker ready: partitions" in log:
            start.ready_line = now
        for m in RESTORED.finditer(log):
            seen[int(m[1])] = int(m[2])
        if start.restored is None and len(seen) >= partitions:
            start.restored = now
            start.keys_restored = sum(seen.values())
            start.rss = rss_bytes(wp.proc.pid)
        if start.ready_line is not None and not probed:
            await probe(0)  # one new device, after the assignment: it must be processed
            probed = True
        if start.restored is not None and probed:
            try:
                text, _ = await asyncio.to_thread(scrape, wp.web_port, 60)
            except OSError:
                text = ""
            now = time.monotonic() - t0
            if metric_sum(text, "sessionizer_records_in_total") >= 1:
                start.processing = now
                if second is not None:
                    start.note = (
                        f"STALLED: the record sent at {start.ready_line:.1f} s was not processed "
                        f"until a second one was sent at {second:.1f} s"
                    )
                return
            if second is None and now - start.restored > stall:
                await probe(1)
                second = now
        await asyncio.sleep(0.05)
    start.note = "not processing after 30 min"


# ------------------------------------------------------------------ one store


@dataclass
class StoreResult:
    store: str
    devices: int
    produce_s: float = 0.0
    load_s: float = 0.0  # first record produced -> input committed
    rss_empty: int | None = None
    rss_loaded: int | None = None
    broker_rss: int | None = None
    data_bytes: int = 0
    keys: float = 0
    open_sessions: float = 0
    scrape_s: list[float] = field(default_factory=list)
    scrape_bytes: int = 0
    starts: list[Start] = field(default_factory=list)

    @property
    def per_device(self) -> float | None:
        if self.rss_empty is None or self.rss_loaded is None:
            return None
        return (self.rss_loaded - self.rss_empty) / self.devices

    @property
    def per_device_restored(self) -> float | None:
        """The same, from the restored worker: without what loading left behind."""
        rss = self.starts[0].rss if self.starts else None
        if self.rss_empty is None or rss is None:
            return None
        return (rss - self.rss_empty) / self.devices


async def bench_store(args: argparse.Namespace, store: str, work: Path, say: Any) -> StoreResult:
    res = StoreResult(store, args.devices)
    names = Names(f"state-{store}-{int(time.time()) % 100_000}")
    env = {"SESSIONIZER_STORE": store, "SESSIONIZER_IDLE_TIMEOUT": "24h"}
    with embedded_broker(work / f"broker-{store}.log") as broker:
        bootstrap = broker.bootstrap
        await create_topics(bootstrap, [names.topics["raw_events"]], args.partitions)

        def worker() -> Worker:
            wp = Worker(bootstrap, names, work, partitions=args.partitions, env=env, tag=store)
            return wp

        wp = worker()
        wp.start()
        try:
            await wp.wait_ready(300)
            await asyncio.sleep(2)
            assert wp.proc is not None
            res.rss_empty = rss_bytes(wp.proc.pid)
            say(f"{store}: worker ready, RSS {res.rss_empty / 2**20:.0f} MiB; producing")
            t0 = time.monotonic()
            ends = await produce(bootstrap, names.topics["raw_events"], uploads(args.devices))
            res.produce_s = time.monotonic() - t0
            say(f"{store}: {args.devices:,} records produced in {res.produce_s:.0f} s")

            def alive() -> str | None:
                code = wp.proc.poll() if wp.proc else None
                return None if code is None else f"worker exited ({code})"

            await wait_committed(
                bootstrap, names.app_id, names.topics["raw_events"], ends, alive=alive, timeout=7200
            )
            res.load_s = time.monotonic() - t0
            say(f"{store}: input applied and committed {res.load_s:.0f} s after the first record")
            await asyncio.sleep(3)
            res.rss_loaded = rss_bytes(wp.proc.pid)
            for _ in range(args.scrapes):
                text, took = await asyncio.to_thread(scrape, wp.web_port, 120)
                res.scrape_s.append(took)
                res.scrape_bytes = len(text)
            res.keys = metric_sum(text, "sessionizer_state_keys")
            res.open_sessions = metric_sum(text, "sessionizer_open_sessions")
            for how in ("SIGTERM", "SIGKILL"):
                st = Start(how)
                t_stop = time.monotonic()
                if how == "SIGTERM":
                    wp.terminate(120)
                    st.stop_s = time.monotonic() - t_stop
                else:
                    wp.kill()
                wp = worker()
                log_from = wp.log_path.stat().st_size if wp.log_path.exists() else 0
                t0 = time.monotonic()
                wp.start()

                async def send_probe(i: int, how: str = how) -> None:
                    device = f"probe-{how}-{i}"
                    value = upload(random.Random(i), 0, device, START_MS + SPREAD_MS)
                    await produce(bootstrap, names.topics["raw_events"], [(device.encode(), value)])

                await watch_start(wp, log_from, st, t0, args.partitions, send_probe, args.stall)
                res.starts.append(st)
                say(
                    f"{store}: after {how}: Faust ready {fmt(st.faust_ready)} s, "
                    f"partitions {fmt(st.ready_line)} s, engines restored {fmt(st.restored)} s "
                    f"({st.keys_restored:,} keys), processing {fmt(st.processing)} s {st.note}"
                )
            res.broker_rss = rss_bytes(broker.pid) if broker.pid else None
        finally:
            wp.terminate(120)
    data = Path(wp.env["SESSIONIZER_DATA_DIR"])
    res.data_bytes = dir_bytes(data) if data.exists() else 0
    return res


# ------------------------------------------------------------------ report


def fmt(v: float | None, spec: str = ".1f") -> str:
    return "n/a" if v is None else format(v, spec)


def mib(v: float | None) -> str:
    return "n/a" if v is None else f"{v / 2**20:,.0f}"


def report(results: list[StoreResult], say: Any) -> None:
    from rich.table import Table

    n = results[0].devices
    t = Table(title=f"bench-state: {n:,} devices, one open session each")
    t.add_column("")
    for r in results:
        t.add_column(f"store={r.store}", justify="right")

    def row(label: str, f: Any) -> None:
        t.add_row(label, *(f(r) for r in results))

    row("keys / open sessions in /metrics", lambda r: f"{r.keys:,.0f} / {r.open_sessions:,.0f}")
    row("worker RSS empty → loaded (MiB)", lambda r: f"{mib(r.rss_empty)} → {mib(r.rss_loaded)}")
    row("bytes per device (RSS, live)", lambda r: fmt(r.per_device, ",.0f"))
    row(
        "bytes per device (RSS, after a clean restart)",
        lambda r: fmt(r.per_device_restored, ",.0f"),
    )
    row("data dir on disk (MiB)", lambda r: mib(r.data_bytes))
    row("broker RSS at the end (MiB)", lambda r: mib(r.broker_rss))
    row("load: produce → all committed (s)", lambda r: f"{r.load_s:.0f}")
    row(
        "/metrics scrape (s): median / max",
        lambda r: (
            f"{statistics.median(r.scrape_s):.3f} / {max(r.scrape_s):.3f}" if r.scrape_s else "n/a"
        ),
    )
    for i, how in enumerate(("SIGTERM", "SIGKILL")):

        def get(r: StoreResult, attr: str, i: int = i) -> Any:
            return getattr(r.starts[i], attr) if len(r.starts) > i else None

        if how == "SIGTERM":
            row("clean stop (SIGTERM → exit, s)", lambda r: fmt(get(r, "stop_s")))
        row(
            f"restart after {how} → Faust ready / partitions line (s)",
            lambda r: f"{fmt(get(r, 'faust_ready'))} / {fmt(get(r, 'ready_line'))}",
        )
        row(
            f"restart after {how} → engines restored / processing (s)",
            lambda r: f"{fmt(get(r, 'restored'))} / {fmt(get(r, 'processing'))}",
        )
        row(f"RSS after {how} restart (MiB)", lambda r: mib(get(r, "rss")))
    row("notes", lambda r: "; ".join(f"{s.how}: {s.note}" for s in r.starts if s.note) or "")
    say(t)
    for r in results:
        fields: dict[str, Any] = {
            "store": r.store,
            "devices": r.devices,
            "rss_empty_mib": mib(r.rss_empty).replace(",", ""),
            "rss_loaded_mib": mib(r.rss_loaded).replace(",", ""),
            "bytes_per_device": fmt(r.per_device, ".0f"),
            "bytes_per_device_restored": fmt(r.per_device_restored, ".0f"),
            "data_mib": mib(r.data_bytes).replace(",", ""),
            "scrape_ms": fmt(statistics.median(r.scrape_s) * 1000 if r.scrape_s else None, ".0f"),
        }
        for s in r.starts:
            k = s.how.lower()
            fields[f"{k}_ready_s"] = fmt(s.ready_line)
            fields[f"{k}_restored_s"] = fmt(s.restored)
            fields[f"{k}_processing_s"] = fmt(s.processing)
        print("BENCH_STATE " + " ".join(f"{k}={v}" for k, v in fields.items()), flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--devices", type=int, default=1_000_000)
    ap.add_argument("--stores", default="memory,rocksdb", help="comma-separated")
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--scrapes", type=int, default=5, help="/metrics scrapes to time")
    ap.add_argument(
        "--stall", type=float, default=60, help="s after a restore before a second new record"
    )
    ap.add_argument("--out", help="keep logs and data here (default: a temporary directory)")
    args = ap.parse_args(argv)
    stores = [s for s in args.stores.split(",") if s]
    if any(s not in ("memory", "rocksdb") for s in stores):
        ap.error("--stores takes memory and/or rocksdb")

    return run_rounds(
        "bench-state-",
        args.out,
        stores,
        lambda r, work, say: bench_store(args, r, work, say),
        report,
    )


if __name__ == "__main__":
    sys.exit(main())
