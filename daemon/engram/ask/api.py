"""Params and results of ``route.ask`` (the wire contract)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from engram.memory.api import Namespace, Session
from engram.server.methods import Params, Result

__all__ = ["AskParams", "AskResult", "AskSource"]


class AskParams(Params):
    question: str = Field(description="The question (non-empty; at most memory.max_text_bytes UTF-8 bytes).")
    # memory's own types: route.ask hands both to memory's methods, whose params models would
    # otherwise refuse, as an internal error, what this model let through.
    namespace: Namespace = Field(default=None, description="Memory namespace of the context and the exchange (default: the caller's own).")
    session: Session | None = Field(
        default=None, description="Working-memory session used as context; the exchange is remembered in it."
    )
    k: int | None = Field(
        default=None, ge=0, description="Episodes recalled as context (default router.ask.k; at most memory.max_k; 0: none)."
    )
    route: str | None = Field(
        default=None, description="A generate route of router.routes (default router.ask.route, else the providers' generate chain)."
    )
    remember: bool | None = Field(default=None, description="Remember the exchange as an episode (default router.ask.remember).")
    stream: bool = Field(default=False, description="Push the answer as infer.chunk notifications before the result.")
    stream_id: str | None = Field(
        default=None, max_length=128, description="Echoed in every infer.chunk of this call (default: r<request serial>)."
    )


class AskSource(Result):
    tier: Literal["working", "episodic", "semantic"] = Field(description="The memory it came from.")
    id: str = Field(description="Episode id, working-memory key, or relation id.")
    text: str = Field(description="The line the prompt carried.")
    score: float = Field(description="Its relevance in its tier (recall score, working-memory score, relation weight).")


class AskResult(Result):
    answer: str
    sources: list[AskSource] = Field(description="The memories the prompt carried as context, most relevant first.")
    route: str | None = Field(description="The route that answered (null: the providers' generate chain).")
    path: Literal["cache", "fast", "slow"] = Field(description="cache, or the route's fast or slow target (the chain: fast).")
    provider: str | None = Field(description="The provider that produced the answer.")
    cached: bool = Field(description="Served from the pattern cache (an exact or semantic repeat of the question).")
    escalated: bool = Field(description="The route's cascade escalated from the fast to the slow target.")
    remembered: list[str] = Field(description="Ids of the episodes the exchange was remembered as ([] when not remembered).")
    decision: str | None = Field(description="The router's decision id, for route.feedback (null: no route decided).")
