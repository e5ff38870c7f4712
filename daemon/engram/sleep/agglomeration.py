"""Average-linkage agglomerative clustering of unit vectors, with a cosine threshold.

Every group starts as one point; the two groups with the highest *average* cosine between their
members are merged, again and again, until no two groups average at least ``threshold``. The
number of topics is not chosen in advance: it is however many groups are that far apart, which
is what k-means could not tell (asked for k = count / 8 groups, it cut real subjects in pieces
and, when k was too small, threw unrelated notes together).

The average cosine between groups A and B of unit vectors is ``sum(A) . sum(B) / (|A| |B|)``, so
a group is only its sum and its size, a merge adds them, and a point may itself be a group of
episodes: above ``sleep.clustering.max_k`` recent episodes the stage first groups them with
spherical k-means into ``max_k`` small groups and merges those, with the very same linkage.

Each step merges the closest pair: the best partner of every group is kept, and merging A and B
can only lower a third group's similarity to them (an average of the two), so only the groups
whose best partner was A or B look again. The work is ``O(m^2 d)`` for m starting groups of
dimension d; :meth:`Agglomeration.merge` does it a number of merges at a time, so the stage can
pause between pieces.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

__all__ = ["Agglomeration", "average_linkage"]


class Agglomeration:
    """Groups given by ``sums`` (m x d, the sum of each group's unit vectors) and ``sizes``."""

    def __init__(self, sums: NDArray[np.floating], sizes: NDArray[np.integer], threshold: float) -> None:
        self.threshold = float(threshold)
        self.sums = np.asarray(sums, dtype=np.float64).copy()
        self.sizes = np.asarray(sizes, dtype=np.float64).copy()
        m = len(self.sizes)
        self.parent = np.arange(m)
        self.alive = np.ones(m, dtype=bool)
        self.sim = (self.sums @ self.sums.T) / np.outer(self.sizes, self.sizes)
        np.fill_diagonal(self.sim, -np.inf)
        self.best = np.argmax(self.sim, axis=1) if m > 1 else np.zeros(m, dtype=np.int64)
        self.best_sim = self.sim[np.arange(m), self.best] if m > 1 else np.full(m, -np.inf)
        self.done = m < 2

    def merge(self, limit: int) -> bool:
        """Up to ``limit`` merges; True once no pair is left at or above the threshold."""
        for _ in range(limit):
            if self.done:
                break
            a = int(np.argmax(self.best_sim))
            if not self.best_sim[a] >= self.threshold:
                self.done = True
                break
            self._join(a, int(self.best[a]))
        return self.done

    def _join(self, a: int, b: int) -> None:
        a, b = min(a, b), max(a, b)  # the lower index survives: the outcome does not depend on which was found first
        self.sums[a] += self.sums[b]
        self.sizes[a] += self.sizes[b]
        self.parent[b] = a
        self.alive[b] = False
        self.sim[b, :] = -np.inf
        self.sim[:, b] = -np.inf
        self.best_sim[b] = -np.inf
        row = (self.sums @ self.sums[a]) / (self.sizes * self.sizes[a])
        row[~self.alive] = -np.inf
        row[a] = -np.inf
        self.sim[a, :] = row
        self.sim[:, a] = row
        stale = np.flatnonzero(self.alive & ((self.best == a) | (self.best == b)))
        stale = np.union1d(stale, [a])
        self.best[stale] = np.argmax(self.sim[stale], axis=1)
        self.best_sim[stale] = self.sim[stale, self.best[stale]]
        closer = self.alive & (row > self.best_sim)  # cannot happen for an average; kept exact all the same
        self.best[closer] = a
        self.best_sim[closer] = row[closer]

    def labels(self) -> NDArray[np.int64]:
        """Each starting group's final group, numbered 0.. in order of each group's first member."""
        root = self.parent.copy()
        while True:
            up = root[root]
            if np.array_equal(up, root):
                break
            root = up
        _u, first, inverse = np.unique(root, return_index=True, return_inverse=True)
        rank = np.argsort(np.argsort(first))
        return rank[inverse].astype(np.int64)


def average_linkage(vectors: NDArray[np.floating], threshold: float) -> NDArray[np.int64]:
    """Group labels of unit ``vectors`` in one go (the stage does the same a few merges at a time)."""
    work = Agglomeration(vectors, np.ones(len(vectors), dtype=np.int64), threshold)
    while not work.merge(1 << 30):
        pass
    return work.labels()
