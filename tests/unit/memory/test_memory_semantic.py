"""Semantic memory: concepts, bi-temporal relations, contradictions, multi-hop queries, activation."""

from __future__ import annotations

import time

import anyio
import pytest
from engram.errors import InvalidParams, NotFound
from engram.memory.activation import spread
from engram.memory.api import (
    ForgetParams,
    GraphQueryParams,
    GraphUpsertParams,
    RecallParams,
    RememberParams,
)

from tests.unit.memory.conftest import ctx


def upsert(**body) -> GraphUpsertParams:
    return GraphUpsertParams.model_validate(body)


def query(concept: str, **params) -> GraphQueryParams:
    return GraphQueryParams.model_validate({"concept": concept, **params})


def rel(src: str, type_: str, dst: str, **extra) -> dict:
    return {"src": src, "type": type_, "dst": dst, **extra}


async def test_upsert_creates_concepts_and_is_idempotent(make_memory) -> None:
    async with make_memory() as (memory, events):
        first = await memory.graph_upsert(ctx(), upsert(
            concepts=[{"name": "Ada  Lovelace", "kind": "person"}],
            relations=[rel("ada lovelace", "wrote", "Notes on the Analytical Engine", weight=0.9)],
        ))
        assert first.concepts[0].name == "Ada Lovelace" and first.concepts[0].created and first.concepts[0].kind == "person"
        assert first.relations[0].status == "created" and first.relations[0].src == "Ada Lovelace"
        again = await memory.graph_upsert(ctx(), upsert(relations=[rel("ADA LOVELACE", "wrote", "notes on the analytical engine", weight=0.9)]))
        assert again.relations[0].status == "unchanged" and again.relations[0].id == first.relations[0].id
        updated = [e for e in events.events if e.topic == "memory.graph.updated"]
        assert len(updated) == 1 and len(updated[0].concepts) == 2 and updated[0].relations == [first.relations[0].id]


async def test_contradiction_retracts_instead_of_deleting(make_memory) -> None:
    async with make_memory(graph={"exclusive_types": ["lives_in"]}) as (memory, _):
        old = await memory.graph_upsert(ctx(), upsert(relations=[rel("ada", "lives_in", "paris")]))
        before = time.time()
        await anyio.sleep(0.01)
        new = await memory.graph_upsert(ctx(), upsert(relations=[rel("ada", "lives_in", "london")]))
        assert new.retracted == [old.relations[0].id]
        now = await memory.graph_query(ctx(), query("ada", direction="out"))
        assert [n.concept.name for n in now.neighbours] == ["london"]
        then = await memory.graph_query(ctx(), query("ada", direction="out", as_of=before))
        assert [n.concept.name for n in then.neighbours] == ["paris"]
        retracted = then.relations[0]
        assert retracted.retracted_at is not None and retracted.retracted_by == new.relations[0].id
        # Not exclusive: facts of the same type with other destinations coexist.
        await memory.graph_upsert(ctx(), upsert(relations=[rel("ada", "likes", "tea"), rel("ada", "likes", "maths")]))
        likes = await memory.graph_query(ctx(), query("ada", types=["likes"]))
        assert sorted(n.concept.name for n in likes.neighbours) == ["maths", "tea"]
        # An explicit exclusive flag works without configuration; a changed weight supersedes.
        await memory.graph_upsert(ctx(), upsert(relations=[rel("ada", "works_at", "a", exclusive=True)]))
        swap = await memory.graph_upsert(ctx(), upsert(relations=[rel("ada", "works_at", "b", exclusive=True)]))
        assert len(swap.retracted) == 1
        reweighed = await memory.graph_upsert(ctx(), upsert(relations=[rel("ada", "works_at", "b", exclusive=True, weight=0.5)]))
        assert reweighed.retracted == [swap.relations[0].id] and reweighed.relations[0].weight == 0.5


async def test_valid_time(make_memory) -> None:
    async with make_memory(graph={"exclusive_types": ["lives_in"]}) as (memory, _):
        await memory.graph_upsert(ctx(), upsert(relations=[
            rel("bob", "lives_in", "rome", valid_from="2010-01-01T00:00:00Z", valid_to="2015-01-01T00:00:00Z"),
            rel("bob", "lives_in", "oslo", valid_from="2015-01-01T00:00:00Z"),
        ]))
        # Disjoint validity is no contradiction: both stay believed.
        in_2012 = await memory.graph_query(ctx(), query("bob", valid_at="2012-06-01T00:00:00Z"))
        in_2020 = await memory.graph_query(ctx(), query("bob", valid_at="2020-06-01T00:00:00Z"))
        assert [n.concept.name for n in in_2012.neighbours] == ["rome"]
        assert [n.concept.name for n in in_2020.neighbours] == ["oslo"]
        with pytest.raises(InvalidParams) as err:
            await memory.graph_upsert(ctx(), upsert(relations=[rel("bob", "x", "y", valid_from=10, valid_to=5)]))
        assert (err.value.reason, err.value.data["field"]) == ("backwards_time_range", "relations.0.valid_to")


async def test_multi_hop_neighbours_and_paths(make_memory) -> None:
    async with make_memory() as (memory, _):
        await memory.graph_upsert(ctx(), upsert(relations=[
            rel("a", "r", "b", weight=0.5), rel("b", "r", "c", weight=0.5), rel("c", "r", "d"),
            rel("a", "r", "x", weight=0.9), rel("x", "r", "c", weight=0.9),
        ]))
        one = await memory.graph_query(ctx(), query("a"))
        assert sorted(n.concept.name for n in one.neighbours) == ["b", "x"]
        three = await memory.graph_query(ctx(), query("a", depth=3, direction="out", to="d"))
        depth = {n.concept.name: (n.depth, round(n.weight, 3)) for n in three.neighbours}
        assert depth == {"b": (1, 0.5), "x": (1, 0.9), "c": (2, 0.81), "d": (3, 0.81)}
        assert [p.concepts for p in three.paths] == [["a", "x", "c", "d"], ["a", "b", "c", "d"]]
        assert three.paths[0].weight == pytest.approx(0.81)
        backwards = await memory.graph_query(ctx(), query("d", depth=1, direction="in"))
        assert [n.concept.name for n in backwards.neighbours] == ["c"]
        with pytest.raises(NotFound):
            await memory.graph_query(ctx(), query("nobody"))
        with pytest.raises(InvalidParams) as err:
            await memory.graph_query(ctx(), query("a", depth=9))
        assert err.value.reason == "depth_too_large"
        with pytest.raises(NotFound):  # concepts are per namespace
            await memory.graph_query(ctx(uid=2000), query("a"))


async def test_unknown_source_episode_writes_nothing(make_memory) -> None:
    async with make_memory() as (memory, _):
        with pytest.raises(NotFound) as err:
            await memory.graph_upsert(ctx(), upsert(relations=[rel("a", "r", "b", sources=["ep_01ARZ3NDEKTSV4RRFFQ69G5FAV"])]))
        assert err.value.reason == "unknown_ids"
        with pytest.raises(NotFound):
            await memory.graph_query(ctx(), query("a"))


async def test_forgetting_episodes_removes_their_links(make_memory) -> None:
    async with make_memory() as (memory, _):
        ids = (await memory.remember(ctx(), RememberParams.model_validate({"items": [{"text": "one"}, {"text": "two"}]}))).ids
        await memory.graph_upsert(ctx(), upsert(
            concepts=[{"name": "topic", "episodes": ids}],
            relations=[rel("a", "r", "b", sources=[ids[0]]), rel("a", "r", "c", sources=ids), rel("a", "r", "d")],
        ))
        result = await memory.forget(ctx(), ForgetParams(ids=[ids[0]]))
        assert result.relations == 1  # a-r-b was learned only from the forgotten episode
        left = await memory.graph_query(ctx(), query("a"))
        assert sorted(n.concept.name for n in left.neighbours) == ["c", "d"]
        c = next(r for r in left.relations if r.dst == "c")
        assert c.sources == [ids[1]]


async def test_spreading_activation_ranks_linked_episodes(make_memory) -> None:
    async with make_memory() as (memory, _):
        ids = (await memory.remember(ctx(), RememberParams.model_validate({"items": [
            {"text": "we planted tomatoes and basil"},
            {"text": "the invoice from the plumber arrived"},
        ]}))).ids
        await memory.graph_upsert(ctx(), upsert(
            concepts=[{"name": "gardening", "episodes": [ids[0]]}],
            relations=[rel("vegetables", "part_of", "gardening")],
        ))
        plain = await memory.recall(ctx(), RecallParams(query="vegetables", k=2))
        assert all(h.parts.activation == 0 for h in plain.hits)
        active = await memory.recall(ctx(), RecallParams(query="vegetables", k=2, activation=True))
        assert active.hits[0].id == ids[0] and active.hits[0].parts.activation > 0.3
        assert next(h for h in active.hits if h.id == ids[1]).parts.activation == 0


def test_spread_keeps_the_strongest_activation() -> None:
    edges = [(1, 2, 1.0), (2, 3, 0.5), (1, 3, 0.1), (3, 4, 1.0)]

    def edges_of(frontier: set[int]) -> list[tuple[int, int, float]]:
        return [e for e in edges if e[0] in frontier or e[1] in frontier]

    act = spread({1: 1.0}, edges_of, depth=2, decay=0.5)
    assert act == pytest.approx({1: 1.0, 2: 0.5, 3: 0.125, 4: 0.025})  # 4: two hops, through the weak 1-3 edge
    assert spread({1: 1.0}, edges_of, depth=1, decay=0.5) == pytest.approx({1: 1.0, 2: 0.5, 3: 0.05})
    assert spread({1: 1.0}, edges_of, depth=0, decay=0.5) == {1: 1.0}


async def test_a_guessed_kind_names_new_concepts_and_never_changes_stored_ones(make_memory) -> None:
    from engram.memory.semantic import ConceptSpec

    async with make_memory() as (memory, _):
        await memory.graph_upsert(ctx(), upsert(concepts=[{"name": "kernel", "kind": "topic"}]))
        namespace = memory.namespaces.resolve(ctx().principal, "memory.graph.upsert", None)
        guesses = [ConceptSpec("Kernel", "organisation", kind_if_new=True), ConceptSpec("Lyon", "place", kind_if_new=True)]
        out = await anyio.to_thread.run_sync(lambda: memory.graph.upsert(namespace, guesses, [], time.time()))
        assert [(c["name"], c["kind"], c["created"]) for c in out["concepts"]] == [("kernel", "topic", False), ("Lyon", "place", True)]
        told = await memory.graph_upsert(ctx(), upsert(concepts=[{"name": "kernel", "kind": "software"}]))
        assert told.concepts[0].kind == "software"  # a kind a client states still changes it
