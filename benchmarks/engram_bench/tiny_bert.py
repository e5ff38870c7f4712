"""A random-weight miniature BERT on disk, laid out exactly like a real sentence-transformers model.

Tests and benchmarks use it to run the real import path (``config.json`` + ``model.safetensors``
+ ``tokenizer.json`` → ONNX) in milliseconds and without any download. The embeddings mean
nothing; only their agreement with a reference implementation does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from safetensors.numpy import save_file
from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece

from engram.inference.quantize import COMPARISON_TEXTS

__all__ = ["MPNET_SPECIAL_TOKENS", "TINY_CORPUS", "build_tiny_wordpiece", "create_tiny_bert", "create_tiny_mpnet"]

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
# MPNet's special tokens, in the order (and so with the ids) of all-mpnet-base-v2's vocabulary:
# <s> 0, <pad> 1, </s> 2, <unk> 3. Its padding_idx is 1, which its position ids depend on.
MPNET_SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")

# The tiny model's vocabulary: the first fourteen of the sentences that `engram models quantize`
# compares on, so that a quantized tiny model is compared on words it knows.
TINY_CORPUS = COMPARISON_TEXTS[:14]


_SUFFIXES = ("##s", "##ed", "##er", "##ing", "##ly", "##es")


def build_tiny_wordpiece(
    corpus: tuple[str, ...] = TINY_CORPUS, specials: tuple[str, ...] = SPECIAL_TOKENS
) -> Tokenizer:
    """A BERT-style uncased WordPiece tokenizer whose vocabulary comes from ``corpus``.

    Same pipeline as bert-base-uncased's ``tokenizer.json`` (BertNormalizer, BertPreTokenizer,
    WordPiece, ``[CLS] $A [SEP]`` template), so the code path matches the real model's. The
    vocabulary is every character (alone and as a ``##`` continuation), every corpus word and a
    few suffixes, in sorted order: ``WordPieceTrainer`` is not deterministic from run to run,
    and a fixture must be. ``specials`` come first, in id order: BERT's names, or MPNet's
    (:data:`MPNET_SPECIAL_TOKENS`: begin, pad, end, unknown, mask).
    """
    if specials == MPNET_SPECIAL_TOKENS:
        cls_token, sep_token, unk_token = "<s>", "</s>", "<unk>"
    else:
        cls_token, sep_token, unk_token = "[CLS]", "[SEP]", "[UNK]"
    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    words: set[str] = set()
    for text in corpus:
        words.update(word for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    chars = sorted({char for word in words for char in word})
    tokens = [*specials, *chars, *(f"##{c}" for c in chars), *_SUFFIXES, *sorted(words - set(chars))]
    vocab = {token: index for index, token in enumerate(dict.fromkeys(tokens))}

    tokenizer = Tokenizer(WordPiece(vocab, unk_token=unk_token, continuing_subword_prefix="##"))
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{cls_token} $A {sep_token}",
        pair=f"{cls_token} $A {sep_token} $B:1 {sep_token}:1",
        special_tokens=[(cls_token, vocab[cls_token]), (sep_token, vocab[sep_token])],
    )
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    return tokenizer


def _random_weights(
    rng: np.random.Generator,
    *,
    vocab_size: int,
    hidden_size: int,
    num_layers: int,
    intermediate_size: int,
    max_position_embeddings: int,
    type_vocab_size: int,
) -> dict[str, NDArray[Any]]:
    # A std of 0.2 (not BERT's 0.02 init) keeps activations, attention patterns and GELU inputs
    # far from trivial, so a wrong op or a mis-wired tensor changes the output visibly.
    def normal(*shape: int, std: float = 0.2) -> NDArray[np.float32]:
        return rng.normal(0.0, std, size=shape).astype(np.float32)

    def layer_norm(key: str) -> dict[str, NDArray[np.float32]]:
        return {f"{key}.weight": 1.0 + normal(hidden_size, std=0.1), f"{key}.bias": normal(hidden_size, std=0.1)}

    h, i = hidden_size, intermediate_size
    weights: dict[str, NDArray[Any]] = {
        "embeddings.word_embeddings.weight": normal(vocab_size, h, std=1.0),
        "embeddings.position_embeddings.weight": normal(max_position_embeddings, h, std=0.5),
        "embeddings.token_type_embeddings.weight": normal(type_vocab_size, h, std=0.5),
        # Real checkpoints carry this buffer; the importer must ignore it.
        "embeddings.position_ids": np.arange(max_position_embeddings, dtype=np.int64)[None, :],
        **layer_norm("embeddings.LayerNorm"),
    }
    for n in range(num_layers):
        layer = f"encoder.layer.{n}"
        for proj in ("query", "key", "value"):
            weights[f"{layer}.attention.self.{proj}.weight"] = normal(h, h)
            weights[f"{layer}.attention.self.{proj}.bias"] = normal(h, std=0.1)
        weights[f"{layer}.attention.output.dense.weight"] = normal(h, h)
        weights[f"{layer}.attention.output.dense.bias"] = normal(h, std=0.1)
        weights.update(layer_norm(f"{layer}.attention.output.LayerNorm"))
        weights[f"{layer}.intermediate.dense.weight"] = normal(i, h)
        weights[f"{layer}.intermediate.dense.bias"] = normal(i, std=0.1)
        weights[f"{layer}.output.dense.weight"] = normal(h, i)
        weights[f"{layer}.output.dense.bias"] = normal(h, std=0.1)
        weights.update(layer_norm(f"{layer}.output.LayerNorm"))
    # An unused pooler head, as in real BertModel checkpoints.
    weights["pooler.dense.weight"] = normal(h, h)
    weights["pooler.dense.bias"] = normal(h, std=0.1)
    return weights


def create_tiny_bert(
    directory: Path,
    seed: int = 0,
    *,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int = 64,
    max_position_embeddings: int = 64,
    tokenizer_max_length: int | None = 48,
    weight_prefix: str = "",
) -> Path:
    """Write ``config.json``, ``model.safetensors`` and ``tokenizer.json`` into ``directory``.

    ``weight_prefix`` (e.g. ``"bert."`` or ``"0.auto_model."``) is put in front of every tensor
    name, as some checkpoints do. ``tokenizer_max_length`` goes into ``tokenizer.json``'s
    truncation setting (None: no truncation there). Returns ``directory``.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tiny_wordpiece()
    if tokenizer_max_length is not None:
        tokenizer.enable_truncation(max_length=tokenizer_max_length)
    tokenizer.save(str(directory / "tokenizer.json"))

    vocab_size = tokenizer.get_vocab_size()
    config = {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "hidden_act": "gelu",
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "intermediate_size": intermediate_size,
        "max_position_embeddings": max_position_embeddings,
        "type_vocab_size": 2,
        "layer_norm_eps": 1e-12,
        "pad_token_id": tokenizer.token_to_id("[PAD]"),
        "position_embedding_type": "absolute",
    }
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")

    weights = _random_weights(
        np.random.default_rng(seed),
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_layers=num_layers,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        type_vocab_size=2,
    )
    save_file({weight_prefix + k: v for k, v in weights.items()}, str(directory / "model.safetensors"),
              metadata={"format": "pt"})
    return directory


def _random_mpnet_weights(
    rng: np.random.Generator,
    *,
    vocab_size: int,
    hidden_size: int,
    num_layers: int,
    num_heads: int,
    intermediate_size: int,
    max_position_embeddings: int,
    num_buckets: int,
) -> dict[str, NDArray[Any]]:
    def normal(*shape: int, std: float = 0.2) -> NDArray[np.float32]:
        return rng.normal(0.0, std, size=shape).astype(np.float32)

    def layer_norm(key: str) -> dict[str, NDArray[np.float32]]:
        return {f"{key}.weight": 1.0 + normal(hidden_size, std=0.1), f"{key}.bias": normal(hidden_size, std=0.1)}

    h, i = hidden_size, intermediate_size
    weights: dict[str, NDArray[Any]] = {
        "embeddings.word_embeddings.weight": normal(vocab_size, h, std=1.0),
        "embeddings.position_embeddings.weight": normal(max_position_embeddings, h, std=0.5),
        "embeddings.position_ids": np.arange(max_position_embeddings, dtype=np.int64)[None, :],
        **layer_norm("embeddings.LayerNorm"),
        # Large enough to move attention visibly, so that a wrong bucket or head order shows.
        "encoder.relative_attention_bias.weight": normal(num_buckets, num_heads, std=1.0),
    }
    for n in range(num_layers):
        layer = f"encoder.layer.{n}"
        for proj in ("q", "k", "v", "o"):
            weights[f"{layer}.attention.attn.{proj}.weight"] = normal(h, h)
            weights[f"{layer}.attention.attn.{proj}.bias"] = normal(h, std=0.1)
        weights.update(layer_norm(f"{layer}.attention.LayerNorm"))
        weights[f"{layer}.intermediate.dense.weight"] = normal(i, h)
        weights[f"{layer}.intermediate.dense.bias"] = normal(i, std=0.1)
        weights[f"{layer}.output.dense.weight"] = normal(h, i)
        weights[f"{layer}.output.dense.bias"] = normal(h, std=0.1)
        weights.update(layer_norm(f"{layer}.output.LayerNorm"))
    weights["pooler.dense.weight"] = normal(h, h)
    weights["pooler.dense.bias"] = normal(h, std=0.1)
    return weights


def create_tiny_mpnet(
    directory: Path,
    seed: int = 0,
    *,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int = 64,
    max_position_embeddings: int = 66,
    max_seq_length: int = 48,
    weight_prefix: str = "",
) -> Path:
    """A random-weight miniature MPNet laid out like all-mpnet-base-v2: ``config.json``,
    ``model.safetensors``, ``tokenizer.json`` (padding with ``<pad>``, id 1) and
    ``sentence_bert_config.json``. Returns ``directory``.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tiny_wordpiece(specials=MPNET_SPECIAL_TOKENS)
    tokenizer.enable_padding(pad_id=tokenizer.token_to_id("<pad>"), pad_token="<pad>")
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": max_seq_length, "do_lower_case": False}) + "\n", encoding="utf-8"
    )

    vocab_size = tokenizer.get_vocab_size()
    num_buckets = 32
    config = {
        "architectures": ["MPNetForMaskedLM"],
        "model_type": "mpnet",
        "hidden_act": "gelu",
        "vocab_size": vocab_size,
        "hidden_size": hidden_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "intermediate_size": intermediate_size,
        "max_position_embeddings": max_position_embeddings,
        "layer_norm_eps": 1e-5,
        "pad_token_id": tokenizer.token_to_id("<pad>"),
        "bos_token_id": tokenizer.token_to_id("<s>"),
        "eos_token_id": tokenizer.token_to_id("</s>"),
        "relative_attention_num_buckets": num_buckets,
    }
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")

    weights = _random_mpnet_weights(
        np.random.default_rng(seed),
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_layers=num_layers,
        num_heads=num_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        num_buckets=num_buckets,
    )
    save_file({weight_prefix + k: v for k, v in weights.items()}, str(directory / "model.safetensors"),
              metadata={"format": "pt"})
    return directory
