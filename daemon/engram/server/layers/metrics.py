"""Requests in flight, requests by method and outcome, and how long they took.

The method label is the method's name, or ``(unknown)`` for a name the table does not know: the
label set stays bounded whatever clients send.
"""

from __future__ import annotations

import time
from typing import Any

from engram.observability.metrics import Metrics
from engram.server.chain import Call, CallNext, failure_of


class RequestMetrics:
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        # The labelled children, looked up once per method and outcome: prometheus_client's
        # labels() validates and locks on every call. Bounded: one entry per method name.
        self._counters: dict[tuple[str, str], Any] = {}
        self._histograms: dict[str, Any] = {}
        # Counted here and read when the gauge is collected: cheaper than inc() and dec() on a
        # locked value for every request.
        self.executing = 0
        metrics.in_flight.set_function(lambda: self.executing)

    async def __call__(self, call: Call, call_next: CallNext) -> Any:
        metrics = self._metrics
        label = call.method.name if call.method else "(unknown)"
        failed = False
        self.executing += 1
        try:
            return await call_next(call)
        except BaseException as exc:
            failed = failure_of(exc) is not None
            raise
        finally:
            self.executing -= 1
            key = (label, "error" if failed else "ok")
            counter = self._counters.get(key)
            if counter is None:
                counter = self._counters[key] = metrics.requests.labels(*key)
            counter.inc()
            histogram = self._histograms.get(label)
            if histogram is None:
                histogram = self._histograms[label] = metrics.request_seconds.labels(label)
            histogram.observe(time.perf_counter() - call.started)
