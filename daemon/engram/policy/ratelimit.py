"""Token buckets for egress limits: at most N calls (and B bytes) per period, per principal and provider.

A bucket holds up to ``capacity`` tokens and refills continuously at ``capacity_per_period /
period`` tokens per second; a call takes one token (a byte budget takes one token per byte). The
clock is injectable (monotonic seconds), so tests move time instead of sleeping.

Buckets live in memory: a restart refills them. Their number is bounded (least recently used go
first), so a flood of distinct principals cannot grow the daemon without limit. Everything runs on
the event loop thread; no lock is needed.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

__all__ = ["LimitCheck", "RateLimiter", "TokenBucket"]


class TokenBucket:
    __slots__ = ("capacity", "rate", "tokens", "updated")

    def __init__(self, capacity: float, rate: float, now: float) -> None:
        self.capacity = capacity
        self.rate = rate  # tokens per second
        self.tokens = capacity
        self.updated = now

    def _refill(self, now: float) -> None:
        if now > self.updated:
            self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
            self.updated = now

    def available(self, now: float) -> float:
        self._refill(now)
        return self.tokens

    def can_take(self, amount: float, now: float) -> bool:
        # A hair of tolerance: refills are sums of float products, and a bucket refilled for
        # exactly the time one token takes must hold that token.
        return self.available(now) >= amount - 1e-9

    def take(self, amount: float, now: float) -> bool:
        if not self.can_take(amount, now):
            return False
        self.tokens = max(0.0, self.tokens - amount)
        return True

    def retry_after(self, amount: float, now: float) -> float:
        """Seconds until ``amount`` tokens are there (inf when more than the bucket holds)."""
        missing = amount - self.available(now)
        if missing <= 1e-9:
            return 0.0
        if amount > self.capacity or self.rate <= 0:
            return float("inf")
        return missing / self.rate


@dataclass(frozen=True)
class BucketSpec:
    """One limit dimension: ``capacity`` tokens, refilled at ``per_period`` per ``period`` seconds."""

    limit: str
    dimension: str  # "calls" or "bytes"
    capacity: float
    per_period: float
    period: float

    @property
    def rate(self) -> float:
        return self.per_period / self.period


@dataclass(frozen=True)
class LimitCheck:
    ok: bool
    limit: str | None = None
    dimension: str | None = None
    retry_after_s: float | None = None


class RateLimiter:
    def __init__(self, max_buckets: int = 10_000, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_buckets = max_buckets
        self.clock = clock
        self._buckets: OrderedDict[tuple[BucketSpec, int, str], TokenBucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def _bucket(self, spec: BucketSpec, uid: int, provider: str, now: float) -> TokenBucket:
        key = (spec, uid, provider)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(spec.capacity, spec.rate, now)
            while len(self._buckets) > self.max_buckets:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        return bucket

    def acquire(self, specs: Iterable[BucketSpec], uid: int, provider: str, size: int) -> LimitCheck:
        """Take one call (and ``size`` bytes) from every bucket, or from none when any is short."""
        now = self.clock()
        wanted = [(spec, self._bucket(spec, uid, provider, now)) for spec in specs]
        for spec, bucket in wanted:
            amount = 1.0 if spec.dimension == "calls" else float(size)
            if not bucket.can_take(amount, now):
                return LimitCheck(False, spec.limit, spec.dimension, bucket.retry_after(amount, now))
        for spec, bucket in wanted:
            bucket.take(1.0 if spec.dimension == "calls" else float(size), now)
        return LimitCheck(True)

    def retain(self, specs: Iterable[BucketSpec]) -> None:
        """After a reload: keep the buckets of limits that did not change, forget the others."""
        keep = set(specs)
        for key in [key for key in self._buckets if key[0] not in keep]:
            del self._buckets[key]
