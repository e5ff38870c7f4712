"""Periods named in a query (engram.memory.periods) and recall's period part."""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pytest
from engram.memory.periods import AnyYear, Period, in_periods, named_periods

NOW = datetime(2024, 3, 14, 15, 0).timestamp()  # a Thursday


def local(*when: int) -> float:
    return datetime(*when).timestamp()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("What did Mel paint on October 13, 2023?", [Period(local(2023, 10, 12), local(2023, 10, 15))]),
        ("what happened on 13th of October 2023", [Period(local(2023, 10, 12), local(2023, 10, 15))]),
        ("notes from 2023-10-13", [Period(local(2023, 10, 12), local(2023, 10, 15))]),
        ("What did they paint in July 2023?", [Period(local(2023, 7, 1), local(2023, 8, 1))]),
        ("anything from Dec 2023", [Period(local(2023, 12, 1), local(2024, 1, 1))]),
        ("When did Melanie go camping in June?", [AnyYear(6)]),
        ("What did she do in May?", [AnyYear(5)]),
        ("the party on 4 July", [AnyYear(7, 4)]),
        ("How often did we meet in 2022?", [Period(local(2022, 1, 1), local(2023, 1, 1))]),
        ("What did I cook yesterday?", [Period(local(2024, 3, 13), local(2024, 3, 14))]),
        ("what did I do today", [Period(local(2024, 3, 14), local(2024, 3, 15))]),
        ("who called last week", [Period(local(2024, 3, 4), local(2024, 3, 11))]),
        ("plans this month", [Period(local(2024, 3, 1), local(2024, 4, 1))]),
        ("what changed last year", [Period(local(2023, 1, 1), local(2024, 1, 1))]),
        ("31 February 2023 never was", [Period(local(2023, 2, 1), local(2023, 3, 1))]),  # no such day: the month
        ("where was I three days ago", [Period(NOW - 3.5 * 86400, NOW - 2.5 * 86400)]),
    ],
)
def test_named_periods(text: str, expected: list[object]) -> None:
    assert named_periods(text, NOW) == expected


@pytest.mark.parametrize(
    "text",
    [
        "May I ask where Ada lives?",  # the verb, not the month
        "They may march in the parade",
        "Where does Caroline live?",
        "What is 2023 in binary?",  # a number, not "in 2023"
        "",
    ],
)
def test_texts_that_name_no_period(text: str) -> None:
    assert named_periods(text, NOW) == []


def test_in_periods_marks_the_times_inside() -> None:
    times = np.array([local(2022, 6, 10), local(2023, 6, 30, 23), local(2023, 7, 1), local(2023, 10, 14, 9)], np.float64)
    assert in_periods(times, [Period(local(2023, 7, 1), local(2023, 8, 1))]).tolist() == [0, 0, 1, 0]
    assert in_periods(times, [AnyYear(6)]).tolist() == [1, 1, 0, 0]  # June of every year the times span
    assert in_periods(times, [AnyYear(10, 13)]).tolist() == [0, 0, 0, 1]  # a day is taken a day wide on each side
    assert in_periods(times, []).tolist() == [0, 0, 0, 0]
    assert in_periods(np.array([], np.float64), [AnyYear(2, 29)]).tolist() == []


async def test_recall_prefers_the_episode_from_the_period_the_query_names(make_memory) -> None:
    from engram.memory.api import RecallParams, RememberParams

    from tests.unit.memory.conftest import ctx

    items = [{"text": "We painted a sunset over the lake together.", "time": local(2023, 5, 20, 12)},
             {"text": "We painted a sunrise over the hills together.", "time": local(2023, 7, 8, 12)}]
    async with make_memory() as (memory, _):
        await memory.remember(ctx(), RememberParams.model_validate({"items": items}))
        plain = (await memory.recall(ctx(), RecallParams.model_validate({"query": "what did we paint?", "k": 2}))).hits
        dated = (await memory.recall(ctx(), RecallParams.model_validate({"query": "what did we paint in July 2023?", "k": 2}))).hits
        off = (await memory.recall(ctx(), RecallParams.model_validate(
            {"query": "what did we paint in July 2023?", "k": 2, "weights": {"period": 0}}))).hits
    assert [h.parts.period for h in plain] == [0.0, 0.0]
    assert dated[0].text.startswith("We painted a sunrise") and dated[0].parts.period == 1.0
    assert sorted(h.parts.period for h in dated) == [0.0, 1.0]
    assert [h.parts.period for h in off] == [0.0, 0.0]
    assert dated[0].score > next(h.score for h in off if h.text == dated[0].text)


async def test_episodes_of_the_named_period_are_candidates_even_far_from_the_query(make_memory) -> None:
    from engram.memory.api import RecallParams, RememberParams

    from tests.unit.memory.conftest import ctx

    # Few candidates per recall, so that the nearest episodes and the keyword matches (all the
    # "happened" ones, from 2022) fill them; the July 2023 one shares no word with the query.
    items = [{"text": f"What happened in the market, number {i}?", "time": local(2022, 3, 1 + i, 12)} for i in range(10)]
    items.append({"text": "We painted a sunrise over the hills.", "time": local(2023, 7, 8, 12)})
    query = {"query": "what happened in July 2023?", "k": 3, "weights": {"period": 5}}
    from tests.unit.memory.conftest import HashEmbedder

    settings = {"recall": {"min_candidates": 2, "candidate_factor": 1}}
    async with make_memory(embedder=HashEmbedder(dim=256), **settings) as (memory, _):
        await memory.remember(ctx(), RememberParams.model_validate({"items": items}))
        hits = (await memory.recall(ctx(), RecallParams.model_validate(query))).hits
    assert hits[0].text == "We painted a sunrise over the hills." and hits[0].parts.period == 1.0
