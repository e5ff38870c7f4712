"""The request chain: what a request is on its way in, and how layers wrap one another.

A request runs through a chain of layers, outermost first, each with one job (tracing, metrics,
events, the policy guard, the audit record, ...), and ends in the method's handler. A layer is an
async callable ``layer(call, call_next)``: it may act before and after ``await call_next(call)``,
answer instead of it by raising an :class:`~engram.errors.RPCError`, or translate what comes out
of it (the shape of Starlette's middleware and httpx's transports). The composition root
(:mod:`engram.runtime`) lists the layers in order; :func:`compose` binds each to the next once,
at start, so a request pays one call per layer and allocates nothing for the chain.

A layer that has nothing to do for some methods (the audit record of a method that is not
audited, the deadline of an instant method) says so with ``passes(method)``; the dispatcher
leaves it out of that method's chain (:func:`passes_through`), which then does not pay for it.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import anyio
from pydantic import BaseModel

from engram.deadlines import RequestDeadline
from engram.errors import InternalError, RPCError, Unavailable
from engram.principal import Principal
from engram.server.jsonrpc import Request
from engram.server.methods import Connection, Method

__all__ = ["Call", "CallNext", "Layer", "LayerClock", "compose", "failure_of", "layer_name", "passes_through"]


@dataclass(slots=True, eq=False)
class Call:
    """One request on its way through the chain.

    ``method`` is None for a name the method table does not know (the chain still runs, so that
    the call is traced, counted and answered -32601). Layers fill ``trace_id`` (tracing),
    ``params`` and ``deadline`` (params validation) for the layers inside them and for the
    handler."""

    request: Request
    principal: Principal
    connection: Connection
    serial: int  # the daemon's serial number for this request (logs, events, audit, task_id)
    method: Method | None
    started: float  # time.perf_counter() when the request entered the chain
    trace_id: str | None = None
    params: BaseModel | None = None
    deadline: RequestDeadline | None = None


# The rest of the chain, from a layer's point of view: returns the JSON-ready result.
CallNext = Callable[[Call], Awaitable[Any]]


class Layer(Protocol):
    async def __call__(self, call: Call, call_next: CallNext) -> Any: ...


def compose(layers: Sequence[Layer], endpoint: CallNext, clock: LayerClock | None = None) -> CallNext:
    """One callable running ``layers[0]`` around ``layers[1]`` ... around ``endpoint``; with a
    ``clock``, each layer (and the endpoint) tells it the time it spent on its own."""
    chain = endpoint
    if clock is not None:  # the endpoint as a last layer, which has nothing inside it to call
        chain = functools.partial(clock.timed(layer_name(endpoint), _as_layer(endpoint)), call_next=endpoint)
    for layer in reversed(layers):
        if clock is not None:
            layer = clock.timed(layer_name(layer), layer)
        chain = functools.partial(layer, call_next=chain)
    return chain


def passes_through(layer: Layer, method: Method) -> bool:
    """Whether ``layer`` only hands ``method``'s calls on, unchanged and unobserved (its optional
    ``passes(method)``), so that a chain built for that method may leave it out."""
    passes = getattr(layer, "passes", None)
    return passes is not None and bool(passes(method))


def layer_name(layer: Callable[..., Any]) -> str:
    """A layer's name in measurements: its function's name, or its class's."""
    return getattr(layer, "__name__", None) or type(layer).__name__


def _as_layer(endpoint: CallNext) -> Layer:
    async def run(call: Call, call_next: CallNext) -> Any:
        return await endpoint(call)

    run.__name__ = layer_name(endpoint)
    return run


class LayerClock:
    """The time each layer spends on its own (inner layers not counted): ``counter(name)`` gives
    the function that adds up a layer's seconds, called once per request and layer.

    For measuring the chain (``server.layer_timing``, ``engram bench rpc``): it costs two clock
    readings and a closure per layer and request, and while a request waits, the time of
    whatever else runs then counts too, so its figures mean most for requests that do not wait.
    """

    def __init__(self, counter: Callable[[str], Callable[[float], None]]) -> None:
        self._counter = counter

    def timed(self, name: str, layer: Layer) -> Layer:
        record = self._counter(name)

        async def run(call: Call, call_next: CallNext) -> Any:
            inner = 0.0

            async def timed_next(call: Call) -> Any:
                nonlocal inner
                started = time.perf_counter()
                try:
                    return await call_next(call)
                finally:
                    inner += time.perf_counter() - started

            started = time.perf_counter()
            try:
                return await layer(call, timed_next)
            finally:
                record(time.perf_counter() - started - inner)

        return run


def failure_of(exc: BaseException) -> RPCError | None:
    """What a layer outside the error translation reports for an exception leaving the chain:
    the RPCError itself; for a cancellation (the daemon stopping under it), the error the request
    counts as; None for what is neither (the process is going down)."""
    if isinstance(exc, RPCError):
        return exc
    if isinstance(exc, anyio.get_cancelled_exc_class()):
        return cancelled_error()
    if isinstance(exc, Exception):
        return InternalError(f"unexpected {type(exc).__name__}")
    return None


def cancelled_error() -> Unavailable:
    """A request cut short by the daemon stopping, as telemetry and the audit log record it."""
    return Unavailable("request cancelled: the daemon is stopping", reason="cancelled")
