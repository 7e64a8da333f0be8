"""Deterministic session ids (R12): the same input always yields the same ids."""

from __future__ import annotations

import uuid

# Fixed forever: changing it would change every session id ever emitted.
NAMESPACE = uuid.UUID("5e55102e-7a1b-5c4e-9d3f-6a0b2c1d8e47")

_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3
_MASK = 0xFFFFFFFFFFFFFFFF


def session_uuid(app: str, device: str, number: int, start_ms: int) -> str:
    name = f"{app}\x1f{device}\x1f{number}\x1f{start_ms}"
    return str(uuid.uuid5(NAMESPACE, name)).upper()


def session_id(uuid_text: str) -> int:
    """64-bit FNV-1a over the UTF-16LE bytes, read as signed (the mParticle SDKs' way)."""
    h = _FNV_OFFSET
    for byte in uuid_text.encode("utf-16-le"):
        h = ((h ^ byte) * _FNV_PRIME) & _MASK
    return h - (1 << 64) if h >= 1 << 63 else h
