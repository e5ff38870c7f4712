"""What the sleep part needs from the rest of the daemon, as protocols.

The composition root hands sleep an implementation of each: memory's
``engram.memory.consolidation.MemoryConsolidation`` is the :class:`ConsolidationStore`,
``engram.sleep.activity.ForegroundActivity`` (a layer of the request chain) the
:class:`Activity`, the audit log the :class:`AuditTrail`, the router the :class:`Recalibrator`.
Sleep imports none of those parts.

Memory's writes are journalled under a :class:`JournalTag` (run, namespace, stage), which sleep
chooses and memory keeps without reading anything into it: rollback, resume and cleanup name
entries by it. Methods that take ``give_way`` are one background transaction that raises
``engram.storage.background.GaveWay`` when a foreground request arrives meanwhile, having
changed nothing (:meth:`engram.sleep.stage.StageContext.thread` runs them again); methods that
take ``checkpoint`` keep the tag's checkpoint in the same transaction as the change.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "Activity", "AuditTrail", "ConsolidationStore", "EpisodeColumns", "IndexRebuild", "JournalTag", "Recalibrator",
    "RecentEpisode", "RelationDecay", "ReplayQuery", "TopicRef",
]

GiveWay = Callable[[], bool] | None


class JournalTag(NamedTuple):
    run: int
    namespace: str
    stage: str


class Activity(Protocol):
    """Foreground activity as the request chain counts it (``ForegroundActivity``)."""

    foreground: int  # requests in flight now
    last_foreground: float  # time.monotonic() of the last arrival or completion


class AuditTrail(Protocol):
    async def append(self, kind: str, principal: Any = None, *, detail: dict[str, Any] | None = None) -> int:
        """Record one entry; returns its seq once it is durable."""
        ...


class Recalibrator(Protocol):
    state: str
    assessor: Any  # None while the router has no learning to fold in

    async def consolidate(self) -> list[str]:
        """Fold the fast (online) weights into the slow ones; returns the routes touched."""
        ...


class EpisodeColumns(Protocol):
    """A page of episodes to score, as columns (``vectors`` is None when widths differ)."""

    seqs: list[int]
    old: list[float | None]
    time: NDArray[np.float64]
    access_count: NDArray[np.float64]
    last_access: NDArray[np.float64]
    client: NDArray[np.float64]
    links: NDArray[np.float64]
    vectors: NDArray[np.float32] | None


class RecentEpisode(Protocol):
    @property
    def seq(self) -> int: ...
    @property
    def session(self) -> str | None: ...
    @property
    def time(self) -> float: ...
    @property
    def text(self) -> str: ...
    @property
    def dim(self) -> int: ...
    @property
    def vector(self) -> bytes: ...


class RelationDecay(Protocol):
    @property
    def last(self) -> int | None: ...
    @property
    def count(self) -> int: ...
    @property
    def weakened(self) -> int: ...
    @property
    def retracted(self) -> int: ...


class TopicRef(Protocol):
    """The topic concept a cluster went to (memory's ``engram.memory.topics.TopicRef``)."""

    @property
    def seq(self) -> int: ...
    @property
    def created(self) -> bool: ...
    @property
    def own(self) -> bool: ...
    @property
    def name(self) -> str: ...


class ReplayQuery(Protocol):
    seq: int
    vector: NDArray[np.float32]
    ids: list[str]


class IndexRebuild(Protocol):
    """A namespace's index rebuilt in chunks while recall goes on against the old one."""

    total: int

    def add(self, start: int, size: int, stop: Callable[[], bool] | None = None) -> int: ...

    def catch_up(self) -> bool: ...

    def close(self) -> None: ...


class ConsolidationStore(Protocol):
    """Memory as consolidation sees it (blocking methods: worker threads)."""

    # namespaces and the vector index
    def namespaces(self) -> list[str]: ...
    def count_live(self, namespace: str) -> int: ...
    def index_stats(self, namespace: str) -> dict[str, Any]: ...
    def index_size(self, namespace: str) -> dict[str, Any]: ...
    def vector_dim(self, namespace: str) -> int | None: ...
    def nearest_other(self, namespace: str, seqs: Sequence[int], vectors: NDArray[np.float32],
                      stop: Callable[[], bool] | None = None) -> NDArray[np.float32]: ...
    def start_index_rebuild(self, namespace: str) -> IndexRebuild | None: ...
    def optimize_text_index(self) -> None: ...

    # importance
    def salience_page(self, namespace: str, after: int, limit: int) -> EpisodeColumns | None: ...
    def set_saliences(self, tag: JournalTag, changes: Sequence[tuple[float, int, float | None]], checkpoint: dict[str, Any],
                      give_way: GiveWay = None) -> None: ...

    # clustering
    def recent_page(self, namespace: str, since: float, before: int | None, limit: int) -> Sequence[RecentEpisode]: ...
    def matrix(self, vectors: Sequence[bytes], dim: int) -> NDArray[np.float32]: ...
    def topics(self, namespace: str) -> Any: ...
    def find_or_create_topic(self, tag: JournalTag, known: Any, name: str, centroid: NDArray[np.float32], now: float,
                             reuse_similarity: float, give_way: GiveWay = None) -> TopicRef: ...
    def link_episodes(self, tag: JournalTag, concept: int, episodes: Sequence[tuple[int, float]], journalled: bool,
                      give_way: GiveWay = None) -> int: ...
    def decay_relations(self, tag: JournalTag, after: int, limit: int, decay: float, floor: float, now: float,
                        checkpoint: Callable[[Any], dict[str, Any]], give_way: GiveWay = None) -> dict[str, Any]: ...
    def strengthen_relations(self, tag: JournalTag, pairs: list[list[Any]], evidence: list[list[int]], now: float,
                             checkpoint: Callable[[int, int], dict[str, Any]], give_way: GiveWay = None) -> dict[str, Any]: ...
    def graph_changed(self, namespace: str) -> None: ...

    # forgetting
    def expired(self, namespace: str, cutoff: float, limit: int) -> list[tuple[int, str, str]]: ...
    def content_digests(self, text_sha256s: list[str]) -> list[str]: ...
    async def forget(self, namespace: str, seqs: list[int]) -> list[str]: ...
    def live_after(self, namespace: str, after: int, limit: int) -> list[int]: ...
    def recalled_ids(self, namespace: str) -> set[str]: ...
    def forgettable(self, seqs: Sequence[int], older_than: float, max_salience: float) -> list[tuple[int, str, bool]]: ...
    def archive(self, tag: JournalTag, seqs: Sequence[int], now: float, give_way: GiveWay = None) -> list[int]: ...
    def archived(self, tag: JournalTag) -> list[tuple[list[int], float]]: ...
    def unarchive(self, namespace: str, seqs: Sequence[int], archived_at: float) -> list[int]: ...

    # dream replay
    def replay_queries(self, namespace: str, limit: int, seqs: Sequence[int] | None = None) -> Sequence[ReplayQuery]: ...
    def live_ids(self, namespace: str, ids: Sequence[str]) -> set[str]: ...
    def replay_recall(self, namespace: str, vector: NDArray[np.float32], k: int) -> list[tuple[str, float]]: ...
    def recall_scores(self, namespace: str, ids: Sequence[str], vector: NDArray[np.float32]) -> dict[str, float]: ...

    # rollback, resume and cleanup
    def undo(self, tag: JournalTag, limit: int) -> dict[str, int]: ...
    def checkpoints(self, run: int) -> dict[tuple[str, str], dict[str, Any]]: ...
    def drop_checkpoint(self, tag: JournalTag) -> None: ...
    def adopt(self, runs: Sequence[int], run: int) -> None: ...
    def discard(self, runs: Sequence[int]) -> None: ...
