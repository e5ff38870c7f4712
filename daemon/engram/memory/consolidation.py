"""What sleep consolidation reads and writes of memory: one interface, so that no other part
names memory's tables, its connections or its index's insides.

Sleep declares what it needs (``engram.sleep.ports.ConsolidationStore``); the composition root
hands it a :class:`MemoryConsolidation` over the memory part. The algorithms (salience scores,
k-means, relation gains, what to forget, whether replay got worse) stay in sleep; the SQL, the
journal of what a rollback must undo (:mod:`engram.memory.journal`) and the topic and relation
writes (:mod:`engram.memory.topics`) are memory's.

Blocking methods run in sleep's worker threads. A write that takes ``give_way`` is one background
transaction (see :meth:`engram.memory.db.MemoryDB.transaction`): it raises
:class:`engram.storage.background.GaveWay` when a foreground request arrives meanwhile, having
changed nothing, and the caller runs it again later. A write that takes ``checkpoint`` keeps what
it returns as the tag's checkpoint in the same transaction, so the unit and the cursor after it
commit together.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
from numpy.typing import NDArray

from engram.memory import journal, merging, topics
from engram.memory.episodic import ReplayQuery
from engram.memory.filters import SqlFilter
from engram.memory.index import Rebuild
from engram.memory.journal import Tag
from engram.memory.neighbours import index_size, nearest_other
from engram.memory.scoring import Weights, combine, recency
from engram.memory.topics import RelationDecay, TopicRef, Topics
from engram.memory.vectors import from_blob

if TYPE_CHECKING:
    from engram.memory.service import Memory

__all__ = ["MemoryConsolidation", "RecentEpisode", "SaliencePage"]

GiveWay = Callable[[], bool] | None
_LIVE = " AND archived_at IS NULL"
_DISCARD_SLICE = 250  # journal entries deleted per transaction


@dataclass
class SaliencePage:
    """A page of episodes to score, as columns."""

    seqs: list[int]
    old: list[float | None]  # the salience stored now
    time: NDArray[np.float64]
    access_count: NDArray[np.float64]
    last_access: NDArray[np.float64]  # NaN: never recalled
    client: NDArray[np.float64]  # the importance the client gave
    links: NDArray[np.float64]  # concepts that mention it plus relations learned from it
    vectors: NDArray[np.float32] | None  # None when the page mixes dimensions

    @classmethod
    def of(cls, rows: list[tuple[Any, ...]]) -> SaliencePage:
        def column(i: int) -> NDArray[np.float64]:
            return np.array([np.nan if r[i] is None else r[i] for r in rows], dtype=np.float64)

        same_dim = len({r[6] for r in rows}) == 1
        return cls(
            seqs=[int(r[0]) for r in rows],
            old=[r[5] for r in rows],
            time=column(1),
            access_count=column(2),
            last_access=column(3),
            client=column(4),
            links=column(8),
            vectors=np.vstack([from_blob(r[7], r[6]) for r in rows]) if same_dim else None,
        )


class RecentEpisode(NamedTuple):
    seq: int
    session: str | None
    time: float
    text: str
    dim: int
    vector: bytes  # as stored; :meth:`MemoryConsolidation.matrix` makes many of them one matrix


class MemoryConsolidation:
    """Memory's side of consolidation, over a memory part (made before it starts)."""

    def __init__(self, memory: Memory) -> None:
        self._memory = memory
        self._db = memory.db
        self._index = memory.index
        self._episodic = memory.episodic

    # --- namespaces and the vector index -----------------------------------------------------------

    def namespaces(self) -> list[str]:
        return self._episodic.store.namespaces()

    def count_live(self, namespace: str) -> int:
        with self._db.read() as conn:
            return int(conn.execute(
                f"SELECT count(*) FROM memory_episodes WHERE namespace = ?{_LIVE}", (namespace,)
            ).fetchone()[0])

    def index_stats(self, namespace: str) -> dict[str, Any]:
        """The namespace's index: kind, dim, vectors, masked, building."""
        return self._index.stats(namespace)

    def index_size(self, namespace: str) -> dict[str, Any]:
        """Vectors, masked entries and approximate bytes of the namespace's index."""
        return index_size(self._index, namespace)

    def vector_dim(self, namespace: str) -> int | None:
        return self._index.dim(namespace)

    def nearest_other(self, namespace: str, seqs: Sequence[int], vectors: NDArray[np.float32],
                      stop: Callable[[], bool] | None = None) -> NDArray[np.float32]:
        """See :func:`engram.memory.neighbours.nearest_other`."""
        return nearest_other(self._index, namespace, seqs, vectors, stop)

    def start_index_rebuild(self, namespace: str) -> Rebuild | None:
        """See :meth:`engram.memory.index.VectorIndex.start_rebuild`."""
        return self._index.start_rebuild(namespace)

    def optimize_text_index(self) -> None:
        """See :meth:`engram.memory.store.EpisodeStore.purge`."""
        self._episodic.store.purge()

    # --- importance ---------------------------------------------------------------------------------

    def salience_page(self, namespace: str, after: int, limit: int) -> SaliencePage | None:
        """The next ``limit`` live episodes after seq ``after``, with what scoring needs."""
        with self._db.read() as conn:
            rows = conn.execute(
                "SELECT e.seq, e.time, e.access_count, e.last_access, e.importance, e.salience, e.dim, e.embedding, "
                "(SELECT count(*) FROM memory_concept_episodes c WHERE c.episode = e.seq) + "
                "(SELECT count(*) FROM memory_relation_sources r WHERE r.episode = e.seq) "
                "FROM memory_episodes e WHERE e.namespace = ? AND e.seq > ? AND e.archived_at IS NULL "
                "ORDER BY e.seq LIMIT ?",
                (namespace, after, limit),
            ).fetchall()
        return SaliencePage.of(rows) if rows else None

    def set_saliences(self, tag: Tag, changes: Sequence[tuple[float, int, float | None]], checkpoint: dict[str, Any],
                      give_way: GiveWay = None) -> None:
        """Store new saliences (value, seq, old value), journalled, with the tag's checkpoint."""
        with self._db.transaction(background=True, give_way=give_way) as conn:
            journal.record(conn, tag, [("salience", seq, old) for _value, seq, old in changes])
            conn.executemany("UPDATE memory_episodes SET salience = ? WHERE seq = ?", [(v, seq) for v, seq, _old in changes])
            journal.save_checkpoint(conn, tag, checkpoint)

    # --- clustering ---------------------------------------------------------------------------------

    def recent_page(self, namespace: str, since: float, before: int | None, limit: int) -> list[RecentEpisode]:
        """Up to ``limit`` live episodes recorded since ``since``, below seq ``before`` (None:
        from the newest), newest first."""
        bound = "" if before is None else " AND seq < ?"
        args: list[Any] = [namespace, since] + ([] if before is None else [before])
        with self._db.read() as conn:
            rows = conn.execute(
                "SELECT seq, session, time, text, dim, embedding FROM memory_episodes "
                f"WHERE namespace = ? AND recorded_at >= ?{bound}{_LIVE} ORDER BY seq DESC LIMIT ?",
                (*args, limit),
            ).fetchall()
        return [RecentEpisode(*row) for row in rows]

    @staticmethod
    def matrix(vectors: Sequence[bytes], dim: int) -> NDArray[np.float32]:
        """Stored vectors of width ``dim`` as one matrix: one join and one frombuffer, since
        stacking 20,000 arrays one by one holds the interpreter lock."""
        return from_blob(b"".join(vectors)).reshape(len(vectors), dim)

    def topics(self, namespace: str) -> Topics:
        """The namespace's topic concepts, for :meth:`find_or_create_topic`."""
        found = Topics(namespace)
        with self._db.read() as conn:
            found.catch_up(conn)
        return found

    def find_or_create_topic(self, tag: Tag, known: Topics, name: str, centroid: NDArray[np.float32], now: float,
                             reuse_similarity: float, give_way: GiveWay = None) -> TopicRef:
        """See :func:`engram.memory.topics.find_or_create` (one transaction)."""
        with self._db.transaction(background=True, give_way=give_way) as conn:
            return topics.find_or_create(conn, tag, known, name, centroid, now, reuse_similarity)

    def link_episodes(self, tag: Tag, concept: int, episodes: Sequence[tuple[int, float]], journalled: bool,
                      give_way: GiveWay = None) -> int:
        """See :func:`engram.memory.topics.link` (one transaction)."""
        with self._db.transaction(background=True, give_way=give_way) as conn:
            return topics.link(conn, tag, concept, episodes, journalled)

    def decay_relations(self, tag: Tag, after: int, limit: int, decay: float, floor: float, now: float,
                        checkpoint: Callable[[RelationDecay], dict[str, Any]], give_way: GiveWay = None) -> dict[str, Any]:
        """One batch of :func:`engram.memory.topics.decay_relations` and the checkpoint made of
        its outcome, in one transaction; returns the checkpoint."""
        with self._db.transaction(background=True, give_way=give_way) as conn:
            state = checkpoint(topics.decay_relations(conn, tag, after, limit, decay, floor, now))
            journal.save_checkpoint(conn, tag, state)
        return state

    def strengthen_relations(self, tag: Tag, pairs: list[list[Any]], evidence: list[list[int]], now: float,
                             checkpoint: Callable[[int, int], dict[str, Any]], give_way: GiveWay = None) -> dict[str, Any]:
        """:func:`engram.memory.topics.strengthen_relations` and the checkpoint made of its
        outcome (strengthened, created), in one transaction; returns the checkpoint."""
        with self._db.transaction(background=True, give_way=give_way) as conn:
            state = checkpoint(*topics.strengthen_relations(conn, tag, pairs, evidence, now))
            journal.save_checkpoint(conn, tag, state)
        return state

    def graph_changed(self, namespace: str) -> None:
        """Concepts or relations of the namespace changed: recall's spreading activation reloads them."""
        self._memory.graph.invalidate(namespace)

    # --- forgetting ---------------------------------------------------------------------------------

    def expired(self, namespace: str, cutoff: float, limit: int) -> list[tuple[int, str, str]]:
        """Archived, unpinned episodes archived at or before ``cutoff``: (seq, id, text_sha256)."""
        with self._db.read() as conn:
            return conn.execute(
                "SELECT seq, id, text_sha256 FROM memory_episodes WHERE namespace = ? AND archived_at IS NOT NULL "
                "AND archived_at <= ? AND pinned = 0 ORDER BY seq LIMIT ?",
                (namespace, cutoff, limit),
            ).fetchall()

    def content_digests(self, text_sha256s: list[str]) -> list[str]:
        """See :meth:`engram.memory.service.Memory.content_digests`."""
        return self._memory.content_digests(text_sha256s)

    async def forget(self, namespace: str, seqs: list[int]) -> list[str]:
        """Delete episodes the way ``memory.forget`` does (scope ``sleep``); returns their ids."""
        return (await self._memory.forget_seqs(namespace, seqs, "sleep")).ids

    def live_after(self, namespace: str, after: int, limit: int) -> list[int]:
        """The next ``limit`` live episodes' seqs after ``after``."""
        with self._db.read() as conn:
            return [s for (s,) in conn.execute(
                f"SELECT seq FROM memory_episodes WHERE namespace = ?{_LIVE} AND seq > ? ORDER BY seq LIMIT ?",
                (namespace, after, limit),
            )]

    def recalled_ids(self, namespace: str) -> set[str]:
        """Ids of the episodes that the namespace's sampled past recalls returned (the replay log)."""
        with self._db.read() as conn:
            return {i for (i,) in conn.execute(
                "SELECT DISTINCT j.value FROM memory_replay_queries q, json_each(q.results) j WHERE q.namespace = ?", (namespace,)
            )}

    def forgettable(self, seqs: Sequence[int], older_than: float, max_salience: float) -> list[tuple[int, str, bool]]:
        """Those of ``seqs`` that are live, older than ``older_than``, of salience (or, unscored,
        importance) at most ``max_salience``, and unlinked: (seq, id, pinned)."""
        with self._db.read() as conn:
            return [(s, i, bool(p)) for s, i, p in conn.execute(
                f"SELECT e.seq, e.id, e.pinned FROM memory_episodes e WHERE e.seq IN ({','.join('?' * len(seqs))}) "
                "AND e.archived_at IS NULL AND e.time < ? AND coalesce(e.salience, e.importance) <= ? "
                "AND NOT EXISTS (SELECT 1 FROM memory_concept_episodes c WHERE c.episode = e.seq) "
                "AND NOT EXISTS (SELECT 1 FROM memory_relation_sources r WHERE r.episode = e.seq) ORDER BY e.seq",
                (*seqs, older_than, max_salience),
            )]

    def archive(self, tag: Tag, seqs: Sequence[int], now: float, give_way: GiveWay = None) -> list[int]:
        """Archive the live, unpinned episodes among ``seqs`` (see
        :meth:`engram.memory.episodic.Episodic.archive_seqs`), journalled as one ``archived``
        entry in the same transaction; returns the seqs archived."""

        def record(conn: Any, archived: list[int]) -> None:
            journal.record(conn, tag, [("archived", archived[0], {"seqs": archived, "at": now})])

        return self._episodic.archive_seqs(tag[1], seqs, now, record, give_way)

    def archived(self, tag: Tag) -> list[tuple[list[int], float]]:
        """The ``archived`` entries of ``tag``, newest first: (seqs, when)."""
        with self._db.read() as conn:
            found = journal.entries(conn, tag, "archived")
        return [(list(before["seqs"]), float(before["at"])) for _id, _kind, _ref, before in found]

    def unarchive(self, namespace: str, seqs: Sequence[int], archived_at: float) -> list[int]:
        """See :meth:`engram.memory.episodic.Episodic.unarchive_seqs`."""
        return self._episodic.unarchive_seqs(namespace, seqs, archived_at)

    # --- near-duplicates ------------------------------------------------------------------------------

    def near_duplicates(self, namespace: str, since: float, after: int, limit: int, threshold: float,
                        stop: Callable[[], bool] | None = None) -> tuple[list[tuple[int, int, float]], int | None]:
        """See :func:`engram.memory.merging.near_duplicates`."""
        return merging.near_duplicates(self._episodic, namespace, since, after, limit, threshold, stop)

    def merge_duplicates(self, tag: Tag, pairs: Sequence[tuple[int, int, float]], now: float,
                         give_way: GiveWay = None) -> list[tuple[str, str, float]]:
        """See :func:`engram.memory.merging.merge` (undone by :meth:`undo` and :meth:`unarchive`)."""
        return merging.merge(self._episodic, tag, pairs, now, give_way)

    def merged_into(self, tag: Tag) -> dict[str, str]:
        """See :func:`engram.memory.merging.merged_into`."""
        return merging.merged_into(self._episodic, tag)

    # --- dream replay -------------------------------------------------------------------------------

    def replay_queries(self, namespace: str, limit: int, seqs: Sequence[int] | None = None) -> list[ReplayQuery]:
        """See :meth:`engram.memory.episodic.Episodic.replay_queries`."""
        return self._episodic.replay_queries(namespace, limit, seqs)

    def live_ids(self, namespace: str, ids: Sequence[str]) -> set[str]:
        return self._episodic.store.live_ids(namespace, ids)

    def _weights(self) -> Weights:
        w = self._memory.settings.recall.weights
        return Weights(w.vector, w.keyword, w.recency, w.importance, w.activation)

    def replay_recall(self, namespace: str, vector: NDArray[np.float32], k: int) -> list[tuple[str, float]]:
        """What ``memory.recall`` returns for a vector alone (no text, filter or activation, the
        configured weights): (id, score), best first."""
        hits = self._episodic.recall(namespace, vector, None, k, SqlFilter(), self._weights(), False)
        return [(h["id"], h["score"]) for h in hits]

    def recall_scores(self, namespace: str, ids: Sequence[str], vector: NDArray[np.float32]) -> dict[str, float]:
        """The score recall would give each of ``ids`` that is live, for that vector alone."""
        store = self._episodic.store
        seqs = store.resolve(namespace, ids)
        facts = store.facts(namespace, list(seqs.values()), vectors_for=list(seqs.values()))  # live ones only
        half_life = self._memory.settings.recall.recency_half_life
        weights = self._weights()
        now = time.time()
        scores = {}
        for episode_id, seq in seqs.items():
            if seq not in facts:
                continue  # archived or gone
            when, importance, stored, _ = facts[seq]
            similarity = float(stored @ vector) if stored is not None and stored.shape == vector.shape else 0.0
            parts = {"vector": max(0.0, min(1.0, similarity)), "keyword": 0.0, "recency": recency(when, now, half_life),
                     "importance": importance, "activation": 0.0}
            scores[episode_id] = combine(parts, weights, False, False)
        return scores

    # --- rollback and the journal's housekeeping ------------------------------------------------------

    def undo(self, tag: Tag, limit: int) -> dict[str, int]:
        """Undo the newest ``limit`` journal entries of ``tag`` (see :func:`engram.memory.journal.undo`)
        in one transaction; returns how many of each kind (empty: nothing was left)."""
        with self._db.transaction() as conn:
            undone: Counter[str] = journal.undo(conn, tag, limit)
        return dict(undone)

    def checkpoints(self, run: int) -> dict[tuple[str, str], dict[str, Any]]:
        """The checkpoints of ``run``, by (namespace, stage)."""
        with self._db.read() as conn:
            return journal.checkpoints(conn, run)

    def drop_checkpoint(self, tag: Tag) -> None:
        with self._db.transaction() as conn:
            journal.drop_checkpoint(conn, tag)

    def adopt(self, runs: Sequence[int], run: int) -> None:
        """The journal and checkpoints of ``runs`` become ``run``'s."""
        if runs:
            with self._db.transaction() as conn:
                journal.adopt(conn, runs, run)

    def discard(self, runs: Sequence[int]) -> None:
        """Delete the journal and checkpoints of ``runs``, in short slices with a gap between
        them: writers waiting for the lock (the audit log, which every audited request waits for)
        get it between slices rather than after the whole journal."""
        if not runs:
            return
        while True:
            with self._db.transaction() as conn:
                gone = journal.discard(conn, runs, _DISCARD_SLICE)
            if gone == 0:
                break
            time.sleep(0.002)
