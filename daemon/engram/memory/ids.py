"""Public ids of memory objects: a prefix and 26 Crockford base32 characters.

``new_id`` makes ULID-style ids (48 bits of milliseconds, then 80 random bits), so ids sort by
creation time and need no coordination. ``derived_id`` makes the same shape from a hash, for
imports that must not duplicate when they are run again. Clients treat ids as opaque strings.
"""

from __future__ import annotations

import hashlib
import os
import re
import time

__all__ = ["CONCEPT", "EPISODE", "RELATION", "derived_id", "is_id", "new_id", "new_ids"]

EPISODE, CONCEPT, RELATION = "ep_", "co_", "re_"

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_PATTERN = re.compile(r"^(ep|co|re)_[0-9A-HJKMNP-TV-Z]{26}$")


def _encode(value: int) -> str:
    chars = []
    for _ in range(26):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def new_id(prefix: str, now: float | None = None) -> str:
    millis = int((time.time() if now is None else now) * 1000) & ((1 << 48) - 1)
    return prefix + _encode((millis << 80) | int.from_bytes(os.urandom(10), "big"))


def new_ids(prefix: str, count: int, now: float | None = None) -> list[str]:
    """``count`` ids of one moment (one random draw for all of them)."""
    millis = (int((time.time() if now is None else now) * 1000) & ((1 << 48) - 1)) << 80
    noise = os.urandom(10 * count)
    return [prefix + _encode(millis | int.from_bytes(noise[10 * i : 10 * i + 10], "big")) for i in range(count)]


def derived_id(prefix: str, *parts: str) -> str:
    """An id determined by ``parts`` (SHA-256, first 130 bits)."""
    digest = hashlib.sha256("\x00".join(parts).encode()).digest()
    return prefix + _encode(int.from_bytes(digest[:17], "big") >> 6)


def is_id(value: str, prefix: str | None = None) -> bool:
    return bool(_PATTERN.match(value)) and (prefix is None or value.startswith(prefix))
