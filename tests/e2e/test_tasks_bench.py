"""``engram bench tasks`` at a tiny size: the same remember/get steps as direct calls and as one
task on a fresh daemon, in one run. Sanity of the figures only; no timing assertions."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.cli_inproc import run_cli

pytestmark = pytest.mark.e2e


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("bench", "tasks", *args)  # the report is checked, not the process


def test_bench_tasks_tiny():
    out = _bench("-n", "3", "--steps", "3", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["benchmark"] == "tasks" and report["runs"] == 3 and report["steps"] == 3
    rows = {row["target"]: row for row in report["rows"]}
    assert set(rows) == {"direct", "task"}
    for row in rows.values():
        # errors counts the tasks that did not end done: a step refused or a $from unresolved.
        assert row["errors"] == 0 and row["p99_ms_per_step"] >= row["p50_ms_per_step"] > 0 and row["runs_per_s"] > 0
    assert report["tasks_per_s"] == rows["task"]["runs_per_s"] and report["submit_p50_ms"] > 0
    overhead = rows["task"]["p50_ms_per_step"] - rows["direct"]["p50_ms_per_step"]
    assert report["overhead_ms_per_step"] == pytest.approx(overhead, abs=0.002)
    assert report["ratio"] > 0
    assert len(report["load_before"]) == len(report["load_after"]) == 3


def test_bench_tasks_prints_a_table_for_a_single_step():
    out = _bench("-n", "1", "--steps", "1")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert [line.split()[0] for line in lines[2:4]] == ["direct", "task"]
    assert "executor overhead" in out.stdout and "load average before" in out.stdout


def test_bench_tasks_refuses_more_steps_than_a_plan_may_have():
    out = _bench("--steps", "101")
    assert out.returncode == 2 and "--steps" in out.stderr


def test_bench_tasks_with_an_mcp_servers_tool():
    # A process: the bench starts the MCP server with its own stderr, which needs a real file.
    out = subprocess.run([sys.executable, "-m", "engram.cli", "bench", "tasks", "--mcp", "-n", "2", "--steps", "3", "--json"],
                         check=False, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["tool"] == "mcp:bench.echo" and report["steps"] == 3
    rows = {row["target"]: row for row in report["rows"]}
    # errors counts the tasks that did not end done: a step of the MCP tool that failed would.
    assert rows["task"]["errors"] == 0 and rows["direct"]["errors"] == 0
    assert rows["task"]["p50_ms_per_step"] > 0 and rows["direct"]["p50_ms_per_step"] > 0
