"""What the router needs of other parts, declared as it uses them; runtime.py hands it the parts'
implementations when it makes the router.

- :class:`Models`: ``model:<name>`` targets (classify routes run the model on the tensor, embed
  routes embed the text) and the text embeddings of novelty and the semantic cache. The inference
  part's ``ArrayModels`` is one.
- :class:`NoveltyStore`: each route's input vectors, kept in memory under the input hash (novelty,
  semantic cache). Memory's ``KeyedVectors`` is one; without it the router keeps a window in RAM.
- :class:`Generator`: ``provider:<name>`` targets of generate routes. The providers part's
  ``PromptGenerator`` is one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from engram.server.methods import RequestContext

__all__ = ["Generation", "Generator", "Models", "NoveltyStore"]


class Models(Protocol):
    async def input_names(self, model: str) -> list[str]: ...

    async def run(self, model: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    async def embed(self, texts: list[str], model: str | None) -> np.ndarray:
        """``[len(texts), dim]`` float32 rows (model None: the default embedder)."""
        ...


class NoveltyStore(Protocol):
    """Vectors under a key per namespace; lookups block (the router calls them from a worker thread)."""

    def expected_dim(self, namespace: str) -> int | None: ...

    def best_similarity(self, namespace: str, unit: np.ndarray) -> float | None: ...

    def nearest(self, namespace: str, unit: np.ndarray, k: int) -> list[tuple[str, float]]: ...

    async def put(self, namespace: str, key: str, unit: np.ndarray, source: str, tags: Sequence[str]) -> bool: ...


class Generation(Protocol):
    @property
    def text(self) -> str: ...

    @property
    def score(self) -> float | None:
        """The provider's confidence in [0, 1], when it reports one: the cascade compares it with the threshold."""
        ...


class Generator(Protocol):
    @property
    def max_prompt_chars(self) -> int: ...

    async def generate(self, ctx: RequestContext, prompt: str, system: str | None, tags: Sequence[str],
                       provider: str | None = None) -> Generation: ...
