"""A circuit breaker per provider.

closed — calls go through; ``failures`` consecutive failures open it.
open — calls are refused (a chain skips the provider) until ``cooldown`` seconds have passed.
half_open — one probe call is let through; success closes the breaker, failure opens it again
for another cool-down. Time comes from a monotonic clock that tests can replace.

:class:`Breakers` holds them all. The composition root makes it before the plugin manager and the
providers part, and hands it to both: the providers part feeds the breakers with the outcome of
each call, ``plugins.list`` shows their states.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

import structlog

from engram.bus import EventBus
from engram.providers.events import ProviderBreakerChanged
from engram.providers.settings import BreakerSettings

__all__ = ["Breakers", "CircuitBreaker", "State"]

log = structlog.get_logger("engram.providers")

State = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    def __init__(
        self,
        name: str,
        failures: int,
        cooldown: float,
        on_change: Callable[[str, State, State, int, str | None], None] = lambda *a: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.threshold = failures
        self.cooldown = cooldown
        self._on_change = on_change
        self._clock = clock
        self._state: State = "closed"
        self.failures = 0  # consecutive
        self._opened_at = 0.0
        self._probing = False  # a half-open probe is in flight

    @property
    def state(self) -> State:
        """The state now: an open breaker whose cool-down has passed reads half_open."""
        if self._state == "open" and self._clock() - self._opened_at >= self.cooldown:
            self._set("half_open", None)
        return self._state

    def allow(self) -> bool:
        """May a call go through now? In half_open, only one probe at a time."""
        state = self.state
        if state == "closed":
            return True
        if state == "half_open" and not self._probing:
            self._probing = True
            return True
        return False

    def success(self) -> None:
        self._probing = False
        self.failures = 0
        if self._state != "closed":
            self._set("closed", None)

    def failure(self, error: str) -> None:
        self._probing = False
        self.failures += 1
        if self._state == "half_open" or (self._state == "closed" and self.failures >= self.threshold):
            self._opened_at = self._clock()
            self._set("open", error)
        elif self._state == "open":
            self._opened_at = self._clock()

    def release(self) -> None:
        """A let-through call ended without a verdict (cancelled, refused by policy): free the probe."""
        self._probing = False

    def _set(self, state: State, error: str | None) -> None:
        previous, self._state = self._state, state
        self._on_change(self.name, state, previous, self.failures, error)


class Breakers:
    """One breaker per provider, made when it is first asked for; every change is logged and
    published as ``provider.breaker``."""

    def __init__(self, settings: BreakerSettings, bus: EventBus, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self._bus = bus
        self._clock = clock
        self._breakers: dict[str, CircuitBreaker] = {}

    def of(self, provider: str) -> CircuitBreaker:
        breaker = self._breakers.get(provider)
        if breaker is None:
            breaker = CircuitBreaker(
                provider, self.settings.failures, self.settings.cooldown, self._changed, clock=self._clock
            )
            self._breakers[provider] = breaker
        return breaker

    def state_of(self, provider: str) -> State:
        return self.of(provider).state

    def _changed(self, name: str, state: State, previous: State, failures: int, error: str | None) -> None:
        log.warning("provider breaker", provider=name, state=state, previous=previous, failures=failures, error=error)
        self._bus.publish(ProviderBreakerChanged(provider=name, state=state, previous=previous, failures=failures, error=error))
