"""``engram bench http`` at a tiny size: /v1/embeddings on the gateway against infer.embed over the
socket, in one run on a fresh daemon. Sanity of the figures only; no timing assertions."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.cli_inproc import run_cli

pytestmark = pytest.mark.e2e


def test_bench_http_tiny():
    out = run_cli("bench", "http", "-n", "16", "-c", "1,2", "--json")  # the report is checked, not the process
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["benchmark"] == "http"
    rows = [(row["target"], row["concurrency"]) for row in report["rows"]]
    assert rows == [("socket", 1), ("http", 1), ("socket", 2), ("http", 2)]
    for row in report["rows"]:
        assert row["requests"] == 16 and row["errors"] == 0 and row["p99_ms"] >= row["p50_ms"] > 0
    assert [r["concurrency"] for r in report["ratios"]] == [1, 2]
    assert all(r["throughput_ratio"] > 0 for r in report["ratios"])
    assert len(report["load_average"]["before"]) == 3


def test_bench_http_needs_url_with_socket(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "engram.cli", "bench", "http", "--socket", str(tmp_path / "s.sock")],
        check=False, capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 2 and "--socket and --url go together" in out.stderr
