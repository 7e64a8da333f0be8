"""exits.run_main: the one way produce and replay end on an interrupt or a broker error."""

from __future__ import annotations

import pytest
from aiokafka.errors import KafkaConnectionError

from sessionizer.exits import Failed, run_main


class OwnError(Exception):
    pass


async def _raise(exc: BaseException) -> int:
    raise exc


async def _value() -> int:
    return 7


def test_the_coroutine_s_value_when_it_succeeds() -> None:
    assert run_main(_value(), "unused") == 7


@pytest.mark.parametrize(
    ("exc", "code", "line"),
    [
        (KeyboardInterrupt(), 130, "sessionizer: interrupted"),
        (KafkaConnectionError("no broker"), 1, "sessionizer: replay failed on B: "),
        (OSError("refused"), 1, "sessionizer: replay failed on B: refused"),
        # A bare timeout has no message: its type name says what happened.
        (TimeoutError(), 1, "sessionizer: replay failed on B: TimeoutError\n"),
        (OwnError("topic t does not exist"), 1, "sessionizer: topic t does not exist"),
    ],
)
def test_one_line_and_the_exit_code(
    capsys: pytest.CaptureFixture[str], exc: BaseException, code: int, line: str
) -> None:
    assert run_main(_raise(exc), "replay failed on B", own=(OwnError,)) == Failed(code)
    err = capsys.readouterr().err
    assert err.startswith(line) and err.count("\n") == 1


def test_anything_else_is_not_caught() -> None:
    with pytest.raises(ValueError):
        run_main(_raise(ValueError("a bug")), "unused")
