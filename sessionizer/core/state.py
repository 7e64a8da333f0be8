"""Per-key state: small ``__slots__`` objects, snapshot to and from plain lists.

A snapshot is a JSON-compatible list so the edge can store it with the one
orjson wrapper; the core itself never serializes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

# Session.status
OPEN: Final = 0
EXPIRED: Final = 1  # closed by the watermark; R21 may still reopen it
CLOSED: Final = 2  # final: ended by an event, or followed by a later session

# Session.lc: the latest effective lifecycle event (R3-R5)
LC_NONE: Final = 0
LC_FG: Final = 1  # launch or foreground
LC_BG: Final = 2

SNAPSHOT_VERSION: Final = 1


class Session:
    __slots__ = (
        "attrs",
        "bg_since",
        "bg_total",
        "deadline",
        "emitted",
        "events",
        "ident",
        "last_ts",
        "lc",
        "mpid",
        "mpids",
        "number",
        "prev_uuid",
        "reason",
        "screens",
        "sid",
        "start",
        "status",
        "uuid",
    )

    def __init__(
        self,
        uuid: str,
        sid: int,
        number: int,
        start: int,
        deadline: int,
        mpid: Any,
        ident: Sequence[Any],
        prev_uuid: str | None,
    ) -> None:
        self.uuid = uuid
        self.sid = sid
        self.number = number
        self.start = start
        self.last_ts = start  # largest ts of a forwarded event; the session's end (R9)
        self.deadline = deadline
        self.reason: str | None = None
        self.lc = LC_NONE
        self.bg_since = -1  # start of the pending background, -1 when in foreground
        self.bg_total = 0
        self.events = 0
        self.screens = 0
        # lower-case name -> [first spelling, value] (R15); None while empty
        self.attrs: dict[str, list[Any]] | None = None
        self.mpid = mpid
        self.mpids: list[Any] = [] if mpid is None else [mpid]
        self.ident = ident  # batch identity of the latest record that fed the session
        self.prev_uuid = prev_uuid
        self.emitted = 0  # session_end emissions so far; the next one's revision
        self.status = OPEN

    def foreground_ms(self) -> int:
        end = self.last_ts
        bg = self.bg_total + (end - self.bg_since if self.bg_since >= 0 else 0)
        fg = end - self.start - bg
        return fg if fg > 0 else 0

    def attributes(self) -> dict[str, Any]:
        if not self.attrs:
            return {}
        return {name: value for name, value in self.attrs.values()}

    def copy(self) -> Session:
        """A copy to change instead of this one (copy on write, see ``save_key``)."""
        # Through the snapshot: one list of every field, and compiled classes
        # (mypyc, docs/performance.md) have no __new__ or __slots__ to copy by.
        c = Session.restore(self.snapshot())
        c.attrs = self.attrs  # shared: replaced, never changed in place (_set_attr)
        c.mpids = list(self.mpids)  # grows in place
        return c

    def snapshot(self) -> list[Any]:
        return [
            self.uuid,
            self.sid,
            self.number,
            self.start,
            self.last_ts,
            self.deadline,
            self.reason,
            self.lc,
            self.bg_since,
            self.bg_total,
            self.events,
            self.screens,
            list(self.attrs.values()) if self.attrs else None,
            self.mpid,
            self.mpids,
            self.ident,
            self.prev_uuid,
            self.emitted,
            self.status,
        ]

    @classmethod
    def restore(cls, v: list[Any]) -> Session:
        s = cls("", 0, 0, 0, 0, None, (), None)  # every field is set below
        (
            s.uuid,
            s.sid,
            s.number,
            s.start,
            s.last_ts,
            s.deadline,
            s.reason,
            s.lc,
            s.bg_since,
            s.bg_total,
            s.events,
            s.screens,
            attrs,
            s.mpid,
            s.mpids,
            s.ident,
            s.prev_uuid,
            s.emitted,
            s.status,
        ) = v
        s.attrs = {str(a[0]).lower(): [a[0], a[1]] for a in attrs} if attrs else None
        return s


class KeyState:
    __slots__ = (
        "activity",
        "app",
        "counter",
        "device",
        "floor",
        "hdue",
        "key",
        "last",
        "open",
        "opted",
        "seq",
    )

    def __init__(self, key: str, app: str, device: str) -> None:
        self.key = key
        self.app = app
        self.device = device
        # The latest session while it may still grow: open, or expired but reopenable.
        self.open: Session | None = None
        # The last final session, kept for R24 until the next session closes.
        self.last: Session | None = None
        self.counter = 0  # sessions started (R11)
        self.opted = False  # the key's own last opt_out event said so (R17)
        self.activity = 0  # when the key was last heard, for state_ttl (R27)
        # End of the latest session no longer kept: nothing may start or be
        # attributed before it, so a key's sessions never overlap (R9).
        self.floor = 0
        self.seq = -1  # input position of the last record applied (Engine.process_record)
        self.hdue = _NEVER  # due time of this key's live entry in the deadline index

    def retire(self, s: Session) -> None:
        """``s`` becomes the last closed session; the one before it is forgotten."""
        old = self.last
        if old is not None and old.last_ts > self.floor:
            self.floor = old.last_ts
        self.last = s

    def snapshot(self) -> list[Any]:
        return [
            SNAPSHOT_VERSION,
            self.app,
            self.device,
            self.counter,
            self.opted,
            self.activity,
            self.open.snapshot() if self.open is not None else None,
            self.last.snapshot() if self.last is not None else None,
            self.floor,
            self.seq,
        ]

    @classmethod
    def restore(cls, key: str, v: list[Any]) -> KeyState:
        if not v or v[0] != SNAPSHOT_VERSION:
            raise ValueError(f"unknown state snapshot version for key {key!r}")
        st = cls(key, v[1], v[2])
        st.counter = v[3]
        st.opted = v[4]
        st.activity = v[5]
        st.open = Session.restore(v[6]) if v[6] is not None else None
        st.last = Session.restore(v[7]) if v[7] is not None else None
        st.floor = v[8]
        st.seq = v[9]
        return st


_NEVER: Final = 1 << 62
NEVER: Final = _NEVER


# All or nothing per record (Engine._internal_error): what one record can change
# of its key, saved before its slow path first changes anything. Cheap because
# of three rules the engine keeps: a session's ``attrs`` dict is replaced, never
# changed in place; ``mpids`` only grows (a save keeps its length); and a record
# never changes the last closed session in place (R24 changes a copy, swapped
# in), so a save holds ``last`` by reference. ``activity``, ``seq`` and ``hdue``
# change only once a record is through, so they need no saving.
def save_key(st: KeyState) -> tuple[Any, ...]:
    o = st.open
    if o is None:
        return (st.open, st.last, st.counter, st.opted, st.floor)
    mpids = o.mpids
    return (
        o,
        st.last,
        st.counter,
        st.opted,
        st.floor,
        o.start,
        o.last_ts,
        o.deadline,
        o.reason,
        o.lc,
        o.bg_since,
        o.bg_total,
        o.events,
        o.screens,
        o.attrs,
        mpids,
        len(mpids),
        o.ident,
        o.emitted,
        o.status,
    )


def load_key(st: KeyState, saved: tuple[Any, ...]) -> None:
    """Puts back what ``save_key`` saved."""
    o = saved[0]
    st.open, st.last, st.counter, st.opted, st.floor = saved[:5]
    if o is not None:
        (
            o.start,
            o.last_ts,
            o.deadline,
            o.reason,
            o.lc,
            o.bg_since,
            o.bg_total,
            o.events,
            o.screens,
            o.attrs,
            mpids,
            n,
            o.ident,
            o.emitted,
            o.status,
        ) = saved[5:]
        del mpids[n:]
        o.mpids = mpids
