"""Circuit breaker transitions, with a clock the test moves."""

from __future__ import annotations

from engram.providers.breaker import CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_consecutive_failures_then_half_opens_and_closes():
    clock, changes = Clock(), []
    breaker = CircuitBreaker("p", failures=3, cooldown=10, on_change=lambda *a: changes.append(a[1:3]), clock=clock)
    breaker.failure("boom")
    breaker.success()  # resets the count: failures must be consecutive
    breaker.failure("boom")
    breaker.failure("boom")
    assert breaker.state == "closed" and breaker.allow()
    breaker.failure("boom")
    assert breaker.state == "open" and not breaker.allow()
    clock.now += 9.9
    assert not breaker.allow()
    clock.now += 0.2
    assert breaker.state == "half_open"
    assert breaker.allow()  # the probe
    assert not breaker.allow()  # only one probe at a time
    breaker.success()
    assert breaker.state == "closed" and breaker.failures == 0
    assert changes == [("open", "closed"), ("half_open", "open"), ("closed", "half_open")]


def test_failed_probe_opens_again_for_a_new_cooldown():
    clock = Clock()
    breaker = CircuitBreaker("p", failures=1, cooldown=5, clock=clock)
    breaker.failure("x")
    clock.now += 5
    assert breaker.allow()
    breaker.failure("still broken")
    assert breaker.state == "open"
    clock.now += 4
    assert not breaker.allow()
    clock.now += 1
    assert breaker.allow()


def test_released_probe_frees_the_slot():
    clock = Clock()
    breaker = CircuitBreaker("p", failures=1, cooldown=1, clock=clock)
    breaker.failure("x")
    clock.now += 1
    assert breaker.allow()
    breaker.release()  # e.g. the policy refused the call: no verdict on the provider
    assert breaker.state == "half_open" and breaker.allow()
