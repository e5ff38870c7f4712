"""The memory part: working, episodic and semantic memory behind the ``memory.*`` RPC methods.

Start: open memory's SQLite connections (the tables come from migration 0003), load the vector
index file and reconcile it with SQLite (or rebuild it, with progress in the log), then start the
background tasks: the group-commit writer, the index saver (every ``memory.index.save_interval``
while changed), index maintenance (HNSW builds and compactions), the access-count flusher, the
full-text purge after forgets, and the working-memory sweeper. The access flusher also writes the
sampled recalls of the replay log (``memory.replay_log``).

Stop: the writer finishes what is queued, access counts are written, the index is saved, the
connections close. A ``kill -9`` skips all of that and loses nothing acknowledged: SQLite has
every committed episode, and the next start reconciles the index with it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, TypeVar

import anyio
import faiss
import numpy as np
import structlog
from numpy.typing import NDArray
from prometheus_client.core import GaugeMetricFamily, Metric

from engram.bus import EventBus
from engram.errors import InvalidParams, NotFound
from engram.lifecycle import Health, Part, PartState
from engram.memory import ids as idgen
from engram.memory.api import (
    EmbedderStats,
    EpisodeIn,
    EpisodeOut,
    Evicted,
    ExportItem,
    ExportParams,
    ExportResult,
    Filter,
    ForgetParams,
    ForgetResult,
    GetParams,
    GetResult,
    GraphQueryParams,
    GraphQueryResult,
    GraphUpsertParams,
    GraphUpsertResult,
    ImportParams,
    ImportResult,
    IndexStats,
    ListEpisodesParams,
    ListEpisodesResult,
    RecallParams,
    RecallResult,
    RememberParams,
    RememberResult,
    SequenceMatch,
    SequenceParams,
    SequenceResult,
    StatsParams,
    StatsResult,
    WorkingClearParams,
    WorkingClearResult,
    WorkingGetResult,
    WorkingItemOut,
    WorkingKeyParams,
    WorkingListParams,
    WorkingListResult,
    WorkingPutParams,
    WorkingPutResult,
    WorkingStats,
)
from engram.memory.content_key import CONTENT_KEY_FILE, ContentKey
from engram.memory.db import MemoryDB
from engram.memory.embedding import Embedder, no_embedder
from engram.memory.episodic import Episodic
from engram.memory.events import (
    MemoryForgotten,
    MemoryGraphUpdated,
    MemoryIndexRebuilt,
    MemoryRecalled,
    MemoryRemembered,
)
from engram.memory.extraction import load_local_extractor
from engram.memory.extraction.llm import ExtractionGenerator, LLMExtractor
from engram.memory.extraction.queue import ExtractionQueue
from engram.memory.extraction.worker import ExtractionWorker
from engram.memory.filters import SqlFilter, check_tags
from engram.memory.index import FILE_NAME, IndexFileError, VectorIndex
from engram.memory.keyed_vectors import KeyedVectors
from engram.memory.linking import linked_concepts
from engram.memory.namespaces import NamespaceDecider, NamespacePolicy
from engram.memory.scoring import Weights
from engram.memory.sequence import MAX_LENGTH as SEQUENCE_MAX_LENGTH
from engram.memory.sequence import search as sequence_search
from engram.memory.semantic import ConceptSpec, GraphStore, RelationSpec, concept_key
from engram.memory.settings import MemorySettings
from engram.memory.store import Forgotten
from engram.memory.telemetry import MemoryMetrics
from engram.memory.vectors import unit_vector
from engram.memory.working import EvictedItem, WorkingItem, WorkingMemory
from engram.observability.metrics import Metrics
from engram.observability.tracing import NO_SPANS, Spans
from engram.principal import Principal
from engram.server.methods import RequestContext, rpc

__all__ = ["Memory"]

log = structlog.get_logger("engram.memory")

T = TypeVar("T")

_EVENT_CHUNK = 1000  # ids per memory.forgotten event


class _Progress:
    """Logs a long index build at most every few seconds."""

    def __init__(self, what: str, namespace: str, every: float = 2.0) -> None:
        self.what, self.namespace, self.every = what, namespace, every
        self._last = time.monotonic()

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self._last >= self.every or done == total:
            self._last = now
            log.info(self.what, namespace=self.namespace, done=done, total=total)


class Memory(Part):
    """The memory part: episodes, their index and graph, working memory, and their upkeep."""

    def __init__(
        self,
        settings: MemorySettings,
        state_dir: Path,
        database_path: Path,
        bus: EventBus,
        metrics: Metrics | None = None,
        embedder: Embedder | None = None,
        busy_timeout: float = 5.0,
        owner_uid: int | None = None,
        namespace_decider: NamespaceDecider | None = None,
        generate: ExtractionGenerator | None = None,
        spans: Spans = NO_SPANS,
    ) -> None:
        super().__init__("memory")
        self.settings = settings
        self._spans = spans
        self.index_path = state_dir / "memory" / FILE_NAME
        self.content_key = ContentKey(state_dir / "keys" / CONTENT_KEY_FILE)
        self._bus = bus
        self.metrics = MemoryMetrics(metrics.registry if metrics is not None else None)
        self.db = MemoryDB(database_path, busy_timeout)
        self.index = VectorIndex(settings.index)
        self.graph = GraphStore(self.db, settings.graph)
        self.episodic = Episodic(settings, self.db, self.index, self.graph, self.metrics, embedder)
        self.episodic.on_changed.append(self._check_maintenance)
        self.keyed_vectors = KeyedVectors(self.episodic)  # the router's input vectors (novelty, semantic cache)
        self.working = WorkingMemory(settings.working)
        self.namespaces = NamespacePolicy(owner_uid, namespace_decider)
        self.extraction = ExtractionWorker(
            settings.extraction, settings.graph.functional,
            ExtractionQueue(self.db, "local"), self.graph, lambda: load_local_extractor(settings.extraction.resolve_pronouns),
            self._concept_vectors, self._extracted, metrics.registry if metrics is not None else None,
            llm=self._llm_extractor(settings.extraction.llm_provider, generate),
        )
        # anyio events need the event loop; they are made in setup.
        self._writer_done: anyio.Event | None = None
        self._purge_wanted: anyio.Event | None = None
        self._maintenance_wanted: anyio.Event | None = None
        self._maintenance_due: set[str] = set()
        if metrics is not None:
            metrics.add_collector(self._collect)

    @property
    def embedder(self) -> Embedder | None:
        return self.episodic.embedder

    # --- lifecycle ------------------------------------------------------------------------------------

    async def setup(self, stack: AsyncExitStack) -> None:
        self._writer_done, self._purge_wanted, self._maintenance_wanted = anyio.Event(), anyio.Event(), anyio.Event()
        self.episodic.open_writer()
        faiss.omp_set_num_threads(self.settings.index.threads)
        await anyio.to_thread.run_sync(self.content_key.load)
        await anyio.to_thread.run_sync(self.db.open)
        stack.push_async_callback(self._close_db)
        await anyio.to_thread.run_sync(self._key_texts)
        await anyio.to_thread.run_sync(self._load_index)
        stack.push_async_callback(self._save_state)  # once the tasks have ended
        await self.start_tasks(stack)
        stack.push_async_callback(self._finish_writes)  # first: while the tasks still run
        self.start_soon(self._run_writer, name="memory writer")
        self.extraction.open()
        self.spawn(self.extraction.run, "memory knowledge extraction", restart=True)
        for task, name in (
            (self._saver, "memory index saver"),
            (self._maintainer, "memory index maintenance"),
            (self._flusher, "memory access flusher"),
            (self._purger, "memory purge"),
            (self._sweeper, "working memory sweeper"),
        ):
            self.spawn(task, name, restart=True)
        for namespace in self.index.namespaces():
            self._check_maintenance(namespace)

    async def _finish_writes(self) -> None:
        self.index.abort.set()  # an HNSW build in progress stops at its next chunk
        self.episodic.close_writer()
        with anyio.CancelScope(shield=True), anyio.move_on_after(30):
            assert self._writer_done is not None
            await self._writer_done.wait()  # what is queued gets committed and answered

    async def _save_state(self) -> None:
        with anyio.CancelScope(shield=True):
            try:
                await anyio.to_thread.run_sync(self.episodic.flush_access)
                await anyio.to_thread.run_sync(self.episodic.flush_replay)
                if self.index.changes:
                    await anyio.to_thread.run_sync(self._save)
            except Exception:
                log.exception("saving memory state at shutdown failed; the next start reconciles the index with SQLite")

    async def _close_db(self) -> None:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self.db.close)

    async def _run_writer(self) -> None:
        try:
            await self.episodic.run_writer()
        finally:
            assert self._writer_done is not None
            self._writer_done.set()

    async def health(self) -> Health:
        namespaces = self.index.namespaces()
        vectors = sum(self.index.count(ns) for ns in namespaces)
        saved = self.index.saved_watermark
        detail = (
            f"{vectors} vectors in {len(namespaces)} namespaces; index watermark {self.index.watermark}, "
            f"saved {saved if saved is not None else 'never'}"
        )
        detail += "; " + await self._extraction_health()
        return Health(self.state is PartState.RUNNING, detail)

    @staticmethod
    def _llm_extractor(provider: str | None, generate: ExtractionGenerator | None) -> LLMExtractor | None:
        """The LLM extractor over ``provider``, when one is named and generating is wired."""
        if provider is None or generate is None:
            return None
        return LLMExtractor(lambda prompt, system, tags: generate(prompt, system, provider, tags))

    async def _extraction_health(self) -> str:
        if not self.settings.extraction.enabled:
            return "extraction off"
        if self.extraction.unavailable is not None:
            return f"extraction unavailable: {self.extraction.unavailable}"
        return f"extraction lag {await self._thread(self.extraction.queue.lag)} episodes"

    def _extracted(self, namespace: str, outcome: dict[str, Any]) -> None:
        if outcome["created_concepts"] or outcome["created_relations"] or outcome["retracted"]:
            self._bus.publish(MemoryGraphUpdated(namespace=namespace, concepts=outcome["created_concepts"],
                                                 relations=outcome["created_relations"], retracted=outcome["retracted"]))

    def _collect(self) -> Iterable[Metric]:
        vectors = GaugeMetricFamily("engram_memory_index_vectors", "Vectors in the memory index, by index kind.", labels=["kind"])
        totals: dict[str, int] = {"flat": 0, "hnsw": 0}
        masked = 0
        for ns in self.index.namespaces():
            stats = self.index.stats(ns)
            totals[stats["kind"]] = totals.get(stats["kind"], 0) + stats["vectors"]
            masked += stats["masked"]
        for kind, count in totals.items():
            vectors.add_metric([kind], count)
        yield vectors
        yield GaugeMetricFamily("engram_memory_index_masked", "Forgotten vectors still masked in HNSW graphs.", value=masked)
        yield GaugeMetricFamily("engram_memory_index_unsaved_changes", "Index changes since the last save.", value=self.index.changes)
        yield GaugeMetricFamily("engram_memory_write_queue_depth", "Write requests waiting for the writer.", value=self.episodic.queue_depth)
        sessions, items = self.working.stats()
        yield GaugeMetricFamily("engram_memory_working_sessions", "Working-memory sessions held.", value=sessions)
        yield GaugeMetricFamily("engram_memory_working_items", "Working-memory items held.", value=items)
        yield GaugeMetricFamily("engram_memory_working_bytes", "Working-memory content bytes held.", value=self.working.bytes)

    # --- the vector index -----------------------------------------------------------------------------

    def _key_texts(self) -> None:
        """Give the live episodes written before deduplication (migration 0004) their text keys,
        so that remembering one of their texts again finds them; one statement, at start."""
        started = time.perf_counter()
        with self.db.transaction() as conn:
            keyed = self.episodic.store.key_texts(conn)
        if keyed:
            log.info("episode texts keyed for deduplication", episodes=keyed, seconds=round(time.perf_counter() - started, 3))

    def _load_index(self) -> None:
        """Load the index file and reconcile it with SQLite; rebuild what cannot be loaded."""
        started = time.perf_counter()
        rebuilt = False
        try:
            watermark = self.index.load(self.index_path)
            log.info("vector index loaded", path=str(self.index_path), watermark=watermark, namespaces=len(self.index.namespaces()))
        except IndexFileError as exc:
            rebuilt = True
            if self.index_path.exists():
                log.warning("vector index file unusable; rebuilding it from SQLite", problem=str(exc))
            else:
                log.info("no vector index file; building it from SQLite", path=str(self.index_path))
        store = self.episodic.store
        dims = store.dims()
        namespaces = sorted(set(store.namespaces()) | set(self.index.namespaces()))
        added = dropped = 0
        for ns in namespaces:
            seqs = store.seqs_of(ns)
            progress = _Progress("rebuilding vector index", ns) if rebuilt else _Progress("catching up vector index", ns)
            a, d = self.index.reconcile(ns, seqs, dims.get(ns), store.vectors, progress if len(seqs) > 10_000 else None)
            added, dropped = added + a, dropped + d
        self.index.watermark = max(self.index.watermark, store.max_seq())
        log.info(
            "vector index ready",
            rebuilt=rebuilt,
            added=added,
            dropped=dropped,
            namespaces=len(self.index.namespaces()),
            seconds=round(time.perf_counter() - started, 3),
        )
        if rebuilt or added or dropped:
            self._save()

    def _save(self) -> None:
        started = time.perf_counter()
        size = self.index.save(self.index_path)
        self.metrics.index_saves.inc()
        log.debug("vector index saved", bytes=size, watermark=self.index.saved_watermark,
                  seconds=round(time.perf_counter() - started, 3))

    async def _saver(self) -> None:
        while True:
            await anyio.sleep(self.settings.index.save_interval)
            if self.index.changes:
                await anyio.to_thread.run_sync(self._save)

    def _check_maintenance(self, namespace: str) -> None:
        if self.index.maintenance_due(namespace) is not None and namespace not in self._maintenance_due:
            self._maintenance_due.add(namespace)
            if self._maintenance_wanted is not None:
                self._maintenance_wanted.set()

    async def _maintainer(self) -> None:
        while True:
            if not self._maintenance_due:
                assert self._maintenance_wanted is not None
                await self._maintenance_wanted.wait()
            self._maintenance_wanted = anyio.Event()
            while self._maintenance_due:
                namespace = self._maintenance_due.pop()
                reason = self.index.maintenance_due(namespace)
                if reason is None:
                    continue
                started = time.perf_counter()
                log.info("building vector index", namespace=namespace, reason=reason, vectors=self.index.count(namespace))
                progress = _Progress("building vector index", namespace, every=5.0)
                kind = await anyio.to_thread.run_sync(self.index.rebuild, namespace, progress)
                if kind is None:
                    continue
                seconds = round(time.perf_counter() - started, 3)
                vectors = self.index.count(namespace)
                self.metrics.index_rebuilds.labels(reason).inc()
                log.info("vector index built", namespace=namespace, kind=kind, vectors=vectors, seconds=seconds, reason=reason)
                self._bus.publish(MemoryIndexRebuilt(namespace=namespace, kind=kind, vectors=vectors, seconds=seconds, reason=reason))
                await anyio.to_thread.run_sync(self._save)

    async def _flusher(self) -> None:
        while True:
            await anyio.sleep(self.settings.access_flush_interval)
            if self.episodic.access:
                await anyio.to_thread.run_sync(self.episodic.flush_access)
            if self.episodic.replay:
                await anyio.to_thread.run_sync(self.episodic.flush_replay)

    async def _purger(self) -> None:
        while True:
            assert self._purge_wanted is not None
            await self._purge_wanted.wait()
            await anyio.sleep(self.settings.purge_delay)
            self._purge_wanted = anyio.Event()
            await anyio.to_thread.run_sync(self.episodic.store.purge)
            log.debug("full-text index purged of forgotten text")

    async def _sweeper(self) -> None:
        while True:
            await anyio.sleep(min(self.settings.working.session_ttl / 4, 30.0))
            evicted = self.working.expire()
            if evicted:
                await self._promote(evicted, None, None)

    # --- helpers ---------------------------------------------------------------------------------------

    def _namespace(self, ctx: RequestContext, requested: str | None) -> str:
        return self.namespaces.resolve(ctx.principal, ctx.method, requested)

    async def _thread(self, func: Callable[..., T], *args: Any) -> T:
        return await anyio.to_thread.run_sync(func, *args)

    def _weights(self, params: RecallParams) -> Weights:
        base = self.settings.recall.weights
        over = params.weights
        pick = lambda name: getattr(over, name) if over is not None and getattr(over, name) is not None else getattr(base, name)
        weights = Weights(pick("vector"), pick("keyword"), pick("recency"), pick("importance"), pick("activation"),
                          pick("superseded"), pick("neighbour"), pick("session"), pick("period"))
        if weights.vector + weights.recency + weights.importance <= 0:
            raise InvalidParams("weights: at least one of vector, recency, importance must be > 0",
                                field="weights", reason="zero_weights")
        return weights

    def _publish_remembered(self, namespace: str, rows: list[Any], seqs: list[int | None], origin: str,
                            principal: Principal | None, task_id: int | None) -> None:
        self.extraction.wake()  # the episodes are committed: extraction reads them from the table
        done = [(r.id, r.text_sha256) for r, s in zip(rows, seqs) if s is not None]
        if not done:
            return
        self.metrics.remembered.labels(origin).inc(len(done))
        self._bus.publish(
            MemoryRemembered(namespace=namespace, ids=[i for i, _ in done], text_hmac=self.content_digests([h for _, h in done]),
                             origin=origin, principal=principal, task_id=task_id)  # type: ignore[arg-type]
        )

    def content_digests(self, text_sha256s: list[str]) -> list[str]:
        """What records that leave memory (events, audit entries) name texts by: keyed digests of
        the episodes' ``text_sha256``, which only the owner can match against a text."""
        return self.content_key.digests(text_sha256s)

    def linked_concepts(self, namespace: str, candidates: Sequence[str], limit: int) -> list[str]:
        """The stored names of the namespace's concepts that ``candidates`` (runs of a question's
        words, longest first) name wholly or by their first words (:mod:`engram.memory.linking`);
        for route.ask (blocking: call from a worker thread)."""
        with self.db.read() as conn:
            return linked_concepts(conn, namespace, candidates, limit)

    async def forget_seqs(self, namespace: str, seqs: list[int], scope: str = "sleep", principal: Principal | None = None,
                          task_id: int | None = None) -> Forgotten:
        """Delete episodes by seq the way memory.forget does (rows, index, events, full-text
        purge); for in-process callers such as sleep's forgetting stage."""
        gone = await self._thread(self.episodic.forget_seqs, namespace, seqs)
        self._publish_forgotten(namespace, gone, scope, principal, task_id)
        log.info("forgotten", namespace=namespace, scope=scope, episodes=len(gone.ids), relations=gone.relations)
        return gone

    def _publish_forgotten(self, namespace: str, gone: Forgotten, scope: str, principal: Principal | None,
                           task_id: int | None) -> None:
        self.metrics.forgotten.labels(scope).inc(len(gone.ids))
        if not (gone.ids or gone.relations or gone.concepts):
            return  # nothing matched: nothing happened worth an event
        for start in range(0, max(len(gone.ids), 1), _EVENT_CHUNK):
            first = start == 0
            self._bus.publish(
                MemoryForgotten(
                    namespace=namespace,
                    ids=gone.ids[start : start + _EVENT_CHUNK],
                    text_hmac=self.content_digests(gone.hashes[start : start + _EVENT_CHUNK]),
                    scope=scope,  # type: ignore[arg-type]
                    relations=gone.relations if first else 0,
                    concepts=gone.concepts if first else 0,
                    principal=principal,
                    task_id=task_id,
                )
            )
        if self._purge_wanted is not None:
            self._purge_wanted.set()
        self._check_maintenance(namespace)

    # --- episodic: remember, recall, get, forget ------------------------------------------------------

    @rpc("memory.remember", summary="Store episodes (a text the namespace holds already is that episode); answers with their ids once committed to disk.")
    async def remember(self, ctx: RequestContext, params: RememberParams) -> RememberResult:
        namespace = self._namespace(ctx, params.namespace)
        attributes = {"engram.memory.namespace": namespace, "engram.memory.items": len(params.items)}
        with self._spans.span("memory.embed", attributes):  # texts to rows, their vectors included
            rows = await self.episodic.prepare(namespace, params.items)
        with self._spans.span("memory.write", attributes):
            seqs, duplicates = await self.episodic.write_deduplicated(rows)
        self._publish_remembered(namespace, rows, seqs, "remember", ctx.principal, ctx.request)
        self.episodic.note_access([seq for seq, _ in duplicates.values()])  # a repeat is an access of the episode
        return RememberResult(ids=[duplicates[n][1] if n in duplicates else r.id for n, r in enumerate(rows)],
                              duplicates=[n in duplicates for n in range(len(rows))])

    @rpc("memory.recall", summary="The episodes best matching a query text or vector: hybrid score, filters, top k.",
         read_only=True)
    async def recall_rpc(self, ctx: RequestContext, params: RecallParams) -> RecallResult | dict[str, Any]:
        # RecallResult as it would dump, sent as it is: validating the hits into models only to
        # dump them again cost the event loop more than the rest of the handler.
        return await self._recall(ctx, params)

    async def recall(self, ctx: RequestContext, params: RecallParams) -> RecallResult:
        """memory.recall for callers in the daemon (route.ask, sleep): its result as the model."""
        return RecallResult.model_validate(await self._recall(ctx, params))

    async def _recall(self, ctx: RequestContext, params: RecallParams) -> dict[str, Any]:
        """memory.recall's result as JSON values, keys in RecallResult's order."""
        started = time.perf_counter()
        namespace = self._namespace(ctx, params.namespace)
        s = self.settings
        if params.k > s.max_k:
            raise InvalidParams(f"k: {params.k}; at most {s.max_k} (memory.max_k)", field="k", reason="k_too_large")
        text = params.query if params.query is not None and params.query.strip() else None
        if params.query is not None:
            if len(params.query.encode()) > s.max_text_bytes:
                raise InvalidParams(f"query: longer than {s.max_text_bytes} bytes (memory.max_text_bytes)", field="query",
                                    reason="query_too_large")
            if text is None and params.vector is None:
                raise InvalidParams("query: empty query", field="query", reason="empty_query")
        if text is None and params.vector is None:
            raise InvalidParams("give a query text or a vector", field="query", reason="empty_query")
        flt = self.episodic.filter_for(params.filter)
        weights = self._weights(params)
        dim = self.index.dim(namespace)
        if params.vector is not None:
            query = unit_vector(params.vector, "vector", s.max_dim, dim)
        else:
            if self.embedder is None or self.embedder.dim is None:
                raise no_embedder("the query has no vector and no embedding model is available")
            if dim is None:
                return {"hits": [], "namespace": namespace}
            with self._spans.span("memory.embed", {"engram.memory.namespace": namespace, "engram.memory.items": 1}):
                query = (await self.episodic.embed([text or ""], namespace, "query", ctx.deadline))[0]
        if dim is None:
            return {"hits": [], "namespace": namespace}
        with self._spans.span("memory.search", {"engram.memory.namespace": namespace, "engram.memory.k": params.k}) as span:
            found = await self._thread(
                lambda: self.episodic.recall(namespace, query, text, params.k, flt, weights, params.activation)
            )
            span.set_attribute("engram.memory.hits", len(found))
        self.episodic.note_access([h.pop("seq") for h in found])  # the hits are Hit's fields now
        self.episodic.sample_recall(namespace, query, params.k, flt, found)
        self.metrics.recalls.inc()
        self.metrics.recall_seconds.observe(time.perf_counter() - started)
        if self._bus.wants(MemoryRecalled.topic):  # built only for a follower (temporal policy rules)
            self._bus.publish(
                MemoryRecalled(namespace=namespace, ids=[h["id"] for h in found], tags=sorted({t for h in found for t in h["tags"]}),
                               principal=ctx.principal, task_id=ctx.request)
            )
        return {"hits": found, "namespace": namespace}

    @rpc("memory.get", summary="Episodes by id (unknown ids: -32002 naming them).", read_only=True)
    async def get(self, ctx: RequestContext, params: GetParams) -> GetResult:
        namespace = self._namespace(ctx, params.namespace)
        self.episodic.check_count(len(params.ids), "ids")
        found = await self._thread(self.episodic.resolve_ids, namespace, params.ids)
        seqs = [found[i] for i in params.ids]
        rows = await self._thread(
            lambda: self.episodic.store.rows(namespace, seqs, vectors_for=seqs if params.with_vectors else ())
        )
        missing = [i for i, s in zip(params.ids, seqs) if s not in rows]
        if missing:  # forgotten between the two reads
            raise NotFound(f"unknown episode ids: {', '.join(missing[:10])}", reason="unknown_ids", ids=missing)
        self.episodic.note_access(seqs)
        episodes = []
        for seq in seqs:
            row = dict(rows[seq])
            vector = row.pop("vector", None)
            row.pop("seq")
            episodes.append(EpisodeOut(**row, vector=vector.tolist() if vector is not None else None))
        return GetResult(episodes=episodes)

    @rpc("memory.list", summary="A namespace's episodes, newest recorded first, a page at a time (optionally one session or kind).",
         read_only=True)
    async def list_episodes(self, ctx: RequestContext, params: ListEpisodesParams) -> ListEpisodesResult:
        namespace = self._namespace(ctx, params.namespace)
        if params.limit > self.settings.max_items:
            raise InvalidParams(f"limit: at most {self.settings.max_items} (memory.max_items)", field="limit", reason="limit_too_large")
        try:
            before = int(params.before) if params.before else 1 << 62
        except ValueError:
            raise InvalidParams("before: not a cursor from a previous page", field="before", reason="bad_cursor") from None
        flt = self.episodic.filter_for(Filter(session=params.session, kinds=[params.kind] if params.kind else None))
        seqs, rows = await self._thread(self._newest, namespace, flt, before, params.limit)
        episodes = []
        for seq in seqs:
            if seq in rows:  # forgotten between the two reads
                episodes.append(EpisodeOut(**{k: v for k, v in rows[seq].items() if k in EpisodeOut.model_fields}))
        more = len(seqs) == params.limit
        return ListEpisodesResult(episodes=episodes, next=str(seqs[-1]) if seqs and more else None)

    def _newest(self, namespace: str, flt: SqlFilter, before: int, limit: int) -> tuple[list[int], dict[int, dict[str, Any]]]:
        """Live (not archived) seqs below ``before`` passing ``flt``, newest first, and their rows (a worker thread)."""
        store = self.episodic.store
        with store.db.read() as conn:
            seqs = [
                s
                for (s,) in conn.execute(
                    f"SELECT e.seq FROM memory_episodes e WHERE e.namespace = ? AND e.seq < ? AND e.archived_at IS NULL"
                    f"{flt.sql} ORDER BY e.seq DESC LIMIT ?",
                    (namespace, before, *flt.args, limit),
                )
            ]
        return seqs, store.rows(namespace, seqs)

    @rpc("memory.sequence", summary="The past stretches of the namespace's session streams most like a sequence (DTW), with what came next.",
         read_only=True)
    async def sequence(self, ctx: RequestContext, params: SequenceParams) -> SequenceResult:
        namespace = self._namespace(ctx, params.namespace)
        s = self.settings
        given = [name for name, value in (("episodes", params.episodes), ("vectors", params.vectors)) if value is not None]
        if len(given) != 1:
            raise InvalidParams("give exactly one of episodes and vectors" + (" (got both)" if given else ""),
                                field=given[1] if given else "episodes", reason="sequence_query")
        field = given[0]
        length = len(params.episodes if params.episodes is not None else params.vectors or [])
        if not 2 <= length <= SEQUENCE_MAX_LENGTH:
            raise InvalidParams(f"{field}: {length} elements; a sequence has 2 to {SEQUENCE_MAX_LENGTH}", field=field,
                                reason="sequence_length")
        if params.k > s.max_k:
            raise InvalidParams(f"k: {params.k}; at most {s.max_k} (memory.max_k)", field="k", reason="k_too_large")
        window = params.window if params.window is not None else -(-length // 10)
        dim = self.index.dim(namespace)
        skip: set[int] = set()
        if params.vectors is not None:
            query = np.vstack([unit_vector(v, f"vectors.{i}", s.max_dim, dim) for i, v in enumerate(params.vectors)])
        else:
            found = await self._thread(self.episodic.resolve_ids, namespace, params.episodes, "episodes")
            seqs = [found[i] for i in params.episodes or []]
            rows = await self._thread(lambda: self.episodic.store.rows(namespace, seqs, vectors_for=seqs))
            missing = [i for i, q in zip(params.episodes or [], seqs) if q not in rows]
            if missing:  # forgotten between the two reads
                raise NotFound(f"unknown episode ids: {', '.join(missing[:10])}", reason="unknown_ids", ids=missing)
            if dim is not None and any(rows[q]["dim"] != dim for q in seqs):
                raise InvalidParams(f"episodes: vectors of another dimension than this namespace's ({dim})", field="episodes",
                                    reason="dimension_mismatch")
            query = np.vstack([rows[q]["vector"] for q in seqs])
            skip = set(seqs)
        if dim is None:
            return SequenceResult(matches=[], namespace=namespace, window=window, candidates=0, computed=0)
        streams = await self._thread(self._streams, namespace, length, s.sequence_max_episodes)
        if streams is None:
            raise InvalidParams(
                f"{field}: the namespace holds more than {s.sequence_max_episodes} episodes "
                "(memory.sequence_max_episodes), too many to compare in memory at once",
                field=field, reason="too_many_episodes",
            )
        result = await self._thread(
            sequence_search, query, [v for _, _, _, v in streams], params.k, window,
            [[p for p, q in enumerate(seqs_) if q in skip] for _, seqs_, _, _ in streams],
        )
        matches = []
        for m in result.matches:
            session, _, ids, _ = streams[m.stream]
            end = m.start + length
            matches.append(SequenceMatch(session=session, episodes=ids[m.start : end], distance=m.distance,
                                         next=ids[end : end + length]))
        return SequenceResult(matches=matches, namespace=namespace, window=window, candidates=result.candidates,
                              computed=result.computed)

    def _streams(self, namespace: str, length: int, most: int,
                 ) -> list[tuple[str | None, list[int], list[str], NDArray[np.float32]]] | None:
        """The namespace's session streams at least ``length`` long, with their vectors from the
        index (an episode not in it yet is left out of its stream); None when the namespace holds
        more than ``most`` episodes, found before any vector is read (a worker thread)."""
        streams = self.episodic.store.streams(namespace, most)
        if streams is None:
            return None
        out = []
        for session, seqs, ids in streams:
            if len(seqs) < length:
                continue
            got, vectors = self.index.vectors(namespace, seqs)
            if len(got) != len(seqs):
                row = {q: n for n, q in enumerate(got)}
                keep = [n for n, q in enumerate(seqs) if q in row]
                seqs, ids = [seqs[n] for n in keep], [ids[n] for n in keep]
                vectors = vectors[[row[q] for q in seqs]] if seqs else vectors[:0]
            elif got != seqs:
                row = {q: n for n, q in enumerate(got)}
                vectors = vectors[[row[q] for q in seqs]]
            if len(seqs) >= length:
                out.append((session, seqs, ids, vectors))
        return out

    @rpc("memory.forget", summary="Forget episodes by id, by filter, or the whole namespace; immediate and complete.")
    async def forget(self, ctx: RequestContext, params: ForgetParams) -> ForgetResult:
        namespace = self._namespace(ctx, params.namespace)
        given = [name for name, value in (("ids", params.ids), ("filter", params.filter), ("all", params.all or None)) if value is not None]
        if len(given) != 1:
            raise InvalidParams(
                "give exactly one of ids, filter and all" + (f" (got {', '.join(given)})" if given else ""),
                field=given[1] if len(given) > 1 else "ids",
                reason="forget_scope",
            )
        working_items = 0
        if params.ids is not None:
            self.episodic.check_count(len(params.ids), "ids")
            found = await self._thread(self.episodic.resolve_ids, namespace, params.ids)
            gone = await self._thread(self.episodic.forget_seqs, namespace, list(found.values()))
            scope = "ids"
        elif params.filter is not None:
            flt = self.episodic.filter_for(params.filter)
            if flt.empty:
                raise InvalidParams("filter: no condition; use all: true to forget the whole namespace", field="filter",
                                    reason="empty_filter")
            seqs = await self._thread(
                lambda: self.episodic.store.filter_seqs(namespace, flt, 1 << 62, include_pinned=params.include_pinned,
                                                        include_archived=True)
            )
            gone = await self._thread(self.episodic.forget_seqs, namespace, seqs or [])
            scope = "filter"
        else:
            self.namespaces.require_admin(ctx.principal, "memory.forget_all")
            gone = await self._thread(self.episodic.forget_namespace, namespace)
            working_items = self.working.drop_namespace(namespace)
            scope = "all"
        self._publish_forgotten(namespace, gone, scope, ctx.principal, ctx.request)
        log.info("forgotten", namespace=namespace, scope=scope, episodes=len(gone.ids), relations=gone.relations)
        return ForgetResult(
            forgotten=len(gone.ids),
            ids=gone.ids[: self.settings.max_items],
            concepts=gone.concepts,
            relations=gone.relations,
            working_items=working_items,
        )

    @rpc("memory.stats", summary="Counts of one namespace: episodes, sessions, kinds, graph, index, working memory.", audit=False)
    async def stats(self, ctx: RequestContext, params: StatsParams) -> StatsResult:
        namespace = self._namespace(ctx, params.namespace)
        counts = await self._thread(self.episodic.store.stats, namespace)
        sessions, items = self.working.stats(namespace)
        embedder = self.embedder
        dim = embedder.dim if embedder is not None else None
        return StatsResult(
            namespace=namespace,
            **counts,
            index=IndexStats(**self.index.stats(namespace)),
            working=WorkingStats(sessions=sessions, items=items),
            embedder=EmbedderStats(name=embedder.name if embedder is not None else None, dim=dim, available=dim is not None),
            watermark=self.index.watermark,
            saved_watermark=self.index.saved_watermark,
        )

    # --- import and export -----------------------------------------------------------------------------

    @rpc("memory.import", summary="Store exported episodes; items already imported (same id) are skipped.", timeout=600)
    async def import_(self, ctx: RequestContext, params: ImportParams) -> ImportResult:
        namespace = self._namespace(ctx, params.namespace)
        self.episodic.check_count(len(params.items), "items")
        ids: list[str] = []
        for i, item in enumerate(params.items):
            if item.id is not None:
                if not idgen.is_id(item.id, idgen.EPISODE):
                    raise InvalidParams(f"items.{i}.id: {item.id!r} is not an episode id (ep_...)", field=f"items.{i}.id", reason="bad_id")
                ids.append(item.id)
            else:
                canonical = item.model_dump_json(exclude={"id"}, exclude_none=True)
                ids.append(idgen.derived_id(idgen.EPISODE, namespace, canonical))
        owners = await self._thread(self.episodic.store.owners, ids)
        # An id taken in another namespace (an export of someone else's memory, imported here):
        # a new id derived from it, the same on every run, so re-imports still skip.
        ids = [idgen.derived_id(idgen.EPISODE, namespace, "from", i) if owners.get(i, namespace) != namespace else i for i in ids]
        moved = [i for i in ids if i not in owners]
        if moved and len(moved) < len(ids):
            owners.update(await self._thread(self.episodic.store.owners, moved))
        new_positions = [n for n, i in enumerate(ids) if owners.get(i) != namespace]
        imported = 0
        if new_positions:
            rows = await self.episodic.prepare(
                namespace,
                [params.items[n] for n in new_positions],
                "items",
                ids=[ids[n] for n in new_positions],
                positions=new_positions,
            )
            seqs, duplicates = await self.episodic.write_deduplicated(rows)
            imported = sum(1 for s in seqs if s is not None)
            self._publish_remembered(namespace, rows, seqs, "import", ctx.principal, ctx.request)
            for n, (_, holder) in duplicates.items():  # a text the namespace holds already: its episode's id
                ids[new_positions[n]] = holder
        return ImportResult(imported=imported, skipped=len(ids) - imported, ids=ids)

    @rpc(
        "memory.export",
        summary="A page of a namespace's episodes, oldest first, for backups and moves.",
        owner_only=True,  # an admin method: a policy rule with admin = true can grant it
    )
    async def export(self, ctx: RequestContext, params: ExportParams) -> ExportResult:
        namespace = self._namespace(ctx, params.namespace)
        if params.limit > self.settings.max_items:
            raise InvalidParams(f"limit: at most {self.settings.max_items} (memory.max_items)", field="limit", reason="limit_too_large")
        try:
            after = int(params.after) if params.after else 0
        except ValueError:
            raise InvalidParams("after: not a cursor from a previous page", field="after", reason="bad_cursor") from None
        rows, total = await self._thread(self.episodic.store.page, namespace, after, params.limit, params.with_vectors)
        items = [
            ExportItem(
                id=r["id"], text=r["text"], kind=r["kind"], tags=r["tags"], metadata=r["metadata"], session=r["session"],
                time=r["time"], importance=r["importance"], pinned=r["pinned"], source=r["source"],
                vector=r["vector"].tolist() if "vector" in r else None,
            )
            for r in rows
        ]
        more = len(rows) == params.limit
        return ExportResult(items=items, next=str(rows[-1]["seq"]) if rows and more else None, total=total)

    # --- working memory ------------------------------------------------------------------------------

    def _item_out(self, item: WorkingItem, score: float) -> WorkingItemOut:
        return WorkingItemOut(
            key=item.key, content=item.content, importance=item.importance, attention=item.attention, tags=item.tags,
            access_count=item.access_count, created_at=item.created_at, last_access=item.last_access, score=score,
        )

    async def _promote(self, evicted: list[EvictedItem], principal: Principal | None, task_id: int | None) -> dict[int, str]:
        """Remember the evicted items important enough; returns id(item) -> episode id."""
        threshold = self.settings.working.promote_threshold
        for e in evicted:
            self.metrics.evictions.labels(e.reason).inc()
        chosen = [e for e in evicted if e.item.importance >= threshold]
        promoted: dict[int, str] = {}
        by_namespace: dict[str, list[EvictedItem]] = {}
        for e in chosen:
            by_namespace.setdefault(e.namespace, []).append(e)
        for namespace, group in by_namespace.items():
            items = [
                EpisodeIn(
                    text=e.item.content, kind="working", tags=e.item.tags, session=e.session, importance=e.item.importance,
                    metadata={"working_key": e.item.key, "evicted": e.reason}, source="working_memory",
                    time=e.item.created_at,
                )
                for e in group
            ]
            try:
                for start in range(0, len(items), self.settings.max_items):
                    part, members = items[start : start + self.settings.max_items], group[start : start + self.settings.max_items]
                    rows = await self.episodic.prepare(namespace, part)
                    seqs, duplicates = await self.episodic.write_deduplicated(rows)
                    self._publish_remembered(namespace, rows, seqs, "promotion", principal, task_id)
                    for n, (e, row) in enumerate(zip(members, rows)):
                        promoted[id(e.item)] = duplicates[n][1] if n in duplicates else row.id
                self.metrics.promotions.labels("ok").inc(len(group))
            except Exception as exc:  # noqa: BLE001 - a failed promotion must not fail the put that evicted it
                self.metrics.promotions.labels("failed").inc(len(group))
                log.warning("working-memory items not promoted", namespace=namespace, items=len(group),
                            error=getattr(exc, "message", str(exc)))
        return promoted

    @rpc("memory.working.put", summary="Hold an item in a session's working memory; may evict (and promote) others.")
    async def working_put(self, ctx: RequestContext, params: WorkingPutParams) -> WorkingPutResult:
        namespace = self._namespace(ctx, params.namespace)
        self.episodic.check_text(params.content, "content", "content")
        tags = check_tags(params.tags, "tags", self.settings.max_tags, self.settings.max_tag_length)
        key, evicted = self.working.put(
            namespace, params.session, params.content, key=params.key, importance=params.importance,
            attention=params.attention, tags=tags,
        )
        promoted = await self._promote(evicted, ctx.principal, ctx.request) if evicted else {}
        return WorkingPutResult(
            key=key,
            evicted=[
                Evicted(key=e.item.key, session=e.session, reason=e.reason, promoted_id=promoted.get(id(e.item)))  # type: ignore[arg-type]
                for e in evicted
            ],
        )

    @rpc("memory.working.get", summary="One working-memory item (counts as an access).")
    async def working_get(self, ctx: RequestContext, params: WorkingKeyParams) -> WorkingGetResult:
        namespace = self._namespace(ctx, params.namespace)
        item = self.working.get(namespace, params.session, params.key)
        if item is None:
            raise NotFound(f"no item {params.key!r} in session {params.session!r}", reason="unknown_key",
                           session=params.session, key=params.key)
        return WorkingGetResult(item=self._item_out(item, self.working.scores(namespace, params.session).get(item.key, 0.0)))

    @rpc("memory.working.list", summary="A session's working-memory items, highest eviction score first.")
    async def working_list(self, ctx: RequestContext, params: WorkingListParams) -> WorkingListResult:
        namespace = self._namespace(ctx, params.namespace)
        return WorkingListResult(
            session=params.session, items=[self._item_out(item, score) for score, item in self.working.ranked(namespace, params.session)]
        )

    @rpc("memory.working.clear", summary="Drop a session's working memory (or some keys), optionally promoting the important items.")
    async def working_clear(self, ctx: RequestContext, params: WorkingClearParams) -> WorkingClearResult:
        namespace = self._namespace(ctx, params.namespace)
        removed = self.working.clear(namespace, params.session, params.keys)
        promoted: dict[int, str] = {}
        if params.promote and removed:
            promoted = await self._promote(
                [EvictedItem(namespace, params.session, item, "cleared") for item in removed], ctx.principal, ctx.request
            )
        return WorkingClearResult(cleared=len(removed), promoted=list(promoted.values()))

    # --- semantic memory ---------------------------------------------------------------------------------

    @rpc("memory.graph.upsert", summary="Add or update concepts and relations; contradicted relations are ended or retracted, not deleted.")
    async def graph_upsert(self, ctx: RequestContext, params: GraphUpsertParams) -> GraphUpsertResult:
        namespace = self._namespace(ctx, params.namespace)
        s = self.settings
        if not params.concepts and not params.relations:
            raise InvalidParams("give concepts or relations", field="concepts", reason="empty_upsert")
        self.episodic.check_count(len(params.concepts), "concepts")
        self.episodic.check_count(len(params.relations), "relations")
        dim = self.index.dim(namespace) or self.episodic.embedder_dim()
        concepts: list[ConceptSpec] = []
        for i, c in enumerate(params.concepts):
            vector = unit_vector(c.vector, f"concepts.{i}.vector", s.max_dim, dim) if c.vector is not None else None
            for j, e in enumerate(c.episodes):
                if not idgen.is_id(e, idgen.EPISODE):
                    raise InvalidParams(f"concepts.{i}.episodes.{j}: {e!r} is not an episode id", field=f"concepts.{i}.episodes.{j}", reason="bad_id")
            concepts.append(ConceptSpec(c.name, c.kind if "kind" in c.model_fields_set else None, vector, list(c.episodes)))
        relations: list[RelationSpec] = []
        for i, r in enumerate(params.relations):
            if r.valid_from is not None and r.valid_to is not None and r.valid_from >= r.valid_to:
                raise InvalidParams(f"relations.{i}.valid_to: must be after valid_from", field=f"relations.{i}.valid_to",
                                    reason="backwards_time_range")
            for j, e in enumerate(r.sources):
                if not idgen.is_id(e, idgen.EPISODE):
                    raise InvalidParams(f"relations.{i}.sources.{j}: {e!r} is not an episode id", field=f"relations.{i}.sources.{j}", reason="bad_id")
            exclusive = r.exclusive if r.exclusive is not None else s.graph.functional(r.type)
            relations.append(RelationSpec(r.src, r.dst, r.type, r.weight, r.valid_from, r.valid_to, exclusive, list(r.sources)))
        vectors = await self._concept_vectors(namespace, concepts, relations)
        outcome = await self._thread(lambda: self.graph.upsert(namespace, concepts, relations, time.time(), vectors))
        if outcome["created_concepts"] or outcome["created_relations"] or outcome["retracted"]:
            self._bus.publish(
                MemoryGraphUpdated(namespace=namespace, concepts=outcome["created_concepts"], relations=outcome["created_relations"],
                                   retracted=outcome["retracted"], principal=ctx.principal, task_id=ctx.request)
            )
        return GraphUpsertResult(concepts=outcome["concepts"], relations=outcome["relations"], retracted=outcome["retracted"],
                                 superseded=outcome["superseded"])

    async def _concept_vectors(self, namespace: str, concepts: list[ConceptSpec], relations: list[RelationSpec]) -> dict[str, Any]:
        """Embeddings of the names of concepts that have none yet, when an embedder is there
        (spreading activation finds concepts by them); without one, concepts simply have none."""
        embedder = self.embedder
        if embedder is None or embedder.dim is None:
            return {}
        dim = self.index.dim(namespace)
        if dim is not None and dim != embedder.dim:
            return {}
        names = {concept_key(c.name): c.name for c in concepts if c.vector is None}
        for r in relations:
            names.setdefault(concept_key(r.src), r.src)
            names.setdefault(concept_key(r.dst), r.dst)
        have = await self._thread(self.graph.keys_with_vectors, namespace, list(names.values()))
        missing = [(k, n) for k, n in names.items() if k not in have]
        if not missing:
            return {}
        try:
            rows = await embedder.embed([n for _, n in missing])
        except Exception as exc:  # noqa: BLE001 - concepts work without vectors; activation just cannot find them
            log.warning("concept names not embedded", namespace=namespace, error=getattr(exc, "message", str(exc)))
            return {}
        return {k: rows[i] for i, (k, _) in enumerate(missing)}

    @rpc("memory.graph.query", summary="A concept's neighbours and multi-hop paths, as of a time.", read_only=True)
    async def graph_query(self, ctx: RequestContext, params: GraphQueryParams) -> GraphQueryResult:
        namespace = self._namespace(ctx, params.namespace)
        if params.depth > self.settings.graph.max_depth:
            raise InvalidParams(f"depth: at most {self.settings.graph.max_depth} (memory.graph.max_depth)", field="depth",
                                reason="depth_too_large")
        result = await self._thread(
            lambda: self.graph.query(namespace, params.concept, params.depth, params.direction, params.types,
                                     params.as_of, params.valid_at, params.to)
        )
        return GraphQueryResult(**result)
