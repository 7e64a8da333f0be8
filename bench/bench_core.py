"""Core benchmark: `sessionizer process-file` against a plain orjson passthrough.

    python bench/bench_core.py [--events 500000] [--events-per-record 3] [--out DIR]

Both sides run as subprocesses over the same cached workload file and are
timed from start to finish, so interpreter start-up and file I/O weigh the
same on both; each side also reports its in-process time when it can. Best of
``--reps`` runs counts. Exit status 1 when process-file misses the target
ratio (or fails), so CI can gate on it.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "bench" / "data"
TARGET_RATIO = 0.4

# The bench runs from a checkout; the engine and generator come from it.


# ------------------------------------------------------------------ workload


def workload_file(
    events: int, devices: int, apps: int, seed: int, upload_ms: int | None = None
) -> tuple[Path, dict[str, Any]]:
    """The cached workload and its meta; regenerated when the generator's source changes.
    ``upload_ms``: every device's SDK upload interval (None: the generator's defaults)."""
    from sessionizer.tools import workload

    src = Path(inspect.getfile(workload)).read_bytes()
    tag = hashlib.sha1(src).hexdigest()[:10]
    up = "" if upload_ms is None else f"-u{upload_ms}"
    path = DATA / f"workload-e{events}-d{devices}-a{apps}-s{seed}{up}-{tag}.jsonl"
    meta_path = path.with_suffix(".meta.json")
    if path.exists() and meta_path.exists():
        return path, json.loads(meta_path.read_text())
    DATA.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    t0 = time.perf_counter()
    records = workload.generate_to_file(
        tmp, events, devices=devices, apps=apps, seed=seed, upload_ms=upload_ms
    )
    gen_s = time.perf_counter() - t0
    meta = {
        "records": records,
        "events": _count_events(tmp),
        "bytes": tmp.stat().st_size,
        "generate_s": round(gen_s, 3),
    }
    os.replace(tmp, path)  # atomic: an interrupted run never leaves a half file in the cache
    meta_path.write_text(json.dumps(meta))
    return path, meta


def _count_events(path: Path) -> int:
    """Events a decoder can see (cut-off records hide theirs), the rate's denominator."""
    n = 0
    with open(path, "rb") as f:
        for line in f:
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                ev = obj.get("events")
                n += len(ev) if isinstance(ev, list) else int("event_type" in obj)
    return n


# ------------------------------------------------------------------ baseline


def passthrough(src: str, dst: str) -> float:
    """Read lines, orjson.loads, orjson.dumps, write JSONL: process-file's I/O shape."""
    loads = orjson.loads
    dumps = orjson.dumps
    opt = orjson.OPT_APPEND_NEWLINE
    decode_error = orjson.JSONDecodeError
    t0 = time.perf_counter()
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        write = fout.write
        for line in fin:
            line = line.rstrip(b"\r\n")
            if not line:
                continue
            try:
                obj = loads(line)
            except decode_error:
                continue
            write(dumps(obj, option=opt))
    return time.perf_counter() - t0


# ------------------------------------------------------------------ runs


class Run:
    def __init__(self, wall_s: float, inproc_s: float | None, out: str, ok: bool) -> None:
        self.wall_s = wall_s
        self.inproc_s = inproc_s
        self.out = out
        self.ok = ok


def _timed(cmd: list[str]) -> Run:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    out = proc.stdout + proc.stderr
    return Run(wall, _inproc_seconds(proc.stdout), out, proc.returncode == 0)


_ELAPSED_KEYS = (("elapsed_s", 1.0), ("seconds", 1.0), ("duration_s", 1.0), ("time_s", 1.0))
_ELAPSED_MS_KEYS = ("elapsed_ms", "duration_ms", "time_ms")
_ELAPSED_RE = re.compile(r"(?:elapsed|took)\D{0,10}?([0-9]+(?:\.[0-9]+)?)\s*(ms|s)\b", re.I)


def _inproc_seconds(stdout: str) -> float | None:
    """The process's own timing, if it printed one (JSON key or 'elapsed 1.2 s')."""
    for obj in _json_lines(stdout):
        for key, scale in _ELAPSED_KEYS:
            if isinstance(obj.get(key), (int, float)):
                return float(obj[key]) * scale
        for key in _ELAPSED_MS_KEYS:
            if isinstance(obj.get(key), (int, float)):
                return float(obj[key]) / 1000
    m = _ELAPSED_RE.search(stdout)
    if m:
        return float(m.group(1)) / (1000 if m.group(2).lower() == "ms" else 1)
    return None


def _json_lines(text: str) -> list[dict[str, Any]]:
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                obj = json.loads(line)
                if isinstance(obj, dict):
                    found.append(obj)
    return found


def run_baseline(path: Path, work: Path) -> Run:
    return _timed(
        [sys.executable, __file__, "--passthrough", str(path), str(work / "passthrough.jsonl")]
    )


def run_process_file(path: Path, work: Path, *extra: str, name: str = "process-file") -> Run:
    out = work / name
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "sessionizer", "process-file", str(path), "--out", str(out)]
    return _timed([*cmd, *extra])


def hot_path() -> str:
    """What the process-file runs execute: compiled, sources or pure (sessionizer/_native.py)."""
    cmd = [sys.executable, "-m", "sessionizer", "--version"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False).stdout
    m = re.search(r"\((compiled|sources|pure)\)", out)
    return m.group(1) if m else "unknown"


def state_stats(path: Path, work: Path) -> tuple[dict[str, Any] | None, str]:
    """Bytes per open session: the CLI's --state-stats, else files.state_stats, else n/a."""
    run = run_process_file(path, work, "--keep-open", "--state-stats", name="state-stats")
    if run.ok:
        for obj in _json_lines(run.out):
            stats = obj.get("state_stats", obj)
            if isinstance(stats, dict) and "bytes_per_open_session" in stats:
                return stats, "cli --state-stats"
    try:
        from sessionizer.run import files
    except ImportError:
        return None, "n/a (no sessionizer.run.files)"
    if not hasattr(files, "state_stats"):
        return None, "n/a (no files.state_stats)"
    fn: Callable[..., dict[str, Any]] = files.state_stats
    params = list(inspect.signature(fn).parameters.values())
    # The function has taken either a path or an engine that has run with --keep-open.
    if params and params[0].name == "engine" and hasattr(files, "process_files"):
        engine, _ = files.process_files([str(path)], work / "state-stats", keep_open=True)
        return fn(engine), "files.state_stats(engine)"
    return fn(str(path)), "files.state_stats(path)"


# ------------------------------------------------------------------ report


def _eps(events: int, seconds: float | None) -> float | None:
    return events / seconds if seconds else None


def _fmt_eps(v: float | None) -> str:
    return "n/a" if v is None else f"{v:,.0f}"


def _fmt_s(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _best(runs: list[Run], attr: str) -> float | None:
    vals = [getattr(r, attr) for r in runs if r.ok and getattr(r, attr) is not None]
    return min(vals) if vals else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=500_000)
    ap.add_argument(
        "--events-per-record",
        type=float,
        default=3.0,
        help="SDK upload interval set to give ~this many events per record (3: mobile SDK "
        "uploads, like bench-stream; 7.8 or more: the generator's default intervals)",
    )
    ap.add_argument("--devices", type=int, default=5000)
    ap.add_argument("--apps", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--target", type=float, default=TARGET_RATIO)
    ap.add_argument("--out", default=None, help="work dir for outputs (default: a temp dir)")
    ap.add_argument("--no-state-stats", action="store_true", help="skip bytes per open session")
    ap.add_argument("--passthrough", nargs=2, metavar=("SRC", "DST"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.passthrough:
        # Child mode: the baseline, timed in its own interpreter like process-file.
        seconds = passthrough(*args.passthrough)
        print(json.dumps({"elapsed_s": round(seconds, 6)}))
        return 0

    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:
        console = Console(width=120)  # make/CI pipes: keep the table on one line a row
    t0 = time.perf_counter()
    from common import upload_interval

    upload = upload_interval(
        args.events_per_record, args.events, args.devices, args.apps, args.seed
    )
    path, meta = workload_file(args.events, args.devices, args.apps, args.seed, upload)
    cached = time.perf_counter() - t0 < 0.5
    events = int(meta["events"])
    console.print(
        f"workload {path.relative_to(ROOT)}: {meta['records']:,} records, {events:,} events "
        f"({events / max(1, meta['records']):.2f} per record), {meta['bytes'] / 1e6:.1f} MB"
        + (" (cached)" if cached else f" (generated in {meta['generate_s']:.2f} s)")
    )

    tmp = None
    if args.out:
        work = Path(args.out)
        work.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.mkdtemp(prefix="bench-core-")
        work = Path(tmp)
    try:
        base: list[Run] = []
        proc: list[Run] = []
        # Interleaved so that page cache and CPU frequency drift hit both sides alike.
        for i in range(args.reps):
            base.append(run_baseline(path, work))
            proc.append(run_process_file(path, work))
            b, p = base[-1], proc[-1]
            console.print(
                f"rep {i + 1}: baseline {_fmt_s(b.wall_s)} s, process-file "
                + (f"{_fmt_s(p.wall_s)} s" if p.ok else "FAILED"),
                highlight=False,
            )
        stats: dict[str, Any] | None = None
        stats_src = "skipped"
        if not args.no_state_stats:
            try:
                stats, stats_src = state_stats(path, work)
            except Exception as exc:  # a half-written engine must not hide the throughput numbers
                stats, stats_src = None, f"n/a ({type(exc).__name__}: {exc})"
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)

    b_wall, p_wall = _best(base, "wall_s"), _best(proc, "wall_s")
    b_in, p_in = _best(base, "inproc_s"), _best(proc, "inproc_s")
    ratio = b_wall / p_wall if b_wall and p_wall else None
    ratio_in = b_in / p_in if b_in and p_in else None
    passed = ratio is not None and ratio >= args.target

    engine_code = hot_path()
    table = Table(
        title=f"bench-core: {events:,} events, best of {args.reps}, engine: {engine_code}"
    )
    table.add_column("run")
    table.add_column("wall, every run (s)")
    table.add_column("best wall (s)", justify="right")
    table.add_column("events/s", justify="right")
    table.add_column("in-process (s)", justify="right")
    table.add_column("events/s in-proc", justify="right")
    for name, runs, w, inp in (
        ("orjson passthrough", base, b_wall, b_in),
        ("process-file", proc, p_wall, p_in),
    ):
        table.add_row(
            name,
            " ".join(_fmt_s(r.wall_s) if r.ok else "FAILED" for r in runs),
            _fmt_s(w),
            _fmt_eps(_eps(events, w)),
            _fmt_s(inp),
            _fmt_eps(_eps(events, inp)),
        )
    console.print(table)
    verdict = "[green]PASS[/]" if passed else "[red]FAIL[/]"
    console.print(
        f"ratio process-file / baseline: {'n/a' if ratio is None else f'{ratio:.3f}'} (wall), "
        f"{'n/a' if ratio_in is None else f'{ratio_in:.3f}'} (in-process); "
        f"target {args.target} → {verdict}"
    )
    bpos = stats.get("bytes_per_open_session") if stats else None
    console.print(
        f"bytes per open session: {'n/a' if bpos is None else bpos} [dim]({stats_src})[/]"
        + (
            f"; open sessions {stats.get('open_sessions')}, keys {stats.get('keys')}, "
            f"bytes per key {stats.get('bytes_per_key')}"
            if stats
            else ""
        )
    )
    failed = [r for r in proc if not r.ok]
    if failed:
        console.print("[red]process-file failed:[/]", failed[0].out.strip()[-2000:], markup=True)

    summary = {
        "events": events,
        "records": meta["records"],
        "events_per_record": round(events / max(1, meta["records"]), 2),
        "reps": args.reps,
        "baseline_s": b_wall,
        "baseline_eps": _eps(events, b_wall),
        "process_file_s": p_wall,
        "process_file_eps": _eps(events, p_wall),
        "process_file_inproc_s": p_in,
        "ratio": ratio,
        "ratio_inproc": ratio_in,
        "target": args.target,
        "pass": passed,
        "bytes_per_open_session": bpos,
        "hot_path": engine_code,
    }
    # One line for scripts: grep '^BENCH_CORE ' | cut -d' ' -f2- | jq .
    print("BENCH_CORE " + json.dumps(summary, separators=(",", ":")), flush=True)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
