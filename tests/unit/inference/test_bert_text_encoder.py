"""TextEncoder: sequence limits, padding, truncation and length batching."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from engram.errors import ConfigError
from engram.inference.bert_onnx import build_bert_onnx
from engram.inference.embedder import SentenceEmbedder
from engram.inference.text_encoder import (
    TextEncoder,
    length_buckets,
    resolve_max_seq_len,
)
from engram_bench.tiny_bert import TINY_CORPUS, create_tiny_bert
from tokenizers import Tokenizer

LONG_TEXT = " ".join(TINY_CORPUS * 20)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return create_tiny_bert(tmp_path_factory.mktemp("tiny") / "model", seed=3)


@pytest.fixture(scope="module")
def encoder(tiny_dir: Path) -> TextEncoder:
    return TextEncoder.from_model_dir(tiny_dir)


def _special_ids(tiny_dir: Path) -> tuple[int, int, int]:
    tokenizer = Tokenizer.from_file(str(tiny_dir / "tokenizer.json"))
    return tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]"), tokenizer.token_to_id("[PAD]")


# ---------------------------------------------------------------------------------------------
# Sequence limit
# ---------------------------------------------------------------------------------------------


def _write(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data))


def test_max_seq_len_precedence(tmp_path: Path) -> None:
    model_dir = create_tiny_bert(tmp_path / "m", max_position_embeddings=64, tokenizer_max_length=40)
    assert resolve_max_seq_len(model_dir) == 40  # tokenizer.json truncation
    _write(model_dir / "sentence_bert_config.json", {"max_seq_length": 50, "do_lower_case": False})
    assert resolve_max_seq_len(model_dir) == 50  # sentence-transformers overrides the tokenizer
    _write(model_dir / "sentence_bert_config.json", {"max_seq_length": 512})
    assert resolve_max_seq_len(model_dir) == 64  # never past the position table


def test_max_seq_len_fallbacks(tmp_path: Path) -> None:
    model_dir = create_tiny_bert(tmp_path / "m", max_position_embeddings=64, tokenizer_max_length=None)
    assert resolve_max_seq_len(model_dir) == 64
    _write(model_dir / "tokenizer_config.json", {"model_max_length": int(1e30)})  # HF's "unlimited"
    assert resolve_max_seq_len(model_dir) == 64
    _write(model_dir / "tokenizer_config.json", {"model_max_length": 32})
    assert resolve_max_seq_len(model_dir) == 32
    (model_dir / "config.json").unlink()
    with pytest.raises(ConfigError, match=r"config\.json"):
        resolve_max_seq_len(model_dir)


def test_explicit_limit_cannot_exceed_the_model_limit(tiny_dir: Path) -> None:
    assert TextEncoder.from_model_dir(tiny_dir, max_seq_len=16).max_seq_len == 16
    assert TextEncoder.from_model_dir(tiny_dir, max_seq_len=1000).max_seq_len == 48


# ---------------------------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------------------------


def test_encode_pads_to_the_batch_maximum(encoder: TextEncoder, tiny_dir: Path) -> None:
    cls_id, sep_id, pad_id = _special_ids(tiny_dir)
    batch = encoder.encode(["A man is eating food.", "hi", ""])
    assert len(batch) == 3
    for array in (batch.input_ids, batch.attention_mask, batch.token_type_ids):
        assert array.dtype == np.int64
        assert array.shape == (3, int(batch.lengths.max()))
    np.testing.assert_array_equal(batch.attention_mask.sum(axis=1), batch.lengths)
    assert batch.lengths[2] == 2  # an empty text is [CLS] [SEP]
    for row, length in enumerate(batch.lengths):
        assert batch.input_ids[row, 0] == cls_id
        assert batch.input_ids[row, length - 1] == sep_id
        assert (batch.input_ids[row, length:] == pad_id).all()
    assert not batch.token_type_ids.any()
    assert not batch.truncated.any()
    assert set(batch.feed()) == {"input_ids", "attention_mask", "token_type_ids"}


def test_fixed_padding_in_tokenizer_json_is_ignored(tmp_path: Path) -> None:
    # all-MiniLM-L6-v2's tokenizer.json pads everything to 128; that must not leak into batches.
    model_dir = create_tiny_bert(tmp_path / "m")
    tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    tokenizer.enable_padding(length=40, pad_id=0, pad_token="[PAD]")
    tokenizer.save(str(model_dir / "tokenizer.json"))
    batch = TextEncoder.from_model_dir(model_dir).encode(["hi", "a"])
    assert batch.input_ids.shape == (2, int(batch.lengths.max()))
    assert batch.input_ids.shape[1] < 10


def test_single_string_is_rejected(encoder: TextEncoder) -> None:
    with pytest.raises(TypeError):
        encoder.encode("not a list")  # type: ignore[arg-type]


def test_missing_tokenizer(tmp_path: Path) -> None:
    model_dir = create_tiny_bert(tmp_path / "m")
    (model_dir / "tokenizer.json").unlink()
    with pytest.raises(ConfigError, match=r"tokenizer\.json"):
        TextEncoder.from_model_dir(model_dir)


# ---------------------------------------------------------------------------------------------
# Truncation
# ---------------------------------------------------------------------------------------------


def test_long_text_is_truncated(encoder: TextEncoder, tiny_dir: Path) -> None:
    _, sep_id, _ = _special_ids(tiny_dir)
    batch = encoder.encode([LONG_TEXT, "short"])
    assert batch.input_ids.shape == (2, 48)
    assert batch.lengths.tolist()[0] == 48
    assert batch.truncated.tolist() == [True, False]
    assert batch.input_ids[0, -1] == sep_id  # the closing [SEP] survives truncation
    assert encoder.token_counts([LONG_TEXT]) == [48]


def test_long_text_embeds(tiny_dir: Path, tmp_path: Path) -> None:
    build_bert_onnx(tiny_dir, tmp_path / "m.onnx")
    embedder = SentenceEmbedder.load(tmp_path / "m.onnx", tiny_dir, threads=1)
    vectors = embedder.embed([LONG_TEXT, LONG_TEXT + " and more", "short"])
    assert np.isfinite(vectors).all()
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # Both long texts share their first 46 word pieces, so after truncation they are the same input.
    np.testing.assert_allclose(vectors[0], vectors[1], atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Batching by length
# ---------------------------------------------------------------------------------------------


def test_length_buckets() -> None:
    buckets = length_buckets([3, 9, 1, 9, 5], batch_size=2)
    assert [b.tolist() for b in buckets] == [[1, 3], [4, 0], [2]]
    assert length_buckets([], batch_size=4) == []
    with pytest.raises(ValueError):
        length_buckets([1], batch_size=0)


def test_batches_cover_every_text_once_with_tight_padding(encoder: TextEncoder) -> None:
    texts = [" ".join(TINY_CORPUS[: i % 5 + 1]) for i in range(11)] + ["", LONG_TEXT]
    counts = encoder.token_counts(texts)
    seen: list[int] = []
    widths: list[int] = []
    for indices, batch in encoder.batches(texts, batch_size=4):
        assert len(indices) == len(batch) <= 4
        assert batch.input_ids.shape[1] == max(counts[i] for i in indices)  # padded to its own longest
        np.testing.assert_array_equal(batch.lengths, [counts[i] for i in indices])
        seen.extend(indices.tolist())
        widths.append(batch.input_ids.shape[1])
    assert sorted(seen) == list(range(len(texts)))
    assert widths == sorted(widths, reverse=True)
