"""Plain values shared by the engine and its edges: output topics, counts, classes."""

from __future__ import annotations

from typing import Any, Final

# Output topics, as small ints so the hot path compares ints, not strings.
EVENTS: Final = 0
SESSIONS: Final = 1
DEAD_LETTERS: Final = 2
TOPIC_NAMES = ("sessionized-events", "sessions", "dead-letters")

# (topic, key, value): the edge serializes ``value`` once and sends it.
Output = tuple[int, Any, dict[str, Any]]

# Event kinds. Lifecycle kinds are contiguous so ``LAUNCH <= k <= EXIT`` tests them.
ACTIVITY: Final = 0
SCREEN_VIEW: Final = 1
LAUNCH: Final = 2
FOREGROUND: Final = 3
BACKGROUND: Final = 4
EXIT: Final = 5
SESSION_START: Final = 6
SESSION_END: Final = 7
ATTRIBUTE: Final = 8
OPT_OUT: Final = 9
_TRANSITION: Final = -1

EVENT_KINDS: dict[str, int] = {
    "screen_view": SCREEN_VIEW,
    "session_start": SESSION_START,
    "session_end": SESSION_END,
    "session_attribute_change": ATTRIBUTE,
    "opt_out": OPT_OUT,
    "application_state_transition": _TRANSITION,
}
TRANSITION_KINDS: dict[Any, int] = {
    "application_initialized": LAUNCH,
    "application_foreground": FOREGROUND,
    "application_background": BACKGROUND,
    "application_exit": EXIT,
}
TRANSITION: Final = _TRANSITION

END_REASONS = ("timeout", "idle", "relaunch", "exit", "manual", "opt_out", "end_of_input")
DEAD_LETTER_REASONS = (
    "invalid_json",
    "not_an_object",
    "too_large",
    "missing_identity",
    "bad_timestamp",
    "bad_event",
    "bad_opt_out",
    "bad_session_attribute",
)
# §7.3 v2: any unexpected failure while processing a record (a bug, not the input's
# fault). Kept apart from the input reasons above: those are what a record can be
# rejected for, this one is the engine's own failure.
INTERNAL_ERROR: Final = "internal_error"
ALL_DEAD_LETTER_REASONS = (*DEAD_LETTER_REASONS, INTERNAL_ERROR)


class Counts:
    """The §7.4 conservation counts."""

    __slots__ = (
        "dead_by_reason",
        "events_ahead",
        "events_control",
        "events_dead_lettered",
        "events_forwarded",
        "events_in",
        "events_late",
        "events_opted_out",
        "records_dead_lettered",
        "records_in",
        "records_internal_error",
        "records_opted_out",
        "sessions_ended",
        "sessions_revised",
        "sessions_started",
    )

    def __init__(self) -> None:
        self.records_in = 0
        self.records_dead_lettered = 0
        # Whole records of an opted-out key too malformed to split into events.
        self.records_opted_out = 0
        # Records whose processing raised (a bug): dead-lettered whole as
        # internal_error (or, for an opted-out key, dropped as records_opted_out)
        # with the key's state left as it was before the record.
        self.records_internal_error = 0
        self.events_in = 0
        self.events_forwarded = 0
        self.events_control = 0
        self.events_opted_out = 0
        self.events_dead_lettered = 0
        self.events_late = 0
        # R26: events more than grace ahead of the watermark. Not a §7.4 count
        # (not in as_dict): a worker metric.
        self.events_ahead = 0
        self.sessions_started = 0
        self.sessions_revised = 0
        self.sessions_ended: dict[str, int] = dict.fromkeys(END_REASONS, 0)
        self.dead_by_reason: dict[str, int] = dict.fromkeys(ALL_DEAD_LETTER_REASONS, 0)

    def as_dict(self) -> dict[str, Any]:
        return {
            "records_in": self.records_in,
            "records_dead_lettered": self.records_dead_lettered,
            "records_opted_out": self.records_opted_out,
            "records_internal_error": self.records_internal_error,
            "events_in": self.events_in,
            "events_forwarded": self.events_forwarded,
            "events_control": self.events_control,
            "events_opted_out": self.events_opted_out,
            "events_dead_lettered": self.events_dead_lettered,
            "events_late": self.events_late,
            "sessions_started": self.sessions_started,
            "sessions_ended": dict(self.sessions_ended),
            "sessions_revised": self.sessions_revised,
            "dead_letters": dict(self.dead_by_reason),
        }

    def add(self, other: Counts) -> None:
        """Adds another engine's counts (several partitions, one report)."""
        # Spelled out: a compiled class (mypyc) has no __slots__ to walk.
        self.records_in += other.records_in
        self.records_dead_lettered += other.records_dead_lettered
        self.records_opted_out += other.records_opted_out
        self.records_internal_error += other.records_internal_error
        self.events_in += other.events_in
        self.events_forwarded += other.events_forwarded
        self.events_control += other.events_control
        self.events_opted_out += other.events_opted_out
        self.events_dead_lettered += other.events_dead_lettered
        self.events_late += other.events_late
        self.events_ahead += other.events_ahead
        self.sessions_started += other.sessions_started
        self.sessions_revised += other.sessions_revised
        self.sessions_ended = _summed(self.sessions_ended, other.sessions_ended)
        self.dead_by_reason = _summed(self.dead_by_reason, other.dead_by_reason)

    @staticmethod
    def bump(d: dict[str, int], key: str) -> dict[str, int]:
        """``d`` with ``key`` counted once more, as a new dict (copy on write)."""
        d = d.copy()
        d[key] += 1
        return d

    def balanced(self) -> bool:
        """Conservation (§7.4): every decoded event is accounted for exactly once."""
        return self.events_in == (
            self.events_forwarded
            + self.events_control
            + self.events_opted_out
            + self.events_dead_lettered
        )


def _summed(mine: dict[str, int], other: dict[str, int]) -> dict[str, int]:
    out = dict(mine)
    for k, v in other.items():
        out[k] = out.get(k, 0) + v
    return out
