"""The assessor: a logistic model giving the probability that the slow path is needed.

Its weights live in SQLite (``router_weights``), one row per route, starting from the ``*prior``
row that the migration writes. Two sets of weights, as in fast/slow-weight learning:

* **fast weights** move online after every outcome (one bounded SGD step on the log loss);
* **slow weights** change only in :meth:`Assessor.consolidate` (called by the sleep cycle, on
  request, or every ``router.learning.consolidate_every`` updates), which folds the fast weights
  in and zeroes them.

The effective weights are slow + fast, every weight clipped to ±``max_weight`` and every step to
±``max_step``, so no stream of outcomes can push the router far in one go; ``reset`` returns a
route to the prior. Every step is watched (:mod:`engram.router.stability`): weights that diverge
are put back to the last stable snapshot and the route's learning rate is lowered. Blocking code:
call it from a worker thread.
"""

from __future__ import annotations

import json
import math
import sqlite3
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from engram.router.features import FEATURES
from engram.router.settings import RouterLearningSettings
from engram.router.stability import Readings, Snapshot, Watch

__all__ = ["PRIOR", "Assessor", "Revert", "Weights"]

PRIOR = "*prior"


@dataclass
class Weights:
    slow: dict[str, float]
    fast: dict[str, float] = field(default_factory=dict)
    updates: int = 0
    consolidations: int = 0

    def effective(self, bound: float) -> dict[str, float]:
        return {k: _clip(self.slow.get(k, 0.0) + self.fast.get(k, 0.0), bound) for k in FEATURES}


@dataclass(frozen=True)
class Revert:
    """Diverged weights put back to the last stable snapshot."""

    route: str
    readings: Readings
    rate_before: float
    rate_after: float
    snapshot_updates: int  # the update count when the snapshot was taken
    updates: int  # the update count at the revert
    reverts: int  # the route's reverts so far, this one included


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
        self._watches: dict[str, Watch] = {}

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
        return self.learn(route, features, slow_needed)[0]

    def learn(self, route: str, features: dict[str, float], slow_needed: bool) -> tuple[float, Revert | None]:
        """One bounded online step towards ``slow_needed``, watched: the probability before it, and
        the revert when the step made the weights diverge."""
        p = self.probability(route, features)
        if not self.settings.enabled:
            return p, None
        error = (1.0 if slow_needed else 0.0) - p
        bound, step = self.settings.max_weight, self.settings.max_step
        x = {k: 1.0 if k == "bias" else float(features.get(k, 0.0)) for k in FEATURES}
        revert = None
        with self._lock:
            weights = self._load(route)
            watch = self._watch(route, weights)
            rate = watch.rate if watch is not None else self.settings.rate
            for k in FEATURES:
                delta = _clip(rate * error * x[k], step)
                # The fast weight may move only as far as keeps slow + fast within the bound.
                total = _clip(weights.slow.get(k, 0.0) + weights.fast.get(k, 0.0) + delta, bound)
                weights.fast[k] = total - weights.slow.get(k, 0.0)
            weights.updates += 1
            every = self.settings.consolidate_every
            if every and weights.updates % every == 0:
                self._consolidate(weights)
            stability = None
            if watch is not None:
                readings = watch.observe(weights.effective(bound), np.array([x[k] for k in FEATURES]), slow_needed)
                if not readings.stable:
                    snap = watch.snapshot
                    weights.slow, weights.fast = dict(snap.slow), dict(snap.fast)
                    before = watch.rate
                    revert = Revert(route, readings, before, watch.reverted(), snap.updates, weights.updates, watch.reverts)
                    stability = self._stability_row(route, watch)
                elif watch.due(readings, weights.updates):
                    watch.take(Snapshot(dict(weights.slow), dict(weights.fast), watch.rate, weights.updates))
                    stability = self._stability_row(route, watch)
            copy = Weights(dict(weights.slow), dict(weights.fast), weights.updates, weights.consolidations)
        # Written outside the lock: probability() may run on the event loop and must not wait on disk.
        # Writers are serialised by the caller (one worker thread), so copies land in order.
        self._save(route, copy)
        if stability is not None:
            self._conn.execute(
                "INSERT OR REPLACE INTO router_stability (route, slow, fast, snapshot_rate, snapshot_updates, rate, reverts, "
                "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", stability,
            )
        return p, revert

    def _watch(self, route: str, weights: Weights) -> Watch | None:
        """The route's watch (None when router.learning.stability is off); a route never watched
        before starts from its current weights as the stable snapshot, at the configured rate."""
        settings = self.settings.stability
        if not settings.enabled:
            return None
        found = self._watches.get(route)
        if found is not None:
            return found
        row = self._conn.execute(
            "SELECT slow, fast, snapshot_rate, snapshot_updates, rate, reverts FROM router_stability WHERE route = ?", (route,)
        ).fetchone()
        rate = self.settings.rate
        if row is None:
            watch = Watch(settings, Snapshot(dict(weights.slow), dict(weights.fast), rate, weights.updates),
                          self.settings.max_weight, rate)
        else:
            # A lowered rate holds across restarts (until route.reset); a lower configured one wins.
            snapshot = Snapshot(json.loads(row[0]), json.loads(row[1]), row[2], row[3])
            watch = Watch(settings, snapshot, self.settings.max_weight, min(rate, row[4]), row[5])
        self._watches[route] = watch
        return watch

    @staticmethod
    def _stability_row(route: str, watch: Watch) -> tuple[object, ...]:
        snap = watch.snapshot
        return (route, json.dumps(snap.slow), json.dumps(snap.fast), snap.rate, snap.updates, watch.rate, watch.reverts,
                time.time())

    def stability(self, route: str) -> tuple[float, int]:
        """The route's learning rate in force and its reverts so far."""
        with self._lock:
            watch = self._watch(route, self._load(route))
            return (watch.rate, watch.reverts) if watch is not None else (self.settings.rate, 0)

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
            self._conn.execute("DELETE FROM router_stability WHERE route = ?", (route,))
            self._weights.pop(route, None)
            self._watches.pop(route, None)

    def snapshot(self, route: str) -> Weights:
        with self._lock:
            w = self._load(route)
            return Weights(dict(w.slow), dict(w.fast), w.updates, w.consolidations)
