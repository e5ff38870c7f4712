"""When the int8 variant may serve requests for the default embedder in its place."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest
from engram.bus import EventBus
from engram.inference.fast_variant import VariantMakeFailed, make_variant, remake_reason
from engram.inference.manifest import Manifest
from engram.inference.service import Inference, fast_variant_problem
from engram.inference.settings import InferenceSettings
from engram.observability.metrics import Metrics
from engram_bench.tiny_bert import create_tiny_bert

BASE = Manifest(name="mini", files={"model.onnx": "a" * 64}, inputs=[], outputs=[])
GOOD = {"cosine_min": 0.98, "full_batch1_per_s": 180.0, "variant_batch1_per_s": 470.0}


def variant(**changes: Any) -> Manifest:
    source: dict[str, Any] = {"kind": "quantize", "base": "mini", "base_sha256": "a" * 64}
    comparison = changes.pop("comparison", {})
    source["comparison"] = None if comparison is None else {**GOOD, **comparison}
    source.update(changes)
    return Manifest(name="mini-int8", files={"model.onnx": "b" * 64}, inputs=[], outputs=[], source=source)


def test_a_close_faster_variant_of_the_current_weights_may_serve() -> None:
    assert fast_variant_problem(BASE, variant(), 0.97) is None


def test_a_variant_too_far_from_the_full_model_may_not() -> None:
    problem = fast_variant_problem(BASE, variant(comparison={"cosine_min": 0.95}), 0.97)
    assert problem is not None and "0.95" in problem and "fast_embed_min_cosine" in problem
    assert fast_variant_problem(BASE, variant(comparison={"cosine_min": 0.95}), 0.9) is None


def test_a_variant_no_faster_here_may_not() -> None:
    problem = fast_variant_problem(BASE, variant(comparison={"variant_batch1_per_s": 175.0}), 0.97)
    assert problem is not None and "not faster" in problem


def test_a_variant_of_other_weights_or_another_model_may_not() -> None:
    assert "other weights" in (fast_variant_problem(BASE, variant(base_sha256="c" * 64), 0.97) or "")
    assert "not a quantized variant" in (fast_variant_problem(BASE, variant(base="other"), 0.97) or "")
    assert "not a quantized variant" in (fast_variant_problem(BASE, variant(kind="add"), 0.97) or "")


def test_a_variant_made_without_a_comparison_may_not() -> None:
    # Variants quantized before the comparison was recorded, or of models without a tokenizer.
    assert fast_variant_problem(BASE, variant(comparison=None), 0.97) is not None


def test_the_default_embedder_is_served_by_its_variant_only_where_settings_allow(tmp_path: Path) -> None:
    def route(**settings: Any) -> str:
        inference = Inference(InferenceSettings(default_embedder="tiny", **settings), tmp_path, EventBus(), Metrics())
        inference.registry.ensure()
        return inference._choose_route("tiny")

    assert route() == "tiny"  # no variant yet
    registry = Inference(InferenceSettings(), tmp_path, EventBus(), Metrics()).registry
    registry.ensure()
    base, _ = registry.import_bert("tiny", create_tiny_bert(tmp_path / "bert"))
    source = {"kind": "quantize", "base": "tiny", "base_sha256": base.files[base.model_file], "comparison": GOOD}
    registry.add_derived(base, "tiny-int8", registry.folder("tiny") / base.model_file, source=source)
    assert route() == "tiny-int8"
    assert route(fast_embed=False) == "tiny"
    assert route(fast_embed_min_cosine=0.99) == "tiny"


def made(**changes: Any) -> Manifest:
    return variant(made_by="engramd", onnxruntime="1.32.0", **changes)


def test_the_daemon_makes_a_missing_variant_and_remakes_only_its_own_stale_ones() -> None:
    assert remake_reason(BASE, None, "1.32.0") == "missing"
    assert remake_reason(BASE, made(), "1.32.0") is None
    assert "other weights" in (remake_reason(BASE, made(base_sha256="c" * 64), "1.32.0") or "")
    assert "ONNX Runtime 1.32.0, this is 1.33.0" in (remake_reason(BASE, made(), "1.33.0") or "")
    # The owner's (models.quantize) is theirs: kept whatever it was made from.
    assert remake_reason(BASE, variant(base_sha256="c" * 64), "1.33.0") is None


def test_a_child_that_cannot_make_the_variant_is_a_failure_that_says_why(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()

    async def attempt() -> None:
        await make_variant(tmp_path / "no-such-model", work)

    with pytest.raises(VariantMakeFailed) as caught:
        anyio.run(attempt)
    assert "exited with status 1" in str(caught.value) and "FileNotFoundError" in str(caught.value)
    assert not (work / "result.json").exists()
