"""Watching the assessor's online learning, and undoing it when it diverges.

After every online step of a route the :class:`Watch` records the effective weight vector (a
bounded ring of the last ``window``) and the labelled outcome (a bounded replay set), and reads:

* **norm**: the Euclidean norm of the weights;
* **oscillation**: the share of successive steps that reverse direction (negative dot product of
  one step with the next) — near 0 while learning heads somewhere, near 1 when it flips back and
  forth;
* **lyapunov**: an estimate of the largest Lyapunov exponent of the weight trajectory (see
  :func:`lyapunov`) — negative while the weights settle, positive while nearby states fly apart;
* **accuracy**: the share of the replay set that the weights now predict right, beside the share
  the last stable snapshot predicts right on the same outcomes.

Noise alone makes the trajectory of a converged SGD wander (oscillation near one half, a small
positive exponent) without making it worse, so neither reading alone counts as divergence. The
weights have **diverged** when their norm passes ``max_norm``, or when their accuracy on the replay
set has fallen more than ``max_accuracy_drop`` below the snapshot's while the trajectory is
unstable (oscillation above ``max_oscillation`` or exponent above ``max_lyapunov``). While every
reading is within bounds, the weights become the new snapshot every ``snapshot_every`` steps.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np

from engram.router.features import FEATURES
from engram.router.settings import RouterStabilitySettings

__all__ = ["Readings", "Snapshot", "Watch", "lyapunov", "oscillation"]

_TINY = 1e-12  # separations at or below this are coincident points: no growth rate can be read from them


def lyapunov(trajectory: np.ndarray, horizon: int = 4) -> float | None:
    """Largest-Lyapunov-exponent estimate of ``trajectory`` (``[steps, dim]``), Rosenstein-style.

    For each point i, its nearest earlier neighbour j (any j < i; coincident points are skipped)
    and the separations d0 = |x_i - x_j| and dh = |x_{i+h} - x_{j+h}| after ``horizon`` = h steps;
    the estimate is the mean of log(dh / d0) / h over all such pairs, in nats per step. A
    trajectory contracting by a factor a < 1 per step gives log a < 0; one expanding by a > 1
    gives log a > 0. None when fewer than two pairs can be formed.
    """
    x = np.asarray(trajectory, dtype=np.float64)
    n = len(x)
    rates = []
    for i in range(1, n - horizon):
        d = np.linalg.norm(x[:i] - x[i], axis=1)
        d[d <= _TINY] = np.inf
        j = int(np.argmin(d))
        if not math.isfinite(d[j]):
            continue
        later = float(np.linalg.norm(x[i + horizon] - x[j + horizon]))
        rates.append(math.log(max(later, _TINY) / d[j]) / horizon)
    return float(np.mean(rates)) if len(rates) >= 2 else None


def oscillation(trajectory: np.ndarray) -> float | None:
    """Share of successive steps of ``trajectory`` that reverse direction (negative dot product);
    steps that did not move are left out. None when fewer than two pairs of steps moved."""
    steps = np.diff(np.asarray(trajectory, dtype=np.float64), axis=0)
    moved = np.linalg.norm(steps, axis=1) > _TINY
    pairs = moved[:-1] & moved[1:]
    if pairs.sum() < 2:
        return None
    dots = np.einsum("ij,ij->i", steps[:-1], steps[1:])[pairs]
    return float((dots < 0).mean())


@dataclass(frozen=True)
class Snapshot:
    """Weights known to be stable, and the learning rate in force when they were."""

    slow: dict[str, float]
    fast: dict[str, float]
    rate: float
    updates: int  # the route's update count when it was taken


@dataclass(frozen=True)
class Readings:
    norm: float
    oscillation: float | None
    lyapunov: float | None
    accuracy: float | None
    stable_accuracy: float | None
    diverged: str | None  # why: "norm" or "unstable", None while stable

    @property
    def stable(self) -> bool:
        return self.diverged is None


def _vector(weights: dict[str, float]) -> np.ndarray:
    return np.array([weights.get(k, 0.0) for k in FEATURES], dtype=np.float64)


def _accuracy(w: np.ndarray, replay: list[tuple[np.ndarray, bool]]) -> float:
    # p > 0.5 exactly when the logit is positive
    return sum((float(w @ x) > 0) == label for x, label in replay) / len(replay)


class Watch:
    """One route's trajectory, replay set and last stable snapshot. Not thread-safe: the assessor
    calls it under its lock."""

    def __init__(self, settings: RouterStabilitySettings, snapshot: Snapshot, bound: float, rate: float, reverts: int = 0) -> None:
        self.settings = settings
        self._bound = bound
        self.rate = rate  # the rate in force: the configured one, lowered at each revert
        self.reverts = reverts
        self.take(snapshot)
        self.trajectory: deque[np.ndarray] = deque(maxlen=settings.window)
        self.replay: deque[tuple[np.ndarray, bool]] = deque(maxlen=settings.replay)

    def observe(self, effective: dict[str, float], features: np.ndarray, slow_needed: bool) -> Readings:
        """Record one step's weights and its outcome, and read the trajectory."""
        s = self.settings
        w = _vector(effective)
        self.trajectory.append(w)
        self.replay.append((features, slow_needed))
        traj = np.array(self.trajectory)
        osc = oscillation(traj)
        lam = lyapunov(traj, s.horizon)
        acc = stable_acc = None
        if len(self.replay) >= s.min_replay:
            replay = list(self.replay)
            acc = _accuracy(w, replay)
            stable_acc = _accuracy(self._stable, replay)
        norm = float(np.linalg.norm(w))
        unstable = (osc is not None and osc > s.max_oscillation) or (lam is not None and lam > s.max_lyapunov)
        worse = acc is not None and stable_acc is not None and acc < stable_acc - s.max_accuracy_drop
        diverged = "norm" if norm > s.max_norm else "unstable" if unstable and worse else None
        return Readings(norm, osc, lam, acc, stable_acc, diverged)

    def due(self, readings: Readings, updates: int) -> bool:
        """Whether these weights become the new snapshot: every reading within bounds, the ring
        full, and ``snapshot_every`` steps since the last one."""
        s = self.settings
        calm = (
            readings.stable and len(self.trajectory) == s.window
            and readings.oscillation is not None and readings.oscillation <= s.max_oscillation
            and readings.lyapunov is not None and readings.lyapunov <= s.max_lyapunov
            and (readings.accuracy is None or readings.stable_accuracy is None
                 or readings.accuracy >= readings.stable_accuracy - s.max_accuracy_drop)
        )
        return calm and updates - self.snapshot.updates >= s.snapshot_every

    def take(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        b = self._bound
        self._stable = np.array(
            [max(-b, min(b, snapshot.slow.get(k, 0.0) + snapshot.fast.get(k, 0.0))) for k in FEATURES], dtype=np.float64
        )

    def reverted(self) -> float:
        """After a revert: the trajectory starts again from the snapshot, at a lower rate."""
        s = self.settings
        self.trajectory.clear()
        self.reverts += 1
        self.rate = max(s.min_rate, self.rate * s.rate_factor)
        return self.rate
