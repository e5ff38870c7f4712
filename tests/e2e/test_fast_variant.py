"""The default embedder's int8 variant, made by the daemon itself after start (the fast route)."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from engram.wire.tensors import WireTensor, decode
from engram_bench.tiny_bert import create_tiny_bert

from tests.cli_inproc import run_cli

pytestmark = pytest.mark.e2e

MAKE = {"ENGRAM_INFERENCE__MAKE_FAST_VARIANT": "true"}
TINY = {"ENGRAM_INFERENCE__AUTO_IMPORT": "false", "ENGRAM_INFERENCE__DEFAULT_EMBEDDER": "tiny"}
TEXTS = ["A man is eating food.", "The meeting was moved to Thursday afternoon.", "What is the capital of Australia?"]


def settled(daemon: Any, timeout: float = 180.0) -> dict[str, Any]:
    """models.list once the variant is no longer pending or being made."""
    deadline = time.monotonic() + timeout
    while True:
        listed = daemon.call("models.list")
        if listed["fast_variant"]["state"] not in ("pending", "making"):
            return listed
        assert time.monotonic() < deadline, f"the variant was not made in {timeout} s:\n{daemon.logs()}"
        time.sleep(0.1)


def events(daemon: Any, name: str) -> list[dict[str, Any]]:
    return [r for r in daemon.records() if r.get("event") == name]


def vectors(result: dict[str, Any]) -> np.ndarray:
    return decode(WireTensor.model_validate(result["vectors"]), "vectors")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_default_embedder_gets_its_variant_in_the_background_and_keeps_it(make_daemon, state_dir):
    daemon = make_daemon(env=MAKE)
    # READY did not wait for it: the daemon was ready before the making began, let alone ended.
    assert daemon.call("models.list")["fast_variant"]["state"] in ("pending", "making")
    assert daemon.call("infer.embed", {"texts": TEXTS[:1]})["model"] == "all-minilm-l6-v2"
    listed = settled(daemon)
    ready, = events(daemon, "ready")
    made, = events(daemon, "made the default embedder's int8 variant")
    assert ready["timestamp"] <= made["timestamp"]
    comparison = made["comparison"]
    if comparison["variant_batch1_per_s"] <= comparison["full_batch1_per_s"]:
        # A CPU without a fast int8 dot product: the variant is made but the full model keeps serving.
        assert listed["default_route"] == "all-minilm-l6-v2" and "not faster" in listed["fast_variant"]["detail"]
        pytest.skip(f"the int8 variant is not faster on this CPU ({comparison})")
    variant = listed["fast_variant"]
    assert variant == {"name": "all-minilm-l6-v2-int8", "state": "ready", "serving": True, "detail": variant["detail"]}
    assert variant["detail"].startswith("made in") and "(missing)" in variant["detail"]
    assert listed["default_route"] == "all-minilm-l6-v2-int8" and comparison["cosine_min"] >= 0.97
    summary = {m["name"]: m for m in listed["models"]}["all-minilm-l6-v2-int8"]
    assert summary["source"] == "quantize"

    info = daemon.call("models.info", {"name": "all-minilm-l6-v2-int8"})
    base = daemon.call("models.info", {"name": "all-minilm-l6-v2"})
    source = info["manifest"]["source"]
    assert source["made_by"] == "engramd" and source["onnxruntime"] == ort.__version__
    assert source["base_sha256"] == base["manifest"]["files"]["model.onnx"]
    assert daemon.call("models.verify", {"name": "all-minilm-l6-v2-int8"})["ok"]
    assert 'engram_fast_variant_checks_total{outcome="made"} 1.0' in daemon.call("system.metrics")["text"]

    # Requests naming no model (infer.embed, memory's embeddings) run on it; naming the full model runs that.
    fast = daemon.call("infer.embed", {"texts": TEXTS})
    full = daemon.call("infer.embed", {"texts": TEXTS, "model": "all-minilm-l6-v2"})
    assert fast["model"] == "all-minilm-l6-v2-int8" and full["model"] == "all-minilm-l6-v2"
    cosines = np.sum(vectors(fast) * vectors(full), axis=1)
    assert cosines.min() >= 0.97 and not np.allclose(vectors(fast), vectors(full), atol=1e-4)
    daemon.call("memory.remember", {"items": [{"text": "The meeting was moved to Thursday afternoon."},
                                              {"text": "Canberra is the capital city of Australia."}]})
    hits = daemon.call("memory.recall", {"query": "When is the meeting?", "k": 1})["hits"]
    assert "Thursday" in hits[0]["text"]
    assert "served by its int8 variant" in daemon.call("system.health")["checks"]["embedder"]["detail"]

    # A restart keeps it: not made again.
    created = info["manifest"]["created_at"]
    digest = sha256(state_dir / "models" / "all-minilm-l6-v2-int8" / "model.onnx")
    daemon.stop()
    again = make_daemon(env=MAKE, state=state_dir)
    listed = settled(again)
    assert listed["fast_variant"] == {
        "name": "all-minilm-l6-v2-int8", "state": "ready", "serving": True, "detail": "kept from before",
    }
    assert not events(again, "making the default embedder's int8 variant")
    metrics = again.call("system.metrics")["text"]
    assert 'outcome="kept"} 1.0' in metrics and 'outcome="made"' not in metrics
    assert again.call("models.info", {"name": "all-minilm-l6-v2-int8"})["manifest"]["created_at"] == created
    assert sha256(state_dir / "models" / "all-minilm-l6-v2-int8" / "model.onnx") == digest
    assert again.call("infer.embed", {"texts": TEXTS[:1]})["model"] == "all-minilm-l6-v2-int8"
    listed = run_cli("models", "list", "--socket", str(again.socket))  # the printout is checked, not the process
    assert listed.returncode == 0, listed.stderr
    out = listed.stdout
    assert ("requests naming no model run on all-minilm-l6-v2-int8 "
            "(int8 variant all-minilm-l6-v2-int8 ready: kept from before)") in out

    # Its file changed on disk while the daemon runs: the next load refuses it and the full model serves.
    again.call("models.unload", {"name": "all-minilm-l6-v2-int8"})
    corrupt(state_dir / "models" / "all-minilm-l6-v2-int8" / "model.onnx")
    assert again.call("infer.embed", {"texts": TEXTS[:1]})["model"] == "all-minilm-l6-v2"
    listed = again.call("models.list")
    assert listed["default_route"] == "all-minilm-l6-v2" and listed["fast_variant"]["serving"] is False
    assert "model.onnx has SHA-256" in listed["fast_variant"]["detail"]
    assert events(again, "the int8 variant fails its integrity check; the full model serves")


@pytest.fixture
def tiny_state(make_daemon, state_dir, tmp_path) -> Path:
    """A state folder whose default embedder is a tiny BERT (quantized in a fraction of a second)."""
    first = make_daemon(env=TINY)
    first.call("models.import", {"name": "tiny", "path": str(create_tiny_bert(tmp_path / "tiny-bert"))})
    first.stop()
    return state_dir


def corrupt(path: Path) -> None:
    os.chmod(path, 0o600)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_corrupted_variant_of_its_own_is_made_again_at_the_next_start(make_daemon, tiny_state):
    daemon = make_daemon(env={**TINY, **MAKE}, state=tiny_state)
    assert settled(daemon)["fast_variant"]["state"] == "ready"
    assert daemon.call("models.info", {"name": "tiny-int8"})["manifest"]["source"]["made_by"] == "engramd"
    daemon.stop()
    model_file = tiny_state / "models" / "tiny-int8" / "model.onnx"
    made = sha256(model_file)
    corrupt(model_file)

    again = make_daemon(env={**TINY, **MAKE}, state=tiny_state)
    listed = settled(again)
    assert listed["fast_variant"]["state"] == "ready"
    making, = events(again, "making the default embedder's int8 variant")
    assert "do not match" in making["why"]
    assert any(r.get("event") == "model file does not match its manifest; refusing it" for r in again.records())
    assert sha256(model_file) == made  # made again, byte for byte the same graph
    assert again.call("models.verify", {"name": "tiny-int8"})["ok"]


def test_the_owners_variant_is_kept_and_a_corrupted_one_refused(make_daemon, tiny_state):
    daemon = make_daemon(env=TINY, state=tiny_state)
    daemon.call("models.quantize", {"name": "tiny", "fuse": "never"})
    daemon.stop()
    corrupt(tiny_state / "models" / "tiny-int8" / "model.onnx")
    again = make_daemon(env={**TINY, **MAKE}, state=tiny_state)
    listed = settled(again)
    assert listed["fast_variant"]["state"] == "ready" and listed["fast_variant"]["serving"] is False
    assert listed["default_route"] == "tiny"
    assert not events(again, "making the default embedder's int8 variant")
    assert "made_by" not in again.call("models.info", {"name": "tiny-int8"})["manifest"]["source"]
    assert again.call("infer.embed", {"texts": ["hello"]})["model"] == "tiny"


@pytest.mark.parametrize("setting", ["ENGRAM_INFERENCE__MAKE_FAST_VARIANT", "ENGRAM_INFERENCE__FAST_EMBED"])
def test_the_settings_turn_it_off(make_daemon, tiny_state, setting):
    daemon = make_daemon(env={**TINY, **MAKE, setting: "false"}, state=tiny_state)
    listed = daemon.call("models.list")
    assert listed["fast_variant"] == {"name": "tiny-int8", "state": "off", "serving": False, "detail": listed["fast_variant"]["detail"]}
    time.sleep(1.0)
    assert not (tiny_state / "models" / "tiny-int8").exists()
    assert not events(daemon, "making the default embedder's int8 variant")
    assert daemon.call("infer.embed", {"texts": ["hello"]})["model"] == "tiny"


def children_making(state_dir: Path) -> list[int]:
    """Pids of the child processes making a variant of a model under ``state_dir``."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"engram.inference.fast_variant" in cmdline and any(str(state_dir).encode() in arg for arg in cmdline):
            pids.append(int(proc.name))
    return pids


def test_a_stop_while_the_variant_is_made_ends_the_child_and_leaves_nothing_behind(make_daemon, state_dir):
    daemon = make_daemon(env=MAKE)
    deadline = time.monotonic() + 60
    while not (pids := children_making(state_dir)):
        assert time.monotonic() < deadline, "no child process making the variant"
        time.sleep(0.05)
    assert daemon.call("models.list")["fast_variant"]["state"] == "making"
    started = time.monotonic()
    assert daemon.stop() == 0
    assert time.monotonic() - started < 10
    assert not [pid for pid in pids if Path(f"/proc/{pid}").exists()]
    assert not (state_dir / "models" / "all-minilm-l6-v2-int8").exists()
    assert not [p.name for p in (state_dir / "models").iterdir() if p.name.startswith(".staging-")]
