"""Sequence recall: the stretches of episode streams most like a query sequence, by dynamic time warping.

A *stream* is the vectors of one session's episodes in time order. A *stretch* (window) is a run
of as many consecutive episodes of one stream as the query has. Its distance to the query is the
DTW distance with a Sakoe–Chiba band of half-width ``window``: the cheapest monotone path through
the cost matrix ``cost[i, j] = 1 - cos(q_i, x_j)`` (unit vectors: half the squared Euclidean
distance) from (0, 0) to (m-1, m-1) that never leaves ``|i - j| <= window``, summing the costs of
its cells. Identical sequences are at distance 0.

:func:`search` returns exactly what :func:`brute_force` (DTW of every stretch) returns, faster:

* one matrix product gives the cost of every query element against every element of every
  stream (``cost = 1 - Q @ X.T``), from which each stretch's cost block is a slice (brute force
  takes its blocks from the same matrix);
* two lower bounds of every stretch, vectorised over all stretches at once: the sum over query
  rows of the cheapest cell of the row inside the band, and the same over the stretch's columns
  (every row and every column has a cell on any warping path, and costs are never negative).
  The column bound is at least LB_Keogh (the distance of each stretch element to the box
  envelope of the query elements its band reaches is at most its distance to the nearest of
  them), so the larger of the two prunes at least as well as LB_Keogh;
* stretches in increasing order of bound; DTW only while the bound does not exceed the k-th best
  distance so far, and each DTW is abandoned as soon as a whole row of its matrix does.

Ties are broken by the stretch's position (stream, then start), the same in both searches.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

__all__ = ["MAX_LENGTH", "Match", "Search", "brute_force", "cost_matrix", "dtw", "lower_bounds", "search"]

MAX_LENGTH = 256  # elements of a query sequence at most (memory.sequence)

# Slack for the rounding of a bound's sum against a DTW's sum of the same costs in another order.
_SLACK = 1e-9


@dataclass(frozen=True, slots=True, order=True)
class Match:
    """A stretch: ``stream`` (its index), ``start`` (the position of its first element) and its
    DTW ``distance`` to the query. Ordered by distance, then position."""

    distance: float
    stream: int
    start: int


@dataclass(slots=True)
class Search:
    matches: list[Match]
    candidates: int  # stretches considered (not skipped)
    computed: int  # DTWs started (the rest were pruned by their bound)


def cost_matrix(query: NDArray[np.floating], stream: NDArray[np.floating]) -> NDArray[np.float64]:
    """``1 - cos`` of every query element (rows) against every stream element (columns), for
    unit vectors; never below 0. The product is in float32 when the stream is float32 (the
    index's vectors are), else in float64."""
    dtype = np.float32 if stream.dtype == np.float32 else np.float64
    cost = np.asarray(1.0 - np.asarray(query, dtype) @ np.asarray(stream, dtype).T, dtype=np.float64)
    return np.maximum(cost, 0.0, out=cost)


def _band(m: int, window: int) -> list[tuple[int, int]]:
    """For each row i of an m x m matrix: the first and last column inside the band."""
    return [(max(0, i - window), min(m - 1, i + window)) for i in range(m)]


def dtw(cost: NDArray[np.float64] | Sequence[Sequence[float]], window: int, limit: float = math.inf) -> float:
    """DTW distance over a square cost block with a Sakoe–Chiba band of half-width ``window``;
    ``inf`` as soon as every cell of a row exceeds ``limit`` (the path could only cost more)."""
    rows = cost.tolist() if isinstance(cost, np.ndarray) else [list(r) for r in cost]
    m = len(rows)
    if m == 0 or any(len(r) != m for r in rows):
        raise ValueError("dtw needs a square, non-empty cost block")
    inf = math.inf
    previous = [inf] * m
    for i, (lo, hi) in enumerate(_band(m, window)):
        row = rows[i]
        current = [inf] * m
        left = inf
        best = inf
        for j in range(lo, hi + 1):
            if i == 0 and j == 0:
                reach = 0.0
            else:
                up, diag = previous[j], previous[j - 1] if j else inf
                reach = min(up, diag, left)
            value = row[j] + reach
            current[j] = left = value
            if value < best:
                best = value
        if best > limit:
            return inf
        previous = current
    return previous[m - 1]


def _sliding_min(values: NDArray[np.float64], width: int) -> NDArray[np.float64]:
    """``out[t] = min(values[t : t + width])``."""
    count = len(values) - width + 1
    out = values[:count].copy()
    for d in range(1, width):
        np.minimum(out, values[d : d + count], out=out)
    return out


def lower_bounds(cost: NDArray[np.float64], m: int, window: int) -> NDArray[np.float64]:
    """For every stretch start s of a stream (cost: m x n, n >= m), a lower bound of the DTW of
    ``cost[:, s : s + m]``: the larger of the row bound and the column bound."""
    n = cost.shape[1]
    count = n - m + 1
    rows = np.zeros(count)
    columns = np.zeros(count)
    for i, (lo, hi) in enumerate(_band(m, window)):
        # row i: cheapest of columns s+lo .. s+hi; column i (symmetric band): cheapest of rows lo .. hi
        rows += _sliding_min(cost[i], hi - lo + 1)[lo : lo + count]
        columns += cost[lo : hi + 1, i : i + count].min(axis=0)
    return np.maximum(rows, columns)


def _check(query: NDArray[np.floating], streams: Sequence[NDArray[np.floating]], k: int, window: int) -> None:
    if query.ndim != 2 or not len(query):
        raise ValueError("the query is a non-empty [m, dim] array")
    if k < 1 or window < 0:
        raise ValueError("k >= 1 and window >= 0")
    for stream in streams:
        if stream.ndim != 2 or (len(stream) and stream.shape[1] != query.shape[1]):
            raise ValueError("every stream is an [n, dim] array of the query's dimension")


def _starts(n: int, m: int, skipped: Iterable[int]) -> NDArray[np.int64]:
    """Start positions of the stretches of a stream of n elements that contain no skipped element."""
    starts = np.arange(n - m + 1, dtype=np.int64)
    blocked = sorted({p for p in skipped if 0 <= p < n})
    if not blocked:
        return starts
    hit = np.zeros(n + 1, dtype=np.int64)
    hit[np.asarray(blocked) + 1] = 1
    inside = np.cumsum(hit)  # inside[j]: skipped positions before j
    return starts[inside[starts + m] == inside[starts]]


def _prepare(query: NDArray[np.floating], streams: Sequence[NDArray[np.floating]], k: int, window: int,
             skip: Sequence[Iterable[int]] | None) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """The cost matrix of the query against every stream long enough, side by side (one matrix
    product), and every stretch to consider as a row
    (stream, start in it, column of the matrix)."""
    _check(query, streams, k, window)
    m = len(query)
    kept = [s for s, stream in enumerate(streams) if len(stream) >= m]
    if not kept:
        return np.zeros((m, 0)), np.zeros((0, 3), dtype=np.int64)
    cost = cost_matrix(query, np.concatenate([streams[s] for s in kept]))
    parts: list[NDArray[np.int64]] = []
    column = 0
    for s in kept:
        n = len(streams[s])
        starts = _starts(n, m, skip[s] if skip is not None else ())
        parts.append(np.stack([np.full(len(starts), s, dtype=np.int64), starts, starts + column], axis=1))
        column += n
    return cost, np.concatenate(parts)


def brute_force(query: NDArray[np.floating], streams: Sequence[NDArray[np.floating]], k: int, window: int,
                skip: Sequence[Iterable[int]] | None = None) -> Search:
    """The k stretches nearest the query, by the DTW of every stretch. ``skip[s]``: positions of
    stream s that no returned stretch may contain."""
    cost, stretches = _prepare(query, streams, k, window, skip)
    m = len(query)
    found = sorted(Match(dtw(cost[:, c : c + m], window), s, t) for s, t, c in stretches.tolist())
    return Search(found[:k], len(found), len(found))


def search(query: NDArray[np.floating], streams: Sequence[NDArray[np.floating]], k: int, window: int,
           skip: Sequence[Iterable[int]] | None = None) -> Search:
    """What :func:`brute_force` returns, pruned by lower bounds and early abandoning."""
    cost, stretches = _prepare(query, streams, k, window, skip)
    if not len(stretches):
        return Search([], 0, 0)
    m = len(query)
    where = stretches
    # the bounds of every start of the side-by-side matrix (those that straddle two streams are
    # never looked at), then those of the stretches to consider
    bound = lower_bounds(cost, m, window)[where[:, 2]]
    order = np.lexsort((where[:, 1], where[:, 0], bound))  # by bound, then position
    # max-heap of the k best so far, as (-distance, -stream, -start): its top is the k-th best
    best: list[tuple[float, int, int]] = []
    computed = 0
    for n in order.tolist():
        kth = -best[0][0] if len(best) == k else math.inf
        if bound[n] > kth + _SLACK:
            break  # the rest are bounded higher still
        s, t, c = (int(v) for v in where[n])
        computed += 1
        distance = dtw(cost[:, c : c + m], window, kth + _SLACK)
        if distance == math.inf:
            continue
        entry = (-distance, -s, -t)
        if len(best) < k:
            heapq.heappush(best, entry)
        elif entry > best[0]:  # nearer, or as near and earlier
            heapq.heapreplace(best, entry)
    matches = sorted(Match(-d, -s, -t) for d, s, t in best)
    return Search(matches, len(stretches), computed)
