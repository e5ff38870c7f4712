"""Small helpers the consolidation stages share (blocking; worker threads)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from engram.memory.index import FlatSpace, HnswSpace, VectorIndex

__all__ = ["SKIPPED_PREFIX", "archived_clause", "chunks", "has_column", "json_rows", "marks", "nearest_other"]

# Namespaces that hold the router's novelty vectors, not anyone's memories.
SKIPPED_PREFIX = "router:"


def has_column(conn: sqlite3.Connection, table: str, column: str) -> bool:
    return any(row[1] == column for row in conn.execute(f"PRAGMA table_info({table})"))


def archived_clause(conn: sqlite3.Connection, alias: str = "") -> str:
    """``AND <alias>archived_at IS NULL`` when forgetting's archive column exists, else ``''``."""
    return f" AND {alias}archived_at IS NULL" if has_column(conn, "memory_episodes", "archived_at") else ""


def json_rows(rows: Sequence[Any]) -> str:
    """Rows as one JSON array, for a statement that reads them with ``json_each(?)``.

    The stages write many rows per transaction with single set-based statements fed this way
    rather than with ``executemany`` or a statement per row. Each statement — and each row that
    ``executemany`` binds — hands the interpreter lock back while SQLite works, then waits to
    take it again; while a request is being served the event loop holds it for up to the switch
    interval each time. A transaction of hundreds of statements then held SQLite's write lock
    ten times as long as its work took (about 5 ms instead of 0.5 ms for 100 links), and the
    request's own audit entry waited for that lock. (JSON numbers reach SQLite exactly: Python
    writes the shortest repr that reads back as the same double.)"""
    return json.dumps(rows, separators=(",", ":"))


def marks(n: int) -> str:
    return ",".join("?" * n)


def chunks(values: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


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
