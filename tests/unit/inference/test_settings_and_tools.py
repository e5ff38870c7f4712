"""The inference settings section, the package pin check, and conformance helpers."""

from __future__ import annotations

import numpy as np
import pytest
from engram.config import load_settings
from engram.errors import ConfigError
from engram.inference import check_package
from engram.inference.manifest import check_model_name
from engram.inference.settings import InferenceSettings
from engram.signing import generate_signer
from engram_bench.conformance import BINDING, Case, Outcome, compare, judge, model_name, select_subset


def test_defaults_and_environment(monkeypatch, tmp_path):
    settings = load_settings(None, state_dir=tmp_path)
    assert settings.inference.default_embedder == "all-minilm-l6-v2"
    assert settings.inference.providers == ["CPUExecutionProvider"]
    _, vkey = generate_signer("models")
    monkeypatch.setenv("ENGRAM_INFERENCE__SESSIONS__MAX_ITEMS", "2")
    monkeypatch.setenv("ENGRAM_INFERENCE__PROVIDERS", '["CUDAExecutionProvider", "CPUExecutionProvider"]')
    monkeypatch.setenv("ENGRAM_INFERENCE__TRUSTED_KEYS", f'["{vkey}"]')
    settings = load_settings(None, state_dir=tmp_path)
    assert settings.inference.sessions.max_items == 2
    assert settings.inference.providers[0] == "CUDAExecutionProvider"
    assert settings.inference.trusted_keys == [vkey]


@pytest.mark.parametrize(
    ("env", "value", "key"),
    [
        ("ENGRAM_INFERENCE__TRUSTED_KEYS", '["not-a-key"]', "inference.trusted_keys"),
        ("ENGRAM_INFERENCE__PROVIDERS", '["CUDA"]', "inference.providers"),
        ("ENGRAM_INFERENCE__GRAPH_OPTIMIZATION", "max", "inference.graph_optimization"),
        ("ENGRAM_INFERENCE__BATCHING__MAX_BATCH", "0", "inference.batching.max_batch"),
    ],
)
def test_bad_values_are_configuration_errors(monkeypatch, tmp_path, env, value, key):
    monkeypatch.setenv(env, value)
    with pytest.raises(ConfigError) as caught:
        load_settings(None, state_dir=tmp_path)
    assert any(problem_key == key for problem_key, _ in caught.value.problems)


def test_unknown_keys_are_refused():
    with pytest.raises(ValueError):
        InferenceSettings.model_validate({"sessions": {"max_itemz": 3}})


def test_package_pin_check(monkeypatch, capsys):
    from engram.inference.bert_onnx import find_minilm_package_dir

    if find_minilm_package_dir() is None:
        assert check_package.main() == 1
        assert "not installed" in capsys.readouterr().err
        return
    assert check_package.main() == 0
    monkeypatch.setattr(check_package, "MINILM_SAFETENSORS_SHA256", "0" * 64)
    assert check_package.main() == 1
    err = capsys.readouterr().err
    assert "but engram pins " + "0" * 64 in err and "--force-reinstall --no-deps" in err


def test_conformance_helpers(tmp_path):
    assert compare(np.array([1.0, np.nan]), np.array([1.0005, np.nan]), 1e-3, 1e-7) is None
    assert "values differ" in compare(np.array([1.0]), np.array([1.1]), 1e-3, 1e-7)
    assert "dtype" in compare(np.array([1.0], np.float32), np.array([1.0], np.float64), 1e-3, 1e-7)
    assert "shape" in compare(np.zeros((2,)), np.zeros((1, 2)), 1e-3, 1e-7)
    assert compare(np.array(["a"], dtype=object), np.array(["a"], dtype=object), 0, 0) is None
    assert compare([np.zeros(2)], [np.zeros(2)], 1e-3, 1e-7) is None and compare(None, None, 0, 0) is None
    long = "test_nllloss_NCd1d2d3_sum_weight_high_ii_expanded_and_then_some_more_words"
    for name in ("test_abs", long, "test_cast_FLOAT_to_BFLOAT16"):
        assert check_model_name(model_name(name)) is None
    assert model_name("test_abs") == "test_abs" and model_name(long) != model_name(long + "x")
    cases = [Case(f"c{i:03d}", tmp_path) for i in range(100)]
    subset = select_subset(cases, 10)
    assert [c.name for c in subset] == [f"c{i:03d}" for i in range(0, 100, 10)]
    assert select_subset(cases, 500) == cases


def test_conformance_fails_on_disagreements_with_onnxruntime_only(tmp_path):
    case = Case("test_x", tmp_path)
    ok = Outcome(True)
    off = [("y", np.array([1.0, 2.0], np.float32))]
    other = [("y", np.array([1.0, 3.0], np.float32))]

    def mismatch(outputs):
        return Outcome(False, "mismatch", "y: values differ", outputs)

    load_failure = Outcome(False, "op_not_implemented", "no kernel")
    # Agreement: nothing to report.
    assert judge(case, ok, ok) is None
    assert judge(case, load_failure, Outcome(False, "runtime_error", "no kernel")) is None
    assert judge(case, mismatch(off), mismatch([("y", off[0][1].copy())])) is None  # ONNX Runtime's own miss
    # Known causes outside the daemon: reported, not disagreements.
    wire = judge(case, ok, Outcome(False, "not_expressible", "a sequence"))
    assert wire is not None and not wire.disagreement and wire.reason.startswith("not_expressible")
    binding = judge(case, Outcome(False, BINDING, "no OrtValue for strings"), ok)
    assert binding is not None and not binding.disagreement and "daemon matches onnx's reference" in binding.reason
    # Disagreements: the daemon parts from the same ONNX Runtime run directly.
    for direct, daemon in [
        (ok, Outcome(False, "infer.run:run_failed", "boom")),
        (ok, mismatch(off)),
        (load_failure, ok),
        (mismatch(off), ok),
        (mismatch(off), mismatch(other)),
        (mismatch(off), Outcome(False, "infer.run:internal", "boom")),
        (load_failure, mismatch(off)),
        (Outcome(False, BINDING, "no OrtValue for strings"), mismatch(off)),
    ]:
        difference = judge(case, direct, daemon)
        assert difference is not None and difference.disagreement, (direct, daemon)
