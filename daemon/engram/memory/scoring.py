"""The hybrid score of a recall hit: a weighted mean of parts that each lie in 0..1.

- vector: cosine similarity to the query, clipped at 0 (unrelated and opposite count the same);
- keyword: ``bm25 / max(best, memory.recall.keyword_full_marks)`` of the full-text match, where
  ``best`` is the bm25 of the query's best match in the namespace (0 without a match;
  :func:`bm25`, with the namespace's own statistics). Relative to the best match, because how
  high bm25 runs depends on the query (how many words it has, how rare they are): the episode
  that matches a query best is the query's full keyword match, whatever the absolute figure. The
  floor keeps a query whose best match is only on words most episodes contain (a lone "Ada" in
  a namespace about Ada) from giving that match full marks (:func:`keyword_parts`);
- recency: ``0.5 ** (age / half_life)``, age from the episode's time to now (future: 1);
- importance: as stored (0..1);
- period: 1 when the episode's time lies in a period the query text names ("in July 2023",
  "yesterday": :mod:`engram.memory.periods`), else 0; its weight counts only for a query that
  names one;
- activation: spreading activation reaching the episode;
- superseded: 1 when the episode is a source of facts whose validity a newer fact ended or that a
  correction replaced (relations with ``superseded_by``, see :mod:`engram.memory.semantic`) and
  of no current fact, else 0. It is not averaged in: the mean is multiplied by ``1 -
  weights.superseded x superseded`` (``memory.recall.weights.superseded``, 0.5), so an episode
  that only states what no longer holds ("Ada lives in Paris" once she moved to Berlin) keeps
  half its score and ranks below the one that states what holds now, and every other episode's
  score is exactly what it would be without this part.

A part that cannot apply to the query (keyword without a query text, activation when not asked
for) has its weight left out, so that a vector-only query is not scored lower across the board.

Dividing by the sum of the weights keeps scores in 0..1 whatever the weights are (the superseded
factor lies in 0..1 too).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray

__all__ = ["BM25_B", "BM25_K1", "Weights", "bm25", "combine", "keyword_parts", "recencies", "recency"]

# combine works on one candidate's parts (floats) or on every candidate's at once (arrays): the
# same arithmetic in the same order, so a recall scored over arrays ranks as one scored by hand.
Part = TypeVar("Part", float, NDArray[np.float64])


@dataclass(frozen=True, slots=True)
class Weights:
    vector: float
    keyword: float
    recency: float
    importance: float
    activation: float
    superseded: float = 0.0  # share of the score an episode of superseded facts loses (0..1)
    neighbour: float = 0.0  # conversation context (engram.memory.context): lift towards the neighbours' score (0..1)
    session: float = 0.0  # and towards the session's best (0..1)
    period: float = 0.0  # episodes from a period the query names


def recency(time: float, now: float, half_life: float) -> float:
    # Through numpy like recencies: its vectorised pow may differ from the C library's in the
    # last bit, and one episode must score the same whichever way it is scored.
    return float(recencies(np.array([time], np.float64), now, half_life)[0])


def recencies(times: NDArray[np.float64], now: float, half_life: float) -> NDArray[np.float64]:
    """:func:`recency` of many times at once."""
    return 0.5 ** (np.maximum(0.0, now - times) / half_life)


def combine(parts: dict[str, Part], weights: Weights, with_keyword: bool, with_activation: bool,
            with_period: bool = False) -> Part:
    total = weights.vector + weights.recency + weights.importance
    value = weights.vector * parts["vector"] + weights.recency * parts["recency"] + weights.importance * parts["importance"]
    if with_keyword:
        total += weights.keyword
        value += weights.keyword * parts["keyword"]
    if with_activation:
        total += weights.activation
        value += weights.activation * parts["activation"]
    if with_period:
        total += weights.period
        value += weights.period * parts["period"]
    mean = value / total if total > 0 else value * 0.0
    if weights.superseded and "superseded" in parts:
        return mean * (1.0 - weights.superseded * parts["superseded"])
    return mean


BM25_K1 = 1.2  # the usual Okapi BM25 constants (Lucene's defaults)
BM25_B = 0.75


def bm25(matches: Sequence[Sequence[tuple[int, int]]], episodes: int) -> dict[int, float]:
    """Okapi BM25 of the episodes matching a query, with a namespace's own statistics.

    ``matches`` holds, per query word, the (seq, text length) of the namespace's episodes that
    contain it; ``episodes`` is the namespace's size. A word counts once per episode (episodes are
    short: a repeat says little more), the inverse document frequency is Lucene's
    ``ln(1 + (N - n + 0.5) / (n + 0.5))`` (never negative, so a word in most episodes still adds a
    little), and a text's length is compared with the mean length of the matched texts: the
    namespace's own mean would need a scan of it per recall, and the matched texts are those
    being told apart."""
    if not matches:
        return {}
    lengths = {seq: length for rows in matches for seq, length in rows}
    mean = max(sum(lengths.values()) / len(lengths), 1.0)
    total = max(episodes, max(len(rows) for rows in matches))
    scores: dict[int, float] = {}
    for rows in matches:
        idf = math.log(1.0 + (total - len(rows) + 0.5) / (len(rows) + 0.5))
        for seq, length in rows:
            norm = BM25_K1 * (1.0 - BM25_B + BM25_B * length / mean)
            scores[seq] = scores.get(seq, 0.0) + idf * (BM25_K1 + 1.0) / (1.0 + norm)
    return scores


def keyword_parts(matches: Sequence[tuple[int, float]], full_marks: float) -> dict[int, float]:
    """The keyword part of each matching episode: its bm25 over the query's best bm25, that best
    taken as at least ``full_marks`` (see the module's docstring)."""
    scale = max([score for _, score in matches] + [full_marks])
    return {seq: score / scale for seq, score in matches if score > 0}
