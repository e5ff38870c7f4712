"""The int8 variant of a model: transformer fusion with only the project's own dependencies."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from engram.inference.quantize import quantize_model
from engram.inference.registry import ModelRegistry
from engram_bench.tiny_bert import create_tiny_bert


def test_bert_fusion_works_without_sympy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # sympy is not a dependency: a None entry makes `import sympy` fail even where it is installed,
    # and the modules that import it are dropped so that they import it again under the block.
    monkeypatch.setitem(sys.modules, "sympy", None)
    for module in ("symbolic_shape_infer", "shape_infer_helper"):
        monkeypatch.delitem(sys.modules, module, raising=False)
    registry = ModelRegistry(tmp_path / "models")
    registry.ensure()
    manifest, _report = registry.import_bert("tiny", create_tiny_bert(tmp_path / "tiny"), cache_dir=tmp_path / "cache")
    work_dir = tmp_path / "work"
    work_dir.mkdir()

    outcome = quantize_model(registry.folder("tiny") / manifest.model_file, manifest, work_dir, fuse="always")

    assert outcome.notes == []  # a failed fusion leaves a note naming its error
    assert outcome.path.name == "int8-fused.onnx"
    # two layers: a SkipLayerNormalization after attention and after the feed-forward block of each
    assert outcome.fused_operators["SkipLayerNormalization"] == 4 and outcome.fused_operators["Attention"] == 2
