"""The ``memory`` section of the configuration: limits, recall scoring, vector index, working
memory, semantic graph and the write path.

Pure pydantic, no I/O: :class:`engram.config.Settings` holds a :class:`MemorySettings` as its
``memory`` field, so ``[memory.recall.weights]`` in the TOML file or
``ENGRAM_MEMORY__RECALL__WEIGHTS__VECTOR`` in the environment reach it like any other setting.
The whole section is read at start (a change needs a restart).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "ExtractionSettings",
    "GraphSettings",
    "IndexSettings",
    "MemorySettings",
    "RecallSettings",
    "RecallWeights",
    "ReplayLogSettings",
    "WorkingSettings",
    "WorkingWeights",
]

DAY = 86_400.0


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class RecallWeights(_Section):
    """How much each part of a hit's score counts; each part is in [0, 1]."""

    vector: float = Field(default=0.6, ge=0, le=100, description="Weight of cosine similarity to the query vector.")
    keyword: float = Field(
        default=0.3,
        ge=0,
        le=100,
        description="Weight of the full-text match: bm25 / max(the query's best bm25, memory.recall.keyword_full_marks).",
    )
    recency: float = Field(
        default=0.1, ge=0, le=100, description="Weight of recency: 0.5 ** (age / memory.recall.recency_half_life)."
    )
    importance: float = Field(default=0.1, ge=0, le=100, description="Weight of the episode's importance (0..1).")
    activation: float = Field(
        default=0.2,
        ge=0,
        le=100,
        description="Weight of spreading activation from the query's nearest concepts (recall with activation only).",
    )
    superseded: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="Share of its score an episode loses when the facts learned from it were all superseded by newer "
        "ones (a factor on the weighted mean, not a weight in it; 0: no demotion).",
    )
    neighbour: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="Conversation context: how far an episode with a session is lifted towards the better score of the "
        "episodes just before and after it in that session (0: not at all, 1: all the way).",
    )
    session: float = Field(
        default=0.25,
        ge=0,
        le=1,
        description="Conversation context: how far an episode with a session is lifted towards the best score in its "
        "session (0: not at all).",
    )
    period: float = Field(
        default=0.2,
        ge=0,
        le=100,
        description="Weight of the episode's time lying in a period the query text names (\"in July 2023\", \"yesterday\"); "
        "counts only for a query that names one.",
    )


class RecallSettings(_Section):
    weights: RecallWeights = Field(default_factory=RecallWeights)
    recency_half_life: float = Field(
        default=30 * DAY, gt=0, le=100 * 365 * DAY, description="Seconds after which an episode's recency part halves."
    )
    keyword_full_marks: float = Field(
        default=8.0,
        gt=0,
        le=1000,
        description="The bm25 a query's best full-text match needs for a keyword part of 1: the part is bm25 / max(the "
        "query's best bm25, this), so a query whose best match is only on common words gives no match full marks.",
    )
    keyword_max_df: int = Field(
        default=1000,
        ge=1,
        le=100_000_000,
        description="Query words found in more episodes than this are left out of the keyword match, like stop words "
        "(they say little about relevance and make the full-text search slow).",
    )
    candidate_factor: int = Field(
        default=4, ge=1, le=100, description="Nearest neighbours fetched per hit asked for (k), before scoring and filters."
    )
    min_candidates: int = Field(
        default=50, ge=1, le=100_000, description="Nearest neighbours (and full-text matches) fetched at least."
    )
    exact_filter_limit: int = Field(
        default=2000,
        ge=0,
        le=1_000_000,
        description="When filters leave at most this many episodes, their similarity is computed exactly over "
        "all of them instead of filtering approximate neighbours.",
    )


class IndexSettings(_Section):
    """The per-namespace FAISS index: exact (flat) while small, HNSW once large."""

    hnsw_threshold: int = Field(
        default=20_000,
        ge=1,
        le=100_000_000,
        description="Vectors in a namespace from which its index becomes HNSW (built in the background); "
        "below it the index is exact (flat inner product).",
    )
    hnsw_m: int = Field(default=16, ge=4, le=128, description="HNSW graph degree (M).")
    hnsw_ef_construction: int = Field(default=64, ge=8, le=4096, description="HNSW efConstruction: build-time beam width.")
    hnsw_ef_search: int = Field(
        default=64, ge=8, le=8192, description="HNSW efSearch: query-time beam width (raised to the candidates asked for)."
    )
    rebuild_fraction: float = Field(
        default=0.25,
        gt=0,
        le=1,
        description="Fraction of forgotten (masked) vectors in an HNSW index at which it is rebuilt without them.",
    )
    save_interval: float = Field(
        default=60.0, gt=0, le=86_400, description="Seconds between saves of a changed index to <state_dir>/memory/."
    )
    threads: int = Field(
        default=1,
        ge=1,
        le=256,
        description="OpenMP threads a FAISS search uses. One query at a time is fastest on one thread (more threads "
        "spin and contend on a busy machine); concurrency comes from concurrent requests.",
    )
    build_threads: int = Field(
        default=0,
        ge=0,
        le=256,
        description="OpenMP threads for adding vectors and building HNSW graphs (batches, which parallelise); 0: one per core.",
    )


class WorkingWeights(_Section):
    """The eviction score of a working-memory item; the lowest score is evicted first."""

    recency: float = Field(default=0.4, ge=0, le=100, description="Weight of 0.5 ** (idle time / working half-life).")
    importance: float = Field(default=0.4, ge=0, le=100, description="Weight of importance x attention.")
    frequency: float = Field(default=0.2, ge=0, le=100, description="Weight of accesses (log-scaled to 0..1).")


class WorkingSettings(_Section):
    max_items: int = Field(default=64, ge=1, le=100_000, description="Items per session; one more evicts the lowest-scored.")
    max_sessions: int = Field(
        default=1024, ge=1, le=1_000_000, description="Sessions held at once; one more evicts the least recently used session."
    )
    max_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=1024,
        le=64 * 1024**3,
        description="Content bytes held across all sessions; beyond it items of the least recently used sessions are evicted.",
    )
    session_ttl: float = Field(
        default=3600.0, gt=0, le=365 * DAY, description="Seconds a session may stay untouched before it is evicted."
    )
    recency_half_life: float = Field(
        default=600.0, gt=0, le=365 * DAY, description="Seconds of idleness after which an item's recency part halves."
    )
    promote_threshold: float = Field(
        default=0.7,
        ge=0,
        le=1.01,
        description="Evicted items at least this important are remembered as episodes (kind 'working'); "
        "above 1 disables promotion.",
    )
    weights: WorkingWeights = Field(default_factory=WorkingWeights)


FUNCTIONAL_TYPES = ["lives_in", "works_at", "married_to", "located_in", "born_in", "born_on", "died_in",
                    "headquartered_in", "reports_to", "capital_of"]


class GraphSettings(_Section):
    functional_types: list[str] = Field(
        default_factory=lambda: list(FUNCTIONAL_TYPES),
        description="Relation types with one destination per source at a time, even when the upsert does not say "
        "exclusive: a newer fact ends the validity of the overlapping ones with another destination "
        "(see memory.graph.upsert).",
    )
    exclusive_types: list[str] = Field(
        default_factory=list,
        description="More functional relation types, added to memory.graph.functional_types.",
    )
    max_depth: int = Field(default=4, ge=1, le=8, description="Deepest multi-hop query memory.graph.query allows.")
    max_results: int = Field(
        default=200, ge=1, le=100_000, description="Neighbours and paths memory.graph.query returns at most."
    )
    activation_depth: int = Field(default=2, ge=0, le=6, description="Hops spreading activation travels from its seeds.")
    activation_decay: float = Field(default=0.5, gt=0, le=1, description="Share of activation that survives each hop.")
    activation_seeds: int = Field(default=5, ge=1, le=1000, description="Concepts nearest to the query that seed activation.")
    activation_min_similarity: float = Field(
        default=0.2, ge=-1, le=1, description="Concepts less similar to the query than this do not seed activation."
    )

    def functional(self, relation_type: str) -> bool:
        """Whether a relation of this type has one destination per source at a time."""
        return relation_type in self.functional_types or relation_type in self.exclusive_types


class ExtractionSettings(_Section):
    """Knowledge extraction: concepts and relations from remembered text, in the background."""

    enabled: bool = Field(
        default=True,
        description="Extract entities and relations from every episode into the graph (spaCy's small English pipeline, "
        "local); off: episodes wait, and are extracted once it is on again.",
    )
    batch: int = Field(default=32, ge=1, le=4096, description="Episodes read, parsed and written to the graph together.")
    max_chars: int = Field(
        default=10_000, ge=100, le=1_000_000, description="Characters of an episode's text that are parsed (the rest is not)."
    )
    relation_weight: float = Field(
        default=0.8, gt=0, le=1, description="Weight of an extracted relation (memory.graph.upsert's weight)."
    )
    resolve_pronouns: bool = Field(
        default=True, description="Read he/she as the last person named earlier in the same episode."
    )
    start_delay: float = Field(
        default=2.0, ge=0, le=3600,
        description="Seconds after memory starts before extraction catches up with waiting episodes (a remember wakes it sooner).",
    )
    quiet: float = Field(
        default=0.2, ge=0, le=60,
        description="Seconds without a write that a batch waits for, so that bursts of remember are not slowed by parsing.",
    )
    max_defer: float = Field(
        default=2.0, ge=0, le=600, description="Longest a batch waits for quiet (a steady stream of writes still gets extracted).",
    )
    llm_provider: str | None = Field(
        default=None,
        description="A generate provider (by name) asked, per episode, for the facts the local extractor missed; none: "
        "local only. The policy decides whether the episode's text may go to it (the default keeps remote providers out).",
    )
    llm_timeout: float = Field(
        default=60.0, gt=0, le=600, description="Seconds the LLM extractor waits for one episode's answer.",
    )


class ReplayLogSettings(_Section):
    """The sample of past recalls that sleep's dream replay re-runs (local database only)."""

    sample_rate: float = Field(
        default=0.05, ge=0, le=1,
        description="Share of unfiltered memory.recall calls whose query vector, k and returned ids are kept (0: none).",
    )
    size: int = Field(default=1000, ge=1, le=1_000_000, description="Sampled queries kept per namespace (the newest).")
    buffer: int = Field(
        default=256, ge=1, le=100_000,
        description="Sampled queries held in RAM until the access flusher writes them (the oldest are dropped beyond).",
    )


class MemorySettings(_Section):
    """Working, episodic and semantic memory."""

    max_text_bytes: int = Field(
        default=64 * 1024, ge=16, le=16 * 1024 * 1024, description="Largest episode text or working-memory content (UTF-8 bytes)."
    )
    max_items: int = Field(
        default=1000, ge=1, le=100_000, description="Items one memory.remember, memory.import, get or forget-by-id call may carry."
    )
    max_k: int = Field(default=1000, ge=1, le=100_000, description="Largest k (hits) memory.recall returns.")
    sequence_max_episodes: int = Field(
        default=20_000,
        ge=2,
        le=10_000_000,
        description="Largest namespace (live episodes) memory.sequence searches: their vectors and a cost matrix of "
        "sequence length x episodes are held in RAM while it runs.",
    )
    max_tags: int = Field(default=32, ge=0, le=1024, description="Tags per episode.")
    max_tag_length: int = Field(default=64, ge=1, le=1024, description="Characters per tag.")
    max_metadata_bytes: int = Field(
        default=16 * 1024, ge=2, le=16 * 1024 * 1024, description="Largest metadata object of an episode (JSON bytes)."
    )
    max_dim: int = Field(default=4096, ge=1, le=65_536, description="Largest vector dimension accepted.")
    write_queue: int = Field(
        default=1024, ge=1, le=1_000_000, description="Write requests waiting for the writer; one more waits, then gets -32003."
    )
    write_batch: int = Field(
        default=4096, ge=1, le=1_000_000, description="Episodes committed together at most (group commit of concurrent writes)."
    )
    write_wait: float = Field(
        default=10.0, gt=0, le=600, description="Seconds a write waits for room in the write queue before -32003."
    )
    access_flush_interval: float = Field(
        default=5.0, gt=0, le=3600, description="Seconds between writes of recall access counts (kept in RAM meanwhile)."
    )
    purge_delay: float = Field(
        default=2.0,
        ge=0,
        le=3600,
        description="Seconds after a forget before the full-text index is merged so that no trace of forgotten text "
        "stays in its segments.",
    )
    recall: RecallSettings = Field(default_factory=RecallSettings)
    index: IndexSettings = Field(default_factory=IndexSettings)
    working: WorkingSettings = Field(default_factory=WorkingSettings)
    graph: GraphSettings = Field(default_factory=GraphSettings)
    replay_log: ReplayLogSettings = Field(default_factory=ReplayLogSettings)
    extraction: ExtractionSettings = Field(default_factory=ExtractionSettings)

    @model_validator(mode="after")
    def _weights_not_all_zero(self) -> MemorySettings:
        w = self.recall.weights
        if w.vector + w.recency + w.importance <= 0:
            raise ValueError("memory.recall.weights: at least one of vector, recency, importance must be > 0")
        return self
