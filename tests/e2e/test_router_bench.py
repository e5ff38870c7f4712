"""``engram bench route`` at its tiny size: builds the digit classifiers, runs every mode through
a real daemon, prints the comparison and writes the accuracy-cost curve."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from engram.cli import main

from tests.cli_inproc import run_cli

pytestmark = pytest.mark.e2e

pytest.importorskip("sklearn")
pytest.importorskip("skl2onnx")
pytest.importorskip("matplotlib")
from engram_bench import route as route_bench  # noqa: E402 - needs the three above
from skl2onnx.common.data_types import FloatTensorType  # noqa: E402


def quick_models(folder: Path, x_train: np.ndarray, y_train: np.ndarray, step: Any = None, **_large: Any) -> tuple[Path, Path]:
    """Two logistic regressions in place of the bench's classifiers, which take seconds to train."""
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    paths = []
    for name, strength in (("digits-small", 0.01), ("digits-large", 1.0)):
        model = LogisticRegression(C=strength, max_iter=1000).fit(x_train, y_train)
        onx = to_onnx(model, initial_types=[("x", FloatTensorType([None, x_train.shape[1]]))],
                      options={id(model): {"zipmap": False}}, target_opset=17)
        paths.append(folder / f"{name}.onnx")
        paths[-1].write_bytes(onx.SerializeToString())
    return paths[0], paths[1]


def test_bench_route_shows_progress_on_stderr_except_under_json(tmp_path, monkeypatch):
    monkeypatch.setattr(route_bench, "build_models", quick_models)
    monkeypatch.setitem(route_bench.SIZES, "tiny", route_bench.Size(20, 25, (0.8,)))  # 25: route.calibrate wants 20 outcomes
    for name, value in (("TTY_COMPATIBLE", "1"), ("TTY_INTERACTIVE", "1"), ("TERM", "xterm")):
        monkeypatch.setenv(name, value)  # rich draws only on what it takes for a terminal
    bench = ["bench", "route", "--size", "tiny", "--plot", str(tmp_path / "curve.png")]

    human = CliRunner().invoke(main, bench)
    assert human.exit_code == 0, human.output
    assert "route.run: fast only" in human.stderr and "route.run: learned (auto)" in human.stderr
    assert "route.run:" not in human.stdout and "learned router vs slow only" in human.stdout

    quiet = CliRunner().invoke(main, [*bench, "--json"])
    assert quiet.exit_code == 0, quiet.output
    assert quiet.stderr == "" and json.loads(quiet.stdout)["size"] == "tiny"


@pytest.mark.filterwarnings("ignore:Stochastic Optimizer")  # the small MLP stops at its max_iter, as meant
def test_bench_route_tiny(tmp_path, monkeypatch):
    # The bench's own classifiers (the ensemble's every part, trained and exported to ONNX) at a
    # smaller slow path than tiny's: the same code runs, the training takes a fraction.
    tiny = route_bench.SIZES["tiny"]
    monkeypatch.setitem(route_bench.SIZES, "tiny", tiny._replace(mlp_layers=(16,), trees=8))
    plot = tmp_path / "curve.png"
    out = run_cli("bench", "route", "--size", "tiny", "--plot", str(plot), "--json")
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
