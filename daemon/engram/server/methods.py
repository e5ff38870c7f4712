"""The method table: every RPC method, its params and result models, and its handler.

Parts declare methods with :func:`rpc` on async methods whose signature carries the models::

    class Pinger:
        @rpc("system.ping", summary="Check that the daemon answers.")
        async def ping(self, ctx: RequestContext, params: PingParams) -> PingResult: ...

The composition root collects them into one :class:`MethodTable`, which the dispatcher, the
``schemas/`` generator and the documentation test all read: a method cannot exist without a
schema, and cannot be documented without existing.
"""

from __future__ import annotations

import os
import types
import typing
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Annotated, Any, Protocol

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, JsonValue
from pydantic_core import PydanticCustomError

from engram.deadlines import RequestDeadline
from engram.principal import Principal


class Params(BaseModel):
    """Base of every params model: unknown fields are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", defer_build=True)


# Free JSON (metadata, echoes, sample payloads) is walked by pydantic in one call into compiled
# code that holds the interpreter throughout; a million tiny values would hold the event loop for
# a second even from a worker thread. Counted first, in Python, stopping at the bound.
FREE_JSON_MAX_VALUES = 10_000


def _few_values(value: Any) -> Any:
    pending, count = [value], 0
    while pending:
        item = pending.pop()
        count += 1
        if count > FREE_JSON_MAX_VALUES:
            raise PydanticCustomError(
                "too_many_values",
                "free JSON holds at most {limit} values",
                {"limit": FREE_JSON_MAX_VALUES, "reason": "too_many_values"},
            )
        if isinstance(item, dict):
            pending += item.values()
        elif isinstance(item, list):
            pending += item
    return value


FreeJson = Annotated[JsonValue, BeforeValidator(_few_values)]
"""Any JSON value of at most FREE_JSON_MAX_VALUES values (containers count too)."""

FreeJsonObject = Annotated[dict[str, JsonValue], BeforeValidator(_few_values)]
"""Any JSON object of at most FREE_JSON_MAX_VALUES values."""


class Result(BaseModel):
    model_config = ConfigDict(extra="forbid", defer_build=True)

    # Set by the audit layer (engram.audit.layer) on the response of every audited method that is
    # not read_only; absent from the responses of methods that are not audited, and of reads,
    # whose entries are committed after the answer (a seq is shown only once it is durable).
    audit_seq: int | None = Field(
        default=None,
        description="seq of this request's entry in the signed audit log (prove it with audit.prove).",
        exclude_if=lambda value: value is None,
    )


class NoParams(Params):
    pass


class Connection(Protocol):
    """What a handler may do with the connection its request came on."""

    id: int
    subscriptions: int  # open event subscriptions; a connection with any is not idle

    async def notify(self, method: str, params: dict[str, Any]) -> None: ...

    def on_close(self, callback: Callable[[], None]) -> None: ...

    def declare_client(self, name: str) -> Principal:
        """Attach a client-declared (unverified) name to this connection's principal."""

    def on_drain(self, pending: Callable[[], int]) -> None:
        """Register a count of messages still to push; closing waits (briefly) for it to be 0."""

    def start_soon(self, func: Callable[[], Awaitable[None]], name: str) -> None: ...


class NoClient:
    """The :class:`Connection` of work no client waits on (a task's steps, memory's LLM
    extraction): what a handler would send it goes nowhere; it has id 0 in events and audit
    entries, and the daemon's own user as principal."""

    id = 0
    subscriptions = 0

    async def notify(self, method: str, params: dict[str, Any]) -> None:
        pass

    def on_close(self, callback: Callable[[], None]) -> None:
        pass

    def declare_client(self, name: str) -> Principal:
        return Principal.from_ids(os.getuid(), os.getgid(), os.getpid())

    def on_drain(self, pending: Callable[[], int]) -> None:
        pass

    def start_soon(self, func: Callable[[], Awaitable[None]], name: str) -> None:
        pass


@dataclass(frozen=True, slots=True)
class RequestContext:
    principal: Principal
    connection: Connection
    request: int  # the daemon's serial number for this request (logs, events, audit)
    trace_id: str | None = None
    method: str | None = None  # the method served; None for work no request asked for
    # The client's deadline (params._meta.deadline_ms), for the queues the work waits in; None
    # when it gave none. The request chain already cancels the handler when it passes.
    deadline: RequestDeadline | None = None


Handler = Callable[[RequestContext, Any], Awaitable[Any]]


@dataclass(frozen=True)
class Method:
    name: str
    handler: Handler
    params: type[Params]
    result: type[BaseModel]
    summary: str
    owner_only: bool = False  # only the daemon's own uid (and root) may call it
    timeout: float | None = None  # overrides server.request_timeout (e.g. long-running work)
    audit: bool = True  # each request gets an audit entry; False only for pure introspection
    # Changes nothing a client asked to change (access bookkeeping aside): its audit entry is
    # group-committed after the answer instead of before it, and the answer has no audit_seq.
    read_only: bool = False
    # Answers without waiting on anything (no I/O, no lock, no thread, no audit entry to make
    # durable): the connection runs it inline, with no task of its own and no cancel scope for
    # its deadline, which it cannot overrun by waiting. Only for the cheapest introspection.
    instant: bool = False


@dataclass
class _Declaration:
    name: str
    summary: str
    owner_only: bool
    timeout: float | None
    audit: bool = True
    read_only: bool = False
    instant: bool = False


def rpc(
    name: str,
    *,
    summary: str,
    owner_only: bool = False,
    timeout: float | None = None,
    audit: bool = True,
    read_only: bool = False,
    instant: bool = False,
) -> Callable:
    """Mark an async method of a part as the handler of RPC method ``name``."""
    if instant and audit:
        raise ValueError(f"{name}: an instant method is not audited (its entry would be a wait)")

    def mark(func: Callable) -> Callable:
        func.__engram_rpc__ = _Declaration(name, summary, owner_only, timeout, audit, read_only, instant)  # type: ignore[attr-defined]
        return func

    return mark


def _result_model(annotation: Any) -> Any:
    """The result model of a handler's return annotation: ``Model``, or ``Model | dict[str, Any]``
    for a handler that may answer with the model's JSON form itself (keys and values as the model
    would dump them), which the dispatcher sends as it is: building and dumping a model costs an
    instant method like ``system.ping`` more than everything else it does."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        models = [arg for arg in typing.get_args(annotation) if typing.get_origin(arg) is not dict]
        if len(models) == 1:
            return models[0]
    return annotation


def collect(part: object) -> list[Method]:
    """The RPC methods a part declares, bound to it."""
    methods = []
    for attr in dir(type(part)):
        func = getattr(type(part), attr)
        decl: _Declaration | None = getattr(func, "__engram_rpc__", None)
        if decl is None:
            continue
        hints = typing.get_type_hints(func)
        params_model = hints.get("params")
        result_model = _result_model(hints.get("return"))
        if not (isinstance(params_model, type) and issubclass(params_model, Params)):
            raise TypeError(f"{decl.name}: the 'params' argument must be annotated with a Params model")
        if not (isinstance(result_model, type) and issubclass(result_model, BaseModel)):
            raise TypeError(f"{decl.name}: the return annotation must be a pydantic model")
        methods.append(
            Method(
                name=decl.name,
                handler=getattr(part, attr),
                params=params_model,
                result=result_model,
                summary=decl.summary,
                owner_only=decl.owner_only,
                timeout=decl.timeout,
                audit=decl.audit,
                read_only=decl.read_only,
                instant=decl.instant,
            )
        )
    return methods


@dataclass
class MethodTable:
    _methods: dict[str, Method] = field(default_factory=dict)

    def add(self, methods: Iterable[Method]) -> None:
        for method in methods:
            if method.name in self._methods:
                raise ValueError(f"RPC method {method.name} registered twice")
            if method.name.startswith("rpc."):
                raise ValueError("method names starting with 'rpc.' are reserved by JSON-RPC")
            self._methods[method.name] = method

    def get(self, name: str) -> Method | None:
        return self._methods.get(name)

    def __iter__(self):
        return iter(sorted(self._methods.values(), key=lambda m: m.name))

    def __len__(self) -> int:
        return len(self._methods)

    @property
    def names(self) -> list[str]:
        return sorted(self._methods)
