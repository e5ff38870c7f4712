"""Bus events of the providers part."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from engram.bus.events import Event, Priority

__all__ = ["PROVIDER_EVENTS", "ProviderBreakerChanged", "ProviderCallFailed"]

BreakerState = Literal["closed", "open", "half_open"]


class ProviderBreakerChanged(Event):
    topic = "provider.breaker"
    priority = Priority.CONTROL
    provider: str
    state: BreakerState = Field(description="The breaker's new state.")
    previous: BreakerState
    failures: int = Field(description="Consecutive failures counted when it changed.")
    error: str | None = Field(default=None, description="The failure that opened it, when it opened.")


class ProviderCallFailed(Event):
    topic = "provider.call_failed"
    provider: str
    capability: str
    kind: Literal["error", "timeout", "garbage"] = Field(description="raised, hung past its timeout, or answered nonsense.")
    error: str


PROVIDER_EVENTS: tuple[type[Event], ...] = (ProviderBreakerChanged, ProviderCallFailed)
