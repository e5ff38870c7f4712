"""``engram bench infer`` at a tiny size: both sides measured, ratios printed, nothing failed."""

from __future__ import annotations

import json

import pytest
from engram_bench.tiny_bert import create_tiny_bert

from tests.cli_inproc import run_cli

pytestmark = pytest.mark.e2e


def test_bench_infer_smoke(tmp_path):
    bert = create_tiny_bert(tmp_path / "tiny")
    # In-process: the bench's report and table are checked, not the process that prints them.
    args = ["bench", "infer", "--requests", "24", "--concurrency", "1,4", "--source", str(bert), "--threads", "1"]
    out = run_cli(*args, "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["benchmark"] == "infer" and report["model"] == "bench-embedder" and report["threads"] == 1
    rows = {(r["target"], r["concurrency"]): r for r in report["rows"]}
    assert set(rows) == {("engramd", 1), ("engramd", 4), ("baseline", 1)}
    for row in rows.values():
        assert row["requests"] == 24 and row["errors"] == 0 and row["throughput"] > 0 and row["p99_ms"] >= row["p50_ms"] > 0
    assert [r["concurrency"] for r in report["ratios"]] == [1, 4]
    assert all(r["throughput_ratio"] > 0 for r in report["ratios"])
    # The baseline is the fastest of the thread settings tried (spinning on and off at --threads).
    tried = report["baseline"]["tried"]
    assert {(t["intra_op"], t["spin"]) for t in tried} == {(1, False), (1, True)}
    assert rows[("baseline", 1)]["throughput"] == max(t["throughput"] for t in tried)
    assert all(c["cpu_ms"] is None or c["cpu_ms"] > 0 for c in report["cpu_ms_per_text"])
    assert all(r["texts_per_run"] is None or r["texts_per_run"] >= 1 for r in report["texts_per_run"])
    table = run_cli(*args)
    assert table.returncode == 0 and "baseline" in table.stdout and "ratio = engramd / best baseline" in table.stdout
    assert "<- best" in table.stdout and "cpu ms/text" in table.stdout and "texts/run" in table.stdout
