"""The small pieces: ids, vectors, filters, full-text queries, namespaces, settings, embedders,
import files, and working-memory promotion through the part."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from engram.errors import InvalidParams, PolicyDenied
from engram.memory import ids as idgen
from engram.memory.api import (
    Filter,
    GetParams,
    RecallParams,
    WorkingClearParams,
    WorkingKeyParams,
    WorkingListParams,
    WorkingPutParams,
)
from engram.memory.embedding import Embedder, LocalEmbedder
from engram.memory.filters import compile_filter, fts_terms
from engram.memory.importexport import LineError, import_jsonl, read_batches
from engram.memory.namespaces import NamespacePolicy
from engram.memory.settings import MemorySettings
from engram.memory.vectors import unit_vector
from engram.principal import Principal
from pydantic import ValidationError

from tests.unit.memory.conftest import HashEmbedder, ctx


def test_ids() -> None:
    a, b = idgen.new_id(idgen.EPISODE, 1000.0), idgen.new_id(idgen.EPISODE, 1001.0)
    assert a < b and idgen.is_id(a, idgen.EPISODE) and not idgen.is_id(a, idgen.CONCEPT)
    assert idgen.derived_id(idgen.EPISODE, "ns", "x") == idgen.derived_id(idgen.EPISODE, "ns", "x")
    assert idgen.derived_id(idgen.EPISODE, "ns", "x") != idgen.derived_id(idgen.EPISODE, "ns", "y")
    assert idgen.is_id(idgen.derived_id(idgen.RELATION, "z"))
    assert not idgen.is_id("ep_" + "I" * 26) and not idgen.is_id("ep_short")


def test_unit_vector() -> None:
    v = unit_vector([3, 4], "v", 10)
    assert v.dtype == np.float32 and np.allclose(v, [0.6, 0.8])
    for value, reason in (([], "bad_vector"), ([0, 0], "bad_vector"), ([1, float("inf")], "bad_vector"), ([[1, 2]], "bad_vector"),
                          (list(range(1, 12)), "bad_vector")):
        with pytest.raises(InvalidParams) as err:
            unit_vector(value, "items.3.vector", 10)
        assert err.value.reason == reason and err.value.data["field"].startswith("items.3.vector")
    with pytest.raises(InvalidParams) as err:
        unit_vector([1, 2, 3], "vector", 10, dim=2)
    assert err.value.data == {"reason": "dimension_mismatch", "field": "vector", "expected": 2, "got": 3}


def test_filters_compile_to_parameterised_sql() -> None:
    assert compile_filter(None).empty and compile_filter(Filter()).empty
    flt = compile_filter(Filter(session="s'; DROP TABLE x; --", kinds=["chat"], tags=["a"], time_from=1, time_to=2))
    assert "DROP" not in flt.sql and flt.args == (1.0, 2.0, "s'; DROP TABLE x; --", "chat", "a")
    with pytest.raises(InvalidParams) as err:
        compile_filter(Filter(time_from="2021-01-01", time_to="2020-01-01"))
    assert err.value.reason == "backwards_time_range"
    with pytest.raises(ValidationError):
        Filter(time_from="yesterday")
    with pytest.raises(InvalidParams) as err:
        compile_filter(Filter(tags=["x" * 70]))
    assert err.value.data["field"] == "filter.tags.0"


def test_fts_terms_quote_every_word_and_leave_out_function_words() -> None:
    assert fts_terms('what "did" I eat? NEAR(a b) OR * x"y') == ['"eat"', '"near"', '"b"', '"x"', '"y"']
    assert fts_terms("When did Ana adopt the kitten?") == ['"ana"', '"adopt"', '"kitten"']
    assert fts_terms("The Who") == ['"the"', '"who"']  # nothing but function words: all of them
    assert fts_terms("?!  ") == []


def test_namespace_policy() -> None:
    policy = NamespacePolicy(owner_uid=500)
    alice, owner, root = Principal(uid=1000, gid=1000), Principal(uid=500, gid=500), Principal(uid=0, gid=0)
    recall = "memory.recall"
    assert policy.resolve(alice, recall, None) == "uid:1000" and policy.resolve(alice, recall, "uid:1000") == "uid:1000"
    with pytest.raises(PolicyDenied) as err:
        policy.resolve(alice, recall, "uid:500")
    assert err.value.reason == "namespace_denied"
    assert policy.resolve(owner, recall, "uid:1000") == "uid:1000" and policy.resolve(root, recall, "team") == "team"


def test_settings_are_validated() -> None:
    assert MemorySettings().recall.weights.vector == 0.6
    with pytest.raises(ValidationError):
        MemorySettings(recall={"weights": {"vector": 0, "recency": 0, "importance": 0}})
    with pytest.raises(ValidationError):
        MemorySettings(index={"hnsw_m": 2})
    with pytest.raises(ValidationError):
        MemorySettings(unknown=1)


async def test_local_embedder_over_a_real_onnx_model(tmp_path: Path) -> None:
    from engram.inference.bert_onnx import build_bert_onnx
    from engram.inference.embedder import SentenceEmbedder
    from engram_bench.tiny_bert import create_tiny_bert

    model_dir = create_tiny_bert(tmp_path / "tiny")
    build_bert_onnx(model_dir, tmp_path / "tiny.onnx")
    embedder = LocalEmbedder(SentenceEmbedder.load(tmp_path / "tiny.onnx", model_dir), name="tiny")
    assert isinstance(embedder, Embedder) and embedder.dim == 32
    rows = await embedder.embed(["A man is eating food.", "A monkey is playing drums."])
    assert rows.shape == (2, 32) and np.allclose(np.linalg.norm(rows, axis=1), 1, atol=1e-5)
    assert (await embedder.embed([])).shape == (0, 32)


def test_read_batches_names_bad_lines() -> None:
    good = b'{"text": "a"}\n\n{"text": "b"}\n{"text": "c"}\n'
    batches = list(read_batches(io.BytesIO(good), 2))
    assert [(n, [i["text"] for i in items]) for n, items, _ in batches] == [([1, 3], ["a", "b"]), ([4], ["c"])]
    assert sum(size for *_, size in batches) == len(good)
    with pytest.raises(LineError) as err:
        list(read_batches(io.BytesIO(b'{"text": "a"}\nnot json\n'), 10))
    assert err.value.line == 2
    with pytest.raises(LineError):
        list(read_batches(io.BytesIO(b"[1, 2]\n"), 10))


def test_import_points_item_errors_at_their_lines(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(json.dumps({"text": t}) for t in ["a", "b", "", "d"]) + "\n")

    def call(method: str, params: dict) -> dict:
        for i, item in enumerate(params["items"]):
            if not item["text"]:
                raise InvalidParams(f"items.{i}.text: empty text", field=f"items.{i}.text", reason="empty_text")
        return {"imported": len(params["items"]), "skipped": 0, "ids": []}

    with pytest.raises(LineError) as err:
        import_jsonl(path, call, batch=2)
    assert err.value.line == 3 and "text: empty text" in str(err.value)


async def test_working_memory_promotes_important_evictions(make_memory) -> None:
    async with make_memory(working={"max_items": 2, "promote_threshold": 0.7}) as (memory, events):
        await memory.working_put(ctx(), WorkingPutParams(session="s", key="keep", content="the launch code is blue", importance=0.9))
        await memory.working_put(ctx(), WorkingPutParams(session="s", key="meh", content="it is raining", importance=0.1))
        put = await memory.working_put(ctx(), WorkingPutParams(session="s", key="new", content="call mum", importance=0.95))
        assert [(e.key, e.promoted_id) for e in put.evicted] == [("meh", None)]  # unimportant: just dropped
        put = await memory.working_put(ctx(), WorkingPutParams(session="s", key="newer", content="buy bread", importance=0.5))
        evicted = put.evicted[0]
        assert evicted.reason == "capacity" and evicted.promoted_id is not None
        episode = (await memory.get(ctx(), GetParams(ids=[evicted.promoted_id]))).episodes[0]
        assert episode.kind == "working" and episode.session == "s" and episode.metadata["working_key"] == evicted.key
        assert [e.origin for e in events.events if e.topic == "memory.remembered"] == ["promotion"]
        listed = await memory.working_list(ctx(), WorkingListParams(session="s"))
        assert {i.key for i in listed.items} == {"newer", "keep", "new"} - {evicted.key}
        got = await memory.working_get(ctx(), WorkingKeyParams(session="s", key="newer"))
        assert got.item.content == "buy bread" and got.item.access_count == 1
        cleared = await memory.working_clear(ctx(), WorkingClearParams(session="s", promote=True))
        assert cleared.cleared == 2 and len(cleared.promoted) == 1
        recalled = await memory.recall(ctx(), RecallParams(query="launch code call mum"))
        assert {h.kind for h in recalled.hits} == {"working"}


async def test_working_memory_errors(make_memory) -> None:
    async with make_memory(max_text_bytes=64) as (memory, _):
        from engram.errors import NotFound

        with pytest.raises(NotFound) as err:
            await memory.working_get(ctx(), WorkingKeyParams(session="s", key="nope"))
        assert err.value.reason == "unknown_key"
        with pytest.raises(InvalidParams) as err:
            await memory.working_put(ctx(), WorkingPutParams(session="s", content="x" * 65))
        assert err.value.reason == "content_too_large"
        with pytest.raises(InvalidParams) as err:
            await memory.working_put(ctx(), WorkingPutParams(session="s", content=" "))
        assert err.value.reason == "empty_content"


async def test_promotion_without_an_embedder_drops_the_item_and_says_so(make_memory) -> None:
    async with make_memory(embedder=None, working={"max_items": 1}) as (memory, _):
        await memory.working_put(ctx(), WorkingPutParams(session="s", content="important", importance=1.0))
        put = await memory.working_put(ctx(), WorkingPutParams(session="s", content="next"))
        assert put.evicted[0].promoted_id is None
        assert memory.metrics.promotions.labels("failed")._value.get() == 1


def test_hash_embedder_is_an_embedder() -> None:
    assert isinstance(HashEmbedder(), Embedder)
