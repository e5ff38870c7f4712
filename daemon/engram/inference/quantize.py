"""The fast variant of a model: int8 dynamic quantization, with transformer fusion where it helps.

``onnxruntime.quantization.quantize_dynamic`` stores weights as int8 (per output channel by
default) and quantizes activations on the fly, so no calibration data is needed. For BERT
embedding models ONNX Runtime's transformer optimizer can first fuse attention, LayerNorm and GELU
into single kernels; whether that is faster once quantized depends on the machine and the ONNX
Runtime version, so with ``fuse="auto"`` both variants are built and timed and the faster one is
kept. For embedding models the report compares the variant with the full model on a fixed set
of sentences: cosine similarity of each vector, and embeddings per second at batch 1 and 32.

Blocking and CPU-heavy (seconds to a minute): the service runs it in a worker thread.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
import onnxruntime as ort

from engram.inference.manifest import Manifest
from engram.inference.text_encoder import TextEncoder

__all__ = ["QuantizeOutcome", "compare_embedders", "quantize_model"]

Fuse = Literal["auto", "always", "never"]

# A fixed, varied set: the comparison must mean the same thing from run to run. (The first
# fourteen are also the vocabulary of the tiny test model of engram-bench.)
COMPARISON_TEXTS: tuple[str, ...] = (
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.",
    "A monkey is playing drums.",
    "Someone in a gorilla costume is playing a set of drums.",
    "The new movie is awesome, the new movie is so great.",
    "Local-first software keeps your data on your own machine.",
    "Memory, inference and an audit log behind one socket.",
    "Embeddings turn sentences into vectors; similar meaning, nearby vectors.",
    "The quick brown fox jumps over the lazy dog 0123456789 times!",
    "How do I reset my password?",
    "The meeting was moved to Thursday afternoon because the room was booked.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "She sells sea shells by the sea shore.",
    "A local daemon keeps its models, memory and audit log on the machine it runs on.",
    "Quarterly revenue grew 12% while operating costs stayed flat.",
    "Le chat dort sur le canapé.",
    "import numpy as np; x = np.zeros((3, 4))",
    "Rain is expected tomorrow in the northern mountains, with snow above 1500 metres.",
    "What is the capital of Australia?",
    "Canberra is the capital city of Australia.",
    "He played the guitar at the wedding.",
    "The patient was given 5 mg of the drug twice daily.",
    "Turn left at the second traffic light, then continue for two kilometres.",
    "An idle daemon consolidates memories while nobody is asking it anything.",
    "Bread, milk, eggs, butter, apples.",
    "The server returned error 503: service unavailable.",
    "I love this song!",
)


@dataclass
class QuantizeOutcome:
    path: Path
    fused_operators: dict[str, int] = field(default_factory=dict)
    candidates: dict[str, dict[str, float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The optimizer and quantizer log warnings through the root logger and print to stdout."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
            yield
    finally:
        logging.disable(previous)


def _fusion_options() -> Any:
    """BERT fusion without symbolic shape inference. That inference needs ``sympy`` (not a
    dependency), and the BERT fusions use it only to check whether the two inputs of a residual Add
    broadcast before making it a SkipLayerNormalization; in a BERT encoder they have the same shape."""
    from onnxruntime.transformers.fusion_options import FusionOptions

    options = FusionOptions("bert")
    options.enable_shape_inference = False
    return options


def _fuse(source: Path, target: Path, manifest: Manifest) -> dict[str, int]:
    from onnxruntime.transformers.optimizer import optimize_model

    info = manifest.embedding
    assert info is not None
    with _quiet():
        optimized = optimize_model(
            str(source), model_type="bert", num_heads=info.num_heads, hidden_size=info.hidden_size,
            optimization_options=_fusion_options(), opt_level=0, use_gpu=False,
        )
        optimized.save_model_to_file(str(target))
    return {k: int(v) for k, v in optimized.get_fused_operator_statistics().items() if v}


def _quantize(source: Path, target: Path, per_channel: bool) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet():
        quantize_dynamic(
            str(source),
            str(target),
            weight_type=QuantType.QInt8,
            per_channel=per_channel,
            # Fused contrib ops (Attention, SkipLayerNormalization) defeat shape inference; their
            # outputs are float32 all the same.
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )


def _session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _embed(session: ort.InferenceSession, encoder: TextEncoder, manifest: Manifest, texts: list[str], batch: int) -> np.ndarray:
    info = manifest.embedding
    assert info is not None
    names = {i.name for i in session.get_inputs()}
    out = np.empty((len(texts), info.dim), dtype=np.float32)
    for indices, encoded in encoder.batches(texts, batch):
        feed = {k: v for k, v in encoded.feed().items() if k in names}
        out[indices] = session.run([info.output], feed)[0]
    return out


def _rate(session: ort.InferenceSession, encoder: TextEncoder, manifest: Manifest, texts: list[str], batch: int, repeats: int = 2) -> float:
    _embed(session, encoder, manifest, texts[:2], batch)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        _embed(session, encoder, manifest, texts, batch)
        best = min(best, time.perf_counter() - started)
    return len(texts) / best


def compare_embedders(
    full: Path, variant: Path, manifest: Manifest, encoder: TextEncoder, threads: int
) -> dict[str, Any]:
    """Cosine similarity of ``variant``'s vectors to ``full``'s, and both speeds, on fixed texts."""
    texts = list(COMPARISON_TEXTS)
    a, b = _session(full, threads), _session(variant, threads)
    va, vb = _embed(a, encoder, manifest, texts, 32), _embed(b, encoder, manifest, texts, 32)
    cos = np.sum(va * vb, axis=1) / (np.linalg.norm(va, axis=1) * np.linalg.norm(vb, axis=1))
    return {
        "texts": len(texts),
        "cosine_mean": round(float(cos.mean()), 5),
        "cosine_min": round(float(cos.min()), 5),
        "full_batch1_per_s": round(_rate(a, encoder, manifest, texts, 1), 1),
        "variant_batch1_per_s": round(_rate(b, encoder, manifest, texts, 1), 1),
        "full_batch32_per_s": round(_rate(a, encoder, manifest, texts, 32), 1),
        "variant_batch32_per_s": round(_rate(b, encoder, manifest, texts, 32), 1),
    }


def quantize_model(
    source: Path,
    manifest: Manifest,
    work_dir: Path,
    *,
    per_channel: bool = True,
    fuse: Fuse = "auto",
    encoder: TextEncoder | None = None,
    threads: int = 0,
) -> QuantizeOutcome:
    """Write the int8 variant of ``source`` into ``work_dir``; returns where and how it was made."""
    plain = work_dir / "int8.onnx"
    _quantize(source, plain, per_channel)
    bert = manifest.embedding is not None and manifest.source.get("kind") in ("import", None)
    if fuse == "never" or not bert:
        return QuantizeOutcome(plain)
    fused_source = work_dir / "fused.onnx"
    try:
        operators = _fuse(source, fused_source, manifest)
    except Exception as exc:  # noqa: BLE001 - the optimizer does not know this graph: keep the plain variant
        return QuantizeOutcome(plain, notes=[f"transformer fusion failed ({type(exc).__name__}: {exc}); not fused"])
    fused = work_dir / "int8-fused.onnx"
    _quantize(fused_source, fused, per_channel)
    if fuse == "always" or encoder is None:
        return QuantizeOutcome(fused, operators)
    texts = list(COMPARISON_TEXTS)
    timings: dict[str, dict[str, float]] = {}
    for label, path in (("plain", plain), ("fused", fused)):
        session = _session(path, threads)
        timings[label] = {
            "batch1_per_s": round(_rate(session, encoder, manifest, texts, 1), 1),
            "batch32_per_s": round(_rate(session, encoder, manifest, texts, 32), 1),
        }
    # Requests arrive one text at a time as often as in bulk: weigh both batch sizes equally.
    def score(label: str) -> float:
        return timings[label]["batch1_per_s"] / timings["plain"]["batch1_per_s"] + (
            timings[label]["batch32_per_s"] / timings["plain"]["batch32_per_s"]
        )

    if score("fused") > score("plain"):
        return QuantizeOutcome(fused, operators, timings, ["fused: faster than unfused on this machine"])
    return QuantizeOutcome(plain, {}, timings, ["not fused: the fused variant was not faster on this machine"])
