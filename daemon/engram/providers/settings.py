"""The ``[providers]`` section: call timeouts, circuit breakers and fallback chains."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["BreakerSettings", "ProvidersSettings"]

_CHAIN_CAPABILITIES = ("embed", "classify", "generate", "chat")


class BreakerSettings(BaseModel):
    """One breaker per provider: closed, open after consecutive failures, half-open after a cool-down."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    failures: int = Field(default=3, ge=1, le=1000, description="Consecutive failed calls that open a provider's breaker.")
    cooldown: float = Field(
        default=30.0, gt=0, le=86_400, description="Seconds an open breaker refuses calls before letting one probe through."
    )


class ProvidersSettings(BaseModel):
    """How the daemon calls providers (read at start)."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    call_timeout: float = Field(
        default=60.0, gt=0, le=3600, description="Seconds a provider call (generate, chat, embed, classify) may take in all."
    )
    stream_idle_timeout: float = Field(
        default=30.0, gt=0, le=3600, description="Seconds a streaming call may go without a chunk before it is abandoned."
    )
    max_prompt_chars: int = Field(
        default=200_000, ge=1, description="Longest prompt (or sum of chat message contents) accepted, in characters."
    )
    breaker: BreakerSettings = Field(default_factory=BreakerSettings, description="Circuit breaker thresholds.")
    chains: dict[str, list[str]] = Field(
        default_factory=lambda: {"generate": [], "chat": [], "embed": ["onnx"]},
        description=(
            "Fallback chain per capability (generate, chat, embed, classify): provider names tried in order when a "
            "call names no provider; providers with an open breaker, without the capability, or not allowed by the "
            "policy are skipped."
        ),
    )

    @field_validator("chains")
    @classmethod
    def _known_capabilities(cls, chains: dict[str, list[str]]) -> dict[str, list[str]]:
        unknown = sorted(set(chains) - set(_CHAIN_CAPABILITIES))
        if unknown:
            raise ValueError(f"unknown capabilities {unknown}; chains exist for {list(_CHAIN_CAPABILITIES)}")
        return chains
