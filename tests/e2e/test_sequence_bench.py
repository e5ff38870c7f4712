"""``engram bench sequence`` at a tiny size: the pruned DTW search and brute force over the same
few hundred stored stretches, in one run. Sanity of the figures only; no timing assertions."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.cli_inproc import run_cli

pytestmark = pytest.mark.e2e


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("bench", "sequence", *args)  # the report is checked, not the process


def test_bench_sequence_tiny():
    out = _bench("--stored", "300", "--length", "6", "--window", "1", "--k", "3", "--dim", "16", "--session-length", "40",
                 "--repeats", "1", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["benchmark"] == "sequence" and report["stored"] == 300 and report["length"] == 6
    assert report["sessions"] == 9  # 35 stretches of 6 in a session of 40
    rows = {row["target"]: row for row in report["rows"]}
    assert set(rows) == {"brute_force", "pruned"}
    assert rows["brute_force"]["dtws"] == 300 and 3 <= rows["pruned"]["dtws"] <= 300
    assert all(row["seconds"] > 0 for row in rows.values()) and report["ratio"] > 0
    assert report["matched"] is True


def test_bench_sequence_table_and_bad_options():
    out = _bench("--stored", "50", "--length", "4", "--dim", "8", "--session-length", "20", "--repeats", "1")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0].split() == ["target", "seconds", "DTWs"]
    assert "answers matched: yes" in out.stdout and "50 stored stretches" in out.stdout
    refused = _bench("--length", "8", "--session-length", "4")
    assert refused.returncode != 0 and "--session-length" in refused.stderr
