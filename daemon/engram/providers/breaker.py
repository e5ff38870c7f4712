"""A circuit breaker per provider.

closed — calls go through; ``failures`` consecutive failures open it.
open — calls are refused (a chain skips the provider) until ``cooldown`` seconds have passed.
half_open — one probe call is let through; success closes the breaker, failure opens it again
for another cool-down. Time comes from a monotonic clock that tests can replace.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

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
