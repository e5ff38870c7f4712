"""Every request, whatever its outcome, is announced on the bus when it arrives and when it ends.

``request.received`` goes out before anything else looks at the request; ``request.completed``
carries the outcome, the error code and reason, the duration and the trace id, and the same
facts go to the debug log (``trace_id`` included, to find a request's spans from its log line).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import structlog

from engram.bus import EventBus
from engram.bus.events import RequestCompleted, RequestReceived
from engram.errors import RPCError
from engram.observability.logging import logs_at
from engram.server.chain import Call, CallNext, failure_of

log = structlog.get_logger("engram.server")


class RequestEvents:
    def __init__(self, bus: EventBus) -> None:
        self._bus = bus

    async def __call__(self, call: Call, call_next: CallNext) -> Any:
        principal = call.principal
        bus = self._bus
        # Nobody following request.* (the usual case) means no event to build. model_construct:
        # the values are ours and already typed; validating them again per request is a
        # measurable cost on the hot path.
        if bus.wants(RequestReceived.topic):
            bus.publish(
                RequestReceived.model_construct(
                    connection=call.connection.id, request=call.serial, method=call.request.method,
                    principal=principal, time=time.time(),
                )
            )
        error: RPCError | None = None
        try:
            return await call_next(call)
        except BaseException as exc:
            error = failure_of(exc)
            raise
        finally:
            # Both consumers are usually off: then nothing below is built.
            debug = logs_at(logging.DEBUG)
            if debug or bus.wants(RequestCompleted.topic):
                self._completed(call, error, debug)

    def _completed(self, call: Call, error: RPCError | None, debug: bool) -> None:
        ms = round((time.perf_counter() - call.started) * 1000, 3)
        outcome = "ok" if error is None else "error"
        if debug:
            log.debug(
                "request", method=call.request.method, request=call.serial, uid=call.principal.uid, outcome=outcome,
                ms=ms, reason=error.reason if error else None, trace_id=call.trace_id,
            )
        if self._bus.wants(RequestCompleted.topic):
            self._bus.publish(
                RequestCompleted.model_construct(
                    time=time.time(),
                    connection=call.connection.id,
                    request=call.serial,
                    method=call.request.method,
                    outcome=outcome,
                    error_code=error.code if error else None,
                    error_reason=error.reason if error else None,
                    duration_ms=ms,
                    trace_id=call.trace_id,
                    principal=call.principal,
                )
            )
