"""Episodes in SQLite: the source of truth of episodic memory (blocking; call from worker threads).

Every query names its namespace. Writers pass the connection of an open transaction
(:meth:`MemoryDB.transaction`); readers take one from the pool. ``seq`` is the internal key
(FAISS label, FTS rowid, watermark), ``id`` the public one.

**Archived episodes** (``archived_at`` set, by sleep's forgetting stage) are on their way out:
every query that feeds recall, the vector index or the live counts skips them (``_LIVE``); the
lookups by id (``resolve``, ``owners``, ``rows``) still see them, so ``memory.get`` shows them
and ``memory.forget`` deletes them.

**One episode per text.** A row inserted with a ``text_key`` (:mod:`engram.memory.textkey`) that
a live episode of its namespace has already is not inserted: the unique index
``memory_episodes_ns_text_key`` refuses it inside the writer's transaction, so two concurrent
remembers of one text (or one text twice in a batch) make one episode whichever commits first,
and :meth:`EpisodeStore.insert` reports the episode that holds the text. Archived episodes give
their key up (a text remembered again while its old episode awaits deletion is a new episode)
and take it back when they are restored, unless another episode holds it by then.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from engram.memory.db import MemoryDB
from engram.memory.filters import SqlFilter
from engram.memory.scoring import bm25
from engram.memory.textkey import SQL_FUNCTION
from engram.memory.vectors import from_blob, to_blob

__all__ = ["EpisodeFacts", "EpisodeStore", "Forgotten", "NewEpisode"]

_CHUNK = 900  # bound parameters per IN (...) list, well under SQLite's limit
# Appended to queries over alias e that must skip archived episodes. The unary + keeps SQLite from
# choosing the (namespace, archived_at) index for them: a session, kind or time filter's index
# narrows far better. The live-only scans (seqs_of, page, counts) use that index on purpose.
_LIVE = " AND +e.archived_at IS NULL"

# Lookups by lists of seqs or ids write "+namespace": without statistics SQLite would rather scan
# the (namespace, ...) indexes than do the key lookups, which is 10x slower for a recall.

_ROW_COLUMNS = (
    "e.seq, e.id, e.namespace, e.text, e.text_sha256, e.time, e.recorded_at, e.session, e.kind, e.metadata, "
    "e.source, e.importance, e.pinned, e.access_count, e.last_access, e.embedder, e.dim, e.archived_at"
)


@dataclass(slots=True)
class NewEpisode:
    id: str
    namespace: str
    text: str
    text_sha256: str
    kind: str
    time: float
    vector: NDArray[np.float32]
    embedder: str
    session: str | None = None
    metadata: str = "{}"  # JSON text
    source: str | None = None
    importance: float = 0.5
    pinned: bool = False
    tags: list[str] = field(default_factory=list)
    text_key: str | None = None  # the normalised text's SHA-256; None: not deduplicated


@dataclass(slots=True)
class Forgotten:
    seqs: list[int] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    hashes: list[str] = field(default_factory=list)
    relations: int = 0
    concepts: int = 0


# What recall's scoring needs of a live episode: (time, importance, vector (only for the seqs
# asked for, else None), whether it has a session (only then can conversation context place it)).
# A plain tuple: a recall makes some fifty, and fifty NamedTuples cost 20 us to make, tuples 1.
EpisodeFacts = tuple[float, float, NDArray[np.float32] | None, bool]


_NO_FILTER = SqlFilter()
_EMPTY_METADATA = "{}"  # what most episodes hold; json.loads of it costs more than the rest of a hit


def _chunks(values: Sequence[Any], size: int = _CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def _marks(n: int) -> str:
    return ",".join("?" * n)


def _row_dict(row: sqlite3.Row | tuple[Any, ...]) -> dict[str, Any]:
    (seq, id_, namespace, text, sha, time, recorded_at, session, kind, metadata, source, importance, pinned,
     access_count, last_access, embedder, dim, archived_at) = row[:18]
    return {
        "seq": seq,
        "id": id_,
        "namespace": namespace,
        "text": text,
        "text_sha256": sha,
        "time": time,
        "recorded_at": recorded_at,
        "session": session,
        "kind": kind,
        "metadata": json.loads(metadata),
        "source": source,
        "importance": importance,
        "pinned": bool(pinned),
        "access_count": access_count,
        "last_access": last_access,
        "embedder": embedder,
        "dim": dim,
        "archived_at": archived_at,
        "tags": [],
    }


class EpisodeStore:
    def __init__(self, db: MemoryDB) -> None:
        self.db = db

    @contextmanager
    def snapshot(self) -> Iterator[sqlite3.Connection]:
        """A reader connection in one read transaction: every query of the block sees the same
        state (a recall's candidates and its winners' rows agree, with no second look)."""
        with self.db.read() as conn:
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                conn.execute("COMMIT")

    # --- writes (inside a transaction the caller holds) ------------------------------------------

    @staticmethod
    def insert(conn: sqlite3.Connection, rows: Iterable[NewEpisode], recorded_at: float,
               duplicates: dict[int, tuple[int, str]] | None = None) -> list[int | None]:
        """Insert ``rows``; a row whose id exists already, or whose ``text_key`` a live episode
        of its namespace holds, is skipped (None in its place). ``duplicates`` gets, for each
        row skipped for its text, its position -> (seq, id) of the episode holding the text."""
        seqs: list[int | None] = []
        for n, r in enumerate(rows):
            found = conn.execute(
                "INSERT INTO memory_episodes (id, namespace, session, kind, time, recorded_at, text, text_sha256, "
                "metadata, source, importance, pinned, embedder, dim, embedding, text_key) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT DO NOTHING RETURNING seq",
                (r.id, r.namespace, r.session, r.kind, r.time, recorded_at, r.text, r.text_sha256, r.metadata,
                 r.source, r.importance, int(r.pinned), r.embedder, int(r.vector.shape[0]), to_blob(r.vector), r.text_key),
            ).fetchone()
            seq = int(found[0]) if found else None
            seqs.append(seq)
            if seq is None and r.text_key is not None and duplicates is not None:
                holder = conn.execute(
                    "SELECT seq, id FROM memory_episodes WHERE namespace = ? AND text_key = ?", (r.namespace, r.text_key)
                ).fetchone()
                if holder is not None and holder[1] != r.id:
                    duplicates[n] = (int(holder[0]), holder[1])
            if seq is not None and r.tags:
                conn.executemany("INSERT INTO memory_episode_tags (seq, tag) VALUES (?, ?)", [(seq, t) for t in r.tags])
        return seqs

    @staticmethod
    def key_texts(conn: sqlite3.Connection, namespace: str | None = None, seqs: Sequence[int] | None = None) -> int:
        """Give live episodes without a ``text_key`` theirs (rows written before migration 0004,
        restored archived ones), oldest first; a row whose text another live episode holds
        already keeps none (a duplicate, left to sleep's merge). Returns the rows keyed."""
        keyed = 0
        if seqs is None:
            where, args = ("namespace = ? AND " if namespace is not None else ""), ((namespace,) if namespace is not None else ())
            return conn.execute(
                f"UPDATE OR IGNORE memory_episodes SET text_key = {SQL_FUNCTION}(text) "
                f"WHERE {where}text_key IS NULL AND archived_at IS NULL",
                args,
            ).rowcount
        for chunk in _chunks(sorted(seqs)):
            keyed += conn.execute(
                f"UPDATE OR IGNORE memory_episodes SET text_key = {SQL_FUNCTION}(text) "
                f"WHERE seq IN ({_marks(len(chunk))}) AND text_key IS NULL AND archived_at IS NULL",
                tuple(chunk),
            ).rowcount
        return keyed

    @staticmethod
    def delete(conn: sqlite3.Connection, namespace: str, seqs: Sequence[int]) -> Forgotten:
        """Delete episodes (tags, FTS entries and graph links go with them) and the relations
        learned only from them."""
        out = Forgotten()
        touched: set[int] = set()
        for chunk in _chunks(list(seqs)):
            marks = _marks(len(chunk))
            for seq, id_, sha in conn.execute(
                f"SELECT seq, id, text_sha256 FROM memory_episodes WHERE +namespace = ? AND seq IN ({marks}) ORDER BY seq",
                (namespace, *chunk),
            ):
                out.seqs.append(seq)
                out.ids.append(id_)
                out.hashes.append(sha)
            touched.update(
                r for (r,) in conn.execute(f"SELECT relation FROM memory_relation_sources WHERE episode IN ({marks})", tuple(chunk))
            )
            conn.execute(f"DELETE FROM memory_episodes WHERE +namespace = ? AND seq IN ({marks})", (namespace, *chunk))
        for chunk in _chunks(sorted(touched)):
            cur = conn.execute(
                f"DELETE FROM memory_relations WHERE seq IN ({_marks(len(chunk))}) AND sourced = 1 "
                "AND NOT EXISTS (SELECT 1 FROM memory_relation_sources s WHERE s.relation = memory_relations.seq)",
                tuple(chunk),
            )
            out.relations += cur.rowcount
        return out

    @staticmethod
    def delete_namespace(conn: sqlite3.Connection, namespace: str) -> Forgotten:
        out = Forgotten()
        for seq, id_, sha in conn.execute(
            "SELECT seq, id, text_sha256 FROM memory_episodes WHERE namespace = ? ORDER BY seq", (namespace,)
        ):
            out.seqs.append(seq)
            out.ids.append(id_)
            out.hashes.append(sha)
        out.relations = conn.execute("DELETE FROM memory_relations WHERE namespace = ?", (namespace,)).rowcount
        out.concepts = conn.execute("DELETE FROM memory_concepts WHERE namespace = ?", (namespace,)).rowcount
        conn.execute("DELETE FROM memory_episodes WHERE namespace = ?", (namespace,))
        conn.execute("DELETE FROM memory_replay_queries WHERE namespace = ?", (namespace,))  # the sampled queries go too
        return out

    @staticmethod
    def add_access(conn: sqlite3.Connection, counts: dict[int, tuple[int, float]]) -> None:
        # In the order of seq, the table's order: each update's page is then mostly the last one's
        # or the next in the file, not one anywhere in it (a quarter less time for a flush of
        # thousands of recalled episodes).
        conn.executemany(
            "UPDATE memory_episodes SET access_count = access_count + ?, last_access = max(coalesce(last_access, 0), ?) "
            "WHERE seq = ?",
            [(n, last, seq) for seq, (n, last) in sorted(counts.items())],
        )

    @staticmethod
    def archive(conn: sqlite3.Connection, namespace: str, seqs: Sequence[int], now: float) -> list[int]:
        """Mark the live, unpinned episodes among ``seqs`` archived; returns the seqs marked."""
        done: list[int] = []
        for chunk in _chunks(list(seqs)):
            done.extend(
                s
                for (s,) in conn.execute(
                    f"UPDATE memory_episodes SET archived_at = ?, text_key = NULL WHERE +namespace = ? "
                    f"AND seq IN ({_marks(len(chunk))}) AND archived_at IS NULL AND pinned = 0 RETURNING seq",
                    (now, namespace, *chunk),
                )
            )
        return sorted(done)

    @staticmethod
    def unarchive(conn: sqlite3.Connection, namespace: str, seqs: Sequence[int], archived_at: float | None = None) -> list[int]:
        """Make the archived episodes among ``seqs`` live again (only those archived at
        ``archived_at``, when given: an undo must not revive a later archiving); returns the seqs
        restored."""
        when = "archived_at IS NOT NULL" if archived_at is None else "archived_at = ?"
        extra: tuple[Any, ...] = () if archived_at is None else (archived_at,)
        done: list[int] = []
        for chunk in _chunks(list(seqs)):
            done.extend(
                s
                for (s,) in conn.execute(
                    f"UPDATE memory_episodes SET archived_at = NULL WHERE +namespace = ? AND seq IN ({_marks(len(chunk))}) "
                    f"AND {when} RETURNING seq",
                    (namespace, *chunk, *extra),
                )
            )
        EpisodeStore.key_texts(conn, seqs=done)  # their texts are theirs again, unless remembered anew meanwhile
        return sorted(done)

    # --- reads ---------------------------------------------------------------------------------------

    def resolve(self, namespace: str, ids: Sequence[str]) -> dict[str, int]:
        """id -> seq for those of ``ids`` that exist in ``namespace``."""
        found: dict[str, int] = {}
        with self.db.read() as conn:
            for chunk in _chunks(list(dict.fromkeys(ids))):
                for id_, seq in conn.execute(
                    f"SELECT id, seq FROM memory_episodes WHERE +namespace = ? AND id IN ({_marks(len(chunk))})",
                    (namespace, *chunk),
                ):
                    found[id_] = seq
        return found

    def live_ids(self, namespace: str, ids: Sequence[str]) -> set[str]:
        """Those of ``ids`` that are live (not archived) episodes of ``namespace``."""
        found: set[str] = set()
        with self.db.read() as conn:
            for chunk in _chunks(list(dict.fromkeys(ids))):
                found.update(
                    i
                    for (i,) in conn.execute(
                        f"SELECT id FROM memory_episodes WHERE +namespace = ? AND id IN ({_marks(len(chunk))}) AND archived_at IS NULL",
                        (namespace, *chunk),
                    )
                )
        return found

    def owners(self, ids: Sequence[str]) -> dict[str, str]:
        """id -> namespace for those of ``ids`` that exist anywhere (imports only)."""
        found: dict[str, str] = {}
        with self.db.read() as conn:
            for chunk in _chunks(list(dict.fromkeys(ids))):
                for id_, namespace in conn.execute(
                    f"SELECT id, namespace FROM memory_episodes WHERE id IN ({_marks(len(chunk))})", tuple(chunk)
                ):
                    found[id_] = namespace
        return found

    def rows(
        self, namespace: str, seqs: Sequence[int], flt: SqlFilter = _NO_FILTER, vectors_for: Iterable[int] = (),
        live_only: bool = False,
    ) -> dict[int, dict[str, Any]]:
        """The episodes among ``seqs`` in ``namespace`` that pass ``flt`` (and are not archived,
        with ``live_only``), with their tags, and their vectors for the seqs in ``vectors_for``."""
        want_vec = set(vectors_for)
        live = _LIVE if live_only else ""
        out: dict[int, dict[str, Any]] = {}
        with self.db.read() as conn:
            for chunk in _chunks(list(dict.fromkeys(seqs))):
                for row in conn.execute(
                    f"SELECT {_ROW_COLUMNS} FROM memory_episodes e WHERE +e.namespace = ? AND e.seq IN ({_marks(len(chunk))})"
                    + live + flt.sql,
                    (namespace, *chunk, *flt.args),
                ):
                    out[row[0]] = _row_dict(row)
            found = list(out)
            for chunk in _chunks(found):
                marks = _marks(len(chunk))
                for seq, tag in conn.execute(f"SELECT seq, tag FROM memory_episode_tags WHERE seq IN ({marks}) ORDER BY tag", tuple(chunk)):
                    out[seq]["tags"].append(tag)
            need = [s for s in found if s in want_vec]
            for chunk in _chunks(need):
                for seq, dim, blob in conn.execute(
                    f"SELECT seq, dim, embedding FROM memory_episodes WHERE seq IN ({_marks(len(chunk))})", tuple(chunk)
                ):
                    out[seq]["vector"] = from_blob(blob, dim)
        return out

    def streams(self, namespace: str, most: int) -> list[tuple[str | None, list[int], list[str]]] | None:
        """The live episodes of ``namespace`` as streams: one per session (the episodes without
        a session make one more, session None), each (session, seqs, ids) in the order of time,
        then seq (sequence recall, :mod:`engram.memory.sequence`); None when there are more than
        ``most``."""
        out: list[tuple[str | None, list[int], list[str]]] = []
        with self.db.read() as conn:
            (count,) = conn.execute(
                "SELECT count(*) FROM (SELECT 1 FROM memory_episodes e WHERE e.namespace = ?" + _LIVE + " LIMIT ?)",
                (namespace, most + 1),
            ).fetchone()
            if count > most:
                return None
            for session, seq, id_ in conn.execute(
                "SELECT e.session, e.seq, e.id FROM memory_episodes e WHERE e.namespace = ?" + _LIVE
                + " ORDER BY e.session, e.time, e.seq",
                (namespace,),
            ):
                if not out or out[-1][0] != session:
                    out.append((session, [], []))
                out[-1][1].append(seq)
                out[-1][2].append(id_)
        return out

    def facts(
        self, namespace: str, seqs: Sequence[int], flt: SqlFilter = _NO_FILTER, vectors_for: Iterable[int] = (),
        conn: sqlite3.Connection | None = None,
    ) -> dict[int, EpisodeFacts]:
        """What scoring needs of the live episodes among ``seqs`` that pass ``flt`` (the vector
        only for the seqs in ``vectors_for``). On ``conn`` when given (a :meth:`snapshot`), else
        on a reader of its own."""
        want_vec = set(vectors_for)
        out: dict[int, EpisodeFacts] = {}
        with nullcontext(conn) if conn is not None else self.db.read() as conn:
            for chunk in _chunks(list(dict.fromkeys(seqs))):
                for seq, when, importance, in_session in conn.execute(
                    f"SELECT e.seq, e.time, e.importance, e.session IS NOT NULL FROM memory_episodes e WHERE +e.namespace = ? "
                    f"AND e.seq IN ({_marks(len(chunk))})" + _LIVE + flt.sql,
                    (namespace, *chunk, *flt.args),
                ):
                    out[seq] = (when, importance, None, bool(in_session))
            need = [s for s in out if s in want_vec]
            for chunk in _chunks(need):
                for seq, dim, blob in conn.execute(
                    f"SELECT seq, dim, embedding FROM memory_episodes WHERE seq IN ({_marks(len(chunk))})", tuple(chunk)
                ):
                    when, importance, _, in_session = out[seq]
                    out[seq] = (when, importance, from_blob(blob, dim), in_session)
        return out

    @staticmethod
    def hits(conn: sqlite3.Connection, namespace: str, seqs: Sequence[int]) -> dict[int, dict[str, Any]]:
        """The fields of a recall hit (``memory.recall``'s ``Hit``, less score, parts and
        superseded, in its order) of ``seqs`` in ``namespace``, read on ``conn`` (the recall's
        :meth:`snapshot`, which already found them live and passing its filter)."""
        out: dict[int, dict[str, Any]] = {}
        for chunk in _chunks(list(seqs)):
            marks = _marks(len(chunk))
            for seq, id_, text, when, session, kind, metadata, source, importance, pinned in conn.execute(
                "SELECT seq, id, text, time, session, kind, metadata, source, importance, pinned FROM memory_episodes "
                f"WHERE +namespace = ? AND seq IN ({marks})",
                (namespace, *chunk),
            ):
                out[seq] = {
                    "id": id_, "text": text, "time": when, "session": session, "kind": kind, "tags": [],
                    "metadata": {} if metadata == _EMPTY_METADATA else json.loads(metadata), "source": source,
                    "importance": importance, "pinned": bool(pinned),
                }
            for seq, tag in conn.execute(f"SELECT seq, tag FROM memory_episode_tags WHERE seq IN ({marks}) ORDER BY tag", tuple(chunk)):
                out[seq]["tags"].append(tag)
        return out

    @staticmethod
    def session_neighbours(conn: sqlite3.Connection, namespace: str, seqs: Sequence[int]) -> dict[int, tuple[str, int | None, int | None]]:
        """For the episodes of ``seqs`` that have a session: (session, the live episode just before,
        the one just after), in the session's order of time, then seq (recall's conversation
        context, :mod:`engram.memory.context`). Two look-ups of the (namespace, session, time)
        index each."""
        out: dict[int, tuple[str, int | None, int | None]] = {}
        for chunk in _chunks(list(seqs)):
            for seq, session, before, after in conn.execute(
                "SELECT e.seq, e.session, "
                "(SELECT p.seq FROM memory_episodes p WHERE p.namespace = e.namespace AND p.session = e.session "
                " AND (p.time, p.seq) < (e.time, e.seq) AND p.archived_at IS NULL ORDER BY p.time DESC, p.seq DESC LIMIT 1), "
                "(SELECT n.seq FROM memory_episodes n WHERE n.namespace = e.namespace AND n.session = e.session "
                " AND (n.time, n.seq) > (e.time, e.seq) AND n.archived_at IS NULL ORDER BY n.time, n.seq LIMIT 1) "
                f"FROM memory_episodes e WHERE +e.namespace = ? AND e.seq IN ({_marks(len(chunk))}) AND e.session IS NOT NULL",
                (namespace, *chunk),
            ):
                out[seq] = (session, before, after)
        return out

    def filter_seqs(self, namespace: str, flt: SqlFilter, limit: int, include_pinned: bool = True,
                    include_archived: bool = False) -> list[int] | None:
        """Seqs of the episodes passing ``flt`` (archived ones only with ``include_archived``: a
        forget reaches them, a recall does not); None when there are more than ``limit``."""
        pinned = "" if include_pinned else " AND e.pinned = 0"
        live = "" if include_archived else _LIVE
        with self.db.read() as conn:
            found = [
                seq
                for (seq,) in conn.execute(
                    f"SELECT e.seq FROM memory_episodes e WHERE e.namespace = ?{flt.sql}{pinned}{live} LIMIT ?",
                    (namespace, *flt.args, limit + 1),
                )
            ]
        return None if len(found) > limit else found

    def seqs_between(self, namespace: str, spans: Sequence[tuple[float, float]], flt: SqlFilter,
                     limit: int) -> list[int] | None:
        """Seqs of the live episodes whose time lies in one of ``spans`` ([start, end)) and that
        pass ``flt``; None when there are more than ``limit`` (the ``(namespace, time)`` index
        finds them)."""
        found: list[int] = []
        with self.db.read() as conn:
            for start, end in spans:
                found += [
                    seq
                    for (seq,) in conn.execute(
                        f"SELECT e.seq FROM memory_episodes e WHERE e.namespace = ? AND e.time >= ? AND e.time < ?"
                        f"{flt.sql}{_LIVE} LIMIT ?",
                        (namespace, start, end, *flt.args, limit + 1 - len(found)),
                    )
                ]
                if len(found) > limit:
                    return None
        return found

    def time_range(self, namespace: str) -> tuple[float, float] | None:
        """The earliest and latest time of the namespace's episodes; None when it has none."""
        with self.db.read() as conn:
            first, last = conn.execute(
                "SELECT min(time), max(time) FROM memory_episodes WHERE namespace = ?", (namespace,)
            ).fetchone()
        return None if first is None else (float(first), float(last))

    def matching(self, namespace: str, seqs: Sequence[int], flt: SqlFilter) -> set[int]:
        """Those of ``seqs`` that are live in ``namespace`` and pass ``flt``."""
        out: set[int] = set()
        with self.db.read() as conn:
            for chunk in _chunks(list(seqs)):
                out.update(
                    s
                    for (s,) in conn.execute(
                        f"SELECT e.seq FROM memory_episodes e WHERE +e.namespace = ? AND e.seq IN ({_marks(len(chunk))}){_LIVE}{flt.sql}",
                        (namespace, *chunk, *flt.args),
                    )
                )
        return out

    def keyword(self, namespace: str, terms: Sequence[str], flt: SqlFilter, max_df: int,
                episodes: int) -> list[tuple[int, float]]:
        """Every full-text match of any of ``terms`` in ``namespace`` that passes ``flt``, best
        first, as (seq, bm25) with the namespace's own statistics (:func:`engram.memory.scoring.bm25`;
        ``episodes``: the namespace's live episodes). FTS5's own bm25 would weigh each word by
        its rarity in the whole database, all namespaces together: a name common in one
        namespace but rare elsewhere would count as rare there, and one namespace's texts would
        move another's ranking.

        Terms found in more than ``max_df`` episodes of the database are left out, like stop
        words: they say little about relevance, and reading the tens of thousands of rows they
        match would cost more than the rest of a recall. Counting stops at ``max_df + 1``, so the
        check is cheap."""
        matches: list[list[tuple[int, int]]] = []
        with self.db.read() as conn:
            for term in terms:
                (found,) = conn.execute(
                    "SELECT count(*) FROM (SELECT rowid FROM memory_fts WHERE memory_fts MATCH ? LIMIT ?)", (term, max_df + 1)
                ).fetchone()
                if not 0 < found <= max_df:
                    continue
                # CROSS JOIN keeps the full-text match outermost: the planner would otherwise walk
                # the namespace's episodes and run the match once for each.
                rows = conn.execute(
                    "SELECT f.rowid, length(e.text) FROM memory_fts f CROSS JOIN memory_episodes e ON e.seq = f.rowid "
                    f"WHERE memory_fts MATCH ? AND +e.namespace = ?{_LIVE}",
                    (term, namespace),
                ).fetchall()
                if rows:
                    matches.append(rows)
        scores = bm25(matches, episodes)
        if not flt.empty and scores:
            passing = self.matching(namespace, list(scores), flt)
            scores = {seq: score for seq, score in scores.items() if seq in passing}
        return sorted(scores.items(), key=lambda kv: (-kv[1], -kv[0]))

    def page(self, namespace: str, after: int, limit: int, with_vectors: bool) -> tuple[list[dict[str, Any]], int]:
        """Live episodes with seq > ``after``, in seq order, and the namespace's live total
        (archived episodes are on their way to deletion: an export does not carry them into a
        restore)."""
        with self.db.read() as conn:
            seqs = [
                s
                for (s,) in conn.execute(
                    "SELECT seq FROM memory_episodes WHERE namespace = ? AND seq > ? AND archived_at IS NULL ORDER BY seq LIMIT ?",
                    (namespace, after, limit),
                )
            ]
            total = conn.execute(
                "SELECT count(*) FROM memory_episodes WHERE namespace = ? AND archived_at IS NULL", (namespace,)
            ).fetchone()[0]
        rows = self.rows(namespace, seqs, vectors_for=seqs if with_vectors else ())
        return [rows[s] for s in seqs if s in rows], int(total)

    def stats(self, namespace: str) -> dict[str, Any]:
        with self.db.read() as conn:
            episodes, sessions, oldest, newest, pinned = conn.execute(
                "SELECT count(*), count(DISTINCT session), min(time), max(time), coalesce(sum(pinned), 0) "
                "FROM memory_episodes WHERE namespace = ? AND archived_at IS NULL",
                (namespace,),
            ).fetchone()
            (archived,) = conn.execute(
                "SELECT count(*) FROM memory_episodes WHERE namespace = ? AND archived_at IS NOT NULL", (namespace,)
            ).fetchone()
            kinds = dict(
                conn.execute(
                    "SELECT kind, count(*) FROM memory_episodes WHERE namespace = ? AND archived_at IS NULL GROUP BY kind ORDER BY kind",
                    (namespace,),
                )
            )
            concepts = conn.execute("SELECT count(*) FROM memory_concepts WHERE namespace = ?", (namespace,)).fetchone()[0]
            active, retracted = conn.execute(
                "SELECT coalesce(sum(retracted_at IS NULL), 0), coalesce(sum(retracted_at IS NOT NULL), 0) "
                "FROM memory_relations WHERE namespace = ?",
                (namespace,),
            ).fetchone()
        return {
            "episodes": episodes,
            "sessions": sessions,
            "oldest": oldest,
            "newest": newest,
            "pinned": int(pinned),
            "archived": int(archived),
            "kinds": kinds,
            "concepts": concepts,
            "relations": int(active),
            "relations_retracted": int(retracted),
        }

    # --- for the vector index --------------------------------------------------------------------------

    def namespaces(self) -> list[str]:
        with self.db.read() as conn:
            return [ns for (ns,) in conn.execute("SELECT DISTINCT namespace FROM memory_episodes ORDER BY namespace")]

    def seqs_of(self, namespace: str) -> NDArray[np.int64]:
        """The live episodes' seqs: what the namespace's vector index must hold."""
        with self.db.read() as conn:
            return np.fromiter(
                (
                    s
                    for (s,) in conn.execute(
                        "SELECT seq FROM memory_episodes WHERE namespace = ? AND archived_at IS NULL ORDER BY seq", (namespace,)
                    )
                ),
                dtype=np.int64,
            )

    def max_seq(self) -> int:
        with self.db.read() as conn:
            return int(conn.execute("SELECT coalesce(max(seq), 0) FROM memory_episodes").fetchone()[0])

    def vectors(self, seqs: Sequence[int], chunk: int = _CHUNK) -> Iterator[tuple[list[int], NDArray[np.float32]]]:
        """(seqs, [n, dim] vectors) in chunks, for the seqs given (all of one namespace)."""
        ordered = sorted(int(s) for s in seqs)
        with self.db.read() as conn:
            for part in _chunks(ordered, chunk):
                got: list[int] = []
                rows: list[NDArray[np.float32]] = []
                for seq, dim, blob in conn.execute(
                    f"SELECT seq, dim, embedding FROM memory_episodes WHERE seq IN ({_marks(len(part))}) ORDER BY seq", tuple(part)
                ):
                    got.append(seq)
                    rows.append(from_blob(blob, dim))
                if got:
                    yield got, np.vstack(rows)

    def dims(self) -> dict[str, int]:
        """Namespace -> the dimension of its vectors (the latest episode's)."""
        with self.db.read() as conn:
            return {
                ns: dim
                for ns, dim in conn.execute(
                    "SELECT namespace, dim FROM memory_episodes WHERE seq IN (SELECT max(seq) FROM memory_episodes GROUP BY namespace)"
                )
            }

    # --- housekeeping --------------------------------------------------------------------------------

    def purge(self) -> None:
        """Merge the full-text index into one segment, so that the tokens of deleted rows are
        gone from its b-tree (FTS5 deletes by adding delete markers), and checkpoint the WAL so
        that old page images of forgotten rows leave the log."""
        with self.db.write() as conn:
            conn.execute("INSERT INTO memory_fts (memory_fts) VALUES ('optimize')")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
