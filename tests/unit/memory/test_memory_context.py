"""Conversation context in recall (engram.memory.context): session neighbours lend score."""

from __future__ import annotations

import numpy as np
from engram.memory.api import RecallParams, RememberParams
from engram.memory.context import lift, neighbour_scores

from tests.unit.memory.conftest import ctx

# Distractors share no word with the question; the question turn shares its words; the answer
# turn, right after it, shares none: only its neighbour can bring it up.
CHAT = [
    "Ben: the weather was grey all week",
    "Ana: did you ever try the pottery class downtown?",
    "Ben: yes, on Sunday, and I loved every minute",
    "Ana: my brother fixed the bicycle chain",
    "Ben: we should plan the trip to the coast",
]
NOISE = [f"note {i}: errands groceries laundry invoices {i}" for i in range(30)]


def test_lift_raises_towards_better_context_and_never_lowers() -> None:
    own = np.array([0.2, 0.8, 0.5, 0.4])
    neighbour = np.array([0.8, 0.2, 0.0, 0.6])
    session = np.array([0.8, 0.8, 0.0, 0.8])
    lifted = lift(own, neighbour, session, 0.5, 0.25)
    assert lifted[0] == 0.5 + 0.25 * 0.3  # halfway to its neighbour, then a quarter of the way to the session's best
    assert lifted[1] == 0.8  # the best of its session: unchanged
    assert lifted[2] == 0.5  # no session: unchanged
    assert lifted[3] == 0.5 + 0.25 * 0.3
    assert np.all(lifted >= own) and np.all(lifted <= 1.0)
    assert np.array_equal(lift(own, neighbour, session, 0.0, 0.0), own)


def test_neighbour_scores_read_only_placed_episodes() -> None:
    seqs = [1, 2, 3, 9]
    scores = np.array([0.1, 0.7, 0.3, 0.9])
    near = {1: ("s", None, 2), 2: ("s", 1, 3), 3: ("s", 2, 4)}  # 4 was not scored; 9 has no session
    neighbour, session = neighbour_scores(seqs, scores, near)
    assert neighbour.tolist() == [0.7, 0.3, 0.7, 0.0]
    assert session.tolist() == [0.7, 0.7, 0.7, 0.0]


async def test_the_answer_after_a_matching_question_is_recalled_through_its_neighbour(make_memory) -> None:
    async with make_memory() as (memory, _):
        items = [{"text": t, "session": "chat-1", "time": 1_700_000_000 + i} for i, t in enumerate(CHAT)]
        items += [{"text": t, "time": 1_700_000_000} for t in NOISE]
        ids = (await memory.remember(ctx(), RememberParams.model_validate({"items": items}))).ids
        answer = ids[2]
        question = {"query": "Who went to the pottery class downtown?", "k": 2}
        hits = (await memory.recall(ctx(), RecallParams.model_validate(question))).hits
        assert hits[0].id == ids[1]
        found = {h.id: h for h in hits}
        assert answer in found  # lifted by the question turn just before it
        assert found[answer].parts.neighbour == hits[0].score  # the question turn's score
        off = {**question, "weights": {"neighbour": 0, "session": 0}}
        plain = (await memory.recall(ctx(), RecallParams.model_validate(off))).hits
        assert answer not in {h.id for h in plain}
        assert all(h.parts.neighbour == 0 and h.parts.session == 0 for h in plain)
        noise = [h for h in hits if h.id in ids[len(CHAT):]]
        assert all(h.parts.neighbour == 0 for h in noise)  # no session, no context
