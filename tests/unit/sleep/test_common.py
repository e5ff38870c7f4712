"""Helpers the consolidation stages share."""

from __future__ import annotations

import numpy as np
from engram.memory.index import VectorIndex
from engram.memory.settings import IndexSettings
from engram.sleep.common import nearest_other


def test_nearest_other_skips_the_episode_itself_and_stops_early_when_asked() -> None:
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(40, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors[1] = vectors[0]  # a duplicate: its nearest other episode is the original
    index = VectorIndex(IndexSettings())
    index.add("a", list(range(1, 41)), vectors)
    seqs = list(range(1, 41))
    full = nearest_other(index, "a", seqs, vectors)
    assert len(full) == 40 and abs(full[0] - 1.0) < 1e-5 and abs(full[1] - 1.0) < 1e-5
    assert all(v < 1.0 - 1e-5 for v in full[2:])
    part = nearest_other(index, "a", seqs, vectors, stop=lambda: True)  # a request came in: one chunk, a prefix
    assert 0 < len(part) < 40 and np.allclose(part, full[: len(part)])
    assert (nearest_other(index, "b", seqs, vectors) == -1).all()  # no index for that namespace
