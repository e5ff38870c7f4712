"""Fixtures of the policy unit tests (helpers live in policyhelp.py)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from policyhelp import OWNER, FakeClock, policy_set

from engram.policy.engine import PolicyEngine
from engram.policy.ratelimit import RateLimiter


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_engine(clock: FakeClock) -> Callable[..., PolicyEngine]:
    def make(
        *texts: str,
        base: str | None = "local-first",
        privacy: bool | Callable[[], bool] = False,
        admin: frozenset[str] = frozenset({"system.reload", "audit.rotate_key"}),
        groups: dict[int, frozenset[str]] | None = None,
        cache_size: int = 4096,
    ) -> PolicyEngine:
        return PolicyEngine(
            policy_set(*texts, base=base),
            owner_uid=OWNER,
            privacy=privacy if callable(privacy) else (lambda: privacy),
            is_admin=admin.__contains__,
            limiter=RateLimiter(1000, clock.monotonic),
            now=clock,
            groups=lambda p: (groups or {}).get(p.uid, frozenset()),
            cache_size=cache_size,
        )

    return make
