"""Run a sentence-embedding ONNX graph built by :mod:`engram.inference.bert_onnx` over texts."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

from engram.inference.text_encoder import EncodedBatch, TextEncoder

__all__ = ["SentenceEmbedder", "cpu_session"]


def cpu_session(onnx_path: Path, threads: int | None = None) -> ort.InferenceSession:
    """A CPU-only session; ``threads`` bounds intra-op parallelism (None: ONNX Runtime's choice).

    One inter-op thread: the graph is a chain, and a second pool would only compete for cores
    with the intra-op one. No spinning: an idle intra-op thread that spins for work takes a core
    from whatever else runs (on a shared 2-core machine it doubled the CPU time per text).
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads is not None:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])


class SentenceEmbedder:
    """Texts in, unit-length float32 rows out, in input order."""

    def __init__(self, session: ort.InferenceSession, encoder: TextEncoder) -> None:
        self._session = session
        self._encoder = encoder
        # Feed only what the graph declares: an optimised graph may have dropped an input.
        self._input_names = [i.name for i in session.get_inputs()]
        outputs = {o.name: o for o in session.get_outputs()}
        if "sentence_embedding" not in outputs:
            raise ValueError("the ONNX graph has no 'sentence_embedding' output")
        dim = outputs["sentence_embedding"].shape[-1]
        if not isinstance(dim, int):
            raise ValueError("the ONNX graph's 'sentence_embedding' has no fixed width")
        self._dim = dim

    @classmethod
    def load(cls, onnx_path: Path, model_dir: Path, threads: int | None = None) -> SentenceEmbedder:
        """Session from ``onnx_path``, tokenizer and sequence limit from ``model_dir``."""
        return cls(cpu_session(onnx_path, threads), TextEncoder.from_model_dir(model_dir))

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def encoder(self) -> TextEncoder:
        return self._encoder

    def run(self, batch: EncodedBatch) -> NDArray[np.float32]:
        """Embeddings of one already-encoded batch, ``[len(batch), dim]``."""
        feed = {name: value for name, value in batch.feed().items() if name in self._input_names}
        (embeddings,) = self._session.run(["sentence_embedding"], feed)
        return np.asarray(embeddings, dtype=np.float32)

    def embed(self, texts: Sequence[str], batch_size: int = 32) -> NDArray[np.float32]:
        """Embeddings of ``texts``, ``[len(texts), dim]``, batched by length for less padding."""
        out = np.empty((len(texts), self._dim), dtype=np.float32)
        for indices, batch in self._encoder.batches(texts, batch_size):
            out[indices] = self.run(batch)
        return out
