"""Token buckets and egress limits, with a fake clock."""

from __future__ import annotations

import math

import pytest

from policyhelp import OWNER, principal

from engram.policy.ratelimit import BucketSpec, RateLimiter, TokenBucket


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_refills_at_its_rate():
    bucket = TokenBucket(capacity=3, rate=1.0, now=0.0)  # 3 at once, then one per second
    assert [bucket.take(1, 0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.retry_after(1, 0.0) == 1.0
    assert not bucket.take(1, 0.5) and bucket.take(1, 1.0)
    assert bucket.available(100.0) == 3  # never above capacity
    assert math.isinf(bucket.retry_after(4, 100.0))


def test_limiter_is_per_uid_and_provider_and_all_or_nothing():
    clock = Clock()
    limiter = RateLimiter(max_buckets=100, clock=clock)
    calls = BucketSpec("hourly", "calls", capacity=2, per_period=2, period=3600)
    size = BucketSpec("hourly", "bytes", capacity=100, per_period=100, period=3600)
    assert limiter.acquire([calls, size], uid=1, provider="p", size=60).ok
    refused = limiter.acquire([calls, size], uid=1, provider="p", size=60)  # bytes short: nothing taken
    assert not refused.ok and refused.dimension == "bytes" and refused.limit == "hourly"
    assert refused.retry_after_s == 20 * 36  # 20 bytes at 100 per hour
    assert limiter.acquire([calls, size], uid=1, provider="p", size=40).ok  # the call token was not taken above
    assert not limiter.acquire([calls], uid=1, provider="p", size=0).ok
    assert limiter.acquire([calls], uid=2, provider="p", size=0).ok  # another uid: its own bucket
    assert limiter.acquire([calls], uid=1, provider="q", size=0).ok  # another provider: its own bucket
    clock.now = 1800  # half an hour: one call back
    assert limiter.acquire([calls], uid=1, provider="p", size=0).ok
    assert not limiter.acquire([calls], uid=1, provider="p", size=0).ok


def test_limiter_is_bounded_and_keeps_unchanged_limits_across_reloads():
    limiter = RateLimiter(max_buckets=16, clock=Clock())
    spec = BucketSpec("l", "calls", 1, 1, 60)
    for uid in range(40):
        limiter.acquire([spec], uid, "p", 0)
    assert len(limiter) == 16
    limiter.retain([spec])
    assert len(limiter) == 16
    limiter.retain([BucketSpec("l", "calls", 5, 5, 60)])  # the limit changed: start afresh
    assert len(limiter) == 0


LIMITS = """
version = 1
[[rule]]
name = "owner-remote"
effect = "allow"
principals = ["owner"]
actions = ["*"]
providers = ["openai", "mistral"]

[[limit]]
name = "three-per-hour"
providers = ["openai"]
calls = 3
period = "1h"
burst = 2

[[limit]]
name = "small-payloads"
providers = ["mistral"]
bytes = 10
period = "1m"
"""


def test_egress_limits_through_the_engine(make_engine, clock):
    engine = make_engine(LIMITS)
    owner = principal(OWNER)

    def call(provider="openai", payload=None, consume=True):
        return engine.authorize_egress(owner, method="infer.embed", provider=provider, locality="remote", payload=payload, consume=consume)

    assert call().allowed and call().allowed
    assert call(consume=False).allowed  # explain takes nothing
    refused = call()
    assert refused.effect == "deny" and refused.rule == "limit:three-per-hour"
    assert refused.retry_after_s == pytest.approx(1200.0) and "retry in 1200.0 s" in refused.reason
    error = refused.error()
    assert error.data["reason"] == "rate_limited" and error.data["retry_after_s"] == 1200.0
    clock.mono += 1200
    assert call().allowed
    assert call("mistral", "12345").allowed and call("mistral", "12345").allowed
    over = call("mistral", "x")
    assert over.rule == "limit:small-payloads"
    too_big = call("mistral", "x" * 11)
    assert too_big.rule == "limit:small-payloads" and "larger than the whole budget" in too_big.reason
    assert too_big.error().data["retry_after_s"] is None
    # local providers are not limited by remote limits
    assert engine.authorize_egress(owner, method="infer.embed", provider="openai", locality="local").allowed
