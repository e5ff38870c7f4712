"""``engram bench sequence``: sequence recall's pruned DTW search against brute force.

The stored data: sessions of episodes whose vectors are random walks on the unit sphere
(neighbouring turns alike, as in a conversation), with a few noisy copies of the query planted
in some of them (a routine that recurs). Brute force runs the same DTW routine
(:func:`engram.memory.sequence.dtw`) over every stretch of the query's length; the pruned search
(:func:`engram.memory.sequence.search`, what ``memory.sequence`` runs) orders the stretches by
lower bound and computes DTW only while a bound can still beat the k-th best. Both take the same
streams in memory, so the figures are of the search alone, not of reading episodes. Each is run
``repeats`` times; the table shows the median.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from engram.memory.sequence import Search, brute_force, search

__all__ = ["SequenceReport", "run_sequence_bench"]


@dataclass
class SequenceReport:
    stored: int  # stretches of the query's length in the streams
    sessions: int
    length: int
    window: int
    k: int
    dim: int
    planted: int
    brute_seconds: float
    pruned_seconds: float
    brute_dtws: int
    pruned_dtws: int
    matched: bool  # same stretches, same order, same distances

    @property
    def ratio(self) -> float:
        return self.brute_seconds / self.pruned_seconds

    def as_dict(self) -> dict[str, Any]:
        return {
            "benchmark": "sequence",
            "stored": self.stored, "sessions": self.sessions, "length": self.length, "window": self.window,
            "k": self.k, "dim": self.dim, "planted": self.planted,
            "rows": [
                {"target": "brute_force", "seconds": self.brute_seconds, "dtws": self.brute_dtws},
                {"target": "pruned", "seconds": self.pruned_seconds, "dtws": self.pruned_dtws},
            ],
            "ratio": self.ratio,
            "matched": self.matched,
        }

    def table(self) -> str:
        lines = [f"{'target':<14} {'seconds':>10} {'DTWs':>8}"]
        lines.append(f"{'brute force':<14} {self.brute_seconds:>10.4f} {self.brute_dtws:>8}")
        lines.append(f"{'pruned':<14} {self.pruned_seconds:>10.4f} {self.pruned_dtws:>8}")
        lines.append(f"{'ratio':<14} {self.ratio:>9.1f}x   (brute force / pruned; goal >= 10x)")
        lines.append(f"answers matched: {'yes' if self.matched else 'NO'}")
        lines.append(
            f"{self.stored} stored stretches in {self.sessions} sessions; query of {self.length} x {self.dim}-d vectors, "
            f"band {self.window}, k {self.k}; {self.planted} noisy copies of the query planted"
        )
        return "\n".join(lines)


def _walk(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = np.cumsum(rng.normal(size=(n, dim)) * 0.3, axis=0) + rng.normal(size=dim)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)  # as the index holds them


def run_sequence_bench(stored: int = 10_000, length: int = 16, window: int = 2, k: int = 5, dim: int = 384,
                       session_length: int = 200, planted: int = 10, repeats: int = 3, seed: int = 0) -> SequenceReport:
    if session_length < length:
        raise ValueError("a session must hold at least one stretch of the query's length")
    rng = np.random.default_rng(seed)
    per_session = session_length - length + 1
    sessions = max(1, -(-stored // per_session))
    streams = []
    left = stored
    for _ in range(sessions):
        windows = min(per_session, left)
        streams.append(_walk(rng, windows + length - 1, dim))
        left -= windows
    query = _walk(rng, length, dim)
    for _ in range(planted):
        s = int(rng.integers(len(streams)))
        if len(streams[s]) < length:
            continue
        t = int(rng.integers(len(streams[s]) - length + 1))
        copy = query + rng.normal(scale=0.02, size=query.shape)
        streams[s][t : t + length] = (copy / np.linalg.norm(copy, axis=1, keepdims=True)).astype(np.float32)

    def timed(func: Any) -> tuple[float, Search]:
        seconds, result = [], None
        for _ in range(repeats):
            started = time.perf_counter()
            result = func(query, streams, k, window)
            seconds.append(time.perf_counter() - started)
        assert result is not None
        return statistics.median(seconds), result

    brute_seconds, brute = timed(brute_force)
    pruned_seconds, pruned = timed(search)
    return SequenceReport(
        stored=brute.candidates, sessions=len(streams), length=length, window=window, k=k, dim=dim, planted=planted,
        brute_seconds=brute_seconds, pruned_seconds=pruned_seconds, brute_dtws=brute.computed, pruned_dtws=pruned.computed,
        matched=brute.matches == pruned.matches,
    )
