"""Params and results of ``infer.generate`` and ``infer.chat``."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from engram.server.methods import Params, Result

CHUNK_NOTIFICATION = "infer.chunk"


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=1_000_000)


class _CallParams(Params):
    provider: str | None = Field(
        default=None, max_length=128, description="Call this provider only; default: the capability's fallback chain."
    )
    model: str | None = Field(default=None, max_length=256, description="Model at the provider (default: the provider's).")
    stream: bool = Field(
        default=False, description="Push the answer as infer.chunk notifications on this connection before the result."
    )
    stream_id: str | None = Field(
        default=None, max_length=128, description="Echoed in every infer.chunk of this call (default: r<request serial>)."
    )
    tags: list[str] = Field(
        default_factory=list, max_length=64, description="Data tags of the payload, for policy conditions (tags_any, tags_none)."
    )
    options: dict[str, Any] = Field(
        default_factory=dict, description="Provider options passed through (temperature, max_tokens, ...)."
    )


class GenerateParams(_CallParams):
    prompt: str = Field(min_length=1, description="The prompt.")
    system: str | None = Field(default=None, description="A system prompt.")


class ChatParams(_CallParams):
    messages: list[ChatMessage] = Field(min_length=1, max_length=1000, description="The conversation so far.")


class Attempt(BaseModel):
    provider: str
    outcome: Literal[
        "ok", "not_running", "no_capability", "breaker_open", "policy_denied", "error", "timeout", "garbage"
    ] = Field(description="What happened to this provider in the chain.")
    detail: str | None = None


class CompletionResult(Result):
    text: str = Field(description="The whole answer (also when it was streamed).")
    provider: str = Field(description="The provider that answered.")
    model: str | None = Field(default=None, description="The model that answered, as the provider reports it.")
    locality: str
    redactions: dict[str, int] = Field(default_factory=dict, description="What the policy redacted before sending, by kind.")
    stream: str | None = Field(default=None, description="The stream id of the infer.chunk notifications (stream=true).")
    chunks: int = Field(default=0, description="infer.chunk notifications sent.")
    attempts: list[Attempt] = Field(description="Each provider of the chain tried or skipped, in order.")
