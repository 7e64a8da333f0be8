"""How a command that talks to the broker ends: one line on stderr and its exit code."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

_T = TypeVar("_T")

INTERRUPTED = 130  # 128 + SIGINT, what a shell shows for Ctrl-C


@dataclass(frozen=True)
class Failed:
    """The command ended early with this exit code; its line is already on stderr."""

    code: int


def run_main(
    main: Coroutine[Any, Any, _T],
    failing: str,
    *,
    own: tuple[type[Exception], ...] = (),
) -> _T | Failed:
    """``asyncio.run(main)``. On Ctrl-C: "interrupted", 130. On a broker or network
    error: "``failing``: the error", 1. An ``own`` error is its own message: it, 1."""
    from aiokafka.errors import KafkaError

    try:
        return asyncio.run(main)
    except KeyboardInterrupt:
        print("sessionizer: interrupted", file=sys.stderr)
        return Failed(INTERRUPTED)
    except own as exc:
        print(f"sessionizer: {exc}", file=sys.stderr)
        return Failed(1)
    except (KafkaError, OSError, asyncio.TimeoutError) as exc:
        print(f"sessionizer: {failing}: {str(exc) or type(exc).__name__}", file=sys.stderr)
        return Failed(1)
