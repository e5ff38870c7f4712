"""``engram bench sleep`` at a tiny size: seeds a fresh daemon, measures recall while idle and
while a consolidation runs, and reports index size, forgetting and recall quality before/after.
Sanity of the figures only; no timing assertions."""

from __future__ import annotations

import json

import pytest

from tests.cli_inproc import run_cli

pytestmark = pytest.mark.e2e


def test_bench_sleep_tiny():
    # In-process: the bench's report is checked, not the process that prints it.
    out = run_cli("bench", "sleep", "--episodes", "300", "--queries", "50", "--replay-queries", "20", "--rate", "25",
                  "--timeout", "240", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["benchmark"] == "sleep" and report["episodes"] == 300 and report["seeding_seconds"] > 0

    idle, during = report["idle"], report["during"]
    assert idle["requests"] == 50 and idle["errors"] == 0 and idle["p99_ms"] >= idle["p50_ms"] > 0
    assert during["errors"] == 0 and during["requests"] >= 0
    if during["requests"]:
        assert during["p99_ms"] >= during["p50_ms"] > 0
        assert report["p99_ratio"] > 0 and report["verdict"] in ("PASS", "MISS")
    else:
        assert report["p99_ratio"] is None and report["verdict"] == "n/a"
    assert report["target_p99_ratio"] == 1.5

    run = report["consolidation"]
    assert run["outcome"] == "completed" and run["seconds"] >= 0 and run["preemptions"] >= 0
    stages = {s["name"] for s in run["stages"]}
    assert {"importance", "forgetting", "compaction"} <= stages

    before, after = report["episodes_before"], report["episodes_after"]
    assert before["rows"] == 300 and before["live"] + before["archived"] == 300
    assert after["rows"] == before["rows"] - report["deleted"] and report["deleted"] >= 0 and report["archived"] >= 0
    assert after["pinned_live"] == before["pinned"]  # pinned episodes are never forgotten

    index = report["index"]
    assert index["before"]["vectors"] == before["live"] and index["before"]["file_bytes"] > 0
    assert index["after"]["vectors"] == after["live"] and index["after"]["file_bytes"] > 0

    quality = report["quality"]
    assert quality["k"] == 10 and quality["queries"] == 20
    assert 0.9 <= quality["recall_before"] <= 1.0 and 0.9 <= quality["recall_after"] <= 1.0  # exact index at this size

    # the topic check: sleep's clustering of the labelled note sets with the default embedder
    topics = report["topics"]
    if topics is None:
        assert any("no topic check" in note for note in report["notes"])
    else:
        assert [t["set"] for t in topics] == ["notes", "held-out"]
        assert [(t["notes"], t["labels"]) for t in topics] == [(50, 5), (32, 4)]
        for t in topics:
            assert t["outcome"] == "completed" and t["purity"] >= t["target"] == 0.9
            assert sum(topic["size"] for topic in t["by_topic"]) + t["unclustered"] == t["notes"]
