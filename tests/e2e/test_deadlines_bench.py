"""``engram bench rpc --deadlines`` at a tiny size: both daemons measured, misses agree with the daemons' counters."""

from __future__ import annotations

import json

import pytest
from engram_bench.tiny_bert import create_tiny_bert

from tests.cli_inproc import run_cli

pytestmark = pytest.mark.e2e


def test_bench_rpc_deadlines_smoke(tmp_path):
    bert = create_tiny_bert(tmp_path / "tiny")
    # In-process: the bench's report and table are checked, not the process that prints them.
    args = ["bench", "rpc", "--deadlines", "--source", str(bert), "--requests", "32", "--clients", "4"]
    out = run_cli(*args, "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["benchmark"] == "rpc-deadlines" and report["model"] == "bench-embedder"
    assert report["requests"] == 32 and report["clients"] == 4 and report["calibration_p50_ms"] > 0
    assert 1 <= report["tight_ms"] < report["loose_ms"]
    assert [run["edf"] for run in report["runs"]] == [False, True]
    for run in report["runs"]:
        rows = {row["class"]: row for row in run["rows"]}
        assert rows["tight"]["requests"] + rows["loose"]["requests"] == rows["all"]["requests"] == 32
        assert rows["all"]["failed"] == 0
        # Every request carried a deadline, and every miss the clients saw is one the daemon counted.
        assert run["daemon_deadline_requests"] == 32
        assert rows["all"]["missed"] == sum(run["daemon_misses"].values())
        assert rows["all"]["p99_ms"] >= rows["all"]["p50_ms"] > 0 and len(run["load_average"]) == 3
    table = run_cli(*args[:-4], "--requests", "16", "--clients", "2", "--tight-ms", "5", "--loose-ms", "5000")
    assert table.returncode == 0, table.stderr
    assert "tight 5 ms" in table.stdout and "loose 5000 ms" in table.stdout and "load average" in table.stdout
    rows = [line.split()[:2] for line in table.stdout.splitlines() if line.startswith(("off ", "on "))]
    assert rows == [["off", "tight"], ["off", "loose"], ["off", "all"], ["on", "tight"], ["on", "loose"], ["on", "all"]]
