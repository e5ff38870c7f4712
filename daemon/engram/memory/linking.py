"""Which of a namespace's concepts a text names: entity linking for route.ask (blocking reads).

A question rarely gives a concept's whole name: "Where does Ada live?" is about the concept "Ada
Lovelace", "Who runs Acme?" about "Acme Corp". Candidates are the question's runs of words (see
:func:`engram.ask.prompt.concept_candidates`), longest first; each links to:

1. the concept whose name it is (case and spacing aside), else
2. the concepts whose names *begin* with it as whole words ("ada" -> "ada lovelace", never
   "adam"), at most :data:`PER_PREFIX` of them, shortest name first. A candidate made only of
   function words (:data:`engram.memory.filters.STOP_WORDS`) links only by its whole name: "the"
   must not link every concept called "The ...".

Both are range reads of the ``(namespace, key)`` index, so linking costs the same with ten
concepts or a million.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from engram.memory.filters import STOP_WORDS
from engram.memory.semantic import concept_key

__all__ = ["PER_PREFIX", "linked_concepts"]

PER_PREFIX = 3  # concepts a partial name links at most (a first name shared by a few people)


def linked_concepts(conn: sqlite3.Connection, namespace: str, candidates: Sequence[str], limit: int) -> list[str]:
    """Stored names of the concepts ``candidates`` name, in the order of the candidates, each
    once, at most ``limit``."""
    found: dict[str, str] = {}  # key -> name
    for candidate in candidates:
        if len(found) >= limit:
            break
        key = concept_key(candidate)
        if not key or key in found:
            continue
        row = conn.execute("SELECT name FROM memory_concepts WHERE namespace = ? AND key = ?", (namespace, key)).fetchone()
        if row is not None:
            found[key] = row[0]
            continue
        if all(word in STOP_WORDS for word in key.split()):
            continue
        # Keys that start with "<key> ": the range ["<key> ", "<key>!") (the character after
        # the space), read from the unique (namespace, key) index.
        for name_key, name in conn.execute(
            "SELECT key, name FROM memory_concepts WHERE namespace = ? AND key >= ? AND key < ? "
            "ORDER BY length(key), key LIMIT ?",
            (namespace, key + " ", key + "!", PER_PREFIX),
        ):
            found.setdefault(name_key, name)
    return list(found.values())[:limit]
