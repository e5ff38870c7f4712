"""Episodic memory: validation, embedding, the group-commit writer, recall, forgetting.

**Writes.** A write request is checked whole (sizes, tags, metadata, vector dimensions and
values) and embedded before anything is written, so a bad item fails the request with nothing
half-written. It then joins the writer's bounded queue; the writer takes every request waiting
(up to ``memory.write_batch`` episodes) and commits them in one SQLite transaction, fsynced
(``synchronous = FULL``), and only then adds their vectors to the FAISS index and wakes the
requests, which answer with their ids. Concurrent writers share one fsync (group commit);
an acknowledged episode is on disk, and the index never holds a vector whose row is not.
A row whose normalised text a live episode of its namespace holds already (an earlier row of
the same commit included) is not written; the request learns that episode's id instead
(:meth:`Episodic.write_deduplicated`; the rule is in :mod:`engram.memory.store`).

**Recall.** Candidates are the query vector's approximate nearest neighbours (``k x
memory.recall.candidate_factor``, at least ``min_candidates``), the full-text matches of the
query text, and (with ``activation``) the episodes that spreading activation reaches. Filters
are applied in SQL; when they leave at most ``exact_filter_limit`` episodes, similarity is
computed exactly over all of them, otherwise the neighbour search widens until enough
candidates pass. The candidates are scored (:mod:`engram.memory.scoring`; the ``superseded``
part marks those whose facts newer ones superseded, :meth:`GraphStore.superseded_episodes`) and
the best k returned, with their score parts and, for the lowered ones, the superseded facts. The search, the SQL and the scoring run in one worker-thread
call. Archived episodes (see :meth:`Episodic.archive_seqs`) are never candidates.

**Replay log.** A sample of unfiltered recalls (``memory.replay_log.sample_rate``) is kept for
sleep's dream replay: the query vector, k and the ids returned. Sampling only appends to a
bounded buffer in RAM; the access flusher writes it, off the recall's path, and each namespace
keeps its newest ``memory.replay_log.size`` queries.
"""

from __future__ import annotations

import hashlib
import json
import random
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import numpy as np
import structlog
from numpy.typing import NDArray

from engram.deadlines import RequestDeadline
from engram.errors import InvalidParams, NotFound, Overloaded, Unavailable
from engram.memory import ids as idgen
from engram.memory.api import EpisodeIn, Filter, ScoreParts
from engram.memory.context import CONTEXT_OF, lift, neighbour_scores
from engram.memory.db import MemoryDB
from engram.memory.embedding import Embedder, no_embedder
from engram.memory.filters import SqlFilter, check_tags, compile_filter, fts_terms
from engram.memory.index import VectorIndex
from engram.memory.periods import Named, in_periods, named_periods, spans
from engram.memory.scoring import Weights, combine, keyword_parts, recencies
from engram.memory.semantic import GraphStore
from engram.memory.settings import MemorySettings
from engram.memory.store import EpisodeStore, Forgotten, NewEpisode
from engram.memory.telemetry import MemoryMetrics
from engram.memory.textkey import text_key
from engram.memory.vectors import from_blob, to_blob, unit_vector
from engram.storage.locking import begin_immediate

__all__ = ["Episodic", "WriteJob"]

_INLINE_ITEMS = 32  # larger requests are checked in a worker thread
# A hit's score parts in ScoreParts' order: memory.recall sends hits as they are built here.
_PART_NAMES = tuple(ScoreParts.model_fields)

log = structlog.get_logger("engram.memory")


@dataclass(slots=True)
class ReplayQuery:
    """One sampled recall, for sleep's dream replay."""

    namespace: str
    time: float
    k: int
    vector: NDArray[np.float32]
    ids: list[str]
    seq: int = 0  # its row in memory_replay_queries (0: not written yet)


@dataclass(frozen=True, slots=True)
class _Query:
    """What scoring needs of one recall besides its candidates."""

    vector: NDArray[np.float32]
    now: float
    weights: Weights
    with_keyword: bool  # the query has a text: the keyword weight counts
    activation: bool
    keyword: dict[int, float]  # every full-text match's keyword part
    periods: list[Named]


@dataclass(slots=True)
class _Scored:
    """Scored candidates of one recall: one element per episode of ``seqs`` in each array."""

    seqs: list[int]
    parts: dict[str, NDArray[np.float64]]
    scores: NDArray[np.float64]
    in_session: set[int]  # the seqs with a session (only they can have session neighbours)


@dataclass
class WriteJob:
    rows: list[NewEpisode]
    done: anyio.Event = field(default_factory=anyio.Event)
    seqs: list[int | None] | None = None
    duplicates: dict[int, tuple[int, str]] = field(default_factory=dict)  # row -> (seq, id) of the episode with its text
    error: BaseException | None = None


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class Episodic:
    def __init__(self, settings: MemorySettings, db: MemoryDB, index: VectorIndex, graph: GraphStore,
                 metrics: MemoryMetrics, embedder: Embedder | None = None) -> None:
        self.settings = settings
        self.db = db
        self.store = EpisodeStore(db)
        self.index = index
        self.graph = graph
        self.metrics = metrics
        self.embedder = embedder
        self._send: Any = None  # the write queue, made by open_writer() (in the event loop)
        self._receive: Any = None
        self.access: dict[int, tuple[int, float]] = {}  # seq -> (recalls since the last flush, last time)
        self.replay: deque[ReplayQuery] = deque(maxlen=settings.replay_log.buffer)  # sampled recalls not yet written
        self._random = random.Random()
        self.on_changed: list[Any] = []  # callbacks(namespace) after writes and forgets (index maintenance)

    # --- validation and embedding ------------------------------------------------------------------

    def check_count(self, count: int, field_name: str) -> None:
        if count > self.settings.max_items:
            raise InvalidParams(
                f"{field_name}: {count} items in one request; at most {self.settings.max_items} (memory.max_items)",
                field=field_name,
                reason="too_many_items",
            )

    def check_text(self, text: str, field_name: str, what: str = "text") -> None:
        if not text.strip():
            raise InvalidParams(f"{field_name}: empty {what}", field=field_name, reason=f"empty_{what}")
        size = len(text.encode())
        if size > self.settings.max_text_bytes:
            raise InvalidParams(
                f"{field_name}: {size} bytes; at most {self.settings.max_text_bytes} (memory.max_text_bytes)",
                field=field_name,
                reason=f"{what}_too_large",
                limit=self.settings.max_text_bytes,
            )

    def expected_dim(self, namespace: str) -> int | None:
        """The dimension vectors of ``namespace`` must have (None: any, the namespace is empty)."""
        return self.index.dim(namespace)

    def embedder_dim(self) -> int | None:
        return self.embedder.dim if self.embedder is not None else None

    async def embed(
        self, texts: list[str], namespace: str, field_name: str, deadline: RequestDeadline | None = None
    ) -> NDArray[np.float32]:
        if self.embedder is None:
            raise no_embedder("no embedder is configured")
        vectors = await self.embedder.embed(texts, deadline)
        want = self.expected_dim(namespace)
        if want is not None and vectors.shape[1] != want:
            raise InvalidParams(
                f"{field_name}: namespace {namespace!r} holds {want}-dimensional vectors but the embedder "
                f"({self.embedder.name}) makes {vectors.shape[1]}; send {want}-dimensional vectors instead",
                field=field_name,
                reason="dimension_mismatch",
                expected=want,
                got=int(vectors.shape[1]),
            )
        return vectors

    async def prepare(self, namespace: str, items: Sequence[EpisodeIn], field_name: str = "items",
                      ids: Sequence[str] | None = None, positions: Sequence[int] | None = None) -> list[NewEpisode]:
        """Check every item and embed those without a vector; raises before anything is written.
        ``positions`` are the items' places in the request (for error fields) when they are a subset."""
        self.check_count(len(items), field_name)
        place = list(positions) if positions is not None else list(range(len(items)))
        dim = self.expected_dim(namespace)
        if len(items) > _INLINE_ITEMS:  # checking hundreds of items would hold up the event loop
            checked = await anyio.to_thread.run_sync(self._check_items, items, field_name, place, dim)
        else:
            checked = self._check_items(items, field_name, place, dim)
        vectors, metadata, tags, dim = checked
        missing = [i for i, v in enumerate(vectors) if v is None]
        embedder_name = "client"
        if missing:
            embedder_dim = self.embedder_dim()
            first = place[missing[0]]
            if self.embedder is None or embedder_dim is None:
                raise no_embedder(f"{field_name}.{first} has no vector and no embedding model is available")
            if dim is not None and embedder_dim != dim:
                raise InvalidParams(
                    f"{field_name}.{first}.vector: this request's or namespace's vectors have {dim} dimensions "
                    f"but the embedder ({self.embedder.name}) makes {embedder_dim}; send vectors with every item",
                    field=f"{field_name}.{first}.vector",
                    reason="dimension_mismatch",
                    expected=dim,
                    got=embedder_dim,
                )
            embedded = await self.embed([items[i].text for i in missing], namespace, f"{field_name}.{first}.text")
            for row, i in enumerate(missing):
                vectors[i] = embedded[row]
            embedder_name = self.embedder.name
        now = time.time()
        new_ids = ids if ids is not None else idgen.new_ids(idgen.EPISODE, len(items), now)
        return [
            NewEpisode(
                id=new_ids[i],
                namespace=namespace,
                text=item.text,
                text_sha256=text_sha256(item.text),
                text_key=text_key(item.text),
                kind=item.kind,
                time=item.time if item.time is not None else now,
                vector=vectors[i],  # type: ignore[arg-type]
                embedder="client" if item.vector is not None else embedder_name,
                session=item.session,
                metadata=metadata[i],
                source=item.source,
                importance=item.importance,
                pinned=item.pinned,
                tags=tags[i],
            )
            for i, item in enumerate(items)
        ]

    def _check_items(self, items: Sequence[EpisodeIn], field_name: str, place: list[int], dim: int | None
                     ) -> tuple[list[NDArray[np.float32] | None], list[str], list[list[str]], int | None]:
        """Sizes, tags, metadata and vectors of every item (vectors made unit length); the
        dimension the given vectors set when the namespace had none."""
        s = self.settings
        vectors: list[NDArray[np.float32] | None] = []
        metadata: list[str] = []
        tags: list[list[str]] = []
        for i, item in enumerate(items):
            where = f"{field_name}.{place[i]}"
            self.check_text(item.text, f"{where}.text")
            tags.append(check_tags(item.tags, f"{where}.tags", s.max_tags, s.max_tag_length) if item.tags else [])
            meta = json.dumps(item.metadata, ensure_ascii=False, separators=(",", ":"), allow_nan=False) if item.metadata else "{}"
            if len(meta) > s.max_metadata_bytes // 4 and len(meta.encode()) > s.max_metadata_bytes:
                raise InvalidParams(
                    f"{where}.metadata: {len(meta.encode())} bytes of JSON; at most {s.max_metadata_bytes} (memory.max_metadata_bytes)",
                    field=f"{where}.metadata",
                    reason="metadata_too_large",
                )
            metadata.append(meta)
            if item.vector is not None:
                vector = unit_vector(item.vector, f"{where}.vector", s.max_dim, dim)
                dim = dim or int(vector.shape[0])
                vectors.append(vector)
            else:
                vectors.append(None)
        return vectors, metadata, tags, dim

    # --- the writer ------------------------------------------------------------------------------------

    async def write(self, rows: list[NewEpisode]) -> list[int | None]:
        """Commit ``rows`` (group commit); returns their seqs (None: the id or the text existed already)."""
        return (await self.write_deduplicated(rows))[0]

    async def write_deduplicated(self, rows: list[NewEpisode]) -> tuple[list[int | None], dict[int, tuple[int, str]]]:
        """:meth:`write`, and for each row not written because a live episode of its namespace
        holds its normalised text (an earlier row of the same commit included), its position ->
        (seq, id) of that episode."""
        if self._send is None:
            raise Unavailable("memory is not running", reason="memory_unavailable")
        job = WriteJob(rows)
        sent = False
        with anyio.move_on_after(self.settings.write_wait):
            try:
                await self._send.send(job)
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                raise Unavailable("memory is stopping; nothing was written", reason="stopping") from None
            sent = True
        if not sent:
            raise Overloaded(
                f"the memory writer has {self.settings.write_queue} requests waiting; retry later",
                reason="write_queue_full",
            )
        await job.done.wait()
        if job.error is not None:
            raise job.error
        assert job.seqs is not None
        return job.seqs, job.duplicates

    def open_writer(self) -> None:
        self._send, self._receive = anyio.create_memory_object_stream[WriteJob](self.settings.write_queue)

    @property
    def queue_depth(self) -> int:
        return self._send.statistics().current_buffer_used if self._send is not None else 0

    async def run_writer(self) -> None:
        """Drain the queue until it is closed (every queued job is committed or failed)."""
        async with self._receive:
            async for first in self._receive:
                batch = [first]
                count = len(first.rows)
                while count < self.settings.write_batch:
                    try:
                        job = self._receive.receive_nowait()
                    except (anyio.WouldBlock, anyio.EndOfStream):
                        break
                    batch.append(job)
                    count += len(job.rows)
                started = time.perf_counter()
                with anyio.CancelScope(shield=True):  # a commit in progress always completes and answers
                    await anyio.to_thread.run_sync(self._commit_jobs, batch)
                self.metrics.commit_seconds.observe(time.perf_counter() - started)
                self.metrics.commit_episodes.observe(count)
                changed = {r.namespace for job in batch if job.error is None for r in job.rows}
                for job in batch:
                    job.done.set()
                for namespace in changed:
                    for callback in self.on_changed:
                        callback(namespace)

    def close_writer(self) -> None:
        if self._send is not None:
            self._send.close()

    def _commit_jobs(self, batch: list[WriteJob]) -> None:
        """Commit ``batch`` in one transaction; if that fails, each job alone, so that one bad
        job fails only itself."""
        with self.db.write() as conn:
            ready = [job for job in batch if self._dims_agree(job)]
            if not ready:
                return
            try:
                self._commit(conn, ready)
                return
            except Exception as exc:
                if len(ready) == 1:
                    log.exception("memory write failed", episodes=len(ready[0].rows))
                    ready[0].error = exc
                    return
            for job in ready:
                try:
                    self._commit(conn, [job])
                except Exception as exc:
                    log.exception("memory write failed", episodes=len(job.rows))
                    job.error = exc

    def _dims_agree(self, job: WriteJob) -> bool:
        """The writer is the one place that sees writes in commit order, so it settles which
        dimension a new namespace gets when two first writes race."""
        dims: dict[str, int] = {}
        for i, row in enumerate(job.rows):
            want = dims.get(row.namespace) or self.index.dim(row.namespace)
            got = int(row.vector.shape[0])
            if want is not None and want != got:
                job.error = InvalidParams(
                    f"items.{i}.vector: {got} dimensions, but namespace {row.namespace!r} holds {want}-dimensional vectors",
                    field=f"items.{i}.vector",
                    reason="dimension_mismatch",
                    expected=want,
                    got=got,
                )
                return False
            dims[row.namespace] = got
        return True

    def _commit(self, conn: Any, jobs: list[WriteJob]) -> None:
        now = time.time()
        begin_immediate(conn, self.db.busy_timeout)
        try:
            for job in jobs:
                job.duplicates = {}  # a batch that failed and is retried job by job starts over
            results = [self.store.insert(conn, job.rows, now, job.duplicates) for job in jobs]
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        for job, seqs in zip(jobs, results):
            job.seqs = seqs
        # Committed: only now may the index learn of these rows. A failure here cannot undo the
        # commit; the rows are durable and the next start's reconciliation indexes them.
        try:
            self._index_rows(jobs)
        except Exception:
            log.exception("adding committed episodes to the vector index failed; they are indexed at the next start")

    def _index_rows(self, jobs: list[WriteJob]) -> None:
        by_namespace: dict[str, tuple[list[int], list[NDArray[np.float32]]]] = {}
        for job in jobs:
            for row, seq in zip(job.rows, job.seqs or []):
                if seq is not None:
                    entry = by_namespace.setdefault(row.namespace, ([], []))
                    entry[0].append(seq)
                    entry[1].append(row.vector)
        for namespace, (seqs, vectors) in by_namespace.items():
            self.index.add(namespace, seqs, np.vstack(vectors))

    # --- reads ---------------------------------------------------------------------------------------

    def note_access(self, seqs: Sequence[int]) -> None:
        now = time.time()
        for seq in seqs:
            n, _ = self.access.get(seq, (0, now))
            self.access[seq] = (n + 1, now)

    def flush_access(self) -> int:
        """Write the access counts gathered since the last flush (worker thread)."""
        pending, self.access = self.access, {}
        if pending:
            with self.db.transaction() as conn:
                self.store.add_access(conn, pending)
        return len(pending)

    def sample_recall(self, namespace: str, query: NDArray[np.float32], k: int, flt: SqlFilter, hits: list[dict[str, Any]]) -> bool:
        """Maybe keep this recall for dream replay (event loop; O(1): the buffer is bounded and
        written by the flusher). Filtered recalls are not kept: a replay searches unfiltered."""
        rate = self.settings.replay_log.sample_rate
        if rate <= 0 or not flt.empty or not hits or self._random.random() >= rate:
            return False
        self.replay.append(ReplayQuery(namespace, time.time(), k, np.array(query, dtype=np.float32), [h["id"] for h in hits]))
        return True

    def flush_replay(self) -> int:
        """Write the sampled recalls and trim each namespace touched to its newest
        ``memory.replay_log.size`` (worker thread)."""
        pending: list[ReplayQuery] = []
        while self.replay:
            pending.append(self.replay.popleft())
        if not pending:
            return 0
        keep = self.settings.replay_log.size
        with self.db.transaction() as conn:
            conn.executemany(
                "INSERT INTO memory_replay_queries (namespace, time, k, dim, vector, results) VALUES (?, ?, ?, ?, ?, ?)",
                [(q.namespace, q.time, q.k, int(q.vector.shape[0]), to_blob(q.vector), json.dumps(q.ids)) for q in pending],
            )
            for namespace in {q.namespace for q in pending}:
                conn.execute(
                    "DELETE FROM memory_replay_queries WHERE namespace = ? AND seq <= (SELECT seq FROM memory_replay_queries "
                    "WHERE namespace = ? ORDER BY seq DESC LIMIT 1 OFFSET ?)",
                    (namespace, namespace, keep),
                )
        return len(pending)

    def replay_queries(self, namespace: str, limit: int, seqs: Sequence[int] | None = None) -> list[ReplayQuery]:
        """The newest ``limit`` sampled recalls of ``namespace`` (or those of ``seqs`` still
        kept), oldest first (worker thread)."""
        with self.db.read() as conn:
            if seqs is None:
                rows = conn.execute(
                    "SELECT seq, time, k, dim, vector, results FROM memory_replay_queries WHERE namespace = ? "
                    "ORDER BY seq DESC LIMIT ?",
                    (namespace, limit),
                ).fetchall()
            else:
                wanted = list(seqs)[:limit]
                rows = []
                for start in range(0, len(wanted), 900):
                    chunk = wanted[start : start + 900]
                    rows += conn.execute(
                        "SELECT seq, time, k, dim, vector, results FROM memory_replay_queries WHERE namespace = ? "
                        f"AND seq IN ({','.join('?' * len(chunk))})",
                        (namespace, *chunk),
                    ).fetchall()
                rows.sort(key=lambda r: -r[0])
        return [
            ReplayQuery(namespace, when, k, from_blob(blob, dim), json.loads(ids), seq)
            for seq, when, k, dim, blob, ids in reversed(rows)
        ]

    def recall(self, namespace: str, query: NDArray[np.float32], text: str | None, k: int, flt: SqlFilter,
               weights: Weights, activation: bool) -> list[dict[str, Any]]:
        """The best ``k`` episodes for the query, best first, as ``memory.recall``'s hits as JSON
        values (its ``Hit``'s fields in their order) with ``seq`` first (worker thread)."""
        s = self.settings.recall
        now = time.time()
        want = max(k * s.candidate_factor, s.min_candidates)
        sims: dict[int, float] = {}
        if flt.empty:
            seqs, values = self.index.search(namespace, query, want)
            sims.update(zip(seqs.tolist(), values.tolist()))
        else:
            allowed = self.store.filter_seqs(namespace, flt, s.exact_filter_limit)
            if allowed is not None:
                got, vectors = self.index.vectors(namespace, allowed)
                if got:
                    values = vectors @ query
                    top = np.argsort(-values)[:want]
                    sims.update((got[i], float(values[i])) for i in top)
            else:
                size = self.index.count(namespace)
                asked = want
                while True:
                    seqs, values = self.index.search(namespace, query, asked)
                    passing = self.store.matching(namespace, seqs.tolist(), flt)
                    if len(passing) >= want or asked >= size:
                        break
                    asked = min(asked * 4, size)
                sims.update((s_, v) for s_, v in zip(seqs.tolist(), values.tolist()) if s_ in passing)
        keyword: dict[int, float] = {}
        keyword_best: list[int] = []
        if text and weights.keyword > 0 and (terms := fts_terms(text)):
            # Every match keeps its keyword part, so that a candidate found by its vector scores
            # its words too; the best ``want`` matches are candidates themselves.
            found = self.store.keyword(namespace, terms, flt, s.keyword_max_df, self.index.count(namespace))
            keyword = keyword_parts(found, s.keyword_full_marks)
            keyword_best = [seq for seq, _ in found[:want]]
        activated: dict[int, float] = {}
        if activation:
            reached = self.graph.activate(namespace, query)
            activated = dict(sorted(reached.items(), key=lambda kv: -kv[1])[:want])
        periods = named_periods(text, now) if text and weights.period > 0 else []
        if periods:
            sims.update(self._from_periods(namespace, query, flt, periods, want))
        candidates = set(sims) | set(keyword_best) | set(activated)
        if not candidates:
            return []
        # One read transaction for the candidates' facts and the winners' rows: the rows are
        # those the facts came from, so nothing is re-checked (archived, forgotten, filtered).
        with self.store.snapshot() as conn:
            q = _Query(query, now, weights, bool(text), activation, keyword, periods)
            scored = self._score(conn, namespace, flt, list(candidates), sims, activated, q)
            if scored is None:
                return []
            if weights.neighbour > 0 or weights.session > 0:
                scored = self._in_context(conn, namespace, flt, scored, k, q)
            else:
                scored.parts["neighbour"] = scored.parts["session"] = np.zeros(len(scored.seqs), np.float64)
            seqs, parts, scores = scored.seqs, scored.parts, scored.scores
            order = np.lexsort((-np.array(seqs, np.int64), -scores))[:k].tolist()  # best score first, then newest
            winners = [seqs[i] for i in order]
            rows = self.store.hits(conn, namespace, winners)  # whole rows for the winners only
            stale = {seq for seq, flag in zip(seqs, parts["superseded"].tolist()) if flag}
            reasons = self.graph.superseded_facts(conn, [seq for seq in winners if seq in stale]) if stale else {}
        columns = {name: values[order].tolist() for name, values in parts.items()}
        best = scores[order].tolist()
        hits = []
        for n, seq in enumerate(winners):
            row = rows[seq]
            hits.append({
                "seq": seq, "id": row.pop("id"), "text": row.pop("text"), "score": best[n],
                "parts": {name: columns[name][n] for name in _PART_NAMES},
                **row,  # time to pinned, in Hit's order
                "superseded": reasons.get(seq, []),
            })
        return hits

    def _from_periods(self, namespace: str, query: NDArray[np.float32], flt: SqlFilter, periods: list[Named],
                      want: int) -> dict[int, float]:
        """The ``want`` episodes most similar to the query among those of the periods it names: an
        answer from then need not be among the nearest of all. Left out when the periods hold
        more than ``memory.recall.exact_filter_limit`` episodes (the period part still counts)."""
        known = self.store.time_range(namespace)
        if known is None:
            return {}
        windows = [(span.start, span.end) for span in spans(periods, *known)]
        inside = self.store.seqs_between(namespace, windows, flt, self.settings.recall.exact_filter_limit)
        if not inside:
            return {}
        got, vectors = self.index.vectors(namespace, inside)
        if not got:
            return {}
        values = vectors @ query
        return {got[i]: float(values[i]) for i in np.argsort(-values)[:want]}

    def _score(self, conn: sqlite3.Connection, namespace: str, flt: SqlFilter, candidates: list[int], sims: dict[int, float],
               activated: dict[int, float], q: _Query) -> _Scored | None:
        """The live episodes among ``candidates`` that pass ``flt``, their score parts and scores
        (the parts of the k winners only become dicts); None when none is left."""
        facts = self.store.facts(namespace, candidates, flt, vectors_for=[c for c in candidates if c not in sims], conn=conn)
        if not facts:
            return None
        seqs = list(facts)
        known = [(when, importance, sims.get(seq), vector) for seq, (when, importance, vector, _) in facts.items()]
        similarity = np.array(
            [
                sim if sim is not None else (float(vector @ q.vector) if vector is not None and vector.shape == q.vector.shape else 0.0)
                for _, _, sim, vector in known
            ],
            np.float64,
        )
        times = np.array([when for when, _, _, _ in known], np.float64)
        parts = {
            "vector": np.clip(similarity, 0.0, 1.0),
            "keyword": np.array([q.keyword.get(seq, 0.0) for seq in seqs], np.float64),
            "recency": recencies(times, q.now, self.settings.recall.recency_half_life),
            "importance": np.array([importance for _, importance, _, _ in known], np.float64),
            "activation": np.array([activated.get(seq, 0.0) for seq in seqs], np.float64),
            "period": in_periods(times, q.periods),
        }
        stale = self.graph.superseded_episodes(conn, seqs) if q.weights.superseded > 0 else set()
        parts["superseded"] = np.array([1.0 if seq in stale else 0.0 for seq in seqs], np.float64)
        scores = combine(parts, q.weights, q.with_keyword, q.activation, bool(q.periods))
        return _Scored(seqs, parts, scores, {seq for seq, (_, _, _, in_session) in facts.items() if in_session})

    def _in_context(self, conn: sqlite3.Connection, namespace: str, flt: SqlFilter, scored: _Scored, k: int,
                    q: _Query) -> _Scored:
        """Scores lifted by conversation context (:mod:`engram.memory.context`): the best
        candidates' session neighbours join them (scored like candidates, without an activation
        part of their own), then every episode placed in a session is lifted."""
        seqs, parts, scores, in_session = scored.seqs, scored.parts, scored.scores, scored.in_session
        best = [seqs[i] for i in np.argsort(-scores, kind="stable")[: max(2 * k, CONTEXT_OF)].tolist()]
        # Only an episode with a session has neighbours: the look-up is left out for the others.
        near = self.store.session_neighbours(conn, namespace, [seq for seq in best if seq in in_session])
        # The best ones' neighbours are placed too, so that they can be lifted by them; those that
        # were no candidate are scored first.
        beside = list(dict.fromkeys(n for _, before, after in near.values() for n in (before, after)
                                    if n is not None and n not in near))
        known = set(seqs)
        extra = [n for n in beside if n not in known]
        if extra:
            more = self._score(conn, namespace, flt, extra, {}, {}, q)
            if more is not None:
                seqs = seqs + more.seqs
                parts = {name: np.concatenate((values, more.parts[name])) for name, values in parts.items()}
                scores = np.concatenate((scores, more.scores))
                in_session = in_session | more.in_session
        near.update(self.store.session_neighbours(conn, namespace, beside))
        parts["neighbour"], parts["session"] = neighbour_scores(seqs, scores, near)
        lifted = lift(scores, parts["neighbour"], parts["session"], q.weights.neighbour, q.weights.session)
        return _Scored(seqs, parts, lifted, in_session)

    # --- forgetting ------------------------------------------------------------------------------------

    def forget_seqs(self, namespace: str, seqs: Sequence[int]) -> Forgotten:
        """Delete episodes and their index entries (worker thread)."""
        with self.db.write() as conn:
            begin_immediate(conn, self.db.busy_timeout)
            try:
                gone = self.store.delete(conn, namespace, seqs)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            self.index.remove(namespace, gone.seqs)
        if gone.relations:
            self.graph.invalidate(namespace)
        for seq in gone.seqs:
            self.access.pop(seq, None)
        return gone

    def archive_seqs(self, namespace: str, seqs: Sequence[int], now: float,
                     journal: Callable[[sqlite3.Connection, list[int]], None] | None = None,
                     give_way: Callable[[], bool] | None = None) -> list[int]:
        """Archive the live, unpinned episodes among ``seqs``: out of recall and of the vector
        index, still readable by id (worker thread). ``journal(conn, archived)`` runs inside the
        same transaction (sleep records its undo there). The index learns of it after the commit;
        a crash in between is repaired at start, when the index is reconciled with the live rows.
        A background transaction (see :meth:`MemoryDB.transaction`): archiving again what a power
        cut un-archived is what the next consolidation does anyway. ``give_way``: see there."""
        with self.db.transaction(background=True, give_way=give_way) as conn:
            done = self.store.archive(conn, namespace, seqs, now)
            if journal is not None and done:
                journal(conn, done)
        self.index.remove(namespace, done)
        for seq in done:
            self.access.pop(seq, None)
        return done

    def unarchive_seqs(self, namespace: str, seqs: Sequence[int], archived_at: float | None = None) -> list[int]:
        """Make archived episodes among ``seqs`` live again (only those archived at
        ``archived_at``, when given) and put their vectors back in the index (worker thread)."""
        with self.db.write() as conn:
            begin_immediate(conn, self.db.busy_timeout)
            try:
                done = self.store.unarchive(conn, namespace, seqs, archived_at)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            if done:
                self.index.remove(namespace, done)  # never twice in the index, whatever happened before
                for got, vectors in self.store.vectors(done):
                    if self.index.dim(namespace) in (None, vectors.shape[1]):
                        self.index.add(namespace, got, vectors)
                    else:
                        log.warning("unarchived episodes do not fit the namespace's vector dimension; left out of the index",
                                    namespace=namespace, episodes=len(got))
        return done

    def forget_namespace(self, namespace: str) -> Forgotten:
        with self.db.write() as conn:
            begin_immediate(conn, self.db.busy_timeout)
            try:
                gone = self.store.delete_namespace(conn, namespace)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            self.index.drop(namespace)
        self.graph.invalidate(namespace)
        pending = [q for q in self.replay if q.namespace != namespace]
        self.replay.clear()
        self.replay.extend(pending)
        return gone

    def resolve_ids(self, namespace: str, ids: Sequence[str], field_name: str = "ids") -> dict[str, int]:
        """id -> seq for every id; NotFound naming the unknown ones (ids of other namespaces are
        unknown here, so their existence does not leak)."""
        for i, value in enumerate(ids):
            if not idgen.is_id(value, idgen.EPISODE):
                raise InvalidParams(f"{field_name}.{i}: {value!r} is not an episode id (ep_...)", field=f"{field_name}.{i}", reason="bad_id")
        found = self.store.resolve(namespace, ids)
        missing = [i for i in dict.fromkeys(ids) if i not in found]
        if missing:
            shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
            raise NotFound(f"unknown episode ids: {shown}", reason="unknown_ids", ids=missing[:1000])
        return found

    def filter_for(self, flt: Filter | None, field_name: str = "filter") -> SqlFilter:
        return compile_filter(flt, field_name, self.settings.max_tags, self.settings.max_tag_length)
