"""System 1's pattern cache, in the router's own table ``router_cache``.

* **exact repeat**: the SHA-256 of the input (route, kind, bytes) finds the answer directly;
* **semantic repeat** (text only): the text's embedding (the default embedder) is compared with
  the embeddings of the route's cached texts; at or above ``router.cache.semantic_threshold`` the
  cached answer is served. With memory the router finds the neighbours in the route's episodic
  namespace instead (service.py ``_semantic_hit``) and only reads answers here by key.

Only unexpired answers of the same route count. Each route keeps at most
``router.cache.max_entries`` answers; the oldest go first. Blocking code: call from a thread.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from engram.router.settings import RouterCacheSettings

__all__ = ["CacheHit", "PatternCache"]


@dataclass(frozen=True)
class CacheHit:
    kind: str  # exact or semantic
    key: str
    decision: str  # the decision that produced the answer
    target: str
    answer: dict[str, Any]
    created_at: float
    similarity: float


class PatternCache:
    def __init__(self, conn: sqlite3.Connection, settings: RouterCacheSettings) -> None:
        self._conn = conn
        self.settings = settings
        self._lock = threading.Lock()
        # Per route: keys and unit embeddings of cached texts, loaded once, kept in step with the table.
        self._vectors: dict[str, tuple[list[str], np.ndarray]] = {}

    def exact(self, route: str, key: str, now: float | None = None) -> CacheHit | None:
        now = time.time() if now is None else now
        with self._lock:
            row = self._conn.execute(
                "SELECT decision, target, answer, created_at FROM router_cache WHERE route = ? AND key = ? AND expires_at > ?",
                (route, key, now),
            ).fetchone()
        if row is None:
            return None
        return CacheHit("exact", key, row[0], row[1], json.loads(row[2]), row[3], 1.0)

    def _route_vectors(self, route: str) -> tuple[list[str], np.ndarray]:
        found = self._vectors.get(route)
        if found is None:
            rows = self._conn.execute(
                "SELECT key, embedding FROM router_cache WHERE route = ? AND embedding IS NOT NULL", (route,)
            ).fetchall()
            keys = [r[0] for r in rows]
            matrix = np.stack([np.frombuffer(r[1], np.float32) for r in rows]) if rows else np.zeros((0, 0), np.float32)
            found = self._vectors[route] = (keys, matrix)
        return found

    def semantic(self, route: str, vector: np.ndarray, now: float | None = None) -> CacheHit | None:
        now = time.time() if now is None else now
        with self._lock:
            keys, matrix = self._route_vectors(route)
            if not keys or matrix.shape[1] != vector.shape[0]:
                return None
            scores = matrix @ vector.astype(np.float32)
            order = np.argsort(-scores)
        for index in order[:8]:
            if float(scores[index]) < self.settings.semantic_threshold:
                return None
            hit = self.exact(route, keys[index], now)
            if hit is not None:
                return CacheHit("semantic", hit.key, hit.decision, hit.target, hit.answer, hit.created_at, float(scores[index]))
        return None

    def put(self, route: str, key: str, decision: str, target: str, answer: dict[str, Any], vector: np.ndarray | None) -> None:
        now = time.time()
        blob = None if vector is None else np.asarray(vector, np.float32).tobytes()
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.execute(
                    "INSERT OR REPLACE INTO router_cache (route, key, created_at, expires_at, decision, target, answer, embedding) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (route, key, now, now + self.settings.ttl, decision, target, json.dumps(answer), blob),
                )
                self._conn.execute(
                    "DELETE FROM router_cache WHERE route = ? AND (expires_at <= ? OR key IN ("
                    "SELECT key FROM router_cache WHERE route = ? ORDER BY created_at DESC LIMIT -1 OFFSET ?))",
                    (route, now, route, self.settings.max_entries),
                )
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._vectors.pop(route, None)  # reloaded on the next semantic lookup

    def clear(self, route: str) -> int:
        with self._lock:
            count = self._conn.execute("DELETE FROM router_cache WHERE route = ?", (route,)).rowcount
            self._vectors.pop(route, None)
        return count
