"""Beliefs that update: functional relations end the validity of what they supersede (kept for
valid_at in the past), corrections retract, late history is clipped, and recall lowers episodes
whose facts were all superseded, saying why."""

from __future__ import annotations

import json
import time

import anyio
from engram.memory.api import GraphQueryParams, GraphUpsertParams, RecallParams, RecallResult, RememberParams

from tests.unit.memory.conftest import ctx

Y2021, Y2022, Y2024, Y2025 = 1609459200.0, 1640995200.0, 1704067200.0, 1735689600.0


def upsert(*relations: dict) -> GraphUpsertParams:
    return GraphUpsertParams.model_validate({"relations": list(relations)})


def lives(city: str, since: float | None, **extra) -> dict:
    return {"src": "Ada", "type": "lives_in", "dst": city, **({"valid_from": since} if since is not None else {}), **extra}


async def cities(memory, **params) -> list[str]:
    found = await memory.graph_query(ctx(), GraphQueryParams.model_validate({"concept": "ada", "direction": "out", **params}))
    return sorted(n.concept.name for n in found.neighbours)


async def test_a_later_fact_ends_the_old_ones_validity_and_keeps_it(make_memory) -> None:
    async with make_memory() as (memory, events):  # lives_in is functional by default: no exclusive flag
        paris = (await memory.graph_upsert(ctx(), upsert(lives("Paris", Y2021)))).relations[0]
        before = time.time()
        await anyio.sleep(0.01)
        berlin = await memory.graph_upsert(ctx(), upsert(lives("Berlin", Y2024)))
        assert berlin.retracted == [paris.id] and len(berlin.superseded) == 1
        assert await cities(memory, valid_at=Y2022) == ["Paris"]
        assert await cities(memory, valid_at=time.time()) == ["Berlin"]
        assert await cities(memory) == ["Berlin", "Paris"]  # both are believed, at their own times
        assert await cities(memory, as_of=before) == ["Paris"]  # what engram believed before the move
        closed = (await memory.graph_query(ctx(), GraphQueryParams(concept="ada", direction="out", valid_at=Y2022))).relations[0]
        assert closed.id == berlin.superseded[0] and closed.valid_from == Y2021 and closed.valid_to == Y2024
        assert closed.superseded_by == berlin.relations[0].id and closed.retracted_at is None
        original = (await memory.graph_query(ctx(), GraphQueryParams(concept="ada", direction="out", as_of=before))).relations[0]
        assert original.id == paris.id and original.retracted_by == closed.id and original.valid_to is None
        updated = [e for e in events.events if e.topic == "memory.graph.updated"]
        assert set(updated[-1].relations) == {berlin.relations[0].id, closed.id} and updated[-1].retracted == [paris.id]
        again = await memory.graph_upsert(ctx(), upsert(lives("Berlin", Y2024)))
        assert again.relations[0].status == "unchanged" and again.retracted == [] and again.superseded == []


async def test_the_same_start_is_a_correction_and_retracts(make_memory) -> None:
    async with make_memory() as (memory, _):
        wrong = (await memory.graph_upsert(ctx(), upsert(lives("Paris", Y2021)))).relations[0]
        right = await memory.graph_upsert(ctx(), upsert(lives("Lyon", Y2021)))
        assert right.retracted == [wrong.id] and right.superseded == []
        assert await cities(memory, valid_at=Y2022) == ["Lyon"]
        assert await cities(memory) == ["Lyon"]


async def test_late_history_is_clipped_where_the_current_fact_begins(make_memory) -> None:
    async with make_memory() as (memory, _):
        berlin = (await memory.graph_upsert(ctx(), upsert(lives("Berlin", Y2024)))).relations[0]
        paris = await memory.graph_upsert(ctx(), upsert(lives("Paris", Y2021)))
        assert paris.retracted == [] and paris.relations[0].valid_to == Y2024 and paris.relations[0].superseded_by == berlin.id
        assert await cities(memory, valid_at=Y2022) == ["Paris"]
        assert await cities(memory, valid_at=Y2025) == ["Berlin"]
        again = await memory.graph_upsert(ctx(), upsert(lives("Paris", Y2021)))
        assert again.relations[0].status == "unchanged" and again.relations[0].id == paris.relations[0].id


async def test_functional_types_are_configurable_and_the_flag_still_works(make_memory) -> None:
    async with make_memory(graph={"functional_types": ["owns"]}) as (memory, _):
        await memory.graph_upsert(ctx(), upsert(lives("Paris", Y2021)))
        both = await memory.graph_upsert(ctx(), upsert(lives("Berlin", Y2024)))
        assert both.retracted == [] and await cities(memory, valid_at=time.time()) == ["Berlin", "Paris"]
        flagged = await memory.graph_upsert(ctx(), upsert(lives("Rome", Y2025, exclusive=True)))
        assert len(flagged.retracted) == 2 and await cities(memory, valid_at=time.time()) == ["Rome"]
        first = await memory.graph_upsert(ctx(), upsert({"src": "Ada", "type": "owns", "dst": "a bike", "valid_from": Y2021}))
        later = await memory.graph_upsert(ctx(), upsert({"src": "Ada", "type": "owns", "dst": "a car", "valid_from": Y2024}))
        assert later.retracted == [first.relations[0].id]
        unflagged = await memory.graph_upsert(ctx(), upsert({"src": "Ada", "type": "owns", "dst": "a boat", "valid_from": Y2025,
                                                                "exclusive": False}))
        assert unflagged.retracted == []


async def test_recall_lowers_episodes_of_superseded_facts_and_says_why(make_memory) -> None:
    async with make_memory() as (memory, _):
        texts = ["Ada lives in Paris.", "Ada moved to Berlin.", "Ada likes Paris in the spring."]
        ids = (await memory.remember(ctx(), RememberParams.model_validate(
            {"items": [{"text": t, "time": when} for t, when in zip(texts, (Y2021, Y2024, Y2021))]}))).ids
        question = RecallParams(query="Where does Ada live in Paris", k=3)
        before = {h.id: h.score for h in (await memory.recall(ctx(), question)).hits}
        await memory.graph_upsert(ctx(), upsert(lives("Paris", Y2021, sources=[ids[0]]), lives("Berlin", Y2024, sources=[ids[1]])))
        hits = {h.id: h for h in (await memory.recall(ctx(), question)).hits}
        paris = hits[ids[0]]
        assert paris.parts.superseded == 1.0 and abs(paris.score - before[ids[0]] * 0.5) < 1e-9
        assert [(f.src, f.type, f.dst, f.valid_to) for f in paris.superseded] == [("Ada", "lives_in", "Paris", Y2024)]
        for current in (ids[1], ids[2]):  # the new fact's source, and an episode with no facts: untouched
            assert hits[current].parts.superseded == 0.0 and hits[current].superseded == []
            assert abs(hits[current].score - before[current]) < 1e-9
        off = await memory.recall(ctx(), RecallParams.model_validate({"query": question.query, "k": 3, "weights": {"superseded": 0}}))
        assert {h.id: h.score for h in off.hits}[ids[0]] == before[ids[0]]
        # An episode that is also the source of a current fact is not lowered.
        await memory.graph_upsert(ctx(), upsert({"src": "Ada", "type": "likes", "dst": "Paris", "sources": [ids[0]]}))
        again = {h.id: h for h in (await memory.recall(ctx(), question)).hits}
        assert again[ids[0]].parts.superseded == 0.0 and again[ids[0]].superseded == []


async def test_the_recall_answer_is_the_result_as_its_model_would_dump(make_memory) -> None:
    # memory.recall sends the hits as built, without the model: the same JSON, key for key and in order.
    async with make_memory() as (memory, _):
        items = [
            {"text": "Ada lives in Paris.", "time": Y2021, "session": "s1", "tags": ["home", "ada"], "source": "chat",
             "metadata": {"mood": "calm", "n": 2}, "importance": 0.75},
            {"text": "Ada moved to Berlin.", "time": Y2024, "session": "s1", "pinned": True},
            {"text": "Ada likes Paris in the spring.", "time": Y2021},
        ]
        ids = (await memory.remember(ctx(), RememberParams.model_validate({"items": items}))).ids
        await memory.graph_upsert(ctx(), upsert(lives("Paris", Y2021, sources=[ids[0]]), lives("Berlin", Y2024, sources=[ids[1]])))
        answer = await memory.recall_rpc(ctx(), RecallParams(query="Where does Ada live in Paris", k=3))
        assert len(answer["hits"]) == 3 and any(h["superseded"] for h in answer["hits"])
        dumped = RecallResult.model_validate(answer).model_dump(mode="json")
        assert json.dumps(answer) == json.dumps(dumped)
