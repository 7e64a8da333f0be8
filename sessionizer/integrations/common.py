"""What every destination reads the same way from the §7 outputs."""

from __future__ import annotations

from typing import Any

from ..core.engine import identity


def device_of(record: dict[str, Any]) -> str | None:
    """The record's device, by the identity rule (§1.2) the engine keyed it with."""
    ident = identity(record)
    return None if ident is None else ident[1]
