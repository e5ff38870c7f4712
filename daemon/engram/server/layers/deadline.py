"""The handler gets the method's own timeout, else ``server.request_timeout`` (read per request:
a reload changes it); past it the request is cancelled and answered -32004 with ``limit_s``.

An instant method (``Method.instant``) gets no cancel scope: it never waits, so nothing could
cancel it before it is done anyway, and the scope would be a third of its cost. Its chain leaves
this layer out (``passes``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio

from engram.errors import Timeout
from engram.server.chain import Call, CallNext
from engram.server.methods import Method
from engram.server.settings import ServerSettings


class Deadline:
    def __init__(self, settings: Callable[[], ServerSettings]) -> None:
        self._settings = settings

    def passes(self, method: Method) -> bool:
        return method.instant

    async def __call__(self, call: Call, call_next: CallNext) -> Any:
        method: Method = call.method  # type: ignore[assignment]
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
