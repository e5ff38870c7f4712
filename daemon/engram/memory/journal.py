"""The journal of consolidation's changes to memory, and the checkpoints that commit with them.

Sleep consolidation changes memory in short transactions. What a later rollback must undo (dream
replay found recall worse) is recorded in ``memory_changes`` in the same transaction as the
change, so that the two commit together: undoing a journalled change is always possible, and
undoing one that a crash kept from happening is harmless. A unit of work whose resume cursor must
commit with its change keeps it in ``memory_checkpoints``.

Entries and checkpoints are keyed by a :data:`Tag` that sleep passes: (run, namespace, stage).
Memory reads, undoes and deletes by it and gives it no other meaning. The kinds of entry (the
changed row in ``ref``, what it was in ``before``):

* ``salience`` — an episode's salience (``ref`` its seq; ``before`` the old value or null);
* ``concept`` — a topic concept created (its seq); undo deletes it, with its links;
* ``link`` — a concept-episode link added to an existing concept (``concept:episode``);
* ``relation`` — a relation created (its seq); ``relation_source`` — an evidence episode added
  to an existing relation (``relation:episode``);
* ``relation_weight`` — a relation's weight and retraction as they were;
* ``tag`` — a tag added to an episode (``seq:tag``); ``access`` — an episode's access count and
  last access as they were (its seq; ``before`` ``{"access_count", "last_access"}``): both from
  merging a near-duplicate into it (:mod:`engram.memory.merging`);
* ``archived`` — episodes archived (``before``: their seqs and the archiving time); undone by
  :meth:`engram.memory.consolidation.MemoryConsolidation.unarchive`, not by :func:`undo`, and
  kept, so that a repeated rollback finds them again and changes nothing.

Blocking: called on a connection of :class:`engram.memory.db.MemoryDB`, in worker threads.
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from collections.abc import Sequence
from typing import Any

from engram.memory.db import json_rows

__all__ = ["Tag", "adopt", "checkpoints", "discard", "drop_checkpoint", "entries", "record", "save_checkpoint", "undo"]

Tag = tuple[int, str, str]  # (run, namespace, stage): sleep's names for its entries, opaque here


def before_json(before: Any) -> str:
    return json.dumps(before, separators=(",", ":"))


def record(conn: Any, tag: Tag, rows: Sequence[tuple[str, str | int, Any]]) -> None:
    """Journal ``rows`` (kind, ref, value before) under ``tag``, in one statement however many
    rows there are (see :func:`engram.memory.db.json_rows`)."""
    if rows:
        run, namespace, stage = tag
        conn.execute(
            "INSERT INTO memory_changes (run, namespace, stage, kind, ref, before) "
            "SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), json_extract(value, '$[2]'), "
            "json_extract(value, '$[3]'), json_extract(value, '$[4]'), json_extract(value, '$[5]') FROM json_each(?)",
            (json_rows([(run, namespace, stage, kind, str(ref), before_json(before)) for kind, ref, before in rows]),),
        )


def entries(conn: Any, tag: Tag, kind: str | None = None) -> list[tuple[int, str, str, Any]]:
    """The journal of ``tag`` (of one ``kind``, when given), newest first: (id, kind, ref, before)."""
    sql = "SELECT id, kind, ref, before FROM memory_changes WHERE run = ? AND namespace = ? AND stage = ?"
    args: list[Any] = list(tag)
    if kind is not None:
        sql += " AND kind = ?"
        args.append(kind)
    rows = conn.execute(sql + " ORDER BY id DESC", args).fetchall()
    return [(row[0], row[1], row[2], json.loads(row[3])) for row in rows]


def undo(conn: Any, tag: Tag, limit: int) -> Counter[str]:
    """Undo the newest ``limit`` entries of ``tag`` (``archived`` ones excepted, see the module
    docstring) and delete them; returns how many of each kind. One call per short transaction:
    foreground writers wait for it."""
    run, namespace, stage = tag
    rows = conn.execute(
        "SELECT id, kind, ref, before FROM memory_changes WHERE run = ? AND namespace = ? AND stage = ? AND kind != 'archived' "
        "ORDER BY id DESC LIMIT ?",
        (run, namespace, stage, limit),
    ).fetchall()
    undone: Counter[str] = Counter()
    for _id, kind, ref, before in rows:
        if kind == "salience":
            conn.execute("UPDATE memory_episodes SET salience = json(?) ->> '$' WHERE seq = ? AND namespace = ?",
                         (before, int(ref), namespace))
        elif kind == "concept":
            conn.execute("DELETE FROM memory_concepts WHERE seq = ?", (int(ref),))
        elif kind == "link":
            concept, episode = (int(x) for x in ref.split(":"))
            conn.execute("DELETE FROM memory_concept_episodes WHERE concept = ? AND episode = ?", (concept, episode))
        elif kind == "relation":
            conn.execute("DELETE FROM memory_relations WHERE seq = ?", (int(ref),))
        elif kind == "relation_source":
            relation, episode = (int(x) for x in ref.split(":"))
            conn.execute("DELETE FROM memory_relation_sources WHERE relation = ? AND episode = ?", (relation, episode))
        elif kind == "tag":
            seq, name = ref.split(":", 1)
            conn.execute("DELETE FROM memory_episode_tags WHERE seq = ? AND tag = ?", (int(seq), name))
        elif kind == "access":
            old = json.loads(before)
            conn.execute("UPDATE memory_episodes SET access_count = ?, last_access = ? WHERE seq = ? AND namespace = ?",
                         (old["access_count"], old["last_access"], int(ref), namespace))
        elif kind == "relation_weight":
            old = json.loads(before)
            conn.execute("UPDATE memory_relations SET weight = ?, retracted_at = ? WHERE seq = ?",
                         (old["weight"], old["retracted_at"], int(ref)))
        undone[kind] += 1
    conn.executemany("DELETE FROM memory_changes WHERE id = ?", [(r[0],) for r in rows])
    return undone


def save_checkpoint(conn: Any, tag: Tag, state: dict[str, Any]) -> None:
    """Keep ``state`` as the checkpoint of ``tag``, in the caller's transaction."""
    conn.execute(
        "INSERT INTO memory_checkpoints (run, namespace, stage, state) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (run, namespace, stage) DO UPDATE SET state = excluded.state",
        (*tag, before_json(state)),
    )


def checkpoints(conn: sqlite3.Connection, run: int) -> dict[tuple[str, str], dict[str, Any]]:
    """The checkpoints of ``run``, by (namespace, stage)."""
    return {
        (namespace, stage): json.loads(state)
        for namespace, stage, state in conn.execute("SELECT namespace, stage, state FROM memory_checkpoints WHERE run = ?", (run,))
    }


def drop_checkpoint(conn: sqlite3.Connection, tag: Tag) -> None:
    conn.execute("DELETE FROM memory_checkpoints WHERE run = ? AND namespace = ? AND stage = ?", tag)


def adopt(conn: sqlite3.Connection, runs: Sequence[int], run: int) -> None:
    """Entries and checkpoints of ``runs`` become ``run``'s (a run that resumes interrupted ones)."""
    marks = ",".join("?" * len(runs))
    for table in ("memory_changes", "memory_checkpoints"):
        conn.execute(f"UPDATE {table} SET run = ? WHERE run IN ({marks})", (run, *runs))


def discard(conn: sqlite3.Connection, runs: Sequence[int], limit: int) -> int:
    """Delete up to ``limit`` journal entries of ``runs`` (and, once none is left, their
    checkpoints); returns the entries deleted: the caller repeats while it is not 0."""
    marks = ",".join("?" * len(runs))
    gone = conn.execute(
        f"DELETE FROM memory_changes WHERE id IN (SELECT id FROM memory_changes WHERE run IN ({marks}) LIMIT ?)", (*runs, limit)
    ).rowcount
    if gone == 0:
        conn.execute(f"DELETE FROM memory_checkpoints WHERE run IN ({marks})", tuple(runs))
    return int(gone)
