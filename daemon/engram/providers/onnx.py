"""The built-in ``onnx`` provider: the daemon's own ONNX embedding models, as a provider.

Registered in engram's own ``engram.providers`` entry points, like any third-party plugin, so
``plugins.list`` shows it with the others and chains can name it. Its factory takes the
``context`` keyword: the plugin manager passes a :class:`~engram.plugins.ProviderContext`, which
is how it reaches the inference part (models, batching, worker threads) without a global.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from engram import __version__
from engram.lifecycle import PartState
from engram.plugins.protocol import CostHint, ProviderContext, ProviderHealth


class OnnxConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(default=None, description="Embedding model to use (default: inference.default_embedder).")


class OnnxProvider:
    """Local embeddings with the installed ONNX models (capability ``embed``)."""

    name = "onnx"
    locality = "local"
    capabilities = frozenset({"embed"})
    config_model = OnnxConfig
    version = __version__
    cost = CostHint()

    def __init__(self, config: OnnxConfig, *, context: ProviderContext | None = None) -> None:
        if context is None:
            raise RuntimeError("the onnx provider runs inside engramd only (it needs the daemon's inference part)")
        self._config = config
        self._inference = context.inference

    async def start(self) -> None:
        """The inference part is started before plugins; models load on first use."""

    async def stop(self) -> None:
        """Nothing of its own to release: the inference part owns the models."""

    async def health(self) -> ProviderHealth:
        if self._inference.state != PartState.RUNNING:
            return ProviderHealth(ok=False, detail=f"inference part is {self._inference.state}")
        ok, detail = (await self._inference.named_checks())["embedder"]
        return ProviderHealth(ok=ok, detail=detail)

    async def embed(self, texts: list[str], *, model: str | None = None) -> list[list[float]]:
        result = await self._inference.embed(list(texts), model or self._config.model, "list")
        vectors: Any = result.vectors  # a ListTensor: "list" asks for plain numbers
        return np.asarray(vectors.data, dtype=np.float32).reshape(len(texts), result.dim).tolist()
