"""Deterministic session ids (R12): the same input always yields the same ids."""

from __future__ import annotations

import hashlib
import uuid
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:  # compiled (mypyc): a machine integer; interpreted: an int
    from mypy_extensions import i64

# Fixed forever: changing it would change every session id ever emitted.
NAMESPACE = uuid.UUID("5e55102e-7a1b-5c4e-9d3f-6a0b2c1d8e47")
_NS = NAMESPACE.bytes

_FNV_OFFSET: Final = 0xCBF29CE484222325
_FNV_PRIME: Final = 0x100000001B3
_MASK: Final = 0xFFFFFFFFFFFFFFFF
_M32: Final = 0xFFFFFFFF
# UTF-16LE of an ASCII char is (char, 0); xor with 0 is a no-op, so the two
# FNV steps per char fold into one multiplication by the squared prime,
# 2^40 * _SQ_HI + _SQ_LO (mod 2^64).
_SQ_HI: Final = 870
_SQ_LO: Final = 189_225
_VARIANT = "89ab"


def session_uuid(app: str, device: str, number: int, start_ms: int) -> str:
    """UUIDv5 (RFC 4122) of the session's identity, upper case; equal to uuid.uuid5."""
    name = f"{app}\x1f{device}\x1f{number}\x1f{start_ms}"
    hx = hashlib.sha1(_NS + name.encode("utf-8"), usedforsecurity=False).hexdigest()
    variant = _VARIANT[int(hx[16], 16) & 3]
    return f"{hx[:8]}-{hx[8:12]}-5{hx[13:16]}-{variant}{hx[17:20]}-{hx[20:32]}".upper()


def session_id(uuid_text: str) -> int:
    """64-bit FNV-1a over the UTF-16LE bytes, read as signed (the mParticle SDKs' way)."""
    if uuid_text.isascii():
        return _session_id_ascii(uuid_text)
    h = _FNV_OFFSET
    for byte in uuid_text.encode("utf-16-le"):
        h = ((h ^ byte) * _FNV_PRIME) & _MASK
    return h - (1 << 64) if h >= 1 << 63 else h


def _session_id_ascii(uuid_text: str) -> int:
    """``session_id`` of an ASCII text (every session_uuid): the 64-bit state kept
    as two 32-bit halves, so every product fits in 63 bits and stays a machine
    integer (compiled, mypyc) or a small int (interpreted); a 128-bit product per
    character was a twentieth of process-file's instructions."""
    hi: i64 = _FNV_OFFSET >> 32
    lo: i64 = _FNV_OFFSET & _M32
    for c in uuid_text.encode("ascii"):
        lo ^= c
        t: i64 = lo * _SQ_LO
        # h * (2^40 * SQ_HI + SQ_LO): lo's 2^40 term lands 8 bits up in the high half.
        hi = (hi * _SQ_LO + (t >> 32) + ((lo * _SQ_HI) << 8)) & _M32
        lo = t & _M32
    return ((hi - (1 << 32)) << 32 | lo) if hi >= 1 << 31 else (hi << 32 | lo)
