"""How the demo stops, without a broker: stop signals and a stdout that goes away.

tests/integration/test_demo.py stops the real demo each of these ways and checks
that no process it started survives.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from sessionizer.tools.demo import STOP_SIGNALS, StopSignals

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Writes to a stdout whose reader is gone, then keeps talking and exits normally.
WRITE_TO_CLOSED_PIPE = """
import sys
from sessionizer.tools.demo import Output
out = Output()
calls = []
out.on_lost = lambda: calls.append(1)
out.say("hello")
out.say("again")
print("plain print, after the loss")
out.say("to stderr", err=True)
sys.stderr.write(f"lost={sorted(out.lost)} calls={len(calls)}\\n")
"""

# Watches its stdout pipe in an event loop and reports when the reader leaves.
WATCH_PIPE = """
import asyncio, sys, time
from sessionizer.tools.demo import Output

async def main() -> None:
    out = Output()
    lost = asyncio.Event()
    out.on_lost = lost.set
    unwatch = out.watch(asyncio.get_running_loop())
    sys.stderr.write("watching\\n")
    sys.stderr.flush()
    t0 = time.monotonic()
    await asyncio.wait_for(lost.wait(), 10)
    unwatch()
    sys.stderr.write(f"lost={sorted(out.lost)} after={time.monotonic() - t0:.2f}\\n")

asyncio.run(main())
"""


def _python(code: str, stdout: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": ROOT}
    cmd = [sys.executable, "-c", code]
    return subprocess.Popen(cmd, env=env, stdout=stdout, stderr=subprocess.PIPE)


def test_a_lost_stdout_is_silenced_and_reported_once() -> None:
    r, w = os.pipe()
    os.close(r)  # the reader went away before the first line
    proc = _python(WRITE_TO_CLOSED_PIPE, w)
    os.close(w)
    _, err = proc.communicate(timeout=30)
    # No BrokenPipeError, no "Exception ignored" at exit: stdout now goes to /dev/null.
    assert proc.returncode == 0, err
    assert err.decode().splitlines() == ["to stderr", "lost=[1] calls=1"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the pipe watch is Linux only")
def test_a_pipe_reader_leaving_is_noticed_without_a_write() -> None:
    proc = _python(WATCH_PIPE, subprocess.PIPE)
    try:
        assert proc.stderr is not None and proc.stdout is not None
        assert proc.stderr.readline() == b"watching\n"
        time.sleep(0.3)
        proc.stdout.close()
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    line = err.decode().strip()
    assert line.startswith("lost=[1] after="), line
    assert float(line.rpartition("=")[2]) < 2.0


@pytest.fixture
def signals() -> Iterator[StopSignals]:
    s = StopSignals()
    s.install()
    try:
        yield s
    finally:
        s.restore()


def test_signals_installed_and_restored() -> None:
    before = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    s = StopSignals()
    s.install()
    try:
        assert {signal.getsignal(sig) for sig in STOP_SIGNALS} == {s._handle}
    finally:
        s.restore()
    assert {sig: signal.getsignal(sig) for sig in STOP_SIGNALS} == before


@pytest.mark.parametrize("sig", STOP_SIGNALS)
def test_before_the_loop_a_stop_signal_unwinds_then_is_ignored(
    signals: StopSignals, sig: signal.Signals
) -> None:
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), sig)
        time.sleep(1)  # the handler runs between bytecodes
    assert signals.received == sig.name
    # Stopping now: a second one must not cut the clean-up short.
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.05)
    assert signals.received == sig.name


@pytest.mark.parametrize("sig", STOP_SIGNALS)
def test_in_the_loop_a_stop_signal_sets_the_stop_event(
    signals: StopSignals, sig: signal.Signals
) -> None:
    async def main() -> float:
        stop = asyncio.Event()
        signals.attach(asyncio.get_running_loop(), stop)
        t0 = time.monotonic()
        asyncio.get_running_loop().call_later(0.05, os.kill, os.getpid(), sig)
        await asyncio.wait_for(stop.wait(), 5)
        signals.detach()
        return time.monotonic() - t0

    assert asyncio.run(main()) < 2
    assert signals.received == sig.name
    # Detached (the loop is gone): ignored, not raised and not the default action.
    os.kill(os.getpid(), signal.SIGHUP)
    time.sleep(0.05)
    assert signals.received == sig.name
