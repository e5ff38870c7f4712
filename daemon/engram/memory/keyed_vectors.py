"""Vectors kept under a key of the caller's in a memory namespace, for in-process callers.

The router remembers the vectors of its inputs this way (one namespace per route, the input hash
as the key): each vector is an episode whose text is the key and whose id derives from namespace
and key, so a key is stored once, across restarts too. Lookups go to the namespace's vector index
directly (blocking: call them from a worker thread); writes go through memory's writer like any
episode. Nothing here checks permissions: only the daemon's own parts hold this object.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from engram.memory import ids as idgen
from engram.memory.api import EpisodeIn
from engram.memory.episodic import Episodic

__all__ = ["KeyedVectors"]


class KeyedVectors:
    def __init__(self, episodic: Episodic) -> None:
        self._episodic = episodic

    def expected_dim(self, namespace: str) -> int | None:
        """The dimension the namespace's vectors have (None: it is empty, any will do)."""
        return self._episodic.expected_dim(namespace)

    def best_similarity(self, namespace: str, unit: NDArray[np.float32]) -> float | None:
        """The cosine similarity of the nearest kept vector to ``unit`` (None: none of its dimension)."""
        index = self._episodic.index
        if index.dim(namespace) != unit.shape[0]:
            return None
        _, sims = index.search(namespace, unit, 1)
        return float(sims[0]) if sims.size else None

    def nearest(self, namespace: str, unit: NDArray[np.float32], k: int) -> list[tuple[str, float]]:
        """The keys of the ``k`` kept vectors nearest to ``unit``, best first, with their cosine similarity."""
        index = self._episodic.index
        if index.dim(namespace) != unit.shape[0]:
            return []
        seqs, sims = index.search(namespace, unit, k)
        if not seqs.size:
            return []
        rows = self._episodic.store.rows(namespace, seqs.tolist())
        return [(rows[seq]["text"], float(sim)) for seq, sim in zip(seqs.tolist(), sims.tolist(), strict=True) if seq in rows]

    async def put(self, namespace: str, key: str, unit: NDArray[np.float32], source: str, tags: Sequence[str]) -> bool:
        """Keep ``unit`` under ``key``; False when the key is kept already."""
        episode = EpisodeIn(text=key, vector=unit.tolist(), kind="observation", source=source, tags=list(tags))
        rows = await self._episodic.prepare(namespace, [episode], ids=[idgen.derived_id(idgen.EPISODE, namespace, key)])
        seqs = await self._episodic.write(rows)
        return seqs[0] is not None
