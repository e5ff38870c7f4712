"""The extraction worker: a background task of memory that turns pending episodes into graph facts.

It sleeps until ``wake()`` (memory calls it after every committed write; the signal is a stream
of one slot, so a burst of writes is one wake-up and nothing queues in RAM) or until it starts,
then reads the episodes past its watermark in batches, oldest first. For each batch it parses the
texts in a worker thread (spaCy is loaded there on the first batch, never before an episode
waits), writes the concepts and relations through memory's ``GraphStore.upsert`` (sources: the
episodes, ``valid_from``: each episode's time), then moves the watermark past the batch.

A crash between the graph's commit and the watermark's re-reads that batch on the next start,
which changes nothing: a fact already believed is sent again with the validity it was recorded
with, and the upsert only finds its sources there already.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import anyio
import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from engram.errors import EngramError, NotFound
from engram.memory.extraction.llm import LLMExtractor
from engram.memory.extraction.local import Extraction
from engram.memory.extraction.queue import ExtractionQueue, PendingEpisode
from engram.memory.semantic import ConceptSpec, GraphStore, RelationSpec, concept_key
from engram.memory.settings import ExtractionSettings
from engram.observability.metrics import LATENCY_BUCKETS

__all__ = ["Extractor", "ExtractionMetrics", "ExtractionWorker"]

log = structlog.get_logger("engram.memory.extraction")


class Extractor(Protocol):
    name: str

    def extract_many(self, texts: Sequence[str]) -> list[Extraction]: ...


class ExtractionMetrics:
    def __init__(self, registry: CollectorRegistry | None) -> None:
        r = self.registry = registry if registry is not None else CollectorRegistry()
        self.episodes = Counter("engram_memory_extraction_episodes", "Episodes read by knowledge extraction.", registry=r)
        self.relations = Counter(
            "engram_memory_extraction_relations", "Relations extraction sent to the graph, by outcome (created, sources_added, ...).",
            ["status"], registry=r,
        )
        self.concepts = Counter("engram_memory_extraction_concepts", "Concepts extraction created.", registry=r)
        self.lag = Gauge(
            "engram_memory_extraction_lag", "Episodes waiting for extraction, as counted before each batch (0 once caught up).",
            registry=r,
        )
        self.llm = Counter(
            "engram_memory_extraction_llm_answers", "Episodes the LLM extractor was asked about, by outcome "
            "(added: it found more; nothing; invalid: the answer did not validate; failed: no answer).",
            ["outcome"], registry=r,
        )
        self.batch_seconds = Histogram(
            "engram_memory_extraction_batch_seconds", "Seconds per extraction batch (parse and graph write).",
            buckets=LATENCY_BUCKETS, registry=r,
        )


Vectors = Callable[[str, list[ConceptSpec], list[RelationSpec]], Awaitable[dict[str, Any]]]
Published = Callable[[str, dict[str, Any]], None]


class ExtractionWorker:
    """``load`` makes the extractor (blocking, called once in a worker thread); ``vectors``
    embeds new concept names (memory's own helper); ``published`` tells the bus what changed."""

    def __init__(self, settings: ExtractionSettings, functional: Callable[[str], bool], queue: ExtractionQueue,
                 graph: GraphStore, load: Callable[[], Extractor], vectors: Vectors, published: Published,
                 registry: CollectorRegistry | None = None, llm: LLMExtractor | None = None) -> None:
        self.settings = settings
        self.functional = functional
        self.queue = queue
        self.graph = graph
        self._load = load
        self._vectors = vectors
        self._published = published
        self.metrics = ExtractionMetrics(registry)
        self.extractor: Extractor | None = None
        self.llm = llm
        self.unavailable: str | None = None  # why extraction cannot run, once it is known
        self._send: Any = None
        self._receive: Any = None
        self._last_wake = 0.0

    def open(self) -> None:
        """The wake-up stream (needs the event loop)."""
        self._send, self._receive = anyio.create_memory_object_stream[None](1)

    def wake(self) -> None:
        if self._send is None:
            return
        self._last_wake = time.monotonic()
        try:
            self._send.send_nowait(None)
        except anyio.WouldBlock:
            pass  # a wake-up is already waiting: it will see these episodes too

    async def run(self) -> None:
        assert self._receive is not None
        # Catch up at start (and after a restart of this task), once the daemon's own start is
        # over: loading spaCy would compete with it. A remember meanwhile wakes it earlier.
        with anyio.move_on_after(self.settings.start_delay):
            await self._receive.receive()
        self.wake()
        async for _ in self._receive:
            if not self.settings.enabled or self.unavailable is not None:
                continue
            await self.drain()

    async def drain(self) -> int:
        """Extract every pending episode; returns how many were read."""
        done = 0
        while True:
            batch = await anyio.to_thread.run_sync(self.queue.pending, self.settings.batch, self.settings.max_chars)
            if not batch:
                self.metrics.lag.set(0)
                return done
            self.metrics.lag.set(await anyio.to_thread.run_sync(self.queue.lag))
            if self.extractor is None and not await self._open_extractor():
                return done
            await self._wait_for_quiet()
            await self.process(batch)
            done += len(batch)

    async def _wait_for_quiet(self) -> None:
        """Let a burst of writes pass before a batch: parsing takes the interpreter (and a core)
        from the requests, and doubled remember's latency while it ran alongside. A batch waits
        until no write came for ``quiet`` seconds, at most ``max_defer``, so that a steady stream
        of writes cannot hold extraction back for ever."""
        quiet, deadline = self.settings.quiet, time.monotonic() + self.settings.max_defer
        while (left := quiet - (time.monotonic() - self._last_wake)) > 0 and time.monotonic() < deadline:
            await anyio.sleep(min(left, deadline - time.monotonic()))

    async def _open_extractor(self) -> bool:
        def load() -> tuple[Extractor, float]:
            started = time.thread_time()  # this thread's CPU only: the requests' is not the load's
            return self._load(), time.thread_time() - started

        try:
            self.extractor, cpu = await anyio.to_thread.run_sync(load)
        except Exception as exc:  # noqa: BLE001 - memory runs without extraction; health says why
            self.unavailable = getattr(exc, "message", None) or str(exc)
            log.error("knowledge extraction unavailable", problem=self.unavailable)
            return False
        log.info("extractor loaded", extractor=self.extractor.name, cpu_seconds=round(cpu, 3))
        return True

    async def process(self, batch: list[PendingEpisode]) -> None:
        assert self.extractor is not None
        started = time.perf_counter()
        extractions = await anyio.to_thread.run_sync(self.extractor.extract_many, [e.text for e in batch])
        if self.llm is not None:
            await self._ask_llm(self.llm, batch, extractions)
        by_namespace: dict[str, list[tuple[PendingEpisode, Extraction]]] = {}
        for episode, extraction in zip(batch, extractions, strict=True):
            by_namespace.setdefault(episode.namespace, []).append((episode, extraction))
        written = 0
        for namespace, items in by_namespace.items():
            written += await self._write(namespace, items)
        await anyio.to_thread.run_sync(self.queue.advance, batch[-1].seq)
        seconds = time.perf_counter() - started
        self.metrics.episodes.inc(len(batch))
        self.metrics.batch_seconds.observe(seconds)
        log.debug("episodes extracted", episodes=len(batch), relations=written, watermark=batch[-1].seq,
                  seconds=round(seconds, 4))

    async def _ask_llm(self, llm: LLMExtractor, batch: list[PendingEpisode], extractions: list[Extraction]) -> None:
        """What the LLM adds, episode by episode; the first failure (no provider, the policy's
        refusal, a timeout) ends its part of the batch, which is then written as the local
        extractor left it: the LLM adds, it is never needed."""
        for episode, extraction in zip(batch, extractions, strict=True):
            invalid = llm.invalid
            try:
                with anyio.fail_after(self.settings.llm_timeout):
                    added = await llm.add_to(episode.text, extraction, episode.tags)
            except (EngramError, TimeoutError) as exc:
                self.metrics.llm.labels("failed").inc()
                log.warning("LLM extraction skipped for this batch", episode=episode.id,
                            problem=getattr(exc, "message", None) or type(exc).__name__)
                return
            outcome = "invalid" if llm.invalid > invalid else "added" if added else "nothing"
            self.metrics.llm.labels(outcome).inc()

    async def _write(self, namespace: str, items: list[tuple[PendingEpisode, Extraction]]) -> int:
        for _attempt in range(2):
            concepts, relations = await anyio.to_thread.run_sync(self._specs, namespace, items)
            if not concepts and not relations:
                return 0
            vectors = await self._vectors(namespace, concepts, relations)
            try:
                outcome = await anyio.to_thread.run_sync(
                    lambda: self.graph.upsert(namespace, concepts, relations, time.time(), vectors, background=True)
                )
            except NotFound:
                # An episode was forgotten while it was parsed: write what the others said.
                there = await anyio.to_thread.run_sync(self.queue.existing, [e.id for e, _ in items])
                items = [(e, x) for e, x in items if e.id in there]
                continue
            for rel in outcome["relations"]:
                self.metrics.relations.labels(rel["status"]).inc()
            self.metrics.concepts.inc(len(outcome["created_concepts"]))
            self._published(namespace, outcome)
            return len(relations)
        return 0

    def _specs(self, namespace: str, items: list[tuple[PendingEpisode, Extraction]]) -> tuple[list[ConceptSpec], list[RelationSpec]]:
        """The batch's concepts (with the episodes that name them) and relations, in episode order.

        A fact memory already believes, or one an earlier episode of the batch stated, is sent with
        the validity it has, so that the upsert adds this episode as one more source instead of
        starting the fact again. A functional fact stated again after a rival (Paris, Berlin, Paris
        again) starts anew."""
        concepts: dict[str, ConceptSpec] = {}
        relations: list[RelationSpec] = []
        keys = {
            (concept_key(t.subject), t.relation, concept_key(t.object))
            for _, x in items for t in x.triples
        }
        believed = self.queue.believed(namespace, keys) if keys else {}
        latest: dict[tuple[str, str], tuple[str, str, str]] = {}  # (src key, functional type) -> the last fact's key
        in_batch: dict[tuple[str, str, str], RelationSpec] = {}
        weight = self.settings.relation_weight
        for episode, extraction in items:
            for entity in extraction.entities:
                key = concept_key(entity.name)
                spec = concepts.get(key)
                if spec is None:
                    spec = concepts[key] = ConceptSpec(entity.name, entity.kind, None, [], kind_if_new=True)
                if episode.id not in spec.episodes:
                    spec.episodes.append(episode.id)
            for t in extraction.triples:
                key = (concept_key(t.subject), t.relation, concept_key(t.object))
                functional = self.functional(t.relation)
                rival_between = functional and latest.get((key[0], t.relation), key) != key
                if functional:
                    latest[(key[0], t.relation)] = key
                earlier = in_batch.get(key)
                if earlier is not None and not rival_between:
                    if episode.id not in earlier.sources:
                        earlier.sources.append(episode.id)
                    continue
                held = next((
                    b for b in (believed.get(key, []) if earlier is None else [])
                    if (b[1] is None or b[1] <= episode.time) and (b[2] is None or b[2] > episode.time)
                ), None)
                if held is not None:
                    spec = RelationSpec(t.subject, t.object, t.relation, held[0], held[1], held[2], functional, [episode.id])
                else:
                    spec = RelationSpec(t.subject, t.object, t.relation, weight, episode.time, None, functional, [episode.id])
                in_batch[key] = spec
                relations.append(spec)
        return list(concepts.values()), relations
