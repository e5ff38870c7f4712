"""The request's params, validated by the method's model (:mod:`engram.server.params`) into
``Call.params`` for the handler, and its ``params._meta`` into ``Call.deadline`` (and, when the
request's span did not already give one, ``Call.trace_id`` from ``_meta.traceparent``).

A large frame's values take as long to check and validate as they took to parse: that runs in a
worker thread too, one such request at a time, so that the loop keeps serving everyone else.
"""

from __future__ import annotations

from typing import Any

import anyio

from engram.server.chain import Call, CallNext
from engram.server.methods import Method
from engram.server.params import parse_meta, validate_params


class ParamsValidation:
    def __init__(self) -> None:
        self._large_requests: anyio.CapacityLimiter | None = None  # made on first use: it needs the loop

    async def __call__(self, call: Call, call_next: CallNext) -> Any:
        method: Method = call.method  # type: ignore[assignment]
        request = call.request
        if request.meta is not None:
            meta = parse_meta(request.meta)
            call.deadline = meta.deadline(request.received)
            if call.trace_id is None:  # not traced here: events still carry the client's trace id
                call.trace_id = meta.trace_id
        if not request.large:
            call.params = validate_params(method, request.params)
        else:
            if self._large_requests is None:
                self._large_requests = anyio.CapacityLimiter(1)
            call.params = await anyio.to_thread.run_sync(
                validate_params, method, request.params, True, limiter=self._large_requests
            )
        return await call_next(call)
