"""The audit log's layer of the request chain: every audited request gets exactly one ``rpc``
entry, whatever its outcome; a request that changes state gets it durable before it is answered.

A result carries the entry's ``audit_seq``, an error carries it in ``data.audit_seq``. When the
entry cannot be made durable, the request fails with that error instead: a response never claims
an entry that does not exist. Unknown methods are not audited (they did nothing, and their names
are the client's free text), nor methods declared ``audit=False``.

Reads (methods declared ``read_only``) do not wait for the disk: their entry is queued and
group-committed with the next batch, after the answer, which therefore carries no ``audit_seq``.
A seq is only ever shown once its entry is durable, so a crash, which can lose the reads answered
in the last group-commit window, never leaves a client holding a seq that a later entry takes.
A read whose entry cannot even be queued (queue full, log stopped) fails with that error.

It sits inside the telemetry layers, which then see the answer the client gets, and outside the
error translation (:mod:`engram.server.layers.errors`), so that what it records is an RPCError.
"""

from __future__ import annotations

from typing import Any, Protocol

import anyio
import structlog

from engram.errors import InternalError, RPCError
from engram.principal import Principal
from engram.server.chain import Call, CallNext, cancelled_error
from engram.server.methods import Method

__all__ = ["AuditRecord", "RequestRecorder"]

log = structlog.get_logger("engram.audit")


class RequestRecorder(Protocol):
    """Records served requests (:class:`engram.audit.log.AuditLog`): ``record_request`` makes the
    entry durable and returns its seq, ``enqueue_request`` (reads) only queues it; both raise an
    RPCError when they cannot."""

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

    def enqueue_request(
        self,
        *,
        method: str,
        principal: Principal,
        request: int,
        params: Any,
        result: Any = None,
        error: RPCError | None = None,
        connection: int | None = None,
    ) -> None: ...


class AuditRecord:
    def __init__(self, recorder: RequestRecorder) -> None:
        self._recorder = recorder

    def passes(self, method: Method) -> bool:
        return not method.audit

    async def __call__(self, call: Call, call_next: CallNext) -> Any:
        method = call.method
        if method is None or not method.audit:
            return await call_next(call)
        if method.read_only:
            return await self._answer_read(call, call_next)
        try:
            response = await call_next(call)
        except RPCError as exc:
            answer = await self._record_failure(call, exc)
            if answer is exc:
                raise
            raise answer from None
        except anyio.get_cancelled_exc_class():
            with anyio.CancelScope(shield=True):  # bounded by the recorder's own timeout
                await self._record_failure(call, cancelled_error())
            raise
        # Outside the try: a failure to record is itself the answer, and is never recorded again.
        seq = await self._record(call, result=response)
        if isinstance(response, dict):
            response["audit_seq"] = seq
        return response

    async def _record_failure(self, call: Call, exc: RPCError) -> RPCError:
        """Record a failed request; returns the error to answer with: ``exc`` carrying
        ``data.audit_seq``, or the audit failure when the entry could not be made durable."""
        try:
            exc.data["audit_seq"] = await self._record(call, error=exc)
        except RPCError as audit_error:
            return audit_error
        return exc

    async def _record(self, call: Call, *, result: Any = None, error: RPCError | None = None) -> int:
        name = call.method.name  # type: ignore[union-attr]  # audited: known
        try:
            return await self._recorder.record_request(**_entry(call, result, error))
        except RPCError:
            raise
        except Exception as exc:
            log.exception("audit recorder failed", method=name, request=call.serial)
            raise InternalError(f"the audit entry of {name} could not be recorded ({type(exc).__name__})") from None

    async def _answer_read(self, call: Call, call_next: CallNext) -> Any:
        try:
            response = await call_next(call)
        except RPCError as exc:
            failure = self._enqueue(call, error=exc)
            if failure is None:
                raise
            raise failure from None
        except anyio.get_cancelled_exc_class():
            self._enqueue(call, error=cancelled_error())  # the cancellation is the answer either way
            raise
        failure = self._enqueue(call, result=response)
        if failure is not None:
            raise failure
        return response

    def _enqueue(self, call: Call, *, result: Any = None, error: RPCError | None = None) -> RPCError | None:
        """Queue a read's entry; returns the error to answer with when it could not be queued."""
        name = call.method.name  # type: ignore[union-attr]  # audited: known
        try:
            self._recorder.enqueue_request(**_entry(call, result, error))
        except RPCError as audit_error:
            return audit_error
        except Exception as exc:
            log.exception("audit recorder failed", method=name, request=call.serial)
            return InternalError(f"the audit entry of {name} could not be recorded ({type(exc).__name__})")
        return None


def _entry(call: Call, result: Any, error: RPCError | None) -> dict[str, Any]:
    """What the recorder is told of a request, for its ``rpc`` entry."""
    return {
        "method": call.method.name,  # type: ignore[union-attr]  # audited: known
        "principal": call.principal,
        "request": call.serial,
        "params": call.request.params,
        "result": result,
        "error": error,
        "connection": call.connection.id,
    }
