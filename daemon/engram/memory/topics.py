"""Topic concepts and the relations between them, as sleep's clustering stage writes them.

Each function is one unit of clustering's work inside the caller's transaction (a background one
of :class:`engram.memory.db.MemoryDB`), journalled under the caller's tag (see
:mod:`engram.memory.journal`). Writes are set-based statements over rows passed as JSON (see
:func:`engram.memory.db.json_rows`). Blocking: worker threads.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import NDArray

from engram.memory import ids as idgen
from engram.memory import journal
from engram.memory.db import json_rows
from engram.memory.journal import Tag
from engram.memory.semantic import concept_key
from engram.memory.vectors import from_blob, to_blob

__all__ = [
    "RelationDecay", "TopicRef", "Topics", "decay_relations", "find_or_create", "link", "members", "strengthen_relations",
]

# A relation's weight as it was, for the journal: 17 significant digits read back as the same double.
_WEIGHT_BEFORE = """printf('{"weight":%!.17g,"retracted_at":null}', weight)"""
# The topic pairs of a strengthening batch (:pairs, [a, b, gain, id for a new relation]), each with
# the live related_to relation between the two if there is one (rel), and their evidence
# (:evidence, [a, b, episode]). Materialized: each pair's JSON is read and its relation looked up
# once, not once per row of a join.
_PAIRS_CTE = (
    "WITH p AS MATERIALIZED (SELECT json_extract(value, '$[0]') AS a, json_extract(value, '$[1]') AS b, "
    "json_extract(value, '$[2]') AS gain, json_extract(value, '$[3]') AS id FROM json_each(:pairs)), "
    "live AS MATERIALIZED (SELECT p.*, (SELECT r.seq FROM memory_relations r WHERE r.type = 'related_to' AND r.retracted_at IS NULL "
    "AND ((r.src = p.a AND r.dst = p.b) OR (r.src = p.b AND r.dst = p.a)) ORDER BY r.seq LIMIT 1) AS rel FROM p), "
    "ev AS MATERIALIZED (SELECT json_extract(value, '$[0]') AS a, json_extract(value, '$[1]') AS b, "
    "json_extract(value, '$[2]') AS episode FROM json_each(:evidence))"
)


class Topics:
    """The namespace's topic concepts as a matrix per vector width, so that finding the nearest
    to a centroid is a matrix product rather than a Python loop over every topic (which would
    hold the interpreter lock for as long as there are topics, once per cluster)."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.seen = 0  # the highest concept seq read so far
        self._by_width: dict[int, tuple[NDArray[np.int64], NDArray[np.float32]]] = {}

    def catch_up(self, conn: Any) -> None:
        """Add the topics created since the last read (by this run, or by anyone meanwhile)."""
        rows = conn.execute(
            "SELECT seq, dim, embedding FROM memory_concepts WHERE namespace = ? AND kind = 'topic' "
            "AND embedding IS NOT NULL AND seq > ? ORDER BY seq",
            (self.namespace, self.seen),
        ).fetchall()
        if rows:
            self.seen = int(rows[-1][0])
        for width in {int(dim) for _s, dim, _b in rows}:
            mine = [(int(seq), blob) for seq, dim, blob in rows if dim == width]
            seqs = np.array([seq for seq, _b in mine], dtype=np.int64)
            vectors = from_blob(b"".join(blob for _s, blob in mine)).reshape(len(mine), width)
            if width in self._by_width:
                old_seqs, old_vectors = self._by_width[width]
                seqs, vectors = np.concatenate([old_seqs, seqs]), np.vstack([old_vectors, vectors])
            self._by_width[width] = (seqs, vectors)

    def drop(self, seq: int) -> None:
        for width, (seqs, vectors) in self._by_width.items():
            keep = seqs != seq
            self._by_width[width] = (seqs[keep], vectors[keep])

    def nearest(self, centroid: NDArray[np.float32]) -> tuple[int | None, float]:
        """The topic most similar to ``centroid`` (None if none has its width) and the cosine."""
        seqs, vectors = self._by_width.get(centroid.shape[0], (np.zeros(0, dtype=np.int64), None))
        if vectors is None or not len(seqs):
            return None, -2.0
        sims = vectors @ centroid
        best = int(np.argmax(sims))
        return int(seqs[best]), float(sims[best])


class TopicRef(NamedTuple):
    """The topic concept a cluster went to: its seq, whether this call created it, whether the
    caller's tag created it (its links then go with it on rollback), and its stored name."""

    seq: int
    created: bool
    own: bool
    name: str


def find_or_create(conn: Any, tag: Tag, topics: Topics, name: str, centroid: NDArray[np.float32], now: float,
                   reuse_similarity: float) -> TopicRef:
    """The topic concept for a cluster: the nearest existing topic when its cosine to
    ``centroid`` is at least ``reuse_similarity`` (which makes a repeated unit idempotent; it
    keeps its name), else a new one named ``name`` (made unique with a number)."""
    _run, namespace, _stage = tag
    topics.catch_up(conn)
    best, best_sim = topics.nearest(centroid)
    while best is not None and not conn.execute("SELECT 1 FROM memory_concepts WHERE seq = ?", (best,)).fetchone():
        topics.drop(best)  # forgotten since it was read
        best, best_sim = topics.nearest(centroid)
    mine = {int(ref) for _id, _kind, ref, _before in journal.entries(conn, tag, "concept")}
    if best is not None and best_sim >= reuse_similarity:
        (stored,) = conn.execute("SELECT name FROM memory_concepts WHERE seq = ?", (best,)).fetchone()
        return TopicRef(best, False, best in mine, str(stored))
    base, name_, n = " ".join(name.split()), " ".join(name.split()), 1
    while conn.execute(
        "SELECT 1 FROM memory_concepts WHERE namespace = ? AND key = ?", (namespace, concept_key(name_))
    ).fetchone():
        n += 1
        name_ = f"{base} ({n})"
    concept = int(conn.execute(
        "INSERT INTO memory_concepts (id, namespace, name, key, kind, created_at, dim, embedding) "
        "VALUES (?, ?, ?, ?, 'topic', ?, ?, ?) RETURNING seq",
        (idgen.new_id(idgen.CONCEPT, now), namespace, name_, concept_key(name_), now,
         int(centroid.shape[0]), to_blob(centroid)),
    ).fetchone()[0])
    journal.record(conn, tag, [("concept", concept, None)])
    return TopicRef(concept, True, True, name_)


def members(conn: Any, namespace: str) -> dict[str, list[str]]:
    """Each topic concept of ``namespace`` by name, with the texts of the episodes linked to it
    (in episode order): what sleep's clustering found, for the benchmark and the tests that
    judge it."""
    found: dict[str, list[str]] = {}
    for name, text in conn.execute(
        "SELECT c.name, e.text FROM memory_concepts c JOIN memory_concept_episodes l ON l.concept = c.seq "
        "JOIN memory_episodes e ON e.seq = l.episode WHERE c.namespace = ? AND c.kind = 'topic' ORDER BY c.seq, e.seq",
        (namespace,),
    ):
        found.setdefault(str(name), []).append(str(text))
    return found


def link(conn: Any, tag: Tag, concept: int, episodes: Sequence[tuple[int, float]], journalled: bool) -> int:
    """Link ``episodes`` (seq, weight) to ``concept`` in two statements; returns the links added.
    A link that exists already is left alone, and so is an episode forgotten meanwhile. With
    ``journalled`` the links made are journalled (not needed when ``tag`` created the concept:
    they go with it)."""
    rows = json_rows(episodes)
    if journalled:
        conn.execute(
            "INSERT INTO memory_changes (run, namespace, stage, kind, ref, before) "
            "SELECT ?, ?, ?, 'link', ? || ':' || e.seq, 'null' FROM json_each(?) j "
            "JOIN memory_episodes e ON e.seq = json_extract(j.value, '$[0]') "
            "WHERE NOT EXISTS (SELECT 1 FROM memory_concept_episodes l WHERE l.concept = ? AND l.episode = e.seq)",
            (*tag, concept, rows, concept),
        )
    return int(conn.execute(
        "INSERT INTO memory_concept_episodes (concept, episode, weight) "
        "SELECT c.seq, e.seq, json_extract(j.value, '$[1]') FROM json_each(?) j "
        "JOIN memory_episodes e ON e.seq = json_extract(j.value, '$[0]') JOIN memory_concepts c ON c.seq = ? "
        "WHERE true ON CONFLICT DO NOTHING",
        (rows, concept),
    ).rowcount)


class RelationDecay(NamedTuple):
    """One batch of :func:`decay_relations`: the last seq it covered (None: there was no batch
    left), how many relations it held, weakened and retracted."""

    last: int | None
    count: int
    weakened: int
    retracted: int


def decay_relations(conn: Any, tag: Tag, after: int, limit: int, decay: float, floor: float, now: float) -> RelationDecay:
    """Decay the next ``limit`` sourced live relations of the namespace after seq ``after``
    (weight × ``decay``), retracting those that fall below ``floor``; journalled."""
    run, namespace, stage = tag
    batch = "namespace = :ns AND sourced = 1 AND retracted_at IS NULL AND seq > :after"
    last, count = conn.execute(
        f"SELECT max(seq), count(*) FROM (SELECT seq FROM memory_relations WHERE {batch} ORDER BY seq LIMIT :n)",
        {"ns": namespace, "after": after, "n": limit},
    ).fetchone()
    if not count:
        return RelationDecay(None, 0, 0, 0)
    batch += " AND seq <= :last"
    args = {"ns": namespace, "after": after, "last": last, "decay": decay, "floor": floor, "now": now, "run": run, "stage": stage}
    conn.execute(
        "INSERT INTO memory_changes (run, namespace, stage, kind, ref, before) "
        f"SELECT :run, :ns, :stage, 'relation_weight', CAST(seq AS TEXT), {_WEIGHT_BEFORE} "
        f"FROM memory_relations WHERE {batch}",
        args,
    )
    retracted = conn.execute(
        f"UPDATE memory_relations SET retracted_at = :now WHERE {batch} AND weight * :decay < :floor", args
    ).rowcount
    weakened = conn.execute(f"UPDATE memory_relations SET weight = weight * :decay WHERE {batch}", args).rowcount
    return RelationDecay(int(last), int(count), int(weakened), int(retracted))


def _changed(conn: Any, statement: str, args: dict[str, Any]) -> int:
    """Run a write and return the rows it changed. Not ``cursor.rowcount``: Python's sqlite3 tells
    writes from reads by their first word, so a write that opens with ``WITH`` reports -1."""
    conn.execute(statement, args)
    return int(conn.execute("SELECT changes()").fetchone()[0])


def strengthen_relations(conn: Any, tag: Tag, pairs: list[list[Any]], evidence: list[list[int]], now: float) -> tuple[int, int]:
    """Strengthen ``related_to`` between topic pairs (``pairs``: [a, b, gain]), with their
    evidence episodes (``evidence``: [a, b, episode]): a pair's live relation gains ``gain``
    (at most 1) and the new evidence; a pair without one gets a new sourced relation when both
    concepts still exist. Journalled; returns (relations strengthened, relations created)."""
    run, namespace, stage = tag
    rows = [[*row, id_] for row, id_ in zip(pairs, idgen.new_ids(idgen.RELATION, len(pairs), now), strict=True)]
    args = {"pairs": json_rows(rows), "evidence": json_rows(evidence), "run": run, "ns": namespace, "stage": stage, "now": now}
    # the pairs that have a relation: journal it and its new sources, then strengthen
    conn.execute(
        f"{_PAIRS_CTE} INSERT INTO memory_changes (run, namespace, stage, kind, ref, before) "
        f"SELECT :run, :ns, :stage, 'relation_weight', CAST(r.seq AS TEXT), {_WEIGHT_BEFORE} "
        "FROM live JOIN memory_relations r ON r.seq = live.rel", args,
    )
    conn.execute(
        f"{_PAIRS_CTE} INSERT INTO memory_changes (run, namespace, stage, kind, ref, before) "
        "SELECT :run, :ns, :stage, 'relation_source', live.rel || ':' || e.seq, 'null' "
        "FROM live JOIN ev ON ev.a = live.a AND ev.b = live.b JOIN memory_episodes e ON e.seq = ev.episode "
        "WHERE live.rel IS NOT NULL AND NOT EXISTS "
        "(SELECT 1 FROM memory_relation_sources x WHERE x.relation = live.rel AND x.episode = e.seq)", args,
    )
    conn.execute(
        f"{_PAIRS_CTE} INSERT INTO memory_relation_sources (relation, episode) SELECT live.rel, e.seq "
        "FROM live JOIN ev ON ev.a = live.a AND ev.b = live.b JOIN memory_episodes e ON e.seq = ev.episode "
        "WHERE live.rel IS NOT NULL ON CONFLICT DO NOTHING", args,
    )
    strengthened = _changed(
        conn, f"{_PAIRS_CTE} UPDATE memory_relations SET weight = min(1.0, weight + live.gain), sourced = 1 "
        "FROM live WHERE memory_relations.seq = live.rel", args,
    )
    # the others, when both concepts still exist: a new relation with its sources
    created = _changed(
        conn, f"{_PAIRS_CTE} INSERT INTO memory_relations (id, namespace, src, dst, type, weight, recorded_at, sourced) "
        "SELECT live.id, :ns, live.a, live.b, 'related_to', min(1.0, live.gain), :now, 1 FROM live "
        "WHERE live.rel IS NULL AND (SELECT count(*) FROM memory_concepts c WHERE c.seq IN (live.a, live.b)) = 2",
        args,
    )
    conn.execute(
        f"{_PAIRS_CTE} INSERT INTO memory_changes (run, namespace, stage, kind, ref, before) "
        "SELECT :run, :ns, :stage, 'relation', CAST(r.seq AS TEXT), 'null' FROM p JOIN memory_relations r ON r.id = p.id",
        args,
    )
    conn.execute(
        f"{_PAIRS_CTE} INSERT INTO memory_relation_sources (relation, episode) SELECT r.seq, e.seq "
        "FROM p JOIN memory_relations r ON r.id = p.id JOIN ev ON ev.a = p.a AND ev.b = p.b "
        "JOIN memory_episodes e ON e.seq = ev.episode WHERE true ON CONFLICT DO NOTHING", args,
    )
    return strengthened, created
