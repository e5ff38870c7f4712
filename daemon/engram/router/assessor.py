"""The assessor: a logistic model giving the probability that the slow path is needed.

Its weights live in SQLite (``router_weights``), one row per route, starting from the ``*prior``
row that the migration writes. Two sets of weights, as in fast/slow-weight learning:

* **fast weights** move online after every outcome (one bounded SGD step on the log loss);
* **slow weights** change only in :meth:`Assessor.consolidate` (called by the sleep cycle, on
  request, or every ``router.learning.consolidate_every`` updates), which folds the fast weights
  in and zeroes them.

The effective weights are slow + fast, every weight clipped to ±``max_weight`` and every step to
±``max_step``, so no stream of outcomes can push the router far in one go; ``reset`` returns a
route to the prior. Blocking code: call it from a worker thread.
"""

from __future__ import annotations

import json
import math
import sqlite3
import threading
import time
from dataclasses import dataclass, field

from engram.router.features import FEATURES
from engram.router.settings import RouterLearningSettings

__all__ = ["PRIOR", "Assessor", "Weights"]

PRIOR = "*prior"


@dataclass
class Weights:
    slow: dict[str, float]
    fast: dict[str, float] = field(default_factory=dict)
    updates: int = 0
    consolidations: int = 0

    def effective(self, bound: float) -> dict[str, float]:
        return {k: _clip(self.slow.get(k, 0.0) + self.fast.get(k, 0.0), bound) for k in FEATURES}


def _clip(value: float, bound: float) -> float:
    return max(-bound, min(bound, value))


def _sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


class Assessor:
    def __init__(self, conn: sqlite3.Connection, settings: RouterLearningSettings) -> None:
        self._conn = conn
        self.settings = settings
        self._lock = threading.Lock()
        self._weights: dict[str, Weights] = {}

    def _load(self, route: str) -> Weights:
        found = self._weights.get(route)
        if found is not None:
            return found
        row = self._conn.execute(
            "SELECT slow, fast, updates, consolidations FROM router_weights WHERE route = ?", (route,)
        ).fetchone()
        if row is None:
            weights = Weights(slow=self._prior())
        else:
            weights = Weights(json.loads(row[0]), json.loads(row[1]), row[2], row[3])
        self._weights[route] = weights
        return weights

    def _prior(self) -> dict[str, float]:
        row = self._conn.execute("SELECT slow FROM router_weights WHERE route = ?", (PRIOR,)).fetchone()
        return {k: float(v) for k, v in json.loads(row[0]).items()} if row else {k: 0.0 for k in FEATURES}

    def _save(self, route: str, weights: Weights) -> None:
        self._conn.execute(
            "INSERT INTO router_weights (route, slow, fast, updates, consolidations, updated_at) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (route) DO UPDATE SET slow = excluded.slow, fast = excluded.fast, updates = excluded.updates, "
            "consolidations = excluded.consolidations, updated_at = excluded.updated_at",
            (route, json.dumps(weights.slow), json.dumps(weights.fast), weights.updates, weights.consolidations, time.time()),
        )

    def loaded(self, route: str) -> bool:
        """True when ``route``'s weights are in memory: probability() then does no I/O."""
        return route in self._weights

    def probability(self, route: str, features: dict[str, float]) -> float:
        with self._lock:
            w = self._load(route).effective(self.settings.max_weight)
        return _sigmoid(sum(w[k] * float(features.get(k, 1.0 if k == "bias" else 0.0)) for k in FEATURES))

    def update(self, route: str, features: dict[str, float], slow_needed: bool) -> float:
        """One bounded online step towards ``slow_needed``; returns the probability before it."""
        p = self.probability(route, features)
        if not self.settings.enabled:
            return p
        error = (1.0 if slow_needed else 0.0) - p
        bound, step = self.settings.max_weight, self.settings.max_step
        with self._lock:
            weights = self._load(route)
            for k in FEATURES:
                x = 1.0 if k == "bias" else float(features.get(k, 0.0))
                delta = _clip(self.settings.rate * error * x, step)
                # The fast weight may move only as far as keeps slow + fast within the bound.
                total = _clip(weights.slow.get(k, 0.0) + weights.fast.get(k, 0.0) + delta, bound)
                weights.fast[k] = total - weights.slow.get(k, 0.0)
            weights.updates += 1
            every = self.settings.consolidate_every
            if every and weights.updates % every == 0:
                self._consolidate(weights)
            copy = Weights(dict(weights.slow), dict(weights.fast), weights.updates, weights.consolidations)
        # Written outside the lock: probability() may run on the event loop and must not wait on disk.
        # Writers are serialised by the caller (one worker thread), so copies land in order.
        self._save(route, copy)
        return p

    def _consolidate(self, weights: Weights) -> None:
        bound = self.settings.max_weight
        weights.slow = {k: _clip(weights.slow.get(k, 0.0) + weights.fast.get(k, 0.0), bound) for k in FEATURES}
        weights.fast = {}
        weights.consolidations += 1

    def consolidate(self, route: str | None = None) -> list[str]:
        """Fold fast weights into slow weights (one route, or every route with a row)."""
        with self._lock:
            routes = [route] if route else [r for (r,) in self._conn.execute("SELECT route FROM router_weights") if r != PRIOR]
            for name in routes:
                weights = self._load(name)
                self._consolidate(weights)
                self._save(name, weights)
        return routes

    def reset(self, route: str) -> None:
        with self._lock:
            self._conn.execute("DELETE FROM router_weights WHERE route = ?", (route,))
            self._weights.pop(route, None)

    def snapshot(self, route: str) -> Weights:
        with self._lock:
            w = self._load(route)
            return Weights(dict(w.slow), dict(w.fast), w.updates, w.consolidations)
