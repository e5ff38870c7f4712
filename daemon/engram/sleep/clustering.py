"""Clustering: recent episodes become topic concepts, and relations between topics are weighted.

1. *Recent* episodes — recorded since the previous completed run started (or within
   ``sleep.clustering.window`` when there is none), at most ``sleep.clustering.max_episodes`` —
   are grouped by average-linkage agglomeration of their unit vectors
   (:mod:`engram.sleep.agglomeration`): groups merge, closest first, while the mean cosine
   between their members is at least ``merge_similarity``, so the number of topics follows the
   data. Above ``max_k`` episodes, spherical FAISS k-means (one OpenMP thread) first groups them
   into ``max_k`` small groups, which are merged the same way.
2. A group of at least ``min_size`` members whose members lie close to its centroid (mean cosine
   at least ``min_cohesion``) becomes a concept of kind ``topic``, named after its most
   distinctive words (class-based TF-IDF over every recent episode,
   :mod:`engram.sleep.topic_names`) and carrying the centroid as its vector, linked to its
   episodes (weight = the member's cosine to the centroid). An existing topic
   whose vector is within ``reuse_similarity`` of the centroid is reused instead of duplicated —
   which also makes this step idempotent when a stopped run repeats it.
3. Every sourced relation of the namespace decays (weight × ``decay``); one that falls below
   ``floor`` is retracted.
4. ``related_to`` relations between topics are strengthened: ``cooccurrence_gain`` per session
   in which both topics occur, ``adjacency_gain`` per pair of consecutive recent episodes (time
   order) that belong to the two topics; a pair whose gain in the run is below ``min_gain`` is
   left alone (one shared session among many topics is chance, and with hundreds of topics
   every pair would get a relation). New relations are created sourced, with a few of the
   episodes that evidenced them.

Steps 3 and 4 are not idempotent, so their cursor commits with each batch (memory's checkpoint
for the stage). Memory journals everything created or changed, for rollback; the SQL of these
writes is memory's (:mod:`engram.memory.topics`), the choices are made here.
"""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import faiss
import numpy as np
from numpy.typing import NDArray

from engram.sleep.agglomeration import Agglomeration
from engram.sleep.ports import RelationDecay
from engram.sleep.stage import StageContext
from engram.sleep.topic_names import name_topics, tokens

__all__ = ["ClusteringStage", "Gains", "cluster", "relation_gains"]

_PAGE = 500  # episodes read per unit
_BATCH = 300  # rows written per transaction (single statements over many rows)
_PAIRS = 25  # topic pairs per transaction (a strengthening transaction of 25 pairs and their evidence: about 10 ms)
_LINKS = 50  # episode links per transaction
_SOURCES_PER_RELATION = 10  # evidence episodes attached to a relation per run

_MERGES = 64  # agglomeration merges per unit (each O(groups x dim))
_TOPICS_SHOWN = 50  # topics named in the figures, largest first


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


def nearest_centroid(vectors: NDArray[np.float32], centroids: NDArray[np.float32]) -> NDArray[np.int64]:
    """Each vector's nearest centroid, renumbered 0.. over the centroids that got any (blocking)."""
    index = faiss.IndexFlatIP(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids))
    _d, nearest = index.search(np.ascontiguousarray(vectors), 1)
    return np.unique(nearest[:, 0], return_inverse=True)[1].astype(np.int64).reshape(len(vectors))


def group_sums(vectors: NDArray[np.float32], groups: NDArray[np.int64]) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """The sum of the vectors of each group (numbered 0..) and its size: what average linkage needs."""
    sizes = np.bincount(groups)
    sums = np.zeros((len(sizes), vectors.shape[1]), dtype=np.float64)
    np.add.at(sums, groups, vectors.astype(np.float64))
    return sums, sizes


def cluster(vectors: NDArray[np.float32], threshold: float, max_groups: int, iterations: int = 20,
            seed: int = 1234) -> NDArray[np.int64]:
    """Cluster labels for unit ``vectors`` in one go, as the stage computes them in units: above
    ``max_groups`` vectors, spherical k-means into ``max_groups`` groups first; then average
    linkage (:mod:`engram.sleep.agglomeration`) down to ``threshold``."""
    if len(vectors) > max_groups:
        first = nearest_centroid(vectors, kmeans_rounds(vectors, max_groups, iterations, seed, None))
    else:
        first = np.arange(len(vectors), dtype=np.int64)
    work = Agglomeration(*group_sums(vectors, first), threshold)
    while not work.merge(1 << 30):
        pass
    return work.labels()[first]


def _first_per_key(key: NDArray[np.int64], limit: int) -> NDArray[np.int64]:
    """Positions of the first ``limit`` elements of each distinct ``key`` (in array order),
    grouped by key in ascending order."""
    order = np.argsort(key, kind="stable")
    k = key[order]
    starts = np.flatnonzero(np.r_[True, k[1:] != k[:-1]]) if len(k) else np.zeros(0, np.int64)
    rank = np.arange(len(k)) - np.repeat(starts, np.diff(np.r_[starts, len(k)]))
    return order[rank < limit]


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


@dataclass
class Gains:
    """Topic pairs ``(a[i], b[i])`` (concept seqs, ``a < b``, in ascending order) with a positive
    gain, and the episodes that evidence them: rows of ``episode`` for pair ``pair[r]``, grouped
    by pair, co-occurrences first."""

    a: NDArray[np.int64]
    b: NDArray[np.int64]
    gain: NDArray[np.float64]
    pair: NDArray[np.int64]
    episode: NDArray[np.int64]

    def __len__(self) -> int:
        return len(self.a)

    def rows(self, start: int, stop: int) -> tuple[list[list[Any]], list[list[int]]]:
        """Pairs ``start:stop`` as ``[a, b, gain]`` rows, and their evidence as ``[a, b, episode]``."""
        lo, hi = np.searchsorted(self.pair, [start, stop])
        pairs = np.stack([self.a[start:stop], self.b[start:stop]], axis=1).tolist()
        for row, gain in zip(pairs, self.gain[start:stop].tolist(), strict=True):
            row.append(gain)
        which = self.pair[lo:hi]
        evidence = np.stack([self.a[which], self.b[which], self.episode[lo:hi]], axis=1).tolist()
        return pairs, evidence


def relation_gains(seqs: Sequence[int], sessions: Sequence[int], times: Sequence[float], concepts: NDArray[np.int64],
                   cooccurrence_gain: float, adjacency_gain: float, per_pair: int, min_gain: float = 0.0) -> Gains:
    """The gain of each pair of topics: ``cooccurrence_gain`` per session in which both occur
    plus ``adjacency_gain`` per pair of consecutive episodes (time order) of the two topics, for
    the pairs whose gain is positive and at least ``min_gain``; and
    up to ``per_pair`` distinct episodes that evidence it, co-occurrences first. Episode
    ``seqs[i]`` belongs to session ``sessions[i]`` (a number; -1: none) and topic ``concepts[i]``
    (-1: none).

    numpy throughout: 20,000 episodes in sessions of 25 make a quarter of a million session
    pairs and a few thousand topic pairs. As Python loops that held the interpreter lock for a
    tenth of a second, and every request in flight stalled at each of its hand-offs."""
    n = len(seqs)
    seq = np.asarray(seqs, dtype=np.int64).reshape(n)
    concept = np.asarray(concepts, dtype=np.int64).reshape(n)
    known = concept >= 0
    ids, index = np.unique(concept[known], return_inverse=True)
    topic = np.full(n, -1, dtype=np.int64)  # the concept as an index into ids
    topic[known] = index
    count = len(ids)
    session = np.asarray(sessions, dtype=np.int64).reshape(n)

    # co-occurrence: each topic's first episode in each session, then every pair within a session
    rows = np.flatnonzero((session >= 0) & known)
    _u, first = np.unique(session[rows] * count + topic[rows], return_index=True)
    rows = rows[first]  # sorted by (session, topic)
    i, j = _within_groups(session[rows])
    co_key = topic[rows[i]] * count + topic[rows[j]]
    co_ep = np.stack([seq[rows[i]], seq[rows[j]]], axis=1)

    # adjacency: consecutive episodes in time order that belong to two different topics
    order = np.lexsort((seq, np.asarray(times, dtype=np.float64).reshape(n)))
    t, e = topic[order], seq[order]
    keep = (t[:-1] >= 0) & (t[1:] >= 0) & (t[:-1] != t[1:])
    swap = t[:-1] > t[1:]
    adj_key = (np.where(swap, t[1:], t[:-1]) * count + np.where(swap, t[:-1], t[1:]))[keep]
    adj_ep = np.stack([e[:-1][keep], e[1:][keep]], axis=1)

    keys, counted = np.unique(np.concatenate([co_key, adj_key]), return_inverse=True)
    gain = (np.bincount(counted[: len(co_key)], minlength=len(keys)) * cooccurrence_gain
            + np.bincount(counted[len(co_key):], minlength=len(keys)) * adjacency_gain)
    positive = (gain > 0) & (gain >= min_gain)

    # evidence: both episodes of each pair's first per_pair occurrences of each kind
    # (co-occurrences first), then each pair's first per_pair distinct episodes among them
    co, adj = _first_per_key(co_key, per_pair), _first_per_key(adj_key, per_pair)
    ev_key = np.repeat(np.concatenate([co_key[co], adj_key[adj]]), 2)
    ev_episode = np.concatenate([co_ep[co], adj_ep[adj]]).reshape(-1)
    by_episode = np.lexsort((np.arange(len(ev_key)), ev_episode, ev_key))
    repeated = np.zeros(len(by_episode), dtype=bool)
    repeated[1:] = (np.diff(ev_key[by_episode]) == 0) & (np.diff(ev_episode[by_episode]) == 0)
    distinct = np.sort(by_episode[~repeated])  # the first of each (pair, episode), in the order above
    chosen = distinct[_first_per_key(ev_key[distinct], per_pair)]  # grouped by pair
    pair_of = np.searchsorted(keys, ev_key[chosen])  # index into keys
    kept = positive[pair_of]
    renumber = np.cumsum(positive) - 1  # index among the pairs with a positive gain
    return Gains(
        a=ids[keys[positive] // max(count, 1)], b=ids[keys[positive] % max(count, 1)], gain=gain[positive],
        pair=renumber[pair_of[kept]], episode=ev_episode[chosen][kept],
    )


def _advanced(cursor: dict[str, Any], figures: dict[str, Any], counted: dict[str, int], **position: Any) -> dict[str, Any]:
    """The cursor after a unit: ``position`` updated and ``counted`` added to the figures. New
    dictionaries: the unit's transaction may give way, and nothing may change before it commits."""
    return dict(cursor, **position, figures={**figures, **{k: figures[k] + v for k, v in counted.items()}})


@dataclass
class Recent:
    seqs: list[int] = field(default_factory=list)
    sessions: list[int] = field(default_factory=list)  # numbered in order of appearance; -1: none
    times: list[float] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    dims: list[int] = field(default_factory=list)
    blobs: list[bytes] = field(default_factory=list)  # stored vectors, stacked in one go (store.matrix)


class ClusteringStage:
    name: ClassVar[str] = "clustering"

    async def run(self, ctx: StageContext) -> dict[str, Any]:
        ctx.stage = ctx.stage or self.name
        s = ctx.settings.clustering
        store = ctx.store
        namespace = ctx.namespace
        cursor = dict(ctx.saved)
        now = float(cursor.setdefault("now", ctx.clock()))
        figures: dict[str, Any] = {
            "episodes": 0, "clusters": 0, "unclustered": 0, "topics": [], "concepts_created": 0, "concepts_reused": 0,
            "links": 0, "relations_created": 0, "relations_strengthened": 0, "relations_decayed": 0, "relations_retracted": 0,
        }
        figures.update(cursor.get("figures", {}))

        if "since" not in cursor:
            started = await ctx.thread(ctx.db.last_completed_start, ctx.run_id)
            cursor["since"] = started if started is not None else now - s.window
        since = float(cursor["since"])

        # 1. read the recent episodes, a page per unit
        recent = Recent()
        sessions: dict[str, int] = {}
        before = None
        while len(recent.seqs) < s.max_episodes:
            await ctx.step()
            rows = await ctx.thread(store.recent_page, namespace, since, before, min(_PAGE, s.max_episodes - len(recent.seqs)))
            if not rows:
                break
            for row in rows:
                recent.seqs.append(int(row.seq))
                recent.sessions.append(-1 if row.session is None else sessions.setdefault(row.session, len(sessions)))
                recent.times.append(float(row.time))
                recent.texts.append(row.text)
                recent.dims.append(int(row.dim))
                recent.blobs.append(row.vector)
            before = int(rows[-1].seq)
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
            figures["unclustered"] = len(recent.seqs)
            return await self._relations(ctx, cursor, figures, recent, np.full(len(recent.seqs), -1, dtype=np.int64), now)

        # 2. cluster: average linkage down to merge_similarity, a few merges per unit; above
        # max_k episodes, spherical k-means (FAISS, one thread) into max_k small groups first
        await ctx.step()
        matrix = await ctx.thread(lambda: _unit(store.matrix(recent.blobs, recent.dims[0])))
        seed = zlib.crc32(f"{ctx.run_id}:{namespace}".encode()) & 0x7FFFFFFF
        if len(matrix) > s.max_k:
            # a few k-means iterations per unit, about 1e9 multiply-adds (~0.1-0.3 s on one core), and
            # at least one: n x max_k x dim, at most 8e9 (20,000 episodes of 384 dimensions), which
            # FAISS computes in the worker thread without the interpreter lock
            per_unit = max(1, int(1e9 // max(1, len(matrix) * s.max_k * matrix.shape[1])))
            centroids = None
            for done in range(0, s.iterations, per_unit):
                if done:
                    await ctx.step()
                rounds = min(per_unit, s.iterations - done)
                centroids = await ctx.thread(kmeans_rounds, matrix, s.max_k, rounds, seed, centroids)
            await ctx.step()
            first = await ctx.thread(nearest_centroid, matrix, centroids)
        else:
            first = np.arange(len(matrix), dtype=np.int64)
        await ctx.step()
        # the similarities of up to max_k groups (a matrix product): in a worker thread too
        work = await ctx.thread(lambda: Agglomeration(*group_sums(matrix, first), s.merge_similarity))
        groups = len(work.sizes)
        while not await ctx.thread(work.merge, _MERGES):
            ctx.progress(groups - int(work.alive.sum()), groups)
            await ctx.step()
        labels = await ctx.thread(lambda: work.labels()[first])

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
        # names: every recent episode's words (they all count for how common a word is), tokenized
        # a page per unit (pure Python), then each topic's distinctive words
        documents: list[list[str]] = []
        for start in range(0, len(recent.texts), _PAGE):
            await ctx.step()
            page = recent.texts[start : start + _PAGE]
            documents += await ctx.thread(lambda page=page: [tokens(text) for text in page])
        await ctx.step()
        names = await ctx.thread(name_topics, [members for members, _c, _cos in clusters], documents, s.terms)

        # 3. concepts and links, short transactions (idempotent: reuse by vector, links ON CONFLICT)
        concepts = np.full(len(recent.seqs), -1, dtype=np.int64)  # each recent episode's topic
        created = reused = links = 0
        found: list[dict[str, Any]] = []
        topics = await ctx.thread(store.topics, namespace)
        reuse = s.reuse_similarity
        for (members, centroid, cos), terms in zip(clusters, names, strict=True):
            await ctx.step()
            name = " ".join(terms) if terms else f"topic {zlib.crc32(str(recent.seqs[members[0]]).encode()):08x}"
            topic = await ctx.thread(store.find_or_create_topic, ctx.tag, topics, name, centroid, now, reuse, ctx.preempted)
            created += int(topic.created)
            reused += int(not topic.created)
            found.append({"name": topic.name, "episodes": len(members), "created": topic.created})
            episodes = [(recent.seqs[i], float(max(0.0, min(1.0, c)))) for i, c in zip(members, cos.tolist(), strict=True)]
            for start in range(0, len(episodes), _LINKS):
                await ctx.step()
                # the links of a concept this run created go with it on rollback: not journalled
                links += await ctx.thread(store.link_episodes, ctx.tag, topic.seq, episodes[start : start + _LINKS],
                                          not topic.own, ctx.preempted)
            concepts[members] = topic.seq
        figures.update(concepts_created=figures["concepts_created"] + created, concepts_reused=reused,
                       links=figures["links"] + links, unclustered=len(recent.seqs) - sum(len(c[0]) for c in clusters),
                       topics=sorted(found, key=lambda t: -t["episodes"])[:_TOPICS_SHOWN])
        store.graph_changed(namespace)
        return await self._relations(ctx, cursor, figures, recent, concepts, now)

    # --- relations ----------------------------------------------------------------------------------

    async def _relations(self, ctx: StageContext, cursor: dict[str, Any], figures: dict[str, Any], recent: Recent,
                         concepts: NDArray[np.int64], now: float) -> dict[str, Any]:
        s = ctx.settings.clustering
        store = ctx.store

        # decay every sourced relation of the namespace, a batch per transaction
        while not cursor.get("decayed"):
            await ctx.step()
            after = int(cursor.get("decay_after", 0))

            def after_decay(batch: RelationDecay, after: int = after) -> dict[str, Any]:
                return _advanced(cursor, figures, {"relations_decayed": batch.weakened, "relations_retracted": batch.retracted},
                                 decay_after=batch.last if batch.count else after, decayed=not batch.count)

            cursor.update(await ctx.thread(store.decay_relations, ctx.tag, after, _BATCH, s.decay, s.floor, now, after_decay,
                                           ctx.preempted))
            figures.update(cursor["figures"])

        # strengthen related_to between topics by co-occurrence and adjacency
        def tally() -> Gains:
            return relation_gains(recent.seqs, recent.sessions, recent.times, concepts, s.cooccurrence_gain,
                                  s.adjacency_gain, _SOURCES_PER_RELATION, s.min_gain)

        await ctx.step()
        gains = await ctx.thread(tally)
        done = int(cursor.get("pairs_done", 0))
        while done < len(gains):
            await ctx.step()

            def strengthen(start: int = done) -> dict[str, Any]:
                pairs, evidence = gains.rows(start, start + _PAIRS)

                def after_unit(strengthened: int, created: int) -> dict[str, Any]:
                    return _advanced(cursor, figures, {"relations_strengthened": strengthened, "relations_created": created},
                                     pairs_done=start + len(pairs))

                return store.strengthen_relations(ctx.tag, pairs, evidence, now, after_unit, ctx.preempted)

            cursor.update(await ctx.thread(strengthen))
            figures.update(cursor["figures"])
            done = int(cursor["pairs_done"])
            ctx.progress(done, len(gains))
        store.graph_changed(ctx.namespace)
        return {key: value for key, value in figures.items()}

    # --- rollback -----------------------------------------------------------------------------------

    async def rollback(self, ctx: StageContext) -> dict[str, Any]:
        ctx.stage = ctx.stage or self.name
        undone: Counter[str] = Counter()
        while True:
            await ctx.step()
            batch = await ctx.thread(ctx.store.undo, ctx.tag, _BATCH)
            if not batch:
                break
            undone.update(batch)
        ctx.store.graph_changed(ctx.namespace)
        return dict(undone)
