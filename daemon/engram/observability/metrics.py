"""Metrics in the Prometheus text exposition format.

``prometheus_client`` is the reference implementation of that format, so ``engram metrics`` and
``system.metrics`` print exactly what a Prometheus scrape (or node_exporter's textfile collector)
expects. The registry is the daemon's own, not the library's global one. Parts that keep their
own counters register a collector that reads them at scrape time instead of pushing updates.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

# Request latency buckets from 100 µs (a ping) to 60 s (the default request timeout).
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class _LoopValue:
    """A sample's value without the lock of prometheus_client's MutexValue, which every inc()
    takes: for series that only the event loop thread updates (then nothing can interleave)."""

    __slots__ = ("value", "exemplar")

    def __init__(self) -> None:
        self.value = 0.0
        self.exemplar: Any = None

    def inc(self, amount: float) -> None:
        self.value += amount

    def set(self, value: float, timestamp: float | None = None) -> None:
        self.value = value

    def get(self) -> float:
        return self.value

    def set_exemplar(self, exemplar: Any) -> None:
        self.exemplar = exemplar

    def get_exemplar(self) -> Any:
        return self.exemplar


class LoopCounter(Counter):
    """A Counter for what the request chain counts on the event loop, once or more per request:
    the same series and exposition, without a lock and two checks per inc()."""

    def _metric_init(self) -> None:
        super()._metric_init()
        self._value = _LoopValue()  # type: ignore[assignment]

    def inc(self, amount: float = 1, exemplar: dict[str, str] | None = None) -> None:
        if exemplar or amount < 0 or not self._labelvalues and self._labelnames:
            super().inc(amount, exemplar)  # the library's checks and errors
            return
        self._value.value += amount  # type: ignore[attr-defined]


class LoopHistogram(Histogram):
    """A Histogram for request latencies observed on the event loop: the same series and
    exposition; its bucket is found by bisection instead of a Python loop over the bounds, and
    its values take no lock."""

    def _metric_init(self) -> None:
        super()._metric_init()
        self._sum = _LoopValue()  # type: ignore[assignment]
        self._buckets = [_LoopValue() for _ in self._upper_bounds]  # type: ignore[misc]

    def observe(self, amount: float, exemplar: dict[str, str] | None = None) -> None:
        if exemplar or not self._labelvalues and self._labelnames:
            super().observe(amount, exemplar)
            return
        self._sum.value += amount  # type: ignore[attr-defined]
        index = bisect.bisect_left(self._upper_bounds, amount)
        if index < len(self._upper_bounds) and amount <= self._upper_bounds[index]:  # NaN: no bucket
            self._buckets[index].value += 1  # type: ignore[attr-defined]


class _CallbackCollector(Collector):
    def __init__(self, callback: Callable[[], Iterable[Metric]]) -> None:
        self._callback = callback

    def collect(self) -> Iterable[Metric]:
        return self._callback()


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # Counted by the request chain, on the event loop only (see LoopCounter, LoopHistogram).
        self.requests = LoopCounter("engram_requests", "RPC requests by method and outcome.", ["method", "outcome"], registry=r)
        self.request_seconds = LoopHistogram(
            "engram_request_duration_seconds", "RPC request latency.", ["method"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.in_flight = Gauge("engram_requests_in_flight", "RPC requests executing now.", registry=r)
        self.request_layer_seconds = Counter(
            "engram_request_layer_seconds",
            "Time spent in each layer of the request chain on its own (only with server.layer_timing).",
            ["layer"],
            registry=r,
        )
        self.deadline_requests = LoopCounter(
            "engram_deadline_requests",
            "RPC requests with a deadline (params._meta.deadline_ms) that came to their handler's turn "
            "(past the policy and params validation).",
            registry=r,
        )
        self.deadline_misses = LoopCounter(
            "engram_deadline_misses",
            "Requests answered -32004 because their deadline passed, by where they were then: before_run "
            "(waiting to start), batcher (queued for a model), running.",
            ["where"],
            registry=r,
        )
        self.connections = Gauge("engram_connections", "Open client connections.", registry=r)
        self.connections_accepted = Counter("engram_connections_accepted", "Connections accepted.", registry=r)
        self.connections_refused = Counter(
            "engram_connections_refused", "Connections refused (connection limit or stopping).", registry=r
        )
        self.frames_rejected = Counter(
            "engram_frames_rejected", "Frames answered with a protocol error, by reason.", ["reason"], registry=r
        )

    def add_collector(self, callback: Callable[[], Iterable[Metric]]) -> None:
        """Register a function that yields metric families at scrape time."""
        self.registry.register(_CallbackCollector(callback))

    def text(self) -> str:
        return generate_latest(self.registry).decode()

    def snapshot(self) -> list[dict[str, Any]]:
        """The same metrics as structured data (for ``--json`` and programs)."""
        families = []
        for family in self.registry.collect():
            families.append(
                {
                    "name": family.name,
                    "type": family.type,
                    "help": family.documentation,
                    "samples": [
                        {"name": s.name, "labels": dict(s.labels), "value": s.value} for s in family.samples
                    ],
                }
            )
        return families
