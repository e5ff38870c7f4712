"""The handler gets the method's own timeout, else ``server.request_timeout`` (read per request:
a reload changes it); past it the request is cancelled and answered -32004 with ``limit_s``.

A request with a deadline (``params._meta.deadline_ms``, :class:`~engram.deadlines.RequestDeadline`)
is checked here, just before its handler would start: if the deadline has passed (it waited in a
batch, for the policy, for its params to be validated), it is answered -32004 ``deadline_missed``
(``data.where``: ``before_run``) and the handler never runs. Otherwise the handler is cancelled at
whichever comes first, the timeout or the deadline; at the deadline the answer is -32004
``deadline`` (``data.deadline_ms``), or ``deadline_missed`` if the request's work was still
waiting in a queue then (``RequestDeadline.waiting_in``, e.g. ``batcher``), and so never ran.
Requests with deadlines and each kind of miss are counted (``engram_deadline_requests_total``,
``engram_deadline_misses_total{where}``).

An instant method (``Method.instant``) gets no cancel scope: it never waits, so nothing could
cancel it before it is done anyway, and the scope would be a third of its cost. Its chain leaves
this layer out (``passes``), except for a request with ``params._meta``, which the dispatcher
runs through the whole chain so that its deadline is checked."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio

from engram.deadlines import RequestDeadline
from engram.errors import Timeout
from engram.observability.metrics import Metrics
from engram.server.chain import Call, CallNext
from engram.server.methods import Method
from engram.server.settings import ServerSettings

BEFORE_RUN = "before_run"
RUNNING = "running"


class Deadline:
    def __init__(self, settings: Callable[[], ServerSettings], metrics: Metrics) -> None:
        self._settings = settings
        self._requests = metrics.deadline_requests
        self._misses = metrics.deadline_misses
        self._miss_counters: dict[str, Any] = {}  # by where: labels() locks and validates per call

    def passes(self, method: Method) -> bool:
        return method.instant

    async def __call__(self, call: Call, call_next: CallNext) -> Any:
        method: Method = call.method  # type: ignore[assignment]
        if call.deadline is not None:
            return await self._within_deadline(call, call_next, call.deadline)
        if method.instant:
            return await call_next(call)
        limit = method.timeout or self._settings().request_timeout
        # A bare cancel scope rather than fail_after, whose generator-based context manager and
        # extra backend lookups cost a third more per request. Past the block only when the scope
        # swallowed its own deadline's cancellation. A TimeoutError of the handler's own counts
        # as the request's, as it did under fail_after.
        try:
            with anyio.CancelScope(deadline=anyio.current_time() + limit):
                return await call_next(call)
        except TimeoutError:
            pass
        raise Timeout(f"{method.name} did not finish within {limit:g} s", limit_s=limit)

    async def _within_deadline(self, call: Call, call_next: CallNext, deadline: RequestDeadline) -> Any:
        method: Method = call.method  # type: ignore[assignment]
        self._requests.inc()
        remaining = deadline.remaining()
        if remaining <= 0:
            self._missed(BEFORE_RUN)
            raise deadline.missed(BEFORE_RUN)
        if method.instant:
            return await call_next(call)
        limit = method.timeout or self._settings().request_timeout
        try:
            with anyio.CancelScope(deadline=anyio.current_time() + min(limit, remaining)):
                return await call_next(call)
        except TimeoutError:
            pass
        except Timeout as exc:
            if exc.reason == "deadline_missed":  # a queue found it expired when its turn came
                self._missed(str(exc.data.get("where", RUNNING)))
            raise
        if remaining >= limit:
            raise Timeout(f"{method.name} did not finish within {limit:g} s", limit_s=limit)
        if deadline.waiting_in is not None:
            self._missed(deadline.waiting_in)
            raise deadline.missed(deadline.waiting_in)
        self._missed(RUNNING)
        raise Timeout(
            f"{method.name} did not finish within its deadline of {deadline.ms} ms", reason="deadline",
            deadline_ms=deadline.ms,
        )

    def _missed(self, where: str) -> None:
        counter = self._miss_counters.get(where)
        if counter is None:
            counter = self._miss_counters[where] = self._misses.labels(where)
        counter.inc()
