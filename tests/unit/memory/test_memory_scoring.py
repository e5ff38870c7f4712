"""Recall scores every candidate at once over arrays; that must rank and score exactly as the
per-candidate formula does."""

from __future__ import annotations

import numpy as np
from engram.memory.scoring import Weights, combine, recencies, recency


def test_array_scores_equal_the_per_candidate_ones() -> None:
    rng = np.random.default_rng(3)
    now, half_life = 1_000_000.0, 3600.0
    times = now - rng.uniform(-100, 20_000, size=64)  # a few in the future
    parts = {name: rng.uniform(0, 1, size=64) for name in ("vector", "keyword", "importance", "activation")}
    parts["recency"] = recencies(times, now, half_life)
    for weights in (Weights(0.6, 0.2, 0.1, 0.1, 0.3), Weights(0.0, 1.0, 0.0, 0.0, 0.0)):
        for with_keyword, with_activation in ((False, False), (True, False), (True, True)):
            scores = combine(parts, weights, with_keyword, with_activation)
            for i in range(64):
                one = {name: float(values[i]) for name, values in parts.items()}
                assert one["recency"] == recency(float(times[i]), now, half_life)
                assert float(scores[i]) == combine(one, weights, with_keyword, with_activation)
