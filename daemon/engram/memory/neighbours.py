"""The nearest *other* episode of many episodes at once, and the size of a namespace's index:
what sleep's importance and compaction stages ask of the vector index (blocking; worker threads).

This module knows the index's spaces (:class:`FlatSpace`, :class:`HnswSpace`) from the inside, so
that a batch of queries is one FAISS call rather than one call per episode.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from engram.memory.index import FlatSpace, HnswSpace, VectorIndex

__all__ = ["index_size", "nearest_other"]

_PER_LOCK = 4  # queries per hold of the namespace's lock


def _search(space: Any, dim: int, queries: NDArray[np.float32]) -> tuple[NDArray[np.int64], NDArray[np.float32]] | None:
    """Labels (seqs) and similarities of the two nearest entries of each query (held lock)."""
    if space.count == 0 or queries.shape[1] != dim:
        return None
    k = 2
    if isinstance(space, FlatSpace):
        sims, labels = space.index.search(queries, min(k, space.count))
    elif isinstance(space, HnswSpace):
        sims, raw = space.index.search(queries, k + 1, params=space._search_params(k + 1))
        labels = np.where(raw >= 0, space._labels[np.maximum(raw, 0)], -1)
    else:  # an index kind this module does not know: one query at a time
        rows_l, rows_s = [], []
        for q in queries:
            got, sim = space.search(q.reshape(1, -1), k)
            rows_l.append(np.pad(got, (0, k - len(got)), constant_values=-1))
            rows_s.append(np.pad(sim, (0, k - len(sim)), constant_values=-1))
        labels, sims = np.vstack(rows_l), np.vstack(rows_s)
    if labels.shape[1] < k + 1:  # the same width for every chunk
        pad = k + 1 - labels.shape[1]
        labels = np.pad(labels, ((0, 0), (0, pad)), constant_values=-1)
        sims = np.pad(sims, ((0, 0), (0, pad)), constant_values=-1)
    return labels, sims


def nearest_other(index: VectorIndex, namespace: str, seqs: Sequence[int], vectors: NDArray[np.float32],
                  stop: Callable[[], bool] | None = None) -> NDArray[np.float32]:
    """For each vector (the episode ``seqs[i]``'s), the cosine to its nearest *other* episode in
    the namespace's index; -1 where there is none. Batched FAISS searches under the namespace's
    read lock, a few queries per hold. When ``stop()`` turns true (a foreground request came in)
    it returns after the chunk in hand, with results for a prefix of ``seqs`` only: that way a
    recall shares the CPU with a fraction of a millisecond of this work, not a whole unit."""
    ns = index.get(namespace)
    if ns is None or not len(seqs):
        return np.full(len(seqs), -1.0, dtype=np.float32)
    queries = np.ascontiguousarray(vectors, dtype=np.float32)
    parts_l, parts_s = [], []
    # Recall shares the read lock, but a remember waits for the write lock: hold it for a few
    # queries at a time, not the batch.
    for start in range(0, len(queries), _PER_LOCK):
        if start and stop is not None and stop():
            break
        with ns.lock.read_lock():
            got = _search(ns.space, ns.dim, queries[start : start + _PER_LOCK])
        if got is None:
            return np.full(len(seqs), -1.0, dtype=np.float32)
        parts_l.append(got[0])
        parts_s.append(got[1])
    labels, sims = np.vstack(parts_l), np.vstack(parts_s)
    out = np.full(len(labels), -1.0, dtype=np.float32)
    for i, seq in enumerate(seqs[: len(labels)]):
        for label, sim in zip(labels[i].tolist(), sims[i].tolist(), strict=False):
            if label >= 0 and label != seq:
                out[i] = sim
                break
    return out


def index_size(index: VectorIndex, namespace: str) -> dict[str, Any]:
    """Vectors, masked entries and approximate bytes of a namespace's index."""
    ns = index.get(namespace)
    if ns is None:
        return {"kind": "none", "vectors": 0, "masked": 0, "bytes": 0}
    with ns.lock.read_lock():
        space = ns.space
        if isinstance(space, HnswSpace):
            total = int(space.index.ntotal)
            links = int(space.index.hnsw.neighbors.size()) * 4
            code = int(space.index.storage.sa_code_size())  # bytes per vector: float16, or float32 in an older file
            size = total * code + links + total * (8 + 8 + 4)  # vectors, graph, labels/offsets/levels
        else:
            total = int(space.index.ntotal) if hasattr(space, "index") else space.count
            size = total * (ns.dim * 4 + 8)
        return {"kind": space.kind, "vectors": space.count, "masked": space.masked, "bytes": size}
