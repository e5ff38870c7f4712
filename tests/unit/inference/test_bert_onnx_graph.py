"""The ONNX graph built from a tiny random BERT against an independent numpy forward pass.

The reference below is written from the Hugging Face BertModel + sentence-transformers (mean
pooling, Normalize) definitions, in float64, and shares no code with engram.inference.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from engram.inference import bert_onnx
from engram.inference.bert_onnx import (
    BertConfig,
    ModelImportError,
    WeightsHashMismatch,
    build_bert_onnx,
    find_minilm_package_dir,
)
from engram.inference.embedder import SentenceEmbedder, cpu_session
from engram.inference.text_encoder import TextEncoder
from engram_bench.tiny_bert import create_tiny_bert
from safetensors.numpy import load_file, save_file

# ---------------------------------------------------------------------------------------------
# Reference implementation
# ---------------------------------------------------------------------------------------------

WORD_EMBEDDINGS = "embeddings.word_embeddings.weight"


def load_reference_model(model_dir: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(config, float64 weights with any name prefix removed)."""
    config = json.loads((model_dir / "config.json").read_text())
    raw = load_file(str(model_dir / "model.safetensors"))
    (anchor,) = [k for k in raw if k.endswith(WORD_EMBEDDINGS)]
    prefix = anchor[: -len(WORD_EMBEDDINGS)]
    weights = {k[len(prefix):]: v.astype(np.float64) for k, v in raw.items() if k.startswith(prefix)}
    return config, weights


def _layer_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def _gelu(x: np.ndarray) -> np.ndarray:
    erf = np.vectorize(math.erf, otypes=[np.float64])
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def _softmax(x: np.ndarray) -> np.ndarray:
    shifted = np.exp(x - x.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def reference_forward(
    config: dict[str, Any],
    w: dict[str, np.ndarray],
    input_ids: np.ndarray,
    attention_mask: np.ndarray,
    token_type_ids: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """(sentence embeddings [B, H], last hidden state [B, S, H])."""
    eps = config["layer_norm_eps"]
    heads = config["num_attention_heads"]
    batch, seq = input_ids.shape
    hidden = config["hidden_size"]
    head = hidden // heads

    def linear(x: np.ndarray, name: str) -> np.ndarray:
        return x @ w[f"{name}.weight"].T + w[f"{name}.bias"]

    def norm(x: np.ndarray, name: str) -> np.ndarray:
        return _layer_norm(x, w[f"{name}.weight"], w[f"{name}.bias"], eps)

    x = (
        w["embeddings.word_embeddings.weight"][input_ids]
        + w["embeddings.position_embeddings.weight"][np.arange(seq)][None, :, :]
        + w["embeddings.token_type_embeddings.weight"][token_type_ids]
    )
    x = norm(x, "embeddings.LayerNorm")
    blocked = np.where(attention_mask[:, None, None, :] == 1, 0.0, -np.inf)  # padding gets no weight

    def split(t: np.ndarray) -> np.ndarray:
        return t.reshape(batch, seq, heads, head).transpose(0, 2, 1, 3)

    for n in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{n}"
        q = split(linear(x, f"{p}.attention.self.query"))
        k = split(linear(x, f"{p}.attention.self.key"))
        v = split(linear(x, f"{p}.attention.self.value"))
        probs = _softmax(q @ k.transpose(0, 1, 3, 2) / math.sqrt(head) + blocked)
        context = (probs @ v).transpose(0, 2, 1, 3).reshape(batch, seq, hidden)
        x = norm(linear(context, f"{p}.attention.output.dense") + x, f"{p}.attention.output.LayerNorm")
        inner = _gelu(linear(x, f"{p}.intermediate.dense"))
        x = norm(linear(inner, f"{p}.output.dense") + x, f"{p}.output.LayerNorm")

    m = attention_mask[:, :, None].astype(np.float64)
    mean = (x * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
    sentence = mean / np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12)
    return sentence, x


# ---------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------

TEXTS = [
    "A man is eating food.",
    "hi",
    "Someone in a gorilla costume is playing a set of drums, loudly and for a long time.",
    "",
    "Unknown wörds like zyzzyva get split into pieces.",
    "The quick brown fox jumps over the lazy dog 0123456789 times!",
]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return create_tiny_bert(tmp_path_factory.mktemp("tiny") / "model", seed=7)


@pytest.fixture(scope="module")
def tiny_onnx(tiny_dir: Path) -> Path:
    out = tiny_dir.parent / "tiny.onnx"
    build_bert_onnx(tiny_dir, out, token_embeddings=True)
    return out


@pytest.fixture(scope="module")
def session(tiny_onnx: Path) -> ort.InferenceSession:
    return cpu_session(tiny_onnx, threads=1)


@pytest.fixture(scope="module")
def reference(tiny_dir: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    return load_reference_model(tiny_dir)


def run_graph(session: ort.InferenceSession, feed: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    sentence, tokens = session.run(["sentence_embedding", "token_embeddings"], feed)
    return sentence, tokens


# ---------------------------------------------------------------------------------------------
# Numerical agreement
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [TEXTS[:1], TEXTS[:3], TEXTS, TEXTS[::-1][:4]])
def test_graph_matches_numpy_reference(session, reference, tiny_dir: Path, batch: list[str]) -> None:
    encoded = TextEncoder.from_model_dir(tiny_dir).encode(batch)
    assert len(batch) == 1 or (encoded.attention_mask == 0).any(), "the batch should contain padding"
    sentence, tokens = run_graph(session, encoded.feed())
    expected_sentence, expected_tokens = reference_forward(*reference, **encoded.feed())

    np.testing.assert_allclose(sentence, expected_sentence, atol=1e-5, rtol=0)
    real = encoded.attention_mask.astype(bool)  # padded positions' hidden states are meaningless
    np.testing.assert_allclose(tokens[real], expected_tokens[real], atol=2e-5, rtol=0)


def test_token_type_ids_reach_the_graph(session, reference) -> None:
    rng = np.random.default_rng(3)
    ids = rng.integers(5, reference[0]["vocab_size"], size=(3, 9), dtype=np.int64)
    mask = np.ones_like(ids)
    mask[1, 6:] = 0
    types = (np.arange(9)[None, :] >= 4).astype(np.int64).repeat(3, axis=0)
    feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    sentence, _ = run_graph(session, feed)
    np.testing.assert_allclose(sentence, reference_forward(*reference, **feed)[0], atol=1e-5, rtol=0)
    other, _ = run_graph(session, {**feed, "token_type_ids": np.zeros_like(types)})
    assert np.abs(other - sentence).max() > 1e-3


def test_padding_does_not_change_a_row(session, tiny_dir: Path) -> None:
    encoder = TextEncoder.from_model_dir(tiny_dir)
    together, _ = run_graph(session, encoder.encode(TEXTS).feed())
    for row, text in enumerate(TEXTS):
        alone, _ = run_graph(session, encoder.encode([text]).feed())
        np.testing.assert_allclose(alone[0], together[row], atol=1e-5, rtol=0)


def test_rows_are_unit_norm(session, tiny_dir: Path) -> None:
    sentence, _ = run_graph(session, TextEncoder.from_model_dir(tiny_dir).encode(TEXTS).feed())
    assert sentence.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(sentence, axis=1), 1.0, atol=1e-5)


def test_embedder_restores_input_order(tiny_onnx: Path, tiny_dir: Path, session) -> None:
    embedder = SentenceEmbedder.load(tiny_onnx, tiny_dir, threads=1)
    assert embedder.dim == 32
    batched = embedder.embed(TEXTS, batch_size=2)
    one_batch, _ = run_graph(session, embedder.encoder.encode(TEXTS).feed())
    np.testing.assert_allclose(batched, one_batch, atol=1e-5, rtol=0)
    assert embedder.embed([]).shape == (0, 32)


# ---------------------------------------------------------------------------------------------
# Graph interface and build report
# ---------------------------------------------------------------------------------------------


def test_graph_interface(tiny_onnx: Path) -> None:
    model = onnx.load(str(tiny_onnx))
    assert model.opset_import[0].version == bert_onnx.OPSET
    inputs = {i.name: i.type.tensor_type for i in model.graph.input}
    assert list(inputs) == ["input_ids", "attention_mask", "token_type_ids"]
    for tensor_type in inputs.values():
        assert tensor_type.elem_type == onnx.TensorProto.INT64
        assert [d.dim_param for d in tensor_type.shape.dim] == ["batch", "sequence"]
    (sentence, tokens) = model.graph.output
    assert sentence.name == "sentence_embedding"
    assert sentence.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert [d.dim_param or d.dim_value for d in sentence.type.tensor_type.shape.dim] == ["batch", 32]
    assert tokens.name == "token_embeddings"
    # The whole pipeline is in the graph, weights included.
    ops = {n.op_type for n in model.graph.node}
    assert {"Erf", "LayerNormalization", "Softmax", "ReduceSum", "Sqrt"} <= ops
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


def test_build_report(tiny_dir: Path, tmp_path: Path) -> None:
    report = build_bert_onnx(tiny_dir, tmp_path / "sub" / "m.onnx")
    config = json.loads((tiny_dir / "config.json").read_text())
    assert (report.hidden_size, report.num_layers, report.num_heads) == (32, 2, 4)
    assert report.max_seq_len == 48  # tokenizer.json's truncation, below max_position_embeddings (64)
    weights = load_file(str(tiny_dir / "model.safetensors"))
    unused = ("embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias")
    assert report.parameter_count == sum(v.size for k, v in weights.items() if k not in unused)
    assert report.output_path == tmp_path / "sub" / "m.onnx"
    assert report.file_bytes == report.output_path.stat().st_size
    assert report.external_data_path is None
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert report.input_sha256[name] == hashlib.sha256((tiny_dir / name).read_bytes()).hexdigest()
    assert report.output_sha256 == hashlib.sha256(report.output_path.read_bytes()).hexdigest()
    meta = {p.key: p.value for p in onnx.load(str(report.output_path)).metadata_props}
    assert meta["engram.source.model_sha256"] == report.input_sha256["model.safetensors"]
    assert meta["engram.max_seq_len"] == "48"
    assert config["vocab_size"] > 100
    # Only the final file is left behind.
    assert sorted(p.name for p in report.output_path.parent.iterdir()) == ["m.onnx"]


def test_external_data_variant_gives_same_output(tiny_dir: Path, tmp_path: Path, session) -> None:
    report = build_bert_onnx(tiny_dir, tmp_path / "ext.onnx", external_data=True)
    assert report.external_data_path == tmp_path / "ext.onnx.data"
    model = onnx.load(str(report.output_path), load_external_data=False)
    external = {t.name for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL}
    assert "embeddings.word_embeddings.weight" in external
    assert report.file_bytes == report.output_path.stat().st_size + report.external_data_path.stat().st_size
    feed = TextEncoder.from_model_dir(tiny_dir).encode(TEXTS).feed()
    (external,) = cpu_session(report.output_path, threads=1).run(["sentence_embedding"], feed)
    np.testing.assert_allclose(external, run_graph(session, feed)[0], atol=1e-6, rtol=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ext.onnx", "ext.onnx.data"]
    # Rebuilding in one file drops the now-stale data file.
    assert build_bert_onnx(tiny_dir, tmp_path / "ext.onnx").external_data_path is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ext.onnx"]


# ---------------------------------------------------------------------------------------------
# Weight names, config and pin checks
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["bert.", "0.auto_model."])
def test_weight_name_prefixes(prefix: str, tmp_path: Path, session, tiny_dir: Path) -> None:
    model_dir = create_tiny_bert(tmp_path / "model", seed=7, weight_prefix=prefix)
    assert all(k.startswith(prefix) for k in load_file(str(model_dir / "model.safetensors")))
    build_bert_onnx(model_dir, tmp_path / "m.onnx")
    feed = TextEncoder.from_model_dir(model_dir).encode(TEXTS).feed()
    (prefixed,) = cpu_session(tmp_path / "m.onnx", threads=1).run(["sentence_embedding"], feed)
    np.testing.assert_allclose(prefixed, run_graph(session, feed)[0], atol=1e-6, rtol=0)


def test_tensorflow_style_layernorm_names(tmp_path: Path, session) -> None:
    model_dir = create_tiny_bert(tmp_path / "model", seed=7, weight_prefix="bert.")
    weights = load_file(str(model_dir / "model.safetensors"))
    renamed = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
               for k, v in weights.items()}
    save_file(renamed, str(model_dir / "model.safetensors"))
    build_bert_onnx(model_dir, tmp_path / "m.onnx")
    feed = TextEncoder.from_model_dir(model_dir).encode(TEXTS[:2]).feed()
    (out,) = cpu_session(tmp_path / "m.onnx", threads=1).run(["sentence_embedding"], feed)
    np.testing.assert_allclose(out, run_graph(session, feed)[0], atol=1e-6, rtol=0)


def _rewrite_weights(model_dir: Path, drop: str | None = None, **replace: np.ndarray) -> None:
    weights = load_file(str(model_dir / "model.safetensors"))
    weights.update(replace)
    if drop is not None:
        del weights[drop]
    save_file(weights, str(model_dir / "model.safetensors"))


def test_missing_tensor_is_named(tmp_path: Path) -> None:
    model_dir = create_tiny_bert(tmp_path / "model", weight_prefix="bert.")
    _rewrite_weights(model_dir, drop="bert.encoder.layer.1.intermediate.dense.bias")
    with pytest.raises(ModelImportError, match=r"missing tensor 'bert\.encoder\.layer\.1\.intermediate\.dense\.bias'"):
        build_bert_onnx(model_dir, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_no_bert_tensors_at_all(tmp_path: Path) -> None:
    model_dir = create_tiny_bert(tmp_path / "model")
    save_file({"lm_head.weight": np.zeros((2, 2), np.float32)}, str(model_dir / "model.safetensors"))
    with pytest.raises(ModelImportError, match=r"embeddings\.word_embeddings\.weight"):
        build_bert_onnx(model_dir, tmp_path / "m.onnx")


def test_shape_mismatch_is_named(tmp_path: Path) -> None:
    model_dir = create_tiny_bert(tmp_path / "model")
    _rewrite_weights(model_dir, **{"encoder.layer.0.attention.self.key.weight": np.zeros((32, 16), np.float32)})
    with pytest.raises(ModelImportError, match=r"encoder\.layer\.0\.attention\.self\.key\.weight.*\(32, 16\)"):
        build_bert_onnx(model_dir, tmp_path / "m.onnx")


def test_missing_files(tmp_path: Path) -> None:
    model_dir = create_tiny_bert(tmp_path / "model")
    (model_dir / "model.safetensors").unlink()
    with pytest.raises(ModelImportError, match=r"model\.safetensors"):
        build_bert_onnx(model_dir, tmp_path / "m.onnx")
    (model_dir / "config.json").unlink()
    with pytest.raises(ModelImportError, match=r"config\.json"):
        build_bert_onnx(model_dir, tmp_path / "m.onnx")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"hidden_act": "relu"}, "hidden_act"),
        ({"model_type": "roberta"}, "model_type"),
        ({"position_embedding_type": "relative_key"}, "absolute"),
        ({"num_attention_heads": 5}, "multiple"),
        ({"hidden_size": "32"}, "hidden_size"),
        ({"layer_norm_eps": "1e-12"}, "layer_norm_eps"),
    ],
)
def test_unsupported_config(change: dict[str, Any], message: str) -> None:
    raw = {"vocab_size": 10, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4,
           "intermediate_size": 8, "max_position_embeddings": 16}
    assert BertConfig.from_dict(raw).head_size == 8
    with pytest.raises(ModelImportError, match=message):
        BertConfig.from_dict({**raw, **change})


def test_sha256_pin(tiny_dir: Path, tmp_path: Path) -> None:
    actual = hashlib.sha256((tiny_dir / "model.safetensors").read_bytes()).hexdigest()
    with pytest.raises(WeightsHashMismatch, match=actual):
        build_bert_onnx(tiny_dir, tmp_path / "m.onnx", expected_sha256="0" * 64)
    assert not (tmp_path / "m.onnx").exists()
    build_bert_onnx(tiny_dir, tmp_path / "m.onnx", expected_sha256=actual.upper())


def test_tiny_bert_is_deterministic(tmp_path: Path) -> None:
    first = create_tiny_bert(tmp_path / "a", seed=1)
    second = create_tiny_bert(tmp_path / "b", seed=1)
    third = create_tiny_bert(tmp_path / "c", seed=2)
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert (first / name).read_bytes() == (second / name).read_bytes()
    assert (first / "model.safetensors").read_bytes() != (third / "model.safetensors").read_bytes()


def test_find_minilm_package_dir_when_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> None:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    assert find_minilm_package_dir() is None
    with pytest.raises(ModelImportError, match="not installed"):
        bert_onnx.build_minilm_onnx(Path("unused.onnx"))


def test_corrupt_safetensors(tmp_path: Path) -> None:
    model_dir = create_tiny_bert(tmp_path / "model")
    (model_dir / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not json")
    with pytest.raises(ModelImportError, match="not a readable safetensors file"):
        build_bert_onnx(model_dir, tmp_path / "m.onnx")


def test_float16_checkpoint_is_widened(tmp_path: Path, session) -> None:
    model_dir = create_tiny_bert(tmp_path / "model", seed=7)
    weights = load_file(str(model_dir / "model.safetensors"))
    save_file({k: v.astype(np.float16) if v.dtype == np.float32 else v for k, v in weights.items()},
              str(model_dir / "model.safetensors"))
    build_bert_onnx(model_dir, tmp_path / "m.onnx")
    feed = TextEncoder.from_model_dir(model_dir).encode(TEXTS).feed()
    (half,) = cpu_session(tmp_path / "m.onnx", threads=1).run(["sentence_embedding"], feed)
    np.testing.assert_allclose(half, run_graph(session, feed)[0], atol=5e-3, rtol=0)
