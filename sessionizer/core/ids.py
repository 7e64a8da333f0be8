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
    if len(uuid_text) == 36 and uuid_text.isascii():
        return _session_id_36(uuid_text)
    h = _FNV_OFFSET
    if uuid_text.isascii():
        for c in uuid_text.encode("ascii"):
            h = ((h ^ c) * _PRIME_SQ) & _MASK
    else:
        for byte in uuid_text.encode("utf-16-le"):
            h = ((h ^ byte) * _FNV_PRIME) & _MASK
    return h - (1 << 64) if h >= 1 << 63 else h


def _session_id_36(uuid_text: str) -> int:
    """``session_id`` of a 36-character ASCII text (every session_uuid), unrolled:
    masking to 64 bits after every fourth character gives the same value (the
    XOR with a byte only touches the low bits, the bits above 64 never come
    back down) and runs once per session, so it is worth the length."""
    (
        c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10, c11, c12, c13, c14, c15, c16, c17,
        c18, c19, c20, c21, c22, c23, c24, c25, c26, c27, c28, c29, c30, c31, c32, c33, c34, c35,
    ) = uuid_text.encode("ascii")  # fmt: skip
    p = _PRIME_SQ
    m = _MASK
    h = ((((_FNV_OFFSET ^ c0) * p ^ c1) * p ^ c2) * p ^ c3) * p & m
    h = ((((h ^ c4) * p ^ c5) * p ^ c6) * p ^ c7) * p & m
    h = ((((h ^ c8) * p ^ c9) * p ^ c10) * p ^ c11) * p & m
    h = ((((h ^ c12) * p ^ c13) * p ^ c14) * p ^ c15) * p & m
    h = ((((h ^ c16) * p ^ c17) * p ^ c18) * p ^ c19) * p & m
    h = ((((h ^ c20) * p ^ c21) * p ^ c22) * p ^ c23) * p & m
    h = ((((h ^ c24) * p ^ c25) * p ^ c26) * p ^ c27) * p & m
    h = ((((h ^ c28) * p ^ c29) * p ^ c30) * p ^ c31) * p & m
    h = ((((h ^ c32) * p ^ c33) * p ^ c34) * p ^ c35) * p & m
    return h - (1 << 64) if h >= 1 << 63 else h
