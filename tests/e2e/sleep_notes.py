"""Synthetic notes for sleep's e2e tests: clear subjects, each a direction in a small space."""

from __future__ import annotations

import numpy as np

DIM = 16


def groups(words: list[str], per: int, seed: int = 1, spread: float = 0.05, label: str = "") -> list[dict]:
    """``per`` notes on each word, their vectors around its own axis (``spread``: the noise; 0.05
    keeps members near-duplicates, 0.15 about 0.7 apart in cosine: one subject, nothing to merge)."""
    rng = np.random.default_rng(seed)
    items = []
    for g, word in enumerate(words):
        centre = np.zeros(DIM, np.float32)
        centre[g] = 1.0
        for i in range(per):
            vec = centre + rng.normal(scale=spread, size=DIM).astype(np.float32)
            items.append({"text": f"{word} note {i} on {word}{label}", "vector": (vec / np.linalg.norm(vec)).tolist(),
                          "session": f"s{i % 3}"})
    return items
