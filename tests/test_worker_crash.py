"""compat.crash: a crashed worker exits non-zero even when Faust's stop hangs."""

from __future__ import annotations

import subprocess
import sys
import textwrap

# A stand-in for the Faust app whose crash never returns, as Faust's graceful
# stop did in CI while it waited for a failed agent's batch to be acknowledged.
_HANGING = textwrap.dedent(
    """
    import asyncio, logging, types
    from sessionizer.stream.compat import crash

    logging.basicConfig(level=logging.INFO)

    class HangingApp:
        conf = types.SimpleNamespace(stream_wait_empty=True)

        async def crash(self, exc):
            assert self.conf.stream_wait_empty is False
            await asyncio.Event().wait()

    asyncio.run(crash(HangingApp(), RuntimeError("boom"), grace_s=0.5))
    """
)


def test_a_crash_whose_stop_hangs_still_ends_the_process_with_code_1() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _HANGING], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1, done.stderr
    assert "did not stop within 0.5 s of its crash; exiting with code 1" in done.stderr
