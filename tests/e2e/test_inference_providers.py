"""GPU honesty: an execution provider of inference.providers that this ONNX Runtime lacks is a
degraded inference part in system.health, with the reason, and models.info shows the provider
each session really runs on and what it fell back from. (This machine's ONNX Runtime is the CPU
build, so CUDA is the accelerator that is configured and absent.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from engram_bench.toy_models import linear_model

pytestmark = pytest.mark.e2e

CUDA_FIRST = {
    "ENGRAM_INFERENCE__AUTO_IMPORT": "false",
    "ENGRAM_INFERENCE__PROVIDERS": json.dumps(["CUDAExecutionProvider", "CPUExecutionProvider"]),
}


def test_a_configured_accelerator_that_is_missing_degrades_health_and_shows_in_models_info(make_daemon, tmp_path: Path) -> None:
    daemon = make_daemon(env=CUDA_FIRST)
    with daemon.client() as client:
        health = client.call("system.health")
        check = health["checks"]["execution_providers"]
        assert health["status"] == "degraded" and check["ok"] is False
        assert check["detail"].startswith("CUDAExecutionProvider unavailable: this ONNX Runtime")
        assert "(CPU build) does not include it" in check["detail"] and "onnxruntime-gpu" in check["detail"]

        events = client.subscribe(["model.loaded"])
        client.call("models.add", {"name": "linear", "path": str(linear_model(tmp_path / "linear.onnx"))})
        before = client.call("models.info", {"name": "linear"})  # not loaded: what it would run without
        assert [f["provider"] for f in before["provider_fallbacks"]] == ["CUDAExecutionProvider"]
        info = client.call("models.load", {"name": "linear"})
        assert info["provider"] == "CPUExecutionProvider" and info["providers"] == ["CPUExecutionProvider"]
        (fallback,) = info["provider_fallbacks"]
        assert fallback["provider"] == "CUDAExecutionProvider" and "does not include it" in fallback["reason"]
        assert client.models.info(name="linear").provider_fallbacks[0].reason == fallback["reason"]  # the typed SDK too
        loaded = events.receive(timeout=10)["data"]
        assert loaded["provider"] == "CPUExecutionProvider" and loaded["fallbacks"] == ["CUDAExecutionProvider"]
    shown = subprocess.run(
        [sys.executable, "-m", "engram.cli", "models", "info", "linear", "--socket", str(daemon.socket)],
        capture_output=True, text=True, timeout=60, check=True, env=os.environ,
    ).stdout
    assert f"without     CUDAExecutionProvider: {fallback['reason']}" in shown
    warnings = [e for e in daemon.records() if e.get("event") == "execution provider unavailable; the model runs on the next one"]
    assert warnings and warnings[0]["provider"] == "CUDAExecutionProvider" and warnings[0]["runs_on"] == "CPUExecutionProvider"


def test_cpu_only_configuration_is_healthy_and_has_no_fallbacks(make_daemon, tmp_path: Path) -> None:
    daemon = make_daemon(env={"ENGRAM_INFERENCE__AUTO_IMPORT": "false"})
    with daemon.client() as client:
        check = client.call("system.health")["checks"]["execution_providers"]
        assert check == {"ok": True, "detail": "CPUExecutionProvider (inference.providers names no accelerator)"}
        client.call("models.add", {"name": "linear", "path": str(linear_model(tmp_path / "linear.onnx"))})
        assert client.call("models.load", {"name": "linear"})["provider_fallbacks"] == []
