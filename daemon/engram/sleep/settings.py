"""The ``sleep`` section of the configuration: triggers, CPU budget and one sub-section per stage."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "ClusteringSettings",
    "CompactionSettings",
    "DeduplicationSettings",
    "ForgettingSettings",
    "ImportanceSettings",
    "Priority",
    "ReplaySettings",
    "SleepSettings",
]

_DAY = 86_400.0

# The stage names, in run order (engram.sleep.stages.ORDER is the same tuple).
StageName = Literal["importance", "clustering", "deduplication", "forgetting", "compaction", "replay", "recalibration"]
# The OS priority of consolidation's thread (engram.sleep.worker).
Priority = Literal["idle", "low", "normal"]
_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class ImportanceSettings(_Section):
    """How an episode's salience (0..1) is computed from its signals."""

    half_life: float = Field(
        default=7 * _DAY, gt=0, description="Seconds after which the recency signal of an episode has halved."
    )
    access_half_life: float = Field(
        default=3 * _DAY, gt=0, description="Seconds after which the last access stops counting half as much."
    )
    access_saturation: int = Field(
        default=10, ge=1, description="Access count at which the frequency signal reaches about 0.63 (1 - 1/e)."
    )
    link_saturation: int = Field(
        default=3, ge=1, description="Number of concept/relation links at which the links signal reaches about 0.63."
    )
    w_recency: float = Field(default=0.3, ge=0, description="Weight of recency.")
    w_access: float = Field(default=0.25, ge=0, description="Weight of access frequency and last access.")
    w_novelty: float = Field(default=0.2, ge=0, description="Weight of novelty (1 - cosine to the nearest other episode).")
    w_links: float = Field(default=0.15, ge=0, description="Weight of links to concepts and relations.")
    w_client: float = Field(default=0.1, ge=0, description="Weight of the importance the client gave at remember time.")
    batch: int = Field(default=256, ge=1, le=10_000, description="Episodes scored per unit of work (one short transaction).")


class ClusteringSettings(_Section):
    """Turning recent episodes into topic concepts and weighting the relations between them."""

    window: float = Field(
        default=_DAY, gt=0,
        description="Seconds of episodes considered when no earlier run completed (otherwise: since that run started).",
    )
    max_episodes: int = Field(default=20_000, ge=10, description="At most this many recent episodes are clustered per namespace.")
    min_size: int = Field(default=3, ge=2, description="Smallest cluster that becomes a topic concept.")
    merge_similarity: float = Field(
        default=0.2, ge=-1, le=1,
        description="Average linkage merges two groups of episodes while the mean cosine between their members is at least this.",
    )
    max_k: int = Field(
        default=1024, ge=2, le=4096,
        description="Above this many recent episodes, spherical k-means first groups them into this many groups, which are then merged.",
    )
    iterations: int = Field(default=10, ge=1, le=1000, description="k-means iterations (only above max_k episodes).")
    reuse_similarity: float = Field(
        default=0.85, ge=-1, le=1,
        description="An existing topic concept whose vector has at least this cosine to a cluster centroid is reused.",
    )
    min_cohesion: float = Field(
        default=0.3, ge=-1, le=1,
        description="A cluster whose members have a mean cosine to the centroid below this does not become a concept.",
    )
    terms: int = Field(default=3, ge=1, le=10, description="Words in a topic concept's name (its most distinctive, by class-based TF-IDF).")
    cooccurrence_gain: float = Field(
        default=0.1, ge=0, le=1, description="Weight added to a related_to relation per session in which both topics occur."
    )
    adjacency_gain: float = Field(
        default=0.05, ge=0, le=1, description="Weight added per pair of consecutive episodes belonging to the two topics."
    )
    min_gain: float = Field(
        default=0.2, ge=0, le=1,
        description="A topic pair whose gain in a run (sessions shared, neighbours in time) is below this gets no relation and no strengthening.",
    )
    decay: float = Field(
        default=0.95, gt=0, le=1, description="Every sourced relation's weight is multiplied by this once per run."
    )
    floor: float = Field(
        default=0.05, ge=0, le=1, description="A sourced relation decayed below this weight is retracted."
    )


class DeduplicationSettings(_Section):
    """Merging near-duplicate episodes (engram.memory.merging)."""

    similarity: float = Field(
        default=0.97, ge=0.5, le=1,
        description="Episodes of one namespace whose embeddings are at least this cosine-similar are merged into one.",
    )
    window: float = Field(
        default=7 * _DAY, ge=0,
        description="Seconds back from the run that episodes are looked up from (each against all of the namespace); 0: all.",
    )
    batch: int = Field(default=256, ge=1, le=10_000, description="Episodes looked up per unit of work.")


class ForgettingSettings(_Section):
    """Archiving low-importance, old, unlinked episodes and deleting them after a grace period."""

    min_age: float = Field(default=30 * _DAY, ge=0, description="Seconds an episode must be old before it may be archived.")
    max_salience: float = Field(
        default=0.2, ge=0, le=1, description="Only episodes with salience at or below this may be archived."
    )
    grace: float = Field(
        default=7 * _DAY, ge=0, description="Seconds an archived episode is kept before it is deleted (audited)."
    )
    batch: int = Field(default=256, ge=1, le=10_000, description="Episodes archived or deleted per unit of work.")
    protect_recalled: bool = Field(
        default=True,
        description="Never archive an episode that a sampled past recall (memory.replay_log) returned: it is in use.",
    )


class ReplaySettings(_Section):
    """Dream replay: past queries replayed before and after consolidation."""

    queries: int = Field(default=200, ge=1, le=100_000, description="Past queries sampled into the replay set.")
    k: int = Field(default=10, ge=1, le=1000, description="Results compared per replayed query.")
    max_drop: float = Field(
        default=0.05, ge=0, le=1,
        description="When recall quality falls by more than this, the namespace's consolidation is rolled back.",
    )


class CompactionSettings(_Section):
    """Rebuilding vector indexes that hold deleted entries."""

    min_masked: int = Field(
        default=1, ge=0, description="Rebuild a namespace's vector index when it holds at least this many deleted entries."
    )


class SleepSettings(_Section):
    """Sleep consolidation: when it runs, how gently, and what each stage does."""

    enabled: bool = Field(default=True, description="Run consolidation on the idle and schedule triggers (sleep.run works regardless).")
    idle_after: float = Field(
        default=900.0, gt=0, le=7 * _DAY,
        description="Seconds without a foreground request after which consolidation starts.",
    )
    idle_interval: float = Field(
        default=6 * 3600.0, ge=0,
        description="Seconds after a completed run before the idle trigger may start another.",
    )
    schedule: list[str] = Field(
        default_factory=list, description='Local times ("HH:MM") at which consolidation starts.'
    )
    cpu_budget: float = Field(
        default=0.5, gt=0, le=1,
        description="Fraction of one core consolidation may use: after t seconds of work it pauses t*(1/budget-1).",
    )
    quiet_gap: float = Field(
        default=0.02, ge=0, le=60,
        description="Seconds consolidation waits after the last foreground request finished before it resumes.",
    )
    max_yield: float = Field(
        default=0.1, gt=0, le=3600,
        description="Longest single wait for foreground requests; after it one unit of work runs anyway, so that a "
        "steady stream of requests slows consolidation down without starving it.",
    )
    priority: Priority = Field(
        default="idle",
        description="OS priority of the thread consolidation's work runs in (Linux): idle: SCHED_IDLE, only the time "
        "nothing else wants, and a request's thread takes its core at once; low: nice + 10; normal: the daemon's. "
        "While the machine is short of CPU (Linux's CPU pressure at 25% or more, or the lowered thread starved) the "
        "work runs at the daemon's.",
    )
    stages: list[StageName] = Field(
        default_factory=lambda: ["importance", "clustering", "deduplication", "forgetting", "compaction", "replay",
                                 "recalibration"],
        description="Stages a triggered run performs (sleep.run may name others).",
    )
    keep_reports: int = Field(default=100, ge=1, description="Completed runs kept in the database.")
    importance: ImportanceSettings = Field(default_factory=ImportanceSettings)
    clustering: ClusteringSettings = Field(default_factory=ClusteringSettings)
    deduplication: DeduplicationSettings = Field(default_factory=DeduplicationSettings)
    forgetting: ForgettingSettings = Field(default_factory=ForgettingSettings)
    replay: ReplaySettings = Field(default_factory=ReplaySettings)
    compaction: CompactionSettings = Field(default_factory=CompactionSettings)

    @field_validator("schedule")
    @classmethod
    def _times(cls, value: list[str]) -> list[str]:
        for item in value:
            if not _HHMM.match(item):
                raise ValueError(f'{item!r} is not a local time "HH:MM"')
        return value
