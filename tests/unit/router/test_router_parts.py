"""Features, the pattern cache and the cascade's judgements, on crafted inputs."""

from __future__ import annotations

import time

import numpy as np
import pytest
from engram.router.cache import PatternCache
from engram.router.cascade import agreement, confidence, probabilities, score_output
from engram.router.features import (
    NoveltyWindow,
    sketch_tensor,
    sketch_text,
    tensor_features,
    text_features,
)
from engram.router.settings import RouterCacheSettings, RouterSettings
from pydantic import ValidationError


def test_text_depth_grows_with_clauses_and_questions():
    simple = text_features("Hello there.")
    deep = text_features(
        "If the cache is warm, which model should answer, and why would the slow one disagree when the input is novel? "
        "Explain, because the answer depends on the threshold; what happens if it is calibrated?"
    )
    assert deep["depth"] > simple["depth"] and deep["log_size"] > simple["log_size"]
    assert all(0.0 <= v <= 1.0 for v in deep.values())


def test_tensor_features_spread_and_entropy():
    flat = tensor_features(np.ones((1, 64), np.float32))
    noisy = tensor_features(np.random.default_rng(0).normal(size=(1, 64)).astype(np.float32))
    assert flat["entropy"] == 0.0 and flat["spread"] == 0.0
    assert noisy["entropy"] > 0.5 and noisy["spread"] > 0.3


def test_novelty_is_distance_to_the_nearest_recent_input():
    window = NoveltyWindow(4)
    a = sketch_tensor(np.arange(64, dtype=np.float32))
    assert window.novelty(a) == 1.0
    window.add(a)
    assert window.novelty(a) == pytest.approx(0.0, abs=1e-6)
    b = sketch_tensor(np.cos(np.arange(64, dtype=np.float32)))
    assert window.novelty(b) > 0.5
    assert window.novelty(sketch_text("the cat sat")) >= 0.0
    for _ in range(4):
        window.add(b)
    assert window.novelty(a) > 0.5  # a has left the bounded window


def test_confidence_from_probabilities_and_logits():
    probs = probabilities(np.array([[0.9, 0.05, 0.05]]))
    assert confidence(probs) == pytest.approx((0.9, 0.85))
    logits = probabilities(np.array([[4.0, 0.0, -1.0], [1.0, 1.0, 0.9]]))
    conf, margin = confidence(logits)
    assert conf < 0.4 and margin == pytest.approx(0.0, abs=1e-9)  # the least confident row counts
    assert confidence(logits, "margin")[0] == pytest.approx(0.0, abs=1e-9)


def test_agreement_and_score_output():
    fast = {"label": np.array([0]), "probabilities": np.array([[0.6, 0.4]], np.float32)}
    same = {"label": np.array([0]), "probabilities": np.array([[0.99, 0.01]], np.float32)}
    other = {"label": np.array([1]), "probabilities": np.array([[0.2, 0.8]], np.float32)}
    assert score_output(fast, None) == "probabilities"
    assert agreement("classify", fast, same, None) is True
    assert agreement("classify", fast, other, None) is False
    v = np.array([[1.0, 0.0]], np.float32)
    assert agreement("embed", {"vectors": v}, {"vectors": v}, None) is True
    assert agreement("embed", {"vectors": v}, {"vectors": np.ones((1, 3), np.float32)}, None) is None


def test_cache_exact_semantic_expiry_and_bound(conn):
    cache = PatternCache(conn, RouterCacheSettings(ttl=60, max_entries=2, semantic_threshold=0.9))
    v1 = np.array([1.0, 0.0], np.float32)
    cache.put("r", "k1", "d1", "model:a", {"outputs": {}, "labels": [1]}, v1)
    hit = cache.exact("r", "k1")
    assert hit is not None and hit.decision == "d1" and hit.answer["labels"] == [1]
    assert cache.exact("other-route", "k1") is None
    near = np.array([0.99, 0.141], np.float32)
    near /= np.linalg.norm(near)
    semantic = cache.semantic("r", near)
    assert semantic is not None and semantic.kind == "semantic" and semantic.similarity > 0.9
    assert cache.semantic("r", np.array([0.0, 1.0], np.float32)) is None
    assert cache.exact("r", "k1", now=time.time() + 120) is None  # expired
    cache.put("r", "k2", "d2", "model:a", {"outputs": {}}, None)
    cache.put("r", "k3", "d3", "model:a", {"outputs": {}}, None)
    assert cache.exact("r", "k1") is None and cache.exact("r", "k3") is not None  # oldest dropped
    assert cache.clear("r") == 2


def test_route_settings_are_checked():
    with pytest.raises(ValidationError, match="model:<name> or provider:<name>"):
        RouterSettings(routes=[{"name": "a", "fast": "x", "slow": "model:y"}])
    with pytest.raises(ValidationError, match="unique"):
        RouterSettings(routes=[{"name": "a", "fast": "model:x", "slow": "model:y"}] * 2)
    with pytest.raises(ValidationError, match="same target"):
        RouterSettings(routes=[{"name": "a", "fast": "model:x", "slow": "model:x"}])


def test_provider_score_is_read_when_reported():
    from engram.plugins.protocol import Completion
    from engram.providers.generation import checked_completion
    from engram.router.service import _text

    completion, score = checked_completion({"text": "hi", "score": 0.25})
    assert completion.text == "hi" and score == 0.25
    assert checked_completion(Completion(text="hi"))[1] is None
    assert checked_completion({"text": "hi", "score": 7})[1] is None  # outside [0, 1]: not a score
    assert checked_completion({"text": "hi", "score": True})[1] is None
    assert _text({"text": np.frombuffer("héllo".encode(), np.uint8)}) == "héllo" and _text({}) is None


def test_generate_confidence_is_the_provider_score():
    from engram.router.service import Router
    from engram.router.settings import RouteSettings

    route = RouteSettings(name="g", task="generate", fast="provider:small", slow="provider:big")
    conf, margin = Router._judge(None, route, {"score": np.array([0.3], np.float32)})  # type: ignore[arg-type]
    assert conf == pytest.approx(0.3) and margin is None
    assert Router._judge(None, route, {"text": np.zeros(2, np.uint8)}) == (None, None)  # type: ignore[arg-type]
