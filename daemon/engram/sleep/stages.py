"""The order of the consolidation stages and the registry of their classes.

The runner runs, per memory namespace, importance -> clustering -> deduplication -> forgetting ->
compaction -> replay, then recalibration once per run. Deduplication comes before forgetting so
that the episodes it merges away start their grace in the same run. Replay comes after compaction so that it judges the
index recall will use from now on, not one with the archived entries still masked in it. Each stage module's class is listed in REGISTRY.
"""

from __future__ import annotations

from engram.sleep.clustering import ClusteringStage
from engram.sleep.compaction import CompactionStage
from engram.sleep.deduplication import DeduplicationStage
from engram.sleep.forgetting import ForgettingStage
from engram.sleep.importance import ImportanceStage
from engram.sleep.recalibration import RecalibrationStage
from engram.sleep.replay import ReplayStage
from engram.sleep.stage import Stage
from engram.sleep.stage_names import ORDER, PER_RUN

__all__ = ["ORDER", "PER_RUN", "REGISTRY"]

REGISTRY: dict[str, type[Stage]] = {
    ImportanceStage.name: ImportanceStage,
    ClusteringStage.name: ClusteringStage,
    DeduplicationStage.name: DeduplicationStage,
    ForgettingStage.name: ForgettingStage,
    ReplayStage.name: ReplayStage,
    CompactionStage.name: CompactionStage,
    RecalibrationStage.name: RecalibrationStage,
}
