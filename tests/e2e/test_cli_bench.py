"""``engram bench cli``, ``engram bench frames`` and ``engram bench startup`` at a tiny size:
``engram --help`` and ``engram ping`` against ``python -c pass``, pings beside a large frame
(engramd against the echo server), and engramd's start until it answers a ping against
``python -c pass``, each in one run. Sanity of the figures only; no timing assertions."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e


def test_bench_cli_tiny():
    out = subprocess.run(
        [sys.executable, "-m", "engram.cli", "bench", "cli", "-n", "2", "--json"],
        check=False, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["benchmark"] == "cli"
    rows = {row["target"]: row for row in report["rows"]}
    assert set(rows) == {"baseline", "help", "ping"}
    for row in rows.values():
        assert row["runs"] == 2 and row["errors"] == 0 and row["p95_ms"] >= row["p50_ms"] > 0
    assert {r["target"] for r in report["ratios"]} == {"help", "ping"}
    assert all(r["p50_ratio"] > 0 and r["p95_ratio"] > 0 for r in report["ratios"])
    assert {v["target"] for v in report["verdict"]} == {"help", "ping"}


def test_bench_cli_prints_a_table_against_a_running_daemon(daemon):
    out = subprocess.run(
        [sys.executable, "-m", "engram.cli", "bench", "cli", "-n", "1", "--socket", str(daemon.socket)],
        check=False, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert [line.split()[0] for line in lines[1:4]] == ["python", "engram", "engram"]
    assert "ratio = command / python -c pass" in out.stdout and "target <= 300 ms" in out.stdout


def test_bench_frames_tiny():
    out = subprocess.run(
        [sys.executable, "-m", "engram.cli", "bench", "frames", "--size", "400000", "--shape", "texts", "--shape", "object", "--json"],
        check=False, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["benchmark"] == "frames" and report["size"] == 400_000
    assert {(row["target"], row["shape"]) for row in report["rows"]} == {
        (target, shape) for target in ("engramd", "baseline") for shape in ("texts", "object")
    }
    for row in report["rows"]:
        assert row["frame_bytes"] > 256 * 1024 and row["seconds"] > 0 and row["worst_ms"] >= row["p50_ms"]
    assert [r["shape"] for r in report["ratios"]] == ["texts", "object"] and all(r["worst_ratio"] > 0 for r in report["ratios"])


def test_bench_startup_tiny():
    out = subprocess.run(
        [sys.executable, "-m", "engram.cli", "bench", "startup", "-n", "1", "--json"],
        check=False, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["benchmark"] == "startup"
    rows = {row["target"]: row for row in report["rows"]}
    assert set(rows) == {"baseline", "engramd"}
    for row in rows.values():
        assert row["runs"] == 1 and row["p95_ms"] >= row["p50_ms"] > 0 and row["rss_p50_mb"] > 0
    # A daemon that answered a ping has imported far more than a bare interpreter.
    assert rows["engramd"]["rss_p50_mb"] > rows["baseline"]["rss_p50_mb"]
    assert len(report["load_before"]) == len(report["load_after"]) == 3
    assert report["verdict"]["target"] == "engramd" and report["verdict"]["limit_ms"] == 1500.0
