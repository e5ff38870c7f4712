"""Knowledge extraction over the real socket: remembered text becomes concepts and relations with
the episode as their source, in the background; a daemon killed with extraction pending catches up
when it starts again, and extracts nothing twice."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from engram.errors import NotFound

pytestmark = pytest.mark.e2e

DIM = 16
ENV = {
    "ENGRAM_INFERENCE__AUTO_IMPORT": "false",
    "ENGRAM_MEMORY__EXTRACTION__ENABLED": "true",
    "ENGRAM_MEMORY__EXTRACTION__START_DELAY": "0",
}
OFF = {**ENV, "ENGRAM_MEMORY__EXTRACTION__ENABLED": "false"}


def items(*texts: str) -> list[dict[str, Any]]:
    rng = np.random.default_rng(len(texts))
    return [{"text": t, "vector": rng.normal(size=DIM).tolist()} for t in texts]


def relations_of(client, concept: str, timeout: float = 60.0, want: int = 1) -> dict[str, Any]:
    """memory.graph.query, polled until the concept has ``want`` believed relations."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            found = client.call("memory.graph.query", {"concept": concept, "depth": 2})
            if sum(r["retracted_at"] is None for r in found["relations"]) >= want:
                return found
        except NotFound:
            pass
        assert time.monotonic() < deadline, f"no relations of {concept!r} after {timeout} s"
        time.sleep(0.1)


def test_remembered_text_becomes_concepts_and_relations(make_daemon):
    daemon = make_daemon(env=ENV)
    with daemon.client(timeout=30) as client:
        (episode,) = client.call("memory.remember", {"items": items("Carol works at Acme Corp in Lyon.")})["ids"]
        carol = relations_of(client, "Carol", want=2)
        facts = {(r["src"], r["type"], r["dst"]): r for r in carol["relations"]}
        assert set(facts) == {("Carol", "works_at", "Acme Corp"), ("Acme Corp", "located_in", "Lyon")}
        assert all(r["sources"] == [episode] for r in facts.values())
        assert carol["concept"]["kind"] == "person"
        assert {n["concept"]["name"]: n["concept"]["kind"] for n in carol["neighbours"]} == {
            "Acme Corp": "organisation", "Lyon": "place"}
        # The watermark commits just after the graph: the health says lag 0 a moment later.
        deadline = time.monotonic() + 30
        while "extraction lag 0 episodes" not in client.call("system.health")["checks"]["memory"]["detail"]:
            assert time.monotonic() < deadline, client.call("system.health")["checks"]["memory"]
            time.sleep(0.05)


def test_pending_extraction_survives_kill_and_runs_once(make_daemon):
    texts = ["Ada lives in Paris.", "Maria was born in Madrid.", "Tom founded Nimbus.", "Jim likes jazz."]
    daemon = make_daemon(env=OFF)  # extraction off: what is remembered waits in the episodes table
    with daemon.client(timeout=30) as client:
        ids = client.call("memory.remember", {"items": items(*texts[:2])})["ids"]
    daemon.proc.kill()
    daemon.proc.wait(timeout=10)
    daemon = make_daemon(env=ENV, state=daemon.state_dir)  # catches up at start
    with daemon.client(timeout=30) as client:
        ids += client.call("memory.remember", {"items": items(*texts[2:])})["ids"]
        daemon.proc.kill()  # in the middle of extracting, or just before
    daemon.proc.wait(timeout=10)
    daemon = make_daemon(env=ENV, state=daemon.state_dir)
    with daemon.client(timeout=30) as client:
        expected = {"Ada": ("lives_in", "Paris"), "Maria": ("born_in", "Madrid"), "Tom": ("founded", "Nimbus"),
                    "Jim": ("likes", "jazz")}
        for (subject, (type_, dst)), episode in zip(expected.items(), ids, strict=True):
            found = relations_of(client, subject)
            believed = [r for r in found["relations"] if r["retracted_at"] is None and r["src"] == subject]
            assert [(r["type"], r["dst"], r["sources"]) for r in believed] == [(type_, dst, [episode])]


EXTRACT_SITE = Path(__file__).resolve().parents[1] / "fixtures" / "extract_site"


def llm_env(tmp_path: Path, provider: str) -> tuple[dict[str, str], dict[str, Path]]:
    logs = {"reader": tmp_path / "reader.jsonl", "cloud": tmp_path / "cloud.jsonl"}
    return {
        **ENV,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(EXTRACT_SITE), os.environ.get("PYTHONPATH")])),
        "ENGRAM_PLUGINS__PROVIDERS": json.dumps({name: {"log": str(path)} for name, path in logs.items()}),
        "ENGRAM_MEMORY__EXTRACTION__LLM_PROVIDER": provider,
        "ENGRAM_MEMORY__EXTRACTION__QUIET": "0",
    }, logs


def calls(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_a_local_llm_adds_what_the_local_extractor_missed(make_daemon, tmp_path):
    env, logs = llm_env(tmp_path, "reader")
    daemon = make_daemon(env=env)
    with daemon.client(timeout=30) as client:
        ids = client.call("memory.remember", {"items": items(
            "Ada's favourite colour is teal.", "Carol works at Acme Corp in Lyon.", "Gibberish that no model reads.")})["ids"]
        ada = relations_of(client, "Ada")
        assert [(r["type"], r["dst"], r["sources"]) for r in ada["relations"]] == [("favourite_colour", "teal", [ids[0]])]
        carol = relations_of(client, "Carol", want=2)  # the local facts and the one the LLM added
        assert {(r["src"], r["type"], r["dst"]) for r in carol["relations"]} == {
            ("Carol", "works_at", "Acme Corp"), ("Carol", "based_in", "Lyon")}
        acme = client.call("memory.graph.query", {"concept": "Acme Corp", "direction": "out"})
        assert [(r["type"], r["dst"]) for r in acme["relations"]] == [("located_in", "Lyon")]
        sent = calls(logs["reader"])
        assert len(sent) == 3 and "- Carol | works_at | Acme Corp" in sent[1]["prompt"] and '"relations"' in sent[1]["system"]
    assert not calls(logs["cloud"])


def test_the_policy_keeps_episode_text_from_a_remote_llm(make_daemon, tmp_path):
    env, logs = llm_env(tmp_path, "cloud")
    daemon = make_daemon(env=env)
    with daemon.client(timeout=30) as client:
        (episode,) = client.call("memory.remember", {"items": items("Carol works at Acme Corp in Lyon.")})["ids"]
        carol = relations_of(client, "Carol", want=2)  # the local extractor's facts, written all the same
        assert {(r["src"], r["type"], r["dst"]) for r in carol["relations"]} == {
            ("Carol", "works_at", "Acme Corp"), ("Acme Corp", "located_in", "Lyon")}
    assert not calls(logs["cloud"])  # nothing left the daemon
    assert any(r.get("event") == "LLM extraction skipped for this batch" for r in daemon.records())
