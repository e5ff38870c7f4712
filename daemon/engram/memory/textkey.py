"""What makes two episode texts the same: their normalised form.

An episode's text is normalised by Unicode NFKC (compatibility forms folded: full-width letters,
ligatures, non-breaking spaces), then case-folded (``str.casefold``: "Straße" and "STRASSE" agree),
then every run of whitespace is made one space and the ends trimmed. Two texts with the same
normalised form are one episode in a namespace (``memory.remember`` answers the existing id);
the SHA-256 of the form, ``text_key``, is what the unique index of migration 0004 holds. Nothing
else is folded: punctuation, accents and word order still make texts different.
"""

from __future__ import annotations

import hashlib
import unicodedata

__all__ = ["SQL_FUNCTION", "normalise", "text_key"]

SQL_FUNCTION = "engram_text_key"  # the name memory's SQLite connections know text_key by


def normalise(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def text_key(text: str) -> str:
    return hashlib.sha256(normalise(text).encode()).hexdigest()
