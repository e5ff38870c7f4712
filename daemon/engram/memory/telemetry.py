"""Metrics of memory, registered on the daemon's registry (``engram metrics``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from engram.observability.metrics import LATENCY_BUCKETS

__all__ = ["MemoryMetrics"]

_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


class MemoryMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = registry if registry is not None else CollectorRegistry()
        self.remembered = Counter("engram_memory_remembered", "Episodes committed, by origin.", ["origin"], registry=r)
        self.forgotten = Counter("engram_memory_forgotten", "Episodes forgotten, by scope.", ["scope"], registry=r)
        self.recalls = Counter("engram_memory_recalls", "Recall queries answered.", registry=r)
        self.recall_seconds = Histogram(
            "engram_memory_recall_duration_seconds", "Recall latency inside the daemon (embedding included).",
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.commit_episodes = Histogram(
            "engram_memory_commit_episodes", "Episodes per group commit.", buckets=_BATCH_BUCKETS, registry=r
        )
        self.commit_seconds = Histogram(
            "engram_memory_commit_duration_seconds", "Seconds per group commit (SQLite + index).", buckets=LATENCY_BUCKETS, registry=r
        )
        self.index_saves = Counter("engram_memory_index_saves", "Vector index files written.", registry=r)
        self.index_rebuilds = Counter("engram_memory_index_rebuilds", "Namespace indexes built anew, by reason.", ["reason"], registry=r)
        self.promotions = Counter(
            "engram_memory_working_promotions", "Evicted working-memory items remembered, by outcome.", ["outcome"], registry=r
        )
        self.evictions = Counter("engram_memory_working_evictions", "Working-memory items evicted, by reason.", ["reason"], registry=r)
