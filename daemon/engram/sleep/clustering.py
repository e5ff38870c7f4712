"""Clustering: recent episodes become topic concepts, and relations between topics are weighted.

1. *Recent* episodes — recorded since the previous completed run started (or within
   ``sleep.clustering.window`` when there is none), at most ``sleep.clustering.max_episodes`` —
   are clustered with spherical FAISS k-means (k about count / ``per_cluster``, at most
   ``max_k``), on one OpenMP thread. k-means splits a natural group when k is too large, so
   clusters whose centroids are closer than ``reuse_similarity`` are merged afterwards.
2. A cluster of at least ``min_size`` members whose members lie close to its centroid (mean cosine
   at least ``min_cohesion``) becomes a concept of kind ``topic``, named after its top TF-IDF
   terms and carrying the centroid as its vector, linked to its episodes
   (``memory_concept_episodes``, weight = the member's cosine to the centroid). An existing topic
   whose vector is within ``reuse_similarity`` of the centroid is reused instead of duplicated —
   which also makes this step idempotent when a stopped run repeats it.
3. Every sourced relation of the namespace decays (weight × ``decay``); one that falls below
   ``floor`` is retracted.
4. ``related_to`` relations between topics are strengthened: ``cooccurrence_gain`` per session
   in which both topics occur, ``adjacency_gain`` per pair of consecutive recent episodes (time
   order) that belong to the two topics. New relations are created sourced, with a few of the
   episodes that evidenced them.

Steps 3 and 4 are not idempotent, so their cursor commits with each batch. Everything created or
changed is journalled for rollback.
"""

from __future__ import annotations

import json
import math
import re
import zlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, ClassVar

import faiss
import numpy as np
from numpy.typing import NDArray

from engram.memory import ids as idgen
from engram.memory.semantic import concept_key
from engram.memory.vectors import from_blob, to_blob
from engram.sleep.common import archived_clause
from engram.sleep.stage import StageContext

__all__ = ["ClusteringStage", "choose_k", "relation_gains", "top_terms"]

_PAGE = 500  # episodes read per unit
_BATCH = 300  # rows written per transaction (single statements over many rows)
_PAIRS = 40  # topic pairs per transaction (each a few statements)
_LINKS = 100  # episode links per transaction (one statement each)
_SOURCES_PER_RELATION = 10  # evidence episodes attached to a relation per run

_WORD = re.compile(r"[^\W\d_]{3,}", re.UNICODE)
_STOP = frozenset((
    "the", "and", "for", "are", "but", "not", "you", "all", "any", "can", "had", "her", "was", "one", "our",
    "out", "day", "get", "has", "him", "his", "how", "man", "new", "now", "old", "see", "two", "way", "who",
    "boy", "did", "its", "let", "put", "say", "she", "too", "use", "that", "with", "have", "this", "will",
    "your", "from", "they", "know", "want", "been", "good", "much", "some", "time", "very", "when", "come",
    "here", "just", "like", "long", "make", "many", "more", "only", "over", "such", "take", "than", "them",
    "well", "were", "what", "into", "also", "about", "after", "again", "their", "there", "these", "those",
    "which", "would", "could", "should", "other", "being", "where", "while", "because", "between", "through",
    "during", "before", "under",
))


def tokens(text: str) -> list[str]:
    return [w for w in (m.group(0).casefold() for m in _WORD.finditer(text)) if w not in _STOP]


def top_terms(documents: list[list[str]], n: int) -> list[list[str]]:
    """The ``n`` highest TF-IDF terms of each document (a document: one cluster's tokens)."""
    df: Counter[str] = Counter()
    for doc in documents:
        df.update(set(doc))
    count = len(documents)
    out = []
    for doc in documents:
        tf = Counter(doc)
        size = max(1, len(doc))
        scored = sorted(
            ((c / size) * (math.log((1 + count) / (1 + df[t])) + 1.0), t) for t, c in tf.items()
        )
        best = sorted(scored, key=lambda st: (-st[0], st[1]))[:n]
        out.append([t for _s, t in best])
    return out


def choose_k(count: int, per_cluster: int, max_k: int, min_size: int) -> int:
    return max(1, min(max_k, round(count / per_cluster), count // min_size))


def _unit(x: NDArray[np.float32]) -> NDArray[np.float32]:
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(norm, 1e-12)).astype(np.float32)


def kmeans_rounds(vectors: NDArray[np.float32], k: int, rounds: int, seed: int,
                  init: NDArray[np.float32] | None) -> NDArray[np.float32]:
    """``rounds`` iterations of spherical k-means from ``init`` (None: FAISS's seeded start).
    Blocking (worker thread); the caller runs a few rounds per unit of work."""
    dim = vectors.shape[1]
    km = faiss.Kmeans(dim, k, niter=rounds, spherical=True, seed=seed, verbose=False,
                      min_points_per_centroid=1, max_points_per_centroid=max(256, len(vectors)))
    km.train(np.ascontiguousarray(vectors), init_centroids=init)
    return np.asarray(km.centroids, dtype=np.float32).reshape(k, dim)


def assign(vectors: NDArray[np.float32], centroids: NDArray[np.float32], merge: float) -> NDArray[np.int64]:
    """Each vector's nearest centroid, then clusters whose centroids have cosine >= ``merge``
    merged (k-means splits a natural group when k is too large). Blocking (worker thread)."""
    index = faiss.IndexFlatIP(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids))
    _d, nearest = index.search(np.ascontiguousarray(vectors), 1)
    labels = nearest[:, 0].astype(np.int64)
    present = np.unique(labels)
    means = _unit(np.vstack([vectors[labels == c].mean(axis=0) for c in present]))
    parent = list(range(len(present)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    sims = means @ means.T
    for i in range(len(present)):
        for j in range(i + 1, len(present)):
            if sims[i, j] >= merge:
                parent[root(j)] = root(i)
    remap = {int(c): root(i) for i, c in enumerate(present)}
    return np.array([remap[int(c)] for c in labels], dtype=np.int64)


def cluster(vectors: NDArray[np.float32], k: int, iterations: int, merge: float, seed: int = 1234) -> NDArray[np.int64]:
    """Cluster labels for unit ``vectors`` in one go (the stage does the same in units)."""
    if k <= 1 or len(vectors) <= 1:
        return np.zeros(len(vectors), dtype=np.int64)
    return assign(vectors, kmeans_rounds(vectors, k, iterations, seed, None), merge)


def _pairs(a: NDArray[np.int64], b: NDArray[np.int64], ea: NDArray[np.int64], eb: NDArray[np.int64], topics: int,
           per_pair: int) -> dict[tuple[int, int], tuple[int, list[int]]]:
    """Occurrences of topic pairs (topic indexes ``a[i] < b[i]`` below ``topics``, evidenced by
    episodes ``ea[i]``, ``eb[i]``): pair -> (count, the episodes of its first few occurrences)."""
    if not len(a):
        return {}
    key = a * topics + b
    order = np.argsort(key, kind="stable")  # occurrences grouped by pair, in their original order
    counts = np.bincount(key, minlength=topics * topics)
    starts = np.cumsum(counts) - counts
    out: dict[tuple[int, int], tuple[int, list[int]]] = {}
    for k in np.flatnonzero(counts).tolist():
        first = order[starts[k] : starts[k] + min(int(counts[k]), per_pair)]
        episodes = [e for pair in zip(ea[first].tolist(), eb[first].tolist(), strict=True) for e in pair]
        out[divmod(k, topics)] = (int(counts[k]), episodes)
    return out


def _within_groups(group: NDArray[np.int64]) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Every pair of positions (i < j) of a sorted array of group labels that share a label."""
    n = len(group)
    if n < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    bounds = np.flatnonzero(np.diff(group)) + 1
    ends = np.repeat(np.append(bounds, n), np.diff(np.concatenate([[0], bounds, [n]])))
    after = ends - np.arange(n) - 1  # later members of the same group
    i = np.repeat(np.arange(n), after)
    j = i + 1 + np.arange(len(i)) - np.repeat(np.cumsum(after) - after, after)
    return i, j


def relation_gains(seqs: list[int], sessions: list[str | None], times: list[float], concept_of: dict[int, int],
                   cooccurrence_gain: float, adjacency_gain: float, per_pair: int
                   ) -> tuple[dict[tuple[int, int], float], dict[tuple[int, int], list[int]]]:
    """The gain of each topic pair ``(a, b)``, ``a < b``: ``cooccurrence_gain`` per session in
    which both occur plus ``adjacency_gain`` per pair of consecutive episodes (time order) of the
    two topics; and up to ``per_pair`` distinct episodes that evidence it, co-occurrences first.
    Vectorised: 20,000 episodes in sessions of 25 make a quarter of a million session pairs, which
    as a Python loop holds the interpreter for a tenth of a second (and every request waits)."""
    n = len(seqs)
    seq = np.asarray(seqs, dtype=np.int64)
    concept = np.fromiter((concept_of.get(x, -1) for x in seqs), dtype=np.int64, count=n)
    known = concept >= 0
    ids, index = np.unique(concept[known], return_inverse=True)
    topic = np.full(n, -1, dtype=np.int64)  # the concept as an index into ids
    topic[known] = index
    codes: dict[str, int] = {}
    session = np.fromiter((-1 if x is None else codes.setdefault(x, len(codes)) for x in sessions), dtype=np.int64, count=n)

    # co-occurrence: each topic's first episode in each session, then every pair within a session
    rows = np.flatnonzero((session >= 0) & known)
    _u, first = np.unique(session[rows] * len(ids) + topic[rows], return_index=True)
    rows = rows[first]  # sorted by (session, topic)
    i, j = _within_groups(session[rows])
    cooccur = _pairs(topic[rows[i]], topic[rows[j]], seq[rows[i]], seq[rows[j]], len(ids), per_pair)

    # adjacency: consecutive episodes in time order that belong to two different topics
    order = np.lexsort((seq, np.asarray(times, dtype=np.float64)))
    t, e = topic[order], seq[order]
    keep = (t[:-1] >= 0) & (t[1:] >= 0) & (t[:-1] != t[1:])
    swap = t[:-1] > t[1:]
    lo, hi = np.where(swap, t[1:], t[:-1])[keep], np.where(swap, t[:-1], t[1:])[keep]
    adjacent = _pairs(lo, hi, e[:-1][keep], e[1:][keep], len(ids), per_pair)

    gains: dict[tuple[int, int], float] = {}
    evidence: dict[tuple[int, int], list[int]] = {}
    for a, b in cooccur.keys() | adjacent.keys():
        n_co, ev_co = cooccur.get((a, b), (0, []))
        n_adj, ev_adj = adjacent.get((a, b), (0, []))
        pair = (int(ids[a]), int(ids[b]))  # ids are sorted, so a < b keeps the concepts in order
        gains[pair] = n_co * cooccurrence_gain + n_adj * adjacency_gain
        evidence[pair] = list(dict.fromkeys(ev_co + ev_adj))[:per_pair]
    return gains, evidence


@dataclass
class Recent:
    seqs: list[int] = field(default_factory=list)
    sessions: list[str | None] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    dims: list[int] = field(default_factory=list)
    blobs: list[bytes] = field(default_factory=list)  # stored vectors, stacked in one go (see matrix)


class ClusteringStage:
    name: ClassVar[str] = "clustering"

    async def run(self, ctx: StageContext) -> dict[str, Any]:
        ctx.stage = ctx.stage or self.name
        s = ctx.settings.clustering
        db = ctx.memory.db
        namespace = ctx.namespace
        cursor = dict(ctx.saved)
        now = float(cursor.setdefault("now", ctx.clock()))
        figures: dict[str, Any] = {
            "episodes": 0, "clusters": 0, "concepts_created": 0, "concepts_reused": 0, "links": 0,
            "relations_created": 0, "relations_strengthened": 0, "relations_decayed": 0, "relations_retracted": 0,
        }
        figures.update(cursor.get("figures", {}))

        if "since" not in cursor:
            def previous() -> float | None:
                with db.read() as conn:
                    row = conn.execute(
                        "SELECT max(started_at) FROM sleep_runs WHERE outcome = 'completed' AND id != ?", (ctx.run_id,)
                    ).fetchone()
                    return row[0] if row else None

            started = await ctx.thread(previous)
            cursor["since"] = started if started is not None else now - s.window
        since = float(cursor["since"])

        # 1. read the recent episodes, a page per unit
        recent = Recent()
        before = None
        while len(recent.seqs) < s.max_episodes:
            await ctx.step()

            def page(before: int | None = before) -> list[tuple[Any, ...]]:
                with db.read() as conn:
                    extra = archived_clause(conn)
                    bound = "" if before is None else " AND seq < ?"
                    args: list[Any] = [namespace, since] + ([] if before is None else [before])
                    rows = conn.execute(
                        "SELECT seq, session, time, text, dim, embedding FROM memory_episodes "
                        f"WHERE namespace = ? AND recorded_at >= ?{bound}{extra} ORDER BY seq DESC LIMIT ?",
                        (*args, min(_PAGE, s.max_episodes - len(recent.seqs))),
                    ).fetchall()
                return rows

            rows = await ctx.thread(page)
            if not rows:
                break
            for seq, session, time_, text, dim, blob in rows:
                recent.seqs.append(int(seq))
                recent.sessions.append(session)
                recent.times.append(float(time_))
                recent.texts.append(text)
                recent.dims.append(int(dim))
                recent.blobs.append(blob)
            before = int(rows[-1][0])
        def same_width(recent: Recent) -> Recent:
            dim = Counter(recent.dims).most_common(1)[0][0]
            keep = [i for i, d in enumerate(recent.dims) if d == dim]
            return Recent(
                [recent.seqs[i] for i in keep], [recent.sessions[i] for i in keep], [recent.times[i] for i in keep],
                [recent.texts[i] for i in keep], [dim] * len(keep), [recent.blobs[i] for i in keep],
            )

        if recent.seqs:
            recent = await ctx.thread(same_width, recent)
        figures["episodes"] = len(recent.seqs)
        if len(recent.seqs) < s.min_size:
            return await self._relations(ctx, cursor, figures, recent, {}, now)

        # 2. cluster (one unit: FAISS on one thread, in a worker thread)
        await ctx.step()
        # one join and one frombuffer: stacking 20,000 arrays one by one holds the interpreter lock
        matrix = await ctx.thread(lambda: from_blob(b"".join(recent.blobs)).reshape(len(recent.blobs), recent.dims[0]))
        k = choose_k(len(recent.seqs), s.per_cluster, s.max_k, s.min_size)
        seed = zlib.crc32(f"{ctx.run_id}:{namespace}".encode()) & 0x7FFFFFFF
        if k <= 1:
            labels = np.zeros(len(matrix), dtype=np.int64)
        else:
            # a few k-means iterations per unit: about 1e9 multiply-adds (~0.1-0.3 s on one core)
            per_unit = max(1, int(1e9 // max(1, len(matrix) * k * matrix.shape[1])))
            centroids = None
            for done in range(0, s.iterations, per_unit):
                if done:
                    await ctx.step()
                rounds = min(per_unit, s.iterations - done)
                centroids = await ctx.thread(kmeans_rounds, matrix, k, rounds, seed, centroids)
                ctx.progress(done + rounds, s.iterations)
            await ctx.step()
            labels = await ctx.thread(assign, matrix, centroids, s.reuse_similarity)

        def gather(labels: NDArray[np.int64] = labels) -> list[tuple[list[int], NDArray[np.float32], NDArray[np.float32]]]:
            # A worker thread: over tens of thousands of episodes this is tens of milliseconds of
            # Python, which on the event loop would stall every request for that long.
            order = np.argsort(labels, kind="stable")
            found = []
            for group in np.split(order, np.flatnonzero(np.diff(labels[order])) + 1):
                members = group.tolist()
                if len(members) < s.min_size:
                    continue
                centroid = _unit(matrix[members].mean(axis=0))
                cos = matrix[members] @ centroid
                if float(cos.mean()) < s.min_cohesion:
                    continue
                found.append((members, centroid, cos))
            found.sort(key=lambda c: min(recent.seqs[i] for i in c[0]))
            return found

        await ctx.step()
        clusters = await ctx.thread(gather)
        figures["clusters"] = len(clusters)
        documents: list[list[str]] = []
        for members, _c, _cos in clusters:  # tokenizing is pure Python: one cluster per unit
            await ctx.step()
            group = [recent.texts[i] for i in members]
            documents.append(await ctx.thread(lambda group=group: [t for text in group for t in tokens(text)]))
        names = await ctx.thread(top_terms, documents, s.terms)

        # 3. concepts and links, one short transaction per cluster (idempotent: reuse by vector)
        concept_of: dict[int, int] = {}  # episode seq -> concept seq
        created = reused = links = 0
        for (members, centroid, cos), terms in zip(clusters, names, strict=True):
            await ctx.step()
            name = " ".join(terms) if terms else f"topic {zlib.crc32(str(recent.seqs[members[0]]).encode()):08x}"
            episodes = [(recent.seqs[i], float(max(0.0, min(1.0, c)))) for i, c in zip(members, cos.tolist(), strict=True)]
            concept, was_created, added = await ctx.thread(self._materialize, ctx, name, centroid, episodes, now)
            created += int(was_created)
            reused += int(not was_created)
            links += added
            for seq, _w in episodes:
                concept_of[seq] = concept
        figures.update(concepts_created=figures["concepts_created"] + created, concepts_reused=reused,
                       links=figures["links"] + links)
        ctx.memory.graph.invalidate(namespace)
        return await self._relations(ctx, cursor, figures, recent, concept_of, now)

    # --- concepts -----------------------------------------------------------------------------------

    @staticmethod
    def _materialize(ctx: StageContext, name: str, centroid: NDArray[np.float32], episodes: list[tuple[int, float]],
                     now: float) -> tuple[int, bool, int]:
        """Find or create the topic concept for a cluster and link its episodes (one transaction
        per _BATCH links). Returns (concept seq, created, links added)."""
        namespace = ctx.namespace
        s = ctx.settings.clustering
        db = ctx.memory.db
        with db.transaction(background=True) as conn:
            best, best_sim = None, -2.0
            for seq, dim, blob in conn.execute(
                "SELECT seq, dim, embedding FROM memory_concepts WHERE namespace = ? AND kind = 'topic' AND embedding IS NOT NULL",
                (namespace,),
            ):
                if dim != centroid.shape[0]:
                    continue
                sim = float(from_blob(blob, dim) @ centroid)
                if sim > best_sim:
                    best, best_sim = int(seq), sim
            mine = {
                int(ref) for (ref,) in conn.execute(
                    "SELECT ref FROM sleep_changes WHERE run = ? AND namespace = ? AND stage = ? AND kind = 'concept'",
                    (ctx.run_id, namespace, ctx.stage),
                )
            }
            if best is not None and best_sim >= s.reuse_similarity:
                concept, created = best, False
            else:
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
                ctx.journal_in(conn, [ctx.journal_row("concept", concept, None)])
                mine.add(concept)
                created = True
        added = 0
        for start in range(0, len(episodes), _LINKS):
            with db.transaction(background=True) as conn:
                journal = []
                for seq, weight in episodes[start : start + _LINKS]:
                    row = conn.execute(
                        "INSERT INTO memory_concept_episodes (concept, episode, weight) "
                        "SELECT ?, seq, ? FROM memory_episodes WHERE seq = ? ON CONFLICT DO NOTHING RETURNING episode",
                        (concept, weight, seq),
                    ).fetchone()
                    if row is not None:
                        added += 1
                        if concept not in mine:  # links of a concept this run created go with it
                            journal.append(ctx.journal_row("link", f"{concept}:{seq}", None))
                ctx.journal_in(conn, journal)
        return concept, created, added

    # --- relations ----------------------------------------------------------------------------------

    async def _relations(self, ctx: StageContext, cursor: dict[str, Any], figures: dict[str, Any], recent: Recent,
                         concept_of: dict[int, int], now: float) -> dict[str, Any]:
        s = ctx.settings.clustering
        db = ctx.memory.db
        namespace = ctx.namespace

        # decay every sourced relation of the namespace, a batch per transaction
        while not cursor.get("decayed"):
            await ctx.step()

            def decay(after: int = int(cursor.get("decay_after", 0))) -> tuple[int, int, int]:
                with db.transaction(background=True) as conn:
                    rows = conn.execute(
                        "SELECT seq, weight FROM memory_relations WHERE namespace = ? AND sourced = 1 AND retracted_at IS NULL "
                        "AND seq > ? ORDER BY seq LIMIT ?",
                        (namespace, after, _BATCH),
                    ).fetchall()
                    journal, weaker, retract = [], [], []
                    for seq, weight in rows:
                        journal.append(ctx.journal_row("relation_weight", seq, {"weight": weight, "retracted_at": None}))
                        new = weight * s.decay
                        if new < s.floor:
                            retract.append((now, seq))
                        else:
                            weaker.append((new, seq))
                    ctx.journal_in(conn, journal)
                    conn.executemany("UPDATE memory_relations SET weight = ? WHERE seq = ?", weaker)
                    conn.executemany("UPDATE memory_relations SET retracted_at = ? WHERE seq = ?", retract)
                    last = int(rows[-1][0]) if rows else after
                    cursor["decay_after"] = last
                    cursor["decayed"] = not rows
                    figures["relations_decayed"] += len(weaker)
                    figures["relations_retracted"] += len(retract)
                    cursor["figures"] = figures
                    ctx.save_in(conn, cursor)
                    return len(rows), len(weaker), len(retract)

            await ctx.thread(decay)

        # strengthen related_to between topics by co-occurrence and adjacency
        def tally() -> tuple[dict[tuple[int, int], float], dict[tuple[int, int], list[int]]]:
            return relation_gains(recent.seqs, recent.sessions, recent.times, concept_of, s.cooccurrence_gain,
                                  s.adjacency_gain, _SOURCES_PER_RELATION)

        await ctx.step()
        gains, evidence = await ctx.thread(tally)
        pairs = sorted(p for p, g in gains.items() if g > 0)
        done = int(cursor.get("pairs_done", 0))
        while done < len(pairs):
            await ctx.step()
            batch = pairs[done : done + _PAIRS]

            def strengthen(batch: list[tuple[int, int]] = batch, upto: int = done + len(batch)) -> None:
                with db.transaction(background=True) as conn:
                    journal = []
                    for a, b in batch:
                        gain = gains[(a, b)]
                        sources = evidence[(a, b)]
                        row = conn.execute(
                            "SELECT seq, weight FROM memory_relations WHERE type = 'related_to' AND retracted_at IS NULL "
                            "AND ((src = ? AND dst = ?) OR (src = ? AND dst = ?)) ORDER BY seq LIMIT 1",
                            (a, b, b, a),
                        ).fetchone()
                        if row is None:
                            exists = conn.execute(
                                "SELECT count(*) FROM memory_concepts WHERE seq IN (?, ?)", (a, b)
                            ).fetchone()[0]
                            if exists != 2:
                                continue
                            relation = int(conn.execute(
                                "INSERT INTO memory_relations (id, namespace, src, dst, type, weight, recorded_at, sourced) "
                                "VALUES (?, ?, ?, ?, 'related_to', ?, ?, 1) RETURNING seq",
                                (idgen.new_id(idgen.RELATION, now), namespace, a, b, min(1.0, gain), now),
                            ).fetchone()[0])
                            journal.append(ctx.journal_row("relation", relation, None))
                            figures["relations_created"] += 1
                            fresh = True
                        else:
                            relation, weight = int(row[0]), float(row[1])
                            journal.append(ctx.journal_row("relation_weight", relation, {"weight": weight, "retracted_at": None}))
                            conn.execute("UPDATE memory_relations SET weight = ?, sourced = 1 WHERE seq = ?",
                                         (min(1.0, weight + gain), relation))
                            figures["relations_strengthened"] += 1
                            fresh = False
                        for episode in sources:
                            got = conn.execute(
                                "INSERT INTO memory_relation_sources (relation, episode) SELECT ?, seq FROM memory_episodes "
                                "WHERE seq = ? ON CONFLICT DO NOTHING RETURNING episode",
                                (relation, episode),
                            ).fetchone()
                            if got is not None and not fresh:
                                journal.append(ctx.journal_row("relation_source", f"{relation}:{episode}", None))
                    ctx.journal_in(conn, journal)
                    cursor["pairs_done"] = upto
                    cursor["figures"] = figures
                    ctx.save_in(conn, cursor)

            await ctx.thread(strengthen)
            done += len(batch)
            ctx.progress(done, len(pairs))
        ctx.memory.graph.invalidate(namespace)
        return {key: value for key, value in figures.items()}

    # --- rollback -----------------------------------------------------------------------------------

    async def rollback(self, ctx: StageContext) -> dict[str, Any]:
        ctx.stage = ctx.stage or self.name
        db = ctx.memory.db
        undone: Counter[str] = Counter()
        while True:
            await ctx.step()

            def undo() -> int:
                with db.transaction() as conn:
                    rows = conn.execute(
                        "SELECT id, kind, ref, before FROM sleep_changes WHERE run = ? AND namespace = ? AND stage = ? "
                        "ORDER BY id DESC LIMIT ?",
                        (ctx.run_id, ctx.namespace, ctx.stage, _BATCH),
                    ).fetchall()
                    for _id, kind, ref, before in rows:
                        if kind == "concept":
                            conn.execute("DELETE FROM memory_concepts WHERE seq = ?", (int(ref),))
                        elif kind == "link":
                            concept, episode = (int(x) for x in ref.split(":"))
                            conn.execute("DELETE FROM memory_concept_episodes WHERE concept = ? AND episode = ?", (concept, episode))
                        elif kind == "relation":
                            conn.execute("DELETE FROM memory_relations WHERE seq = ?", (int(ref),))
                        elif kind == "relation_source":
                            relation, episode = (int(x) for x in ref.split(":"))
                            conn.execute("DELETE FROM memory_relation_sources WHERE relation = ? AND episode = ?", (relation, episode))
                        elif kind == "relation_weight":
                            old = json.loads(before)
                            conn.execute("UPDATE memory_relations SET weight = ?, retracted_at = ? WHERE seq = ?",
                                         (old["weight"], old["retracted_at"], int(ref)))
                        undone[kind] += 1
                    conn.executemany("DELETE FROM sleep_changes WHERE id = ?", [(r[0],) for r in rows])
                    return len(rows)

            if await ctx.thread(undo) == 0:
                break
        ctx.memory.graph.invalidate(ctx.namespace)
        return dict(undone)
