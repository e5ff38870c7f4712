"""From a validated JSON-RPC request to its response: access, params, handler, errors, telemetry.

Every request, whatever its outcome, publishes ``request.received`` and ``request.completed`` on
the bus, is counted and timed in the metrics, and runs inside an OpenTelemetry span named after
its method. Exceptions are translated here, at the boundary: an :class:`RPCError` raised by a
handler goes to the client as it is; anything else is a bug, logged with its traceback and
answered with -32603 without internals.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import anyio
import structlog
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from pydantic import BaseModel

from engram.bus import EventBus
from engram.bus.events import RequestCompleted, RequestReceived
from engram.config import ServerSettings
from engram.errors import (
    InternalError,
    MethodNotFound,
    PolicyDenied,
    RPCError,
    Timeout,
    Unavailable,
)
from engram.observability.metrics import Metrics
from engram.principal import Principal
from engram.server.jsonrpc import Request
from engram.server.methods import Connection, Method, MethodTable, RequestContext
from engram.server.params import validate_params

log = structlog.get_logger("engram.server")

# A guard decides whether a principal may call a method; it raises PolicyDenied to refuse.
Guard = Callable[[Principal, Method], Awaitable[None]]

# Requests that do not count as foreground work: monitoring, event streams and the sleep part's
# own methods. Sleep consolidation (engram.sleep) yields to every other request and starts on
# idle when none has come for a while.
BACKGROUND_PREFIXES = ("system.", "events.", "sleep.")


class Recorder(Protocol):
    """Makes a served request's audit entry durable and returns its seq (engram.audit.log.AuditLog).

    Raises an RPCError when it cannot: the request then fails with that error, because a
    response must never claim an audit entry that does not exist."""

    async def record_request(
        self,
        *,
        method: str,
        principal: Principal,
        request: int,
        params: Any,
        result: Any = None,
        error: RPCError | None = None,
        connection: int | None = None,
    ) -> int: ...


class Dispatcher:
    def __init__(
        self,
        methods: MethodTable,
        bus: EventBus,
        metrics: Metrics,
        tracer: trace.Tracer,
        settings: Callable[[], ServerSettings],
        owner_uid: int | None = None,
        *,
        guards: list[Guard] | None = None,
        recorder: Recorder | None = None,
    ) -> None:
        self.methods = methods
        self._bus = bus
        self._metrics = metrics
        self._tracer = tracer
        self._settings = settings
        self.owner_uid = os.geteuid() if owner_uid is None else owner_uid
        # Who may call what; by default the owner-only rule of each method.
        self.guards: list[Guard] = guards if guards is not None else [self._owner_only]
        self._serial = itertools.count(1)
        self.recorder = recorder  # the audit log: audited requests are answered only once recorded
        self._large_requests: anyio.CapacityLimiter | None = None  # made on first use: it needs the loop
        # Foreground activity, read by the sleep part: requests in flight now, and the monotonic
        # time the last one arrived or finished.
        self.foreground = 0
        self.last_foreground = time.monotonic()

    async def _validate(self, method: Method, request: Request) -> BaseModel:
        if not request.large:
            return validate_params(method, request.params)
        # Checking and validating a large frame's values takes as long as parsing them did:
        # in a thread too, one at a time, so that the loop keeps serving everyone else.
        if self._large_requests is None:
            self._large_requests = anyio.CapacityLimiter(1)
        return await anyio.to_thread.run_sync(validate_params, method, request.params, True, limiter=self._large_requests)

    async def _record_failure(
        self, method: Method, principal: Principal, serial: int, request: Request, connection: Connection, exc: RPCError
    ) -> RPCError:
        """Record a failed audited request; returns the error to answer with: ``exc`` carrying
        ``data.audit_seq``, or the audit failure when the entry could not be made durable."""
        assert self.recorder is not None
        try:
            exc.data["audit_seq"] = await self.recorder.record_request(
                method=method.name,
                principal=principal,
                request=serial,
                params=request.params,
                error=exc,
                connection=connection.id,
            )
        except RPCError as audit_error:
            return audit_error
        except Exception as audit_error:
            log.exception("audit recorder failed", method=method.name, request=serial)
            return InternalError(f"the audit entry of {method.name} could not be recorded ({type(audit_error).__name__})")
        return exc

    async def _owner_only(self, principal: Principal, method: Method) -> None:
        if method.owner_only and principal.uid not in (self.owner_uid, 0):
            raise PolicyDenied(
                f"{method.name} may only be called by the daemon's owner (uid {self.owner_uid})",
                reason="owner_only",
                method=method.name,
                uid=principal.uid,
            )

    async def dispatch(self, request: Request, principal: Principal, connection: Connection) -> Any:
        """Run one request; returns its result or raises the RPCError to send back."""
        serial = next(self._serial)
        # model_construct: the values are ours and already typed; validating them again per
        # request is a measurable cost on the hot path.
        self._bus.publish(
            RequestReceived.model_construct(
                connection=connection.id, request=serial, method=request.method, principal=principal, time=time.time()
            )
        )
        started = time.perf_counter()
        method = self.methods.get(request.method)
        metric_method = method.name if method else "(unknown)"  # bounded label set
        error: RPCError | None = None
        trace_id = None
        # Audited requests get exactly one durable entry, whatever their outcome (unknown methods
        # are not audited: they did nothing, and their names are the client's free text).
        audited = self.recorder is not None and method is not None and method.audit
        recorded = False
        with self._tracer.start_as_current_span(
            request.method if method else "(unknown method)",
            kind=SpanKind.SERVER,
            attributes={
                "rpc.system": "jsonrpc",
                "rpc.method": request.method,
                "rpc.jsonrpc.version": "2.0",
                "engram.request": serial,
                "engram.connection": connection.id,
                "engram.peer.uid": principal.uid,
                "engram.peer.pid": principal.pid or 0,
            },
        ) as span:
            ctx_span = span.get_span_context()
            trace_id = format(ctx_span.trace_id, "032x") if ctx_span.is_valid else None
            foreground = not request.method.startswith(BACKGROUND_PREFIXES)
            if foreground:
                self.foreground += 1
                self.last_foreground = time.monotonic()
            self._metrics.in_flight.inc()
            try:
                if method is None:
                    raise MethodNotFound(f"no method named {request.method!r}", method=request.method)
                for guard in self.guards:
                    await guard(principal, method)
                params = await self._validate(method, request)
                ctx = RequestContext(
                    principal=principal, connection=connection, request=serial, trace_id=trace_id, method=method.name
                )
                limit = method.timeout or self._settings().request_timeout
                try:
                    with anyio.fail_after(limit):
                        result = await method.handler(ctx, params)
                except TimeoutError:
                    raise Timeout(f"{method.name} did not finish within {limit:g} s", limit_s=limit) from None
                response = result.model_dump(mode="json") if isinstance(result, BaseModel) else result
                if audited:
                    recorded = True  # a failure to record is itself the answer; never record twice
                    seq = await self.recorder.record_request(  # type: ignore[union-attr]
                        method=method.name,
                        principal=principal,
                        request=serial,
                        params=request.params,
                        result=response,
                        connection=connection.id,
                    )
                    if isinstance(response, dict):
                        response["audit_seq"] = seq
                return response
            except RPCError as exc:
                error = exc
                if audited and not recorded:
                    error = await self._record_failure(method, principal, serial, request, connection, exc)  # type: ignore[arg-type]
                if error is exc:
                    raise
                raise error from None
            except anyio.get_cancelled_exc_class():
                error = Unavailable("request cancelled: the daemon is stopping", reason="cancelled")
                if audited and not recorded:
                    with anyio.CancelScope(shield=True):  # bounded by the recorder's own timeout
                        await self._record_failure(method, principal, serial, request, connection, error)  # type: ignore[arg-type]
                raise
            except Exception as exc:
                log.exception("handler failed", method=request.method, request=serial)
                error = InternalError(f"{request.method} failed unexpectedly ({type(exc).__name__})")
                if audited and not recorded:
                    error = await self._record_failure(method, principal, serial, request, connection, error)  # type: ignore[arg-type]
                raise error from exc
            finally:
                self._metrics.in_flight.dec()
                if foreground:
                    self.foreground -= 1
                    self.last_foreground = time.monotonic()
                elapsed = time.perf_counter() - started
                outcome = "ok" if error is None else "error"
                self._metrics.requests.labels(metric_method, outcome).inc()
                self._metrics.request_seconds.labels(metric_method).observe(elapsed)
                log.debug(
                    "request",
                    method=request.method,
                    request=serial,
                    uid=principal.uid,
                    outcome=outcome,
                    ms=round(elapsed * 1000, 3),
                    reason=error.reason if error else None,
                )
                if error is not None:
                    span.set_status(Status(StatusCode.ERROR, error.message))
                    span.set_attribute("rpc.jsonrpc.error_code", error.code)
                    span.set_attribute("engram.error.reason", error.reason)
                self._bus.publish(
                    RequestCompleted.model_construct(
                        time=time.time(),
                        connection=connection.id,
                        request=serial,
                        method=request.method,
                        outcome=outcome,
                        error_code=error.code if error else None,
                        error_reason=error.reason if error else None,
                        duration_ms=round(elapsed * 1000, 3),
                        trace_id=trace_id,
                        principal=principal,
                    )
                )
