"""From a validated JSON-RPC request to its response: the method table and the request chain.

The dispatcher numbers each request, looks its method up and runs it through the layers the
composition root gave it (:mod:`engram.server.chain`, :mod:`engram.server.layers`), which end in
the method's handler. What the layers do (tracing, metrics, events, the policy guard, the audit
record, ...) is theirs; the dispatcher knows only requests and the method table.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel

from engram.principal import Principal
from engram.server.chain import Call, CallNext, Layer, LayerClock, compose, passes_through
from engram.server.jsonrpc import Request
from engram.server.methods import Connection, Method, MethodTable, RequestContext

__all__ = ["Dispatcher", "call_handler"]


async def call_handler(call: Call) -> Any:
    """The end of the chain: the method's handler with the validated params; returns the result
    as JSON-ready values (a result model dumped)."""
    method: Method = call.method  # type: ignore[assignment]  # known: the access layer checked
    ctx = RequestContext(
        principal=call.principal, connection=call.connection, request=call.serial, trace_id=call.trace_id,
        method=method.name, deadline=call.deadline,
    )
    result = await method.handler(ctx, call.params)
    return result.model_dump(mode="json") if isinstance(result, BaseModel) else result


class Dispatcher:
    def __init__(self, methods: MethodTable, layers: Sequence[Layer], clock: LayerClock | None = None) -> None:
        self.methods = methods
        self._layers = tuple(layers)
        self._clock = clock
        # Bound once, not per request: the whole chain for names the table does not know, and for
        # each method, on its first request, a chain without the layers that pass it through.
        self._chain: CallNext = compose(layers, call_handler, clock)
        self._chains: dict[str, tuple[Method, CallNext]] = {}
        self._serial = itertools.count(1)

    def _chain_for(self, method: Method | None) -> CallNext:
        if method is None:
            return self._chain
        bound = self._chains.get(method.name)
        if bound is None or bound[0] is not method:
            layers = [layer for layer in self._layers if not passes_through(layer, method)]
            bound = self._chains[method.name] = (method, compose(layers, call_handler, self._clock))
        return bound[1]

    def runs_inline(self, request: Request) -> bool:
        """Whether the connection may run ``request`` in its read loop: an instant method
        (:attr:`Method.instant`) in a frame small enough to validate on the spot."""
        method = self.methods.get(request.method)
        return method is not None and method.instant and not request.large

    async def dispatch(self, request: Request, principal: Principal, connection: Connection) -> Any:
        """Run one request; returns its result or raises the RPCError to send back."""
        method = self.methods.get(request.method)
        call = Call(request, principal, connection, next(self._serial), method, time.perf_counter())
        if request.meta is not None:  # its deadline is checked even where the method's chain has no Deadline layer
            return await self._chain(call)
        return await self._chain_for(method)(call)
