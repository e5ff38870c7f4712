"""The consolidation stages by name, in run order.

A module of its own, with no imports, so that ``engram sleep now --stage`` can offer the names
without importing the stages themselves (and with them numpy, FAISS and ONNX Runtime).
:mod:`engram.sleep.stages` maps each name to its class.
"""

__all__ = ["ORDER", "PER_RUN"]

ORDER = ("importance", "clustering", "deduplication", "forgetting", "compaction", "replay", "recalibration")

# Stages that run once per run rather than once per namespace.
PER_RUN = ("recalibration",)
