"""Params and results of the ``memory.*`` RPC methods (the wire contract, and ``schemas/``).

Times travel as Unix seconds (a number) and are accepted as RFC 3339 / ISO 8601 strings too
(``"2025-01-31T12:00:00Z"``; a time without a zone is UTC). Vectors are lists of numbers or
tensor objects (:data:`engram.memory.vectors.VectorIn`). Limits that depend on settings
(text size, items per call, k) are checked by the handlers, which name the offending field.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from engram.memory.vectors import VectorIn
from engram.server.methods import FreeJsonObject, Params, Result

__all__ = [
    "ConceptIn",
    "ConceptOut",
    "EpisodeIn",
    "EpisodeOut",
    "ExportItem",
    "Filter",
    "Hit",
    "ImportItem",
    "RelationIn",
    "RelationOut",
    "ScoreParts",
    "SupersededFact",
    "WeightsIn",
    "WorkingItemOut",
]



class _Out(BaseModel):
    """Base of the objects inside results (results themselves are :class:`Result`)."""

    model_config = ConfigDict(extra="forbid")


NAMESPACE_PATTERN = r"^[A-Za-z0-9_.:@-]{1,128}$"
NAME_PATTERN = r"^[a-z0-9_.:-]{1,64}$"


def _parse_time(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("a time is Unix seconds or an ISO 8601 string, not a boolean")  # noqa: TRY004 - pydantic wants ValueError
    if isinstance(value, str):
        text = value.strip()
        try:
            return float(text)
        except ValueError:
            pass
        try:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise ValueError(f"{value!r} is neither Unix seconds nor an ISO 8601 time") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.timestamp()
    return value


# The bounds come before the validator: after it, pydantic writes them into the JSON Schema as
# "ge"/"le", which no schema validator reads, instead of "minimum"/"maximum".
Timestamp = Annotated[
    float,
    Field(ge=-62_135_596_800, le=253_402_300_799, allow_inf_nan=False, description="Unix seconds (or an ISO 8601 string)."),
    BeforeValidator(_parse_time),
]
Namespace = Annotated[
    str | None,
    Field(
        default=None,
        pattern=NAMESPACE_PATTERN,
        description="Memory namespace (default: the caller's, 'uid:<uid>'); another one only for the daemon's owner.",
    ),
]
Session = Annotated[str, Field(min_length=1, max_length=256, description="Client-chosen session id.")]
Kind = Annotated[str, Field(pattern=NAME_PATTERN, description="Kind of episode (lowercase word: note, chat, fact, ...).")]
Tag = Annotated[str, Field(min_length=1, description="A tag (length limited by memory.max_tag_length).")]
EpisodeId = Annotated[str, Field(min_length=1, max_length=64, description="An episode id (ep_...).")]
Unit = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]


# --- episodes ---------------------------------------------------------------------------------------


class EpisodeIn(Params):
    text: str = Field(description="What happened, in words (at most memory.max_text_bytes UTF-8 bytes).")
    vector: VectorIn | None = Field(default=None, description="Its embedding; computed with the default embedder if absent.")
    kind: Kind = "note"
    tags: list[Tag] = Field(default_factory=list, description="Tags (at most memory.max_tags).")
    metadata: FreeJsonObject = Field(
        default_factory=dict, description="Any JSON object (memory.max_metadata_bytes, and at most 10,000 values)."
    )
    session: Session | None = None
    time: Timestamp | None = Field(default=None, description="When it happened (default: now).")
    importance: Unit = Field(default=0.5, description="How much it matters, 0..1.")
    pinned: bool = Field(default=False, description="Never forgotten automatically, nor by a filter unless asked.")
    source: str | None = Field(default=None, max_length=1024, description="Where it came from (free text).")


class ImportItem(EpisodeIn):
    id: EpisodeId | None = Field(
        default=None, description="The episode's id (from an export); absent: derived from the item, so re-imports skip it."
    )


class RememberParams(Params):
    items: list[EpisodeIn] = Field(min_length=1, description="Episodes to store (at most memory.max_items).")
    namespace: Namespace = None


class RememberResult(Result):
    ids: list[str] = Field(
        description="The episodes' ids, in the order of items; returned once committed. An item whose normalised text "
        "the namespace holds already (or an earlier item of the request has) gets that episode's id."
    )
    duplicates: list[bool] = Field(
        description="Per item, in the order of items: true when it was not stored because its normalised text was "
        "(the repeat counts as an access of that episode)."
    )


class Filter(Params):
    """Every given condition must hold."""

    time_from: Timestamp | None = Field(default=None, description="Episodes that happened at or after this time.")
    time_to: Timestamp | None = Field(default=None, description="Episodes that happened at or before this time.")
    session: Session | None = None
    kinds: list[Kind] | None = Field(default=None, min_length=1, description="Episodes of one of these kinds.")
    tags: list[Tag] | None = Field(default=None, min_length=1, description="Episodes carrying all of these tags.")


class WeightsIn(Params):
    """Per-request weights; absent ones come from memory.recall.weights."""

    vector: float | None = Field(default=None, ge=0, le=100)
    keyword: float | None = Field(default=None, ge=0, le=100)
    recency: float | None = Field(default=None, ge=0, le=100)
    importance: float | None = Field(default=None, ge=0, le=100)
    activation: float | None = Field(default=None, ge=0, le=100)
    superseded: float | None = Field(
        default=None, ge=0, le=1, description="Share of its score an episode of superseded facts loses (0: none)."
    )
    neighbour: float | None = Field(
        default=None, ge=0, le=1, description="How far an episode is lifted towards its session neighbours' score (0: not)."
    )
    session: float | None = Field(
        default=None, ge=0, le=1, description="How far an episode is lifted towards its session's best score (0: not)."
    )
    period: float | None = Field(
        default=None, ge=0, le=100, description="Weight of the episode's time lying in a period the query names."
    )


class RecallParams(Params):
    query: str | None = Field(default=None, description="Text to recall by (embedded, and matched as keywords).")
    vector: VectorIn | None = Field(default=None, description="A query vector (instead of, or with, the query text).")
    k: int = Field(default=10, ge=1, description="Hits to return at most (memory.max_k).")
    filter: Filter | None = None
    activation: bool = Field(
        default=False, description="Also rank episodes linked to concepts near the query (spreading activation)."
    )
    weights: WeightsIn | None = Field(default=None, description="Override the configured score weights.")
    namespace: Namespace = None


class ScoreParts(_Out):
    vector: float = Field(description="Cosine similarity to the query vector, clipped to 0..1.")
    keyword: float = Field(description="bm25 / max(the query's best bm25, memory.recall.keyword_full_marks) of the full-text match; 0 without one.")
    recency: float = Field(description="0.5 ** (age / half-life).")
    importance: float
    activation: float = Field(description="Spreading activation reaching the episode (0 unless asked for).")
    superseded: float = Field(
        description="1 when the facts learned from the episode were all superseded by newer ones (the score is then "
        "multiplied by 1 - weights.superseded), else 0."
    )
    neighbour: float = Field(
        description="The better score of the episodes just before and after it in its session (0 without a session); "
        "the score is lifted towards it by weights.neighbour."
    )
    session: float = Field(
        description="The best score in its session (0 without a session); the score is lifted towards it by weights.session."
    )
    period: float = Field(
        description="1 when the episode's time lies in a period the query text names (\"in July 2023\", \"yesterday\"), else 0."
    )


class SupersededFact(_Out):
    """A fact learned from a recalled episode that no longer holds: why the hit's score was lowered."""

    relation: str = Field(description="The relation's id.")
    src: str
    type: str
    dst: str
    valid_to: float | None = Field(description="When it stopped holding (null: a correction replaced it).")
    superseded_by: str = Field(description="The id of the relation that superseded it.")


class Hit(_Out):
    id: str
    text: str
    score: float = Field(description="Weighted mean of the parts.")
    parts: ScoreParts
    time: float
    session: str | None
    kind: str
    tags: list[str]
    metadata: dict[str, Any]
    source: str | None
    importance: float
    pinned: bool
    superseded: list[SupersededFact] = Field(
        default_factory=list, description="When parts.superseded is 1: the superseded facts learned from this episode."
    )


class RecallResult(Result):
    hits: list[Hit]
    namespace: str


class GetParams(Params):
    ids: list[EpisodeId] = Field(min_length=1, description="Episode ids (at most memory.max_items).")
    with_vectors: bool = Field(default=False, description="Include each episode's vector.")
    namespace: Namespace = None


class EpisodeOut(_Out):
    id: str
    namespace: str
    text: str
    text_sha256: str
    time: float
    recorded_at: float
    session: str | None
    kind: str
    tags: list[str]
    metadata: dict[str, Any]
    source: str | None
    importance: float
    pinned: bool
    access_count: int
    last_access: float | None
    embedder: str
    dim: int
    archived_at: float | None = Field(
        default=None, description="When sleep archived it (out of recall, deleted after sleep.forgetting.grace); None: live."
    )
    vector: list[float] | None = None


class GetResult(Result):
    episodes: list[EpisodeOut] = Field(description="In the order of ids.")


class ListEpisodesParams(Params):
    limit: int = Field(default=20, ge=1, description="Episodes per page (at most memory.max_items).")
    before: str | None = Field(default=None, max_length=32, description="Cursor from the previous page's 'next': older episodes.")
    session: Session | None = Field(default=None, description="Only episodes of this session.")
    kind: Kind | None = Field(default=None, description="Only episodes of this kind.")
    namespace: Namespace = None


class ListEpisodesResult(Result):
    episodes: list[EpisodeOut] = Field(description="Newest recorded first.")
    next: str | None = Field(description="Cursor of the next (older) page; None after the last.")


class ForgetParams(Params):
    """Exactly one of ids, filter and all."""

    ids: list[EpisodeId] | None = Field(default=None, min_length=1, description="Episodes to forget (at most memory.max_items).")
    filter: Filter | None = Field(default=None, description="Forget every episode matching it (pinned ones only with include_pinned).")
    include_pinned: bool = Field(default=False, description="With filter: forget pinned episodes too.")
    all: bool = Field(
        default=False, description="Forget the whole namespace: episodes, concepts, relations and working memory."
    )
    namespace: Namespace = None


class ForgetResult(Result):
    forgotten: int = Field(description="Episodes forgotten.")
    ids: list[str] = Field(description="Their ids (the first memory.max_items of them).")
    concepts: int = Field(default=0, description="Concepts forgotten (all only).")
    relations: int = Field(description="Relations deleted because every episode they were learned from is forgotten (or all).")
    working_items: int = Field(default=0, description="Working-memory items dropped (all only).")


class StatsParams(Params):
    namespace: Namespace = None


class IndexStats(_Out):
    kind: Literal["none", "flat", "hnsw"]
    dim: int | None
    vectors: int
    masked: int = Field(description="Forgotten vectors still occupying HNSW graph nodes (zeroed, never returned).")
    building: bool = Field(description="An HNSW index is being built for this namespace in the background.")


class EmbedderStats(_Out):
    name: str | None
    dim: int | None
    available: bool


class WorkingStats(_Out):
    sessions: int
    items: int


class StatsResult(Result):
    namespace: str
    episodes: int = Field(description="Live episodes (the counts below are of live episodes too).")
    sessions: int
    kinds: dict[str, int]
    oldest: float | None
    newest: float | None
    pinned: int
    archived: int = Field(default=0, description="Archived episodes: out of recall, awaiting deletion after sleep.forgetting.grace.")
    concepts: int
    relations: int
    relations_retracted: int
    index: IndexStats
    working: WorkingStats
    embedder: EmbedderStats
    watermark: int = Field(description="Last episode seq in the in-memory vector index (all namespaces).")
    saved_watermark: int | None = Field(description="Watermark of the index file on disk (None: not saved yet).")


class ImportParams(Params):
    items: list[ImportItem] = Field(min_length=1, description="Episodes (at most memory.max_items).")
    namespace: Namespace = None


class ImportResult(Result):
    imported: int
    skipped: int = Field(description="Items whose id was already there (an earlier run of the same import).")
    ids: list[str] = Field(description="Ids of all items, in order, imported or skipped.")


class ExportParams(Params):
    after: str | None = Field(default=None, max_length=32, description="Cursor from the previous page's 'next'.")
    limit: int = Field(default=500, ge=1, description="Episodes per page (at most memory.max_items).")
    with_vectors: bool = Field(default=False, description="Include vectors (exact backups, imports without an embedder).")
    namespace: Namespace = None


class ExportItem(_Out):
    id: str
    text: str
    kind: str
    tags: list[str]
    metadata: dict[str, Any]
    session: str | None
    time: float
    importance: float
    pinned: bool
    source: str | None
    vector: list[float] | None = Field(default=None, exclude_if=lambda value: value is None)


class ExportResult(Result):
    items: list[ExportItem]
    next: str | None = Field(description="Cursor of the next page; None after the last.")
    total: int = Field(description="Episodes in the namespace.")


class SequenceParams(Params):
    """Exactly one of episodes and vectors: the query sequence, in order."""

    episodes: list[EpisodeId] | None = Field(
        default=None, description="Episodes whose vectors, in this order, are the query (their stretch is never returned)."
    )
    vectors: list[VectorIn] | None = Field(default=None, description="The query's vectors, in order.")
    k: int = Field(default=5, ge=1, description="Stretches to return at most (memory.max_k).")
    window: int | None = Field(
        default=None, ge=0, description="Sakoe–Chiba band: how many steps apart matched elements may be (default: "
        "a tenth of the query's length, rounded up)."
    )
    namespace: Namespace = None


class SequenceMatch(_Out):
    session: str | None = Field(description="The stretch's session (null: the episodes without one, as one stream).")
    episodes: list[str] = Field(description="Its episodes' ids, in time order (as many as the query has).")
    distance: float = Field(description="DTW distance to the query: the sum of 1 - cosine along the best warping path.")
    next: list[str] = Field(description="The episodes that followed it in its session (at most as many as the query has).")


class SequenceResult(Result):
    matches: list[SequenceMatch] = Field(description="Nearest first (ties: the session that sorts first, then the earlier stretch).")
    namespace: str
    window: int = Field(description="The band used.")
    candidates: int = Field(description="Stretches of the query's length compared.")
    computed: int = Field(description="Of them, those whose DTW was computed; the rest were pruned by a lower bound.")


# --- working memory ---------------------------------------------------------------------------------


class WorkingPutParams(Params):
    session: Session
    key: str | None = Field(default=None, min_length=1, max_length=256, description="Item key (default: a new one); an existing key is updated.")
    content: str = Field(description="What to hold (at most memory.max_text_bytes UTF-8 bytes).")
    importance: Unit = Field(default=0.5, description="How much it matters; items at least memory.working.promote_threshold important are remembered when evicted.")
    attention: Unit = Field(default=1.0, description="How much it is in focus now; scales importance in the eviction score.")
    tags: list[Tag] = Field(default_factory=list, description="Tags, kept if it is promoted.")
    namespace: Namespace = None


class Evicted(_Out):
    key: str
    session: str
    reason: Literal["capacity", "session_capacity", "bytes", "expired"]
    promoted_id: str | None = Field(description="Episode id when it was remembered on eviction.")


class WorkingPutResult(Result):
    key: str
    evicted: list[Evicted]


class WorkingKeyParams(Params):
    session: Session
    key: str = Field(min_length=1, max_length=256)
    namespace: Namespace = None


class WorkingItemOut(_Out):
    key: str
    content: str
    importance: float
    attention: float
    tags: list[str]
    access_count: int
    created_at: float
    last_access: float
    score: float = Field(description="Eviction score now (lowest goes first).")


class WorkingGetResult(Result):
    item: WorkingItemOut


class WorkingListParams(Params):
    session: Session
    namespace: Namespace = None


class WorkingListResult(Result):
    session: str
    items: list[WorkingItemOut] = Field(description="Highest score first.")


class WorkingClearParams(Params):
    session: Session
    keys: list[str] | None = Field(default=None, min_length=1, description="Items to drop (default: the whole session).")
    promote: bool = Field(default=False, description="Remember the cleared items that are important enough, as on eviction.")
    namespace: Namespace = None


class WorkingClearResult(Result):
    cleared: int
    promoted: list[str] = Field(description="Ids of the episodes remembered from cleared items.")


# --- semantic memory ---------------------------------------------------------------------------------

ConceptName = Annotated[str, Field(min_length=1, max_length=256, description="Concept name (case-insensitive).")]


class ConceptIn(Params):
    name: ConceptName
    kind: Kind = "entity"
    vector: VectorIn | None = Field(default=None, description="Its embedding (default: the name embedded, when an embedder is there).")
    episodes: list[EpisodeId] = Field(default_factory=list, description="Episodes that mention it (spreading activation reaches them).")


class RelationIn(Params):
    src: ConceptName
    dst: ConceptName
    type: Annotated[str, Field(pattern=NAME_PATTERN, description="Relation type (lowercase word: is_a, lives_in, ...).")]
    weight: Unit = Field(default=1.0, description="Strength or confidence, 0..1.")
    valid_from: Timestamp | None = Field(default=None, description="When the fact began to hold (default: always had).")
    valid_to: Timestamp | None = Field(default=None, description="When it stopped holding (default: still holds).")
    exclusive: bool | None = Field(
        default=None,
        description="One destination per source at a time: a newer fact ends the validity of the other destinations "
        "(default: whether the type is in memory.graph.functional_types or memory.graph.exclusive_types).",
    )
    sources: list[EpisodeId] = Field(default_factory=list, description="Episodes the fact was learned from.")


class GraphUpsertParams(Params):
    concepts: list[ConceptIn] = Field(default_factory=list)
    relations: list[RelationIn] = Field(default_factory=list)
    namespace: Namespace = None


class ConceptOut(_Out):
    id: str
    name: str
    kind: str
    created: bool | None = Field(default=None, exclude_if=lambda value: value is None)


class RelationOut(_Out):
    id: str
    src: str
    dst: str
    type: str
    weight: float
    valid_from: float | None
    valid_to: float | None
    recorded_at: float
    retracted_at: float | None
    retracted_by: str | None
    superseded_by: str | None = Field(
        default=None, description="The relation that ended this one's validity or corrected it (null: none did)."
    )
    sources: list[str]
    status: Literal["created", "unchanged", "sources_added", "existing"] = "existing"


class GraphUpsertResult(Result):
    concepts: list[ConceptOut]
    relations: list[RelationOut]
    retracted: list[str] = Field(description="Ids of relations retracted by these (contradicted or superseded).")
    superseded: list[str] = Field(
        default_factory=list,
        description="Ids of the relations recorded to end the validity of facts these superseded (copies of the "
        "retracted ones, valid_to = the new fact's valid_from).",
    )


class GraphQueryParams(Params):
    concept: ConceptName
    depth: int = Field(default=1, ge=1, description="Hops to follow (at most memory.graph.max_depth).")
    direction: Literal["out", "in", "both"] = "both"
    types: list[str] | None = Field(default=None, min_length=1, description="Follow only relations of these types.")
    as_of: Timestamp | None = Field(default=None, description="What engram believed then (default: now).")
    valid_at: Timestamp | None = Field(default=None, description="Only facts that held at this time.")
    to: ConceptName | None = Field(default=None, description="Return the paths (up to depth hops) to this concept.")
    namespace: Namespace = None


class Neighbour(_Out):
    concept: ConceptOut
    depth: int
    weight: float = Field(description="Product of the relation weights along the strongest path.")
    path: list[str] = Field(description="Relation ids of that path, from the queried concept.")


class PathOut(_Out):
    concepts: list[str] = Field(description="Concept names along the path.")
    relations: list[str] = Field(description="Relation ids along the path.")
    weight: float


class GraphQueryResult(Result):
    concept: ConceptOut
    neighbours: list[Neighbour]
    relations: list[RelationOut] = Field(description="Every relation on the returned neighbours' paths and paths.")
    paths: list[PathOut] = Field(description="Paths to 'to' (empty without it), strongest first.")
    truncated: bool = Field(description="More than memory.graph.max_results neighbours or paths were found.")
