"""Conversation context in recall: episodes of one session lend each other score.

A conversation remembered turn by turn splits what a question is about across turns: "Did you go
to the support group?" matches the question's words, the answer "Yes, on Sunday, it was great"
does not. So, after the hybrid score (:mod:`engram.memory.scoring`), an episode with a
``session`` is lifted towards two scores of its session, never lowered:

- neighbour: the better score of the episodes just before and just after it in its session (by
  time, then by the order they were remembered in);
- session: the best score in its session.

``lifted = own + neighbour_weight x max(0, neighbour - own)``, then
``final = lifted + session_weight x max(0, session - lifted)`` (``memory.recall.weights.neighbour``
0.5, ``.session`` 0.25). Both weights lie in 0..1, so scores stay in 0..1, an episode without a
session keeps its score exactly, and one whose neighbours score lower than it does is unchanged.
Measured on LoCoMo (docs/memory.md): R@10 +0.08 with the default embedder.

Only the best scored episodes (:data:`CONTEXT_OF`) look for their neighbours, so a neighbour that
was no candidate (the answer turn) is scored and can be recalled, at the cost of two index
look-ups per such episode.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

__all__ = ["CONTEXT_OF", "lift", "neighbour_scores"]

CONTEXT_OF = 20  # at least this many of the best candidates (2 x k when larger) look for neighbours


def neighbour_scores(seqs: list[int], scores: NDArray[np.float64],
                     near: dict[int, tuple[str, int | None, int | None]]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Per episode of ``seqs``: the best score of its scored neighbours, and the best score in its
    session among the episodes of ``near`` (seq -> (session, previous seq, next seq)); 0 for the
    episodes ``near`` does not place."""
    own = dict(zip(seqs, scores.tolist()))
    best: dict[str, float] = {}
    for seq, (session, _, _) in near.items():
        if seq in own:
            best[session] = max(best.get(session, 0.0), own[seq])
    neighbour = np.zeros(len(seqs), np.float64)
    session = np.zeros(len(seqs), np.float64)
    for i, seq in enumerate(seqs):
        placed = near.get(seq)
        if placed is None:
            continue
        name, before, after = placed
        neighbour[i] = max(own.get(before, 0.0) if before is not None else 0.0,
                           own.get(after, 0.0) if after is not None else 0.0)
        session[i] = best.get(name, 0.0)
    return neighbour, session


def lift(own: NDArray[np.float64], neighbour: NDArray[np.float64], session: NDArray[np.float64],
         neighbour_weight: float, session_weight: float) -> NDArray[np.float64]:
    """Scores lifted towards their neighbours' and their session's (see the module's docstring)."""
    lifted = own + neighbour_weight * np.maximum(0.0, neighbour - own)
    return lifted + session_weight * np.maximum(0.0, session - lifted)
