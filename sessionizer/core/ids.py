"""Deterministic session ids (R12): the same input always yields the same ids."""

from __future__ import annotations

import hashlib
import uuid

# Fixed forever: changing it would change every session id ever emitted.
NAMESPACE = uuid.UUID("5e55102e-7a1b-5c4e-9d3f-6a0b2c1d8e47")
_NS = NAMESPACE.bytes

_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3
_MASK = 0xFFFFFFFFFFFFFFFF
# UTF-16LE of an ASCII char is (char, 0); xor with 0 is a no-op, so the two
# FNV steps per char fold into one multiplication by the squared prime.
_PRIME_SQ = (_FNV_PRIME * _FNV_PRIME) & _MASK
_VARIANT = "89ab"


def session_uuid(app: str, device: str, number: int, start_ms: int) -> str:
    """UUIDv5 (RFC 4122) of the session's identity, upper case; equal to uuid.uuid5."""
    name = f"{app}\x1f{device}\x1f{number}\x1f{start_ms}"
    hx = hashlib.sha1(_NS + name.encode("utf-8"), usedforsecurity=False).hexdigest()
    variant = _VARIANT[int(hx[16], 16) & 3]
    return f"{hx[:8]}-{hx[8:12]}-5{hx[13:16]}-{variant}{hx[17:20]}-{hx[20:32]}".upper()


def session_id(uuid_text: str) -> int:
    """64-bit FNV-1a over the UTF-16LE bytes, read as signed (the mParticle SDKs' way)."""
    h = _FNV_OFFSET
    if uuid_text.isascii():
        for c in uuid_text.encode("ascii"):
            h = ((h ^ c) * _PRIME_SQ) & _MASK
    else:
        for byte in uuid_text.encode("utf-16-le"):
            h = ((h ^ byte) * _FNV_PRIME) & _MASK
    return h - (1 << 64) if h >= 1 << 63 else h
