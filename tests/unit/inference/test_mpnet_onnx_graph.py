"""The ONNX graph built from a tiny random MPNet against an independent numpy forward pass.

The reference below is written from Hugging Face's ``modeling_mpnet`` (MPNetEmbeddings with
RoBERTa-style position ids, the relative position bucket of T5 as MPNet uses it, MPNetAttention)
and sentence-transformers' mean pooling + Normalize, in float64, sharing no code with
engram.inference.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from engram.inference.bert_onnx import BertConfig, ModelImportError, build_bert_onnx
from engram.inference.embedder import SentenceEmbedder, cpu_session
from engram.inference.mpnet_onnx import relative_position_buckets
from engram.inference.text_encoder import TextEncoder
from engram_bench.tiny_bert import create_tiny_mpnet
from safetensors.numpy import load_file, save_file

TEXTS = [
    "A man is eating food.",
    "hi",
    "Someone in a gorilla costume is playing a set of drums, loudly and for a long time.",
    "",
    "Unknown wörds like zyzzyva get split into pieces.",
    "The quick brown fox jumps over the lazy dog 0123456789 times!",
]


def reference_bucket(relative: int, num_buckets: int = 32, max_distance: int = 128) -> int:
    """``MPNetEncoder.relative_position_bucket`` for one relative position (key minus query)."""
    n = -relative
    num_buckets //= 2
    bucket = num_buckets if n < 0 else 0
    n = abs(n)
    max_exact = num_buckets // 2
    if n < max_exact:
        return bucket + n
    large = max_exact + int(math.log(n / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact))
    return bucket + min(large, num_buckets - 1)


def _layer_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def _softmax(x: np.ndarray) -> np.ndarray:
    shifted = np.exp(x - x.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def reference_forward(
    model_dir: Path, input_ids: np.ndarray, attention_mask: np.ndarray, position_ids: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(sentence embeddings [B, H], last hidden state [B, S, H]) in float64; ``position_ids``
    replaces MPNet's own (to show that they matter)."""
    config = json.loads((model_dir / "config.json").read_text())
    w = {k: v.astype(np.float64) for k, v in load_file(str(model_dir / "model.safetensors")).items()}
    eps, heads, hidden = config["layer_norm_eps"], config["num_attention_heads"], config["hidden_size"]
    batch, seq = input_ids.shape
    head = hidden // heads
    erf = np.vectorize(math.erf, otypes=[np.float64])

    def linear(x: np.ndarray, name: str) -> np.ndarray:
        return x @ w[f"{name}.weight"].T + w[f"{name}.bias"]

    def norm(x: np.ndarray, name: str) -> np.ndarray:
        return _layer_norm(x, w[f"{name}.weight"], w[f"{name}.bias"], eps)

    def split(t: np.ndarray) -> np.ndarray:
        return t.reshape(batch, seq, heads, head).transpose(0, 2, 1, 3)

    padding_idx = config["pad_token_id"]
    if position_ids is None:
        position_ids = np.cumsum(attention_mask, axis=1) * attention_mask + padding_idx
    x = w["embeddings.word_embeddings.weight"][input_ids] + w["embeddings.position_embeddings.weight"][position_ids]
    x = norm(x, "embeddings.LayerNorm")
    buckets = np.array([[reference_bucket(j - i) for j in range(seq)] for i in range(seq)])
    bias = w["encoder.relative_attention_bias.weight"][buckets].transpose(2, 0, 1)[None]  # [1, heads, seq, seq]
    blocked = np.where(attention_mask[:, None, None, :] == 1, 0.0, -np.inf)
    for n in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{n}"
        q, k, v = (split(linear(x, f"{p}.attention.attn.{name}")) for name in "qkv")
        probs = _softmax(q @ k.transpose(0, 1, 3, 2) / math.sqrt(head) + bias + blocked)
        context = (probs @ v).transpose(0, 2, 1, 3).reshape(batch, seq, hidden)
        x = norm(linear(context, f"{p}.attention.attn.o") + x, f"{p}.attention.LayerNorm")
        inner = linear(x, f"{p}.intermediate.dense")
        inner = 0.5 * inner * (1.0 + erf(inner / math.sqrt(2.0)))
        x = norm(linear(inner, f"{p}.output.dense") + x, f"{p}.output.LayerNorm")
    m = attention_mask[:, :, None].astype(np.float64)
    mean = (x * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
    return mean / np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12), x


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return create_tiny_mpnet(tmp_path_factory.mktemp("tiny-mpnet") / "model", seed=11)


@pytest.fixture(scope="module")
def tiny_onnx(tiny_dir: Path) -> Path:
    out = tiny_dir.parent / "tiny-mpnet.onnx"
    build_bert_onnx(tiny_dir, out, token_embeddings=True)
    return out


@pytest.fixture(scope="module")
def session(tiny_onnx: Path) -> ort.InferenceSession:
    return cpu_session(tiny_onnx, threads=1)


def run_graph(session: ort.InferenceSession, feed: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    sentence, tokens = session.run(["sentence_embedding", "token_embeddings"], feed)
    return sentence, tokens


def mpnet_feed(encoder: TextEncoder, texts: list[str]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The graph's feed for ``texts`` (no token types) and the padded batch's attention mask."""
    encoded = encoder.encode(texts)
    return {"input_ids": encoded.input_ids, "attention_mask": encoded.attention_mask}, encoded.attention_mask


def test_buckets_match_modeling_mpnet() -> None:
    table = relative_position_buckets(300, 32)
    expected = {rel: reference_bucket(rel) for rel in range(-299, 300)}
    for i in (0, 1, 7, 150, 299):
        assert table[i].tolist() == [expected[j - i] for j in range(300)]
    # Keys before the query in buckets 0-15, after it in 16-31; exact buckets close by, shared
    # ones on a log scale further off, the last of each half from about 128 on.
    assert [int(table[j, 0]) for j in (0, 1, 7, 8, 16, 64, 299)] == [0, 1, 7, 8, 10, 14, 15]
    assert [int(table[0, j]) for j in (1, 7, 8, 16, 64, 299)] == [17, 23, 24, 26, 30, 31]


@pytest.mark.parametrize("batch", [TEXTS[:1], TEXTS[:3], TEXTS, TEXTS[::-1][:4]])
def test_graph_matches_numpy_reference(session, tiny_dir: Path, batch: list[str]) -> None:
    encoder = TextEncoder.from_model_dir(tiny_dir)
    assert encoder.pad_id == 1
    feed, mask = mpnet_feed(encoder, batch)
    assert len(batch) == 1 or (mask == 0).any(), "the batch should contain padding"
    sentence, tokens = run_graph(session, feed)
    expected_sentence, expected_tokens = reference_forward(tiny_dir, **feed)
    np.testing.assert_allclose(sentence, expected_sentence, atol=1e-5, rtol=0)
    real = mask.astype(bool)  # padded positions' hidden states are meaningless
    np.testing.assert_allclose(tokens[real], expected_tokens[real], atol=5e-5, rtol=0)


def test_position_bias_and_positions_matter(session, tiny_dir: Path, tmp_path: Path) -> None:
    """Zeroing the relative bias, or feeding BERT-style positions, changes the output: the
    agreement above is not one the bias or the position ids could be missing from."""
    encoder = TextEncoder.from_model_dir(tiny_dir)
    feed, _ = mpnet_feed(encoder, TEXTS)
    sentence, _ = run_graph(session, feed)
    model = onnx.load(str(tiny_dir.parent / "tiny-mpnet.onnx"))
    for tensor in model.graph.initializer:
        if tensor.name == "encoder.relative_attention_bias.weight":
            tensor.raw_data = bytes(len(tensor.raw_data))
    onnx.save(model, str(tmp_path / "no-bias.onnx"))
    no_bias, _ = run_graph(cpu_session(tmp_path / "no-bias.onnx", threads=1), feed)
    assert np.abs(no_bias - sentence).max() > 1e-2
    bert_style = np.broadcast_to(np.arange(feed["input_ids"].shape[1]), feed["input_ids"].shape)
    unshifted = reference_forward(tiny_dir, feed["input_ids"], feed["attention_mask"], bert_style)[0]
    assert np.abs(unshifted - sentence).max() > 1e-2


def test_padding_does_not_change_a_row(session, tiny_dir: Path) -> None:
    encoder = TextEncoder.from_model_dir(tiny_dir)
    together, _ = run_graph(session, mpnet_feed(encoder, TEXTS)[0])
    for row, text in enumerate(TEXTS):
        alone, _ = run_graph(session, mpnet_feed(encoder, [text])[0])
        np.testing.assert_allclose(alone[0], together[row], atol=1e-5, rtol=0)


def test_graph_interface_and_report(tiny_dir: Path, tmp_path: Path) -> None:
    report = build_bert_onnx(tiny_dir, tmp_path / "m.onnx")
    assert (report.hidden_size, report.num_layers, report.num_heads, report.max_seq_len) == (32, 2, 4, 48)
    weights = load_file(str(tiny_dir / "model.safetensors"))
    unused = ("embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias")
    assert report.parameter_count == sum(v.size for k, v in weights.items() if k not in unused)
    model = onnx.load(str(report.output_path))
    assert [i.name for i in model.graph.input] == ["input_ids", "attention_mask"]
    assert [o.name for o in model.graph.output] == ["sentence_embedding"]
    assert {"CumSum", "Erf", "LayerNormalization", "Softmax"} <= {n.op_type for n in model.graph.node}


def test_embedder_feeds_only_declared_inputs(tiny_onnx: Path, tiny_dir: Path, session) -> None:
    embedder = SentenceEmbedder.load(tiny_onnx, tiny_dir, threads=1)
    batched = embedder.embed(TEXTS, batch_size=2)
    np.testing.assert_allclose(batched, run_graph(session, mpnet_feed(embedder.encoder, TEXTS)[0])[0], atol=1e-5)


def test_prefixed_weights(tmp_path: Path, tiny_dir: Path, session) -> None:
    model_dir = create_tiny_mpnet(tmp_path / "model", seed=11, weight_prefix="mpnet.")
    build_bert_onnx(model_dir, tmp_path / "m.onnx")
    feed, _ = mpnet_feed(TextEncoder.from_model_dir(model_dir), TEXTS)
    (prefixed,) = cpu_session(tmp_path / "m.onnx", threads=1).run(["sentence_embedding"], feed)
    np.testing.assert_allclose(prefixed, run_graph(session, feed)[0], atol=1e-6, rtol=0)


def test_missing_bias_table_is_named(tmp_path: Path) -> None:
    model_dir = create_tiny_mpnet(tmp_path / "model")
    weights = load_file(str(model_dir / "model.safetensors"))
    del weights["encoder.relative_attention_bias.weight"]
    save_file(weights, str(model_dir / "model.safetensors"))
    with pytest.raises(ModelImportError, match=r"missing tensor 'encoder\.relative_attention_bias\.weight'"):
        build_bert_onnx(model_dir, tmp_path / "m.onnx")


def test_config_defaults_and_checks() -> None:
    raw: dict[str, Any] = {"model_type": "mpnet", "vocab_size": 10, "hidden_size": 32, "num_hidden_layers": 1,
                           "num_attention_heads": 4, "intermediate_size": 8, "max_position_embeddings": 16}
    cfg = BertConfig.from_dict(raw)
    assert (cfg.pad_token_id, cfg.layer_norm_eps, cfg.relative_attention_num_buckets) == (1, 1e-5, 32)
    with pytest.raises(ModelImportError, match="pad_token_id"):
        BertConfig.from_dict({**raw, "pad_token_id": 16})
    with pytest.raises(ModelImportError, match="'roberta' is not supported"):
        BertConfig.from_dict({**raw, "model_type": "roberta"})
