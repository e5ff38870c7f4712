"""Novelty from episodic memory: each route remembers the vectors of its inputs in the memory
namespace ``router:<route>``, and novelty is 1 - the cosine similarity of the nearest remembered
input (a k=1 vector search of that namespace's index).

Memory keeps the vectors (a :class:`~engram.router.ports.NoveltyStore`, called in-process: the
daemon writes its own namespace; no RPC, no policy). Writes are off the request path: ``remember``
puts the vector on a bounded queue, a task in the router's task group hands it to the store (the
memory writer), and a full queue drops the vector and counts the drop. Until a queued vector is
committed it still counts for novelty (the pending set), so a repeat sent right after its
original is never "novel" because the write was slow.
One vector per distinct input hash: a repeat is skipped here and, across restarts, by the store,
which keeps a key once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import anyio
import anyio.abc
import numpy as np
import structlog
from prometheus_client import Counter

from engram.errors import RPCError
from engram.router.ports import NoveltyStore

__all__ = ["NAMESPACE_PREFIX", "EpisodicNovelty", "namespace_for", "tensor_vector"]

log = structlog.get_logger("engram.router")


# Memory namespaces of this prefix hold the routes' input vectors, nobody's memories.
NAMESPACE_PREFIX = "router:"


def namespace_for(route: str) -> str:
    return NAMESPACE_PREFIX + route


def tensor_vector(array: np.ndarray, dim: int) -> np.ndarray:
    """The flattened input, truncated or zero-padded to ``dim`` values, unit length (float32)."""
    values = np.nan_to_num(np.asarray(array, dtype=np.float64).ravel(), posinf=0.0, neginf=0.0)[:dim]
    if values.size < dim:
        values = np.concatenate([values, np.zeros(dim - values.size)])
    norm = float(np.linalg.norm(values))
    return (values / norm if norm > 0 else values).astype(np.float32)


@dataclass(frozen=True)
class _Item:
    route: str
    key: str
    vector: np.ndarray


class EpisodicNovelty:
    """Novelty per route against the route's episodic namespace; the writer runs in ``run``."""

    def __init__(self, store: NoveltyStore, queue_size: int, dropped: Counter) -> None:
        self._store = store
        self._dropped = dropped
        self._send, self._receive = anyio.create_memory_object_stream[_Item](queue_size)
        self._pending: dict[str, dict[str, np.ndarray]] = {}  # route -> key -> vector, queued or being written
        self.written = 0
        # Set when run ends (the queue closed and drained); anyio events need the event loop: made in open().
        self.finished: anyio.Event | None = None

    def open(self) -> None:
        self.finished = anyio.Event()

    def novelty(self, route: str, vector: np.ndarray) -> float:
        """1 - the best cosine similarity to a remembered or pending input (blocking: call from a thread)."""
        norm = float(np.linalg.norm(vector))
        if norm == 0 or not math.isfinite(norm):
            return 1.0
        query = (vector / norm).astype(np.float32)
        remembered = self._store.best_similarity(namespace_for(route), query)
        best = -1.0 if remembered is None else remembered
        for other in list(self._pending.get(route, {}).values()):
            if other.shape == query.shape:
                best = max(best, float(other @ query))
        if best < -0.5:  # nothing remembered yet
            return 1.0
        return float(min(max(1.0 - best, 0.0), 1.0))

    def nearest(self, route: str, vector: np.ndarray, k: int) -> list[tuple[str, float]]:
        """The input hashes of the ``k`` remembered (or pending) inputs nearest to ``vector``, best
        first, with their cosine similarity (blocking: call from a thread). The semantic cache's lookup."""
        norm = float(np.linalg.norm(vector))
        if norm == 0 or not math.isfinite(norm):
            return []
        query = (vector / norm).astype(np.float32)
        found = dict(self._store.nearest(namespace_for(route), query, k))
        for key, other in list(self._pending.get(route, {}).items()):
            if other.shape == query.shape:
                found[key] = max(found.get(key, -1.0), float(other @ query))
        return sorted(found.items(), key=lambda kv: -kv[1])[:k]

    def remember(self, route: str, key: str, vector: np.ndarray) -> bool:
        """Queue the input's vector for memory; False when it is pending already or the queue is full (dropped)."""
        pending = self._pending.setdefault(route, {})
        if key in pending:
            return False
        norm = float(np.linalg.norm(vector))
        if norm == 0 or not math.isfinite(norm):
            return False
        unit = (vector / norm).astype(np.float32)
        try:
            self._send.send_nowait(_Item(route, key, unit))
        except anyio.WouldBlock:
            self._dropped.labels(route).inc()
            return False
        pending[key] = unit
        return True

    async def run(self) -> None:
        """Write queued vectors until the stream closes."""
        try:
            async with self._receive:
                async for item in self._receive:
                    try:
                        await self._write(item)
                    except RPCError as exc:
                        log.warning("router could not remember an input", route=item.route, error=exc.message)
                    finally:
                        self._pending.get(item.route, {}).pop(item.key, None)
        finally:
            if self.finished is not None:
                self.finished.set()

    async def _write(self, item: _Item) -> None:
        namespace = namespace_for(item.route)
        want = self._store.expected_dim(namespace)
        if want is not None and want != item.vector.shape[0]:
            log.warning("router input vector does not fit its memory namespace", route=item.route, expected=want,
                        got=int(item.vector.shape[0]))
            return
        if await self._store.put(namespace, item.key, item.vector, "router", ("router",)):
            self.written += 1

    def close(self) -> None:
        self._send.close()
