"""What ``route.ask`` needs of other parts, declared as it uses them; runtime.py hands it the parts
when it makes the ask part.

- :class:`AskMemory`: memory's own methods, called with the caller's request context (so namespace
  rules and permissions are those of ``memory.recall``), its limits, and the concept names a
  question holds. The memory part is one.
- :class:`AnswerRouter`: a generate route's fast/slow/cascade and the pattern cache. The router is one.
- :class:`Generator`: the providers' generate chain, streamed or not. The providers part's
  ``PromptGenerator`` is one.

Params and results travel as the parts' wire models (``engram.memory.api``, ``engram.router.api``):
their public contract.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

import numpy as np

from engram.memory.api import (
    GetParams,
    GetResult,
    GraphQueryParams,
    GraphQueryResult,
    RecallParams,
    RecallResult,
    RememberParams,
    RememberResult,
    WorkingListParams,
    WorkingListResult,
)
from engram.principal import Principal
from engram.router.api import RouteRunParams, RouteRunResult
from engram.server.methods import RequestContext

__all__ = [
    "AnswerRouter", "AskMemory", "CachedAnswer", "Emit", "Generation", "Generator", "MemoryLimits", "NamespaceResolver", "RouteView",
]

Emit = Callable[[str, str, int], Awaitable[None]]  # (provider, text, index) of one streamed chunk


class MemoryLimits(Protocol):
    @property
    def max_items(self) -> int: ...

    @property
    def max_text_bytes(self) -> int: ...

    @property
    def max_k(self) -> int: ...


class NamespaceResolver(Protocol):
    def resolve(self, principal: Principal, method: str | None, requested: str | None) -> str: ...


class AskMemory(Protocol):
    @property
    def settings(self) -> MemoryLimits: ...

    @property
    def namespaces(self) -> NamespaceResolver: ...

    async def working_list(self, ctx: RequestContext, params: WorkingListParams) -> WorkingListResult: ...

    async def recall(self, ctx: RequestContext, params: RecallParams) -> RecallResult: ...

    async def graph_query(self, ctx: RequestContext, params: GraphQueryParams) -> GraphQueryResult: ...

    async def get(self, ctx: RequestContext, params: GetParams) -> GetResult: ...

    async def remember(self, ctx: RequestContext, params: RememberParams) -> RememberResult: ...

    def linked_concepts(self, namespace: str, candidates: Sequence[str], limit: int) -> list[str]:
        """The stored names of the namespace's concepts that ``candidates`` name, wholly or by
        their first words, at most ``limit`` (blocking: a worker thread)."""
        ...


class RouteView(Protocol):
    @property
    def task(self) -> str: ...

    @property
    def cache(self) -> bool: ...


class CachedAnswer(Protocol):
    @property
    def answer(self) -> dict[str, Any]: ...

    @property
    def decision(self) -> str: ...


class AnswerRouter(Protocol):
    @property
    def cache_enabled(self) -> bool: ...

    def route_settings(self, name: str) -> RouteView: ...

    async def cached_answer(self, cache_route: str, text: str) -> tuple[CachedAnswer | None, np.ndarray | None]: ...

    async def keep_answer(self, cache_route: str, text: str, decision: str, target: str, answer: dict[str, Any],
                          vector: np.ndarray | None) -> None: ...

    async def run(self, ctx: RequestContext, params: RouteRunParams, *, system: str | None = None,
                  tags: tuple[str, ...] = ()) -> RouteRunResult: ...


class Generation(Protocol):
    @property
    def text(self) -> str: ...

    @property
    def provider(self) -> str: ...


class Generator(Protocol):
    @property
    def max_prompt_chars(self) -> int: ...

    async def generate(self, ctx: RequestContext, prompt: str, system: str | None, tags: Sequence[str],
                       provider: str | None = None) -> Generation: ...

    async def stream(self, ctx: RequestContext, prompt: str, system: str | None, tags: Sequence[str],
                     emit: Emit) -> Generation: ...
