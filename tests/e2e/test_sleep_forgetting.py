"""Forgetting and dream replay through a real engramd: sleep.run archives old, unimportant episodes
(out of recall, out of the index, across a restart), deletes them after the grace period with an
audit entry each, keeps the pinned ones, and rolls back when replayed queries lose what they found."""

from __future__ import annotations

import sqlite3
import time

import pytest
from engram.errors import NotFound

pytestmark = pytest.mark.e2e

DAY = 86_400.0
ENV = {
    "ENGRAM_INFERENCE__AUTO_IMPORT": "false",
    "ENGRAM_MEMORY__REPLAY_LOG__SAMPLE_RATE": "1.0",
    "ENGRAM_MEMORY__ACCESS_FLUSH_INTERVAL": "0.1",
    "ENGRAM_SLEEP__FORGETTING__GRACE": "0",
    # The replay log's episodes are what this test archives, to make dream replay roll back.
    "ENGRAM_SLEEP__FORGETTING__PROTECT_RECALLED": "false",
}


def wait_for_replay_log(daemon, count: int) -> None:
    """The access flusher writes sampled recalls every 0.1 s; wait until it has."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with sqlite3.connect(daemon.state_dir / "engram.db") as conn:
            if conn.execute("SELECT count(*) FROM memory_replay_queries").fetchone()[0] >= count:
                return
        time.sleep(0.05)
    raise AssertionError("sampled recalls were not written")


def test_forgetting_archives_deletes_audits_and_replay_rolls_back(make_daemon):
    daemon = make_daemon(env=ENV)
    old = time.time() - 40 * DAY
    with daemon.client() as client:
        ids = client.call("memory.remember", {"items": [
            {"text": "found by the queries", "vector": [1, 0, 0, 0], "importance": 0.1, "time": old},
            {"text": "never asked about", "vector": [0, 0, 1, 0], "importance": 0.1, "time": old},
            {"text": "pinned and old", "vector": [0, 0, 0, 1], "importance": 0.0, "time": old, "pinned": True},
            {"text": "recent", "vector": [0, 1, 0, 0], "importance": 0.1},
        ]})["ids"]
        found, unasked, pinned, recent = ids
        for _ in range(3):
            assert client.call("memory.recall", {"vector": [1, 0.1, 0, 0], "k": 1})["hits"][0]["id"] == found
        wait_for_replay_log(daemon, 3)

        # forgetting archives what the queries found: dream replay sees recall drop and rolls it back
        report = client.call("sleep.run", {"stages": ["forgetting", "replay"], "wait": True})["report"]
        stages = {s["name"]: s for s in report["stages"]}
        assert stages["forgetting"]["figures"]["archived"] == 2 and stages["forgetting"]["figures"]["kept_pinned"] == 1
        assert stages["replay"]["figures"]["worse"] is True and stages["replay"]["figures"]["queries"] == 3
        assert stages["forgetting"]["rolled_back"] is True
        episodes = client.call("memory.get", {"ids": ids})["episodes"]
        assert [e["archived_at"] for e in episodes] == [None] * 4
        assert client.call("memory.stats")["index"]["vectors"] == 4

        # forgetting alone: archived, out of recall and of the index
        report = client.call("sleep.run", {"stages": ["forgetting"], "wait": True})["report"]
        assert report["outcome"] == "completed" and report["stages"][0]["figures"]["archived"] == 2
        episodes = {e["id"]: e for e in client.call("memory.get", {"ids": ids})["episodes"]}
        assert episodes[found]["archived_at"] is not None and episodes[unasked]["archived_at"] is not None
        assert episodes[pinned]["archived_at"] is None and episodes[recent]["archived_at"] is None
        hits = client.call("memory.recall", {"vector": [1, 0, 0, 0], "k": 4})["hits"]
        assert {h["id"] for h in hits} == {pinned, recent}
        stats = client.call("memory.stats")
        assert (stats["episodes"], stats["archived"], stats["index"]["vectors"]) == (2, 2, 2)

    daemon.stop()
    daemon = make_daemon(env=ENV, state=daemon.state_dir)  # the start-up reconcile must not put them back
    with daemon.client() as client:
        stats = client.call("memory.stats")
        assert (stats["episodes"], stats["archived"], stats["index"]["vectors"]) == (2, 2, 2)
        hits = client.call("memory.recall", {"vector": [1, 0, 0, 0], "k": 4})["hits"]
        assert {h["id"] for h in hits} == {pinned, recent}

        # grace 0: the next run deletes them, each deletion audited (hashes, no text)
        report = client.call("sleep.run", {"stages": ["forgetting"], "wait": True})["report"]
        figures = report["stages"][0]["figures"]
        assert figures["deleted"] == 2 and figures["audit_seqs"]
        with pytest.raises(NotFound):
            client.call("memory.get", {"ids": [found]})
        entries = [client.call("audit.entry", {"seq": s})["entry"] for s in figures["audit_seqs"]]
        assert all(e["kind"] == "sleep.forget" for e in entries)
        assert sorted(i for e in entries for i in e["detail"]["ids"]) == sorted([found, unasked])
        assert "found by the queries" not in str(entries)
        stats = client.call("memory.stats")
        assert (stats["episodes"], stats["archived"], stats["pinned"]) == (2, 0, 1)
