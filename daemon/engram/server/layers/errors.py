"""Exceptions are translated here, at the boundary: an :class:`RPCError` goes to the client as it
is; anything else is a bug, logged with its traceback and answered with -32603 without internals.

Everything inside this layer (guards, params, the handler) may raise what it likes; everything
outside it (the audit record, telemetry) sees only RPCErrors and cancellation.
"""

from __future__ import annotations

from typing import Any

import structlog

from engram.errors import InternalError, RPCError
from engram.server.chain import Call, CallNext

log = structlog.get_logger("engram.server")


async def translate_errors(call: Call, call_next: CallNext) -> Any:
    try:
        return await call_next(call)
    except RPCError:
        raise
    except Exception as exc:
        log.exception("handler failed", method=call.request.method, request=call.serial)
        raise InternalError(f"{call.request.method} failed unexpectedly ({type(exc).__name__})") from exc
