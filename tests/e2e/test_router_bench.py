"""``engram bench route`` at its tiny size: builds the digit classifiers, runs every mode through
a real daemon, prints the comparison and writes the accuracy-cost curve."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e

pytest.importorskip("sklearn")
pytest.importorskip("skl2onnx")
pytest.importorskip("matplotlib")


def test_bench_route_tiny(tmp_path):
    plot = tmp_path / "curve.png"
    out = subprocess.run(
        [sys.executable, "-m", "engram.cli", "bench", "route", "--size", "tiny", "--plot", str(plot), "--json"],
        check=False, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    modes = [row["mode"] for row in report["rows"]]
    assert modes[:3] == ["fast only", "slow only", "cascade @ 0.8"] and modes[-1] == "learned (auto)"
    rows = {row["mode"]: row for row in report["rows"]}
    assert rows["fast only"]["slow_share"] == 0.0 and rows["slow only"]["slow_share"] == 1.0
    for row in report["rows"]:
        assert row["requests"] == 60 and 0.5 < row["accuracy"] <= 1.0 and row["throughput"] > 0
    assert report["calibration"]["samples"] >= 60
    assert set(report["verdict"]) >= {"learned_vs_slow_accuracy", "learned_slow_share", "target_met"}
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
