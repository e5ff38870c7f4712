"""The inference part for in-process callers that hold numpy arrays (the router's model targets).

Arrays go through the very requests ``infer.run`` and ``infer.embed`` serve, encoded on the way
in and decoded on the way out, so a caller gets the same checks, batching and errors as a client.
"""

from __future__ import annotations

import numpy as np

from engram.inference.service import Inference
from engram.wire.tensors import WireTensor, decode, encode

__all__ = ["ArrayModels"]


class ArrayModels:
    def __init__(self, inference: Inference) -> None:
        self._inference = inference

    async def input_names(self, model: str) -> list[str]:
        """The graph inputs of ``model``, in manifest order (loads it)."""
        loaded = await self._inference.cache.get(model)
        return [spec.name for spec in loaded.manifest.inputs]

    async def run(self, model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every output of ``model`` on ``inputs``, by output name."""
        wire = {name: WireTensor(**encode(array, "b64")) for name, array in inputs.items()}
        outputs = await self._inference.run(model, wire, None, "b64")
        return {name: decode(WireTensor(**tensor.model_dump()), name) for name, tensor in outputs.items()}

    async def embed(self, texts: list[str], model: str | None) -> np.ndarray:
        """``[len(texts), dim]`` float32 rows from ``model`` (None: ``inference.default_embedder``)."""
        embedded = await self._inference.embed(texts, model, "b64")
        return decode(WireTensor(**embedded.vectors.model_dump()), "vectors")
