"""The tools a plan's steps may call, and how a step reaches one.

Built-in tools are engram's own RPC methods, named after them. A step's call goes through the
same request chain as a client's request (:meth:`engram.server.dispatch.Dispatcher.dispatch`),
as the principal that submitted the task: the policy decides it, the audit log records it, its
params are validated, and the method's own timeout applies, exactly as for a direct call. Only
the methods of :data:`BUILTIN_TOOLS` are tools: they read and write memory, embed, and answer;
none of them administers the daemon.

A tool is idempotent when calling it twice has the effect of calling it once, so the executor
may retry it: the methods marked ``read_only``, and ``memory.remember``, whose repeat finds the
episode the first call wrote (one live episode per normalised text and namespace) and returns
its id instead of writing another.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from engram.principal import Principal
from engram.server.jsonrpc import Request
from engram.server.methods import Connection, MethodTable, NoClient

__all__ = ["BUILTIN_TOOLS", "IDEMPOTENT_WRITES", "MethodTools", "Tools"]

BUILTIN_TOOLS = (
    "infer.embed",
    "memory.get",
    "memory.graph.query",
    "memory.recall",
    "memory.remember",
    "route.ask",
)

# Tools that write and still may be retried (see the module's docstring).
IDEMPOTENT_WRITES = frozenset({"memory.remember"})


class Tools(Protocol):
    """What the executor needs of its tools."""

    @property
    def names(self) -> frozenset[str]: ...

    def takes_namespace(self, tool: str) -> bool:
        """Whether the tool has a ``namespace`` argument (a task's namespace is filled into it)."""

    def idempotent(self, tool: str) -> bool:
        """Whether a failed call of the tool may be made again (a repeat changes nothing more)."""

    async def call(self, tool: str, args: dict[str, Any], principal: Principal) -> Any:
        """The tool's result as JSON values; raises the RPCError a direct call would get."""


Dispatch = Callable[[Request, Principal, Connection], Awaitable[Any]]


class MethodTools:
    """Built-in tools: the methods named in ``allowed``, called through ``dispatch``."""

    def __init__(self, dispatch: Dispatch, methods: MethodTable, allowed: tuple[str, ...] = BUILTIN_TOOLS) -> None:
        self._dispatch = dispatch
        self._methods = methods
        self._allowed = frozenset(allowed)
        self._connection = NoClient()

    @property
    def names(self) -> frozenset[str]:
        # Read when asked, not when made: the table is filled after the parts are built.
        return frozenset(name for name in self._allowed if self._methods.get(name) is not None)

    def takes_namespace(self, tool: str) -> bool:
        method = self._methods.get(tool)
        return method is not None and "namespace" in method.params.model_fields

    def idempotent(self, tool: str) -> bool:
        method = self._methods.get(tool)
        return method is not None and (method.read_only or tool in IDEMPOTENT_WRITES)

    async def call(self, tool: str, args: dict[str, Any], principal: Principal) -> Any:
        return await self._dispatch(Request(method=tool, params=args, id=None), principal, self._connection)
