"""The LoCoMo reader and metric behind ``engram bench recall``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engram_bench.locomo import evidence_ids, load, recall_at, session_time
from engram_bench.recall import RecallReport

DEV = Path(__file__).resolve().parents[3].parent / "shared" / "eval" / "locomo" / "locomo-dev.json"


def test_malformed_evidence_ids_are_split_and_normalised():
    assert evidence_ids(["D8:6; D9:17", "D:11:26", "D30:05", "D1:3"]) == {"D8:6", "D9:17", "D11:26", "D30:5", "D1:3"}
    assert evidence_ids([]) == frozenset()


def test_recall_at_k_is_the_share_of_evidence_in_the_top_k():
    found = ["D1:1", "D1:2", "D1:3", "D2:1"]
    assert recall_at(found, frozenset({"D1:2", "D2:1"}), 2) == 0.5
    assert recall_at(found, frozenset({"D1:2", "D2:1"}), 4) == 1.0
    assert recall_at(found, frozenset({"D9:9"}), 4) == 0.0
    assert recall_at(found, frozenset(), 1) == 1.0  # no evidence counts as found, as in the paper


def test_session_dates_read_as_utc():
    assert session_time("1:56 pm on 8 May, 2023") == 1683554160.0
    assert session_time("10:04 am on  19 January, 2024") == 1705658640.0


def test_a_file_that_is_not_locomo_says_so(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"conversation": {}}]))
    with pytest.raises(ValueError, match="not a LoCoMo file"):
        load(bad)


@pytest.mark.skipif(not DEV.is_file(), reason="the LoCoMo development half is not beside the repository")
def test_the_development_half_reads_whole():
    conversations = load(DEV)
    assert len(conversations) == 5
    assert sum(len(c.questions) for c in conversations) == 999
    for c in conversations:
        ids = {t.dia_id for t in c.turns}
        assert len(ids) == len(c.turns)
        assert all(t.time > 1.6e9 for t in c.turns)
        missing = [e for q in c.questions for e in q.evidence if e not in ids]
        assert len(missing) <= 1  # one evidence id upstream names a turn that does not exist


def test_the_report_table_shows_both_targets_per_category_and_the_ratio():
    report = RecallReport("tiny.json", conversations=1, turns=6, questions=2)
    report.scores["engram"].add(4, ["D1:1", "D1:2"], frozenset({"D1:1"}))
    report.scores["engram"].add(2, ["D1:2", "D1:1"], frozenset({"D1:1"}))
    report.scores["baseline"].add(4, ["D1:2", "D1:1"], frozenset({"D1:1"}))
    report.scores["baseline"].add(2, ["D1:3", "D1:4"], frozenset({"D1:1"}))
    report.latency_ms = {"engram": {"p50": 1.0, "p99": 2.0}, "baseline": {"p50": 0.5, "p99": 1.0}}
    rows = {r["category"]: r for r in report.as_dict()["recall"]}
    assert set(rows) == {"all", "single-hop", "temporal"}
    assert rows["all"]["engram"]["r@1"] == 0.5 and rows["all"]["baseline"]["r@1"] == 0.0
    assert rows["all"]["engram"]["r@5"] == 1.0 and rows["all"]["baseline"]["r@5"] == 0.5
    table = report.table()
    assert "2 questions" in table and "ratio r@10" in table and "2.00" in table  # 1.0 / 0.5 at 10
    assert "recall latency engram" in table
