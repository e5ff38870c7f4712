"""Recall scores every candidate at once over arrays; that must rank and score exactly as the
per-candidate formula does."""

from __future__ import annotations

import numpy as np
from engram.memory.scoring import Weights, combine, recencies, recency


def test_array_scores_equal_the_per_candidate_ones() -> None:
    rng = np.random.default_rng(3)
    now, half_life = 1_000_000.0, 3600.0
    times = now - rng.uniform(-100, 20_000, size=64)  # a few in the future
    parts = {name: rng.uniform(0, 1, size=64) for name in ("vector", "keyword", "importance", "activation")}
    parts["recency"] = recencies(times, now, half_life)
    for weights in (Weights(0.6, 0.2, 0.1, 0.1, 0.3), Weights(0.0, 1.0, 0.0, 0.0, 0.0)):
        for with_keyword, with_activation in ((False, False), (True, False), (True, True)):
            scores = combine(parts, weights, with_keyword, with_activation)
            for i in range(64):
                one = {name: float(values[i]) for name, values in parts.items()}
                assert one["recency"] == recency(float(times[i]), now, half_life)
                assert float(scores[i]) == combine(one, weights, with_keyword, with_activation)


def test_bm25_weighs_rare_words_and_short_texts_up() -> None:
    from engram.memory.scoring import bm25

    # "otter" in 1 of 100 episodes (seq 1), "river" in 10 (seqs 2..11); all texts 40 long but seq 3
    scores = bm25([[(1, 40)], [(2, 40), (3, 20), *((s, 40) for s in range(4, 12))]], 100)
    assert scores[1] > scores[2]  # the rarer word weighs more
    assert scores[3] > scores[2]  # the same word in a shorter text
    both = bm25([[(1, 40)], [(1, 40), (2, 40)]], 100)
    assert both[1] > bm25([[(1, 40)]], 100)[1]  # each word matched adds
    assert bm25([], 100) == {}
    assert all(v > 0 for v in bm25([[(s, 10) for s in range(100)]], 100).values())  # a word everywhere still adds a little


def test_keyword_parts_are_relative_to_the_best_match_with_a_floor() -> None:
    from engram.memory.scoring import keyword_parts

    # A query whose matches run high: its best match gets full marks, the others their share.
    assert keyword_parts([(1, 20.0), (2, 5.0)], 8.0) == {1: 1.0, 2: 0.25}
    # A query matched only weakly (common words): nothing gets full marks.
    assert keyword_parts([(1, 2.0), (2, 1.0)], 8.0) == {1: 0.25, 2: 0.125}
    assert keyword_parts([(1, 0.0)], 8.0) == {}
    assert keyword_parts([], 8.0) == {}


async def test_keyword_scores_ignore_other_namespaces(make_memory) -> None:
    from engram.memory.api import RecallParams, RememberParams

    from tests.unit.memory.conftest import ctx

    def remember(texts: list[str], namespace: str) -> RememberParams:
        return RememberParams.model_validate({"items": [{"text": t} for t in texts], "namespace": namespace})

    query = RecallParams.model_validate({"query": "the heron by the weir", "k": 1, "namespace": "uid:1000"})
    async with make_memory() as (memory, _):
        await memory.remember(ctx(), remember(["a heron stood by the weir", "bread rises overnight", "the bus was late"],
                                              "uid:1000"))
        before = (await memory.recall(ctx(), query)).hits[0].parts.keyword
        await memory.remember(ctx(uid=0), remember([f"heron sighting number {i}" for i in range(40)], "uid:2000"))
        after = (await memory.recall(ctx(), query)).hits[0].parts.keyword
        assert before > 0 and after == before  # another namespace's herons do not make them common here


async def test_a_candidate_found_by_its_vector_keeps_its_keyword_part(make_memory) -> None:
    from engram.memory.api import RecallParams, RememberParams

    from tests.unit.memory.conftest import ctx

    # Two candidates per source: the two short "heron" texts by bm25, the long one by its vector.
    short = [{"text": f"a heron {word}", "vector": [0, 1]} for word in ("stood", "fished", "flew", "waited")]
    long = {"text": "by the old mill in the rain a grey heron stood for an hour watching the water", "vector": [1, 0]}
    query = RecallParams.model_validate({"query": "heron", "vector": [1, 0], "k": 2})
    async with make_memory(recall={"min_candidates": 1, "candidate_factor": 1}) as (memory, _):
        await memory.remember(ctx(), RememberParams.model_validate({"items": [*short, long]}))
        hits = (await memory.recall(ctx(), query)).hits
    found = next(h for h in hits if h.text == long["text"])
    assert found.parts.vector == 1.0
    assert 0 < found.parts.keyword < max(h.parts.keyword for h in hits)  # its own share of the best match
