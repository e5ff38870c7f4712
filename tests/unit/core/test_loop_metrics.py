"""The request chain's counter and histogram expose exactly what prometheus_client's own do."""

from __future__ import annotations

import math

import pytest
from engram.observability.metrics import LoopCounter, LoopHistogram
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

BUCKETS = (0.001, 0.01, 0.1, 1)


def _exposition(registry: CollectorRegistry) -> list[str]:
    # The _created lines hold the time each series began: the only lines that may differ.
    return [line for line in generate_latest(registry).decode().splitlines() if "_created" not in line]


def test_same_exposition_as_the_library_counter_and_histogram() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    pairs = [
        (LoopCounter("c", "requests", ["method"], registry=ours), Counter("c", "requests", ["method"], registry=theirs)),
        (LoopHistogram("h", "seconds", ["method"], buckets=BUCKETS, registry=ours),
         Histogram("h", "seconds", ["method"], buckets=BUCKETS, registry=theirs)),
    ]
    # On a bound, between bounds, past the last one, zero, and NaN (in no bucket, but in the sum).
    amounts = [0.0, 0.001, 0.005, 0.01, 0.5, 1.0, 7.0, math.nan]
    for amount in amounts:
        for counter in (pairs[0][0], pairs[0][1]):
            counter.labels("a").inc()
            counter.labels("b").inc(2.5)
        for histogram in (pairs[1][0], pairs[1][1]):
            histogram.labels("a").observe(amount)
    assert _exposition(ours) == _exposition(theirs)
    assert 'h_bucket{le="0.01",method="a"} 4.0' in _exposition(ours)


def test_the_library_errors_stay() -> None:
    counter = LoopCounter("c", "requests", ["method"], registry=CollectorRegistry())
    with pytest.raises(ValueError):
        counter.labels("a").inc(-1)
    with pytest.raises(ValueError):
        counter.inc()  # a labelled metric counts through its children only
    histogram = LoopHistogram("h", "seconds", ["method"], buckets=BUCKETS, registry=CollectorRegistry())
    with pytest.raises(ValueError):
        histogram.observe(1.0)
