"""Who may call what: a name the method table does not know is -32601, and the guards (the
policy's method guard, in the daemon) decide for every known method before its params are read.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from engram.errors import MethodNotFound
from engram.principal import Principal
from engram.server.chain import Call, CallNext
from engram.server.methods import Method

# A guard decides whether a principal may call a method; it raises PolicyDenied to refuse.
Guard = Callable[[Principal, Method], Awaitable[None]]


async def require_method(call: Call, call_next: CallNext) -> Any:
    if call.method is None:
        raise MethodNotFound(f"no method named {call.request.method!r}", method=call.request.method)
    return await call_next(call)


class Guards:
    """Runs each guard in order; the first to refuse answers the request. Inside
    :func:`require_method`: the method is known."""

    def __init__(self, guards: Sequence[Guard]) -> None:
        self._guards = tuple(guards)

    async def __call__(self, call: Call, call_next: CallNext) -> Any:
        method: Method = call.method  # type: ignore[assignment]
        for guard in self._guards:
            await guard(call.principal, method)
        return await call_next(call)
