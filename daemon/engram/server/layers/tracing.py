"""Each request runs inside an OpenTelemetry server span named after its method.

The span is the current one while the inner layers and the handler run, so their own spans nest
under it; its trace id goes to the handler (``RequestContext.trace_id``) and to
``request.completed``. A failed request's span says so, with the JSON-RPC code and reason.

A client that sends its W3C trace context (``params._meta.traceparent``) gets the request's span
as a child of its own: the same trace id end to end. The value is read here, before the params
layer validates ``_meta`` (a malformed one is then answered -32602, its span a root span).
A transport with headers (HTTP) puts its ``traceparent`` header into the request's ``_meta``
(:func:`engram.server.jsonrpc.with_traceparent`) and the same path follows.
"""

from __future__ import annotations

from typing import Any

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from engram.errors import RPCError
from engram.observability.tracing import remote_parent
from engram.server.chain import Call, CallNext, failure_of
from engram.server.methods import Method


class Tracing:
    def __init__(self, tracer: trace.Tracer) -> None:
        self._tracer = tracer
        # The daemon's tracer is a no-op one when spans go nowhere (tracing.exporter = none): its
        # span would be the invalid span, with no trace id, and nothing nests under it that a
        # missing span would not give as well; so the request skips it and its attribute dict.
        self._records = not isinstance(tracer, trace.NoOpTracer)

    def passes(self, method: Method) -> bool:
        return not self._records

    async def __call__(self, call: Call, call_next: CallNext) -> Any:
        if not self._records:
            return await call_next(call)
        request = call.request
        meta = request.meta
        traceparent = meta.get("traceparent") if isinstance(meta, dict) else None
        with self._tracer.start_as_current_span(
            request.method if call.method else "(unknown method)",
            kind=SpanKind.SERVER,
            attributes={
                "rpc.system": "jsonrpc",
                "rpc.method": request.method,
                "rpc.jsonrpc.version": "2.0",
                "engram.request": call.serial,
                "engram.connection": call.connection.id,
                "engram.peer.uid": call.principal.uid,
                "engram.peer.pid": call.principal.pid or 0,
            },
            context=remote_parent(traceparent) if isinstance(traceparent, str) else None,
        ) as span:
            context = span.get_span_context()
            call.trace_id = format(context.trace_id, "032x") if context.is_valid else None
            error: RPCError | None = None
            try:
                return await call_next(call)
            except BaseException as exc:
                error = failure_of(exc)
                raise
            finally:
                if error is not None:
                    span.set_status(Status(StatusCode.ERROR, error.message))
                    span.set_attribute("rpc.jsonrpc.error_code", error.code)
                    span.set_attribute("engram.error.reason", error.reason)
