"""The order of the consolidation stages and the registry of their classes.

The runner runs, per memory namespace, importance -> clustering -> forgetting -> compaction ->
replay, then recalibration once per run. Replay comes after compaction so that it judges the
index recall will use from now on. In `engram bench sleep` (100k episodes, 47% archived), replay
before compaction measured a recall drop of 0.086 on the masked HNSW graph and rolled forgetting
back; after compaction the drop was 0.03. Each stage module's class is listed in REGISTRY.
"""

from __future__ import annotations

from engram.sleep.clustering import ClusteringStage
from engram.sleep.compaction import CompactionStage
from engram.sleep.forgetting import ForgettingStage
from engram.sleep.importance import ImportanceStage
from engram.sleep.recalibration import RecalibrationStage
from engram.sleep.replay import ReplayStage
from engram.sleep.stage import Stage

__all__ = ["ORDER", "PER_RUN", "REGISTRY"]

ORDER = ("importance", "clustering", "forgetting", "compaction", "replay", "recalibration")

# Stages that run once per run rather than once per namespace.
PER_RUN = ("recalibration",)

REGISTRY: dict[str, type[Stage]] = {
    ImportanceStage.name: ImportanceStage,
    ClusteringStage.name: ClusteringStage,
    ForgettingStage.name: ForgettingStage,
    ReplayStage.name: ReplayStage,
    CompactionStage.name: CompactionStage,
    RecalibrationStage.name: RecalibrationStage,
}
