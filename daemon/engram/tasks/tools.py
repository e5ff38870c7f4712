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

Plugin tools (:mod:`engram.plugins.tools`, the ``engram.tools`` entry-point group) are named
``plugin:<name>``, which no method name can be. They do not go through the request chain: before
each call :class:`PluginTools` asks the policy whether the submitting principal may use the tool
(the method point, with the tool's name as the action: the owner's ``*`` grants every tool, any
other principal needs a rule naming it), and the plugins part validates the arguments against
the tool's params model. Whether one may be retried is the plugin's word (its ``idempotent``).

The tools of external MCP servers (:mod:`engram.tasks.mcp_tools`) are named
``mcp:<server>.<tool>``; :class:`CombinedTools` routes each name to its kind by its prefix.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from engram.errors import NotFound
from engram.plugins.tools import TOOL_PREFIX
from engram.principal import Principal
from engram.server.jsonrpc import Request
from engram.server.methods import Connection, MethodTable, NoClient

__all__ = [
    "BUILTIN_TOOLS", "IDEMPOTENT_WRITES", "MCP_PREFIX", "CombinedTools", "MethodTools", "PluginTool", "PluginTools", "Tools",
]

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

# The tools of MCP servers: mcp:<server>.<tool>. Here rather than in mcp_tools, whose imports (the
# MCP SDK) the daemon pays for only when tasks.mcp_servers names a server.
MCP_PREFIX = "mcp:"


class Tools(Protocol):
    """What the executor needs of its tools."""

    @property
    def names(self) -> frozenset[str]: ...

    def takes_namespace(self, tool: str) -> bool:
        """Whether the tool has a ``namespace`` argument (a task's namespace is filled into it)."""

    def idempotent(self, tool: str) -> bool:
        """Whether a failed call of the tool may be made again (a repeat changes nothing more)."""

    def describe(self, tool: str) -> tuple[str, dict[str, Any]]:
        """What the tool does (one line) and the JSON Schema of its arguments, for the planner."""

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

    def describe(self, tool: str) -> tuple[str, dict[str, Any]]:
        method = self._methods.get(tool)
        if method is None:
            raise NotFound(f"no method {tool!r}", reason="unknown_tool", tool=tool)
        return method.summary, method.params.model_json_schema()

    async def call(self, tool: str, args: dict[str, Any], principal: Principal) -> Any:
        output = await self._dispatch(Request(method=tool, params=args, id=None), principal, self._connection)
        if isinstance(output, dict):
            # The seq of the call's own rpc entry is about the call, not its answer: without it,
            # equal answers have equal hashes (a live replay compares them).
            output.pop("audit_seq", None)
        return output


class PluginTool(Protocol):
    """A loaded tool plugin, as the plugins part hands it over."""

    name: str
    description: str
    params_schema: dict[str, Any]
    idempotent: bool

    async def call(self, args: dict[str, Any], principal: Principal) -> Any: ...


ToolGuard = Callable[[Principal, str], None]
"""Raises PolicyDenied when the principal may not use the tool (``Policy.tool_guard``)."""


class PluginTools:
    """Plugin tools: those ``loaded()`` returns, each call first decided by ``guard``."""

    def __init__(self, loaded: Callable[[], Mapping[str, PluginTool]], guard: ToolGuard) -> None:
        self._loaded = loaded
        self._guard = guard

    @property
    def names(self) -> frozenset[str]:
        # Read when asked: the plugins part loads its tools when it starts, after this is made.
        return frozenset(self._loaded())

    def takes_namespace(self, tool: str) -> bool:
        return False

    def idempotent(self, tool: str) -> bool:
        found = self._loaded().get(tool)
        return found is not None and found.idempotent

    def describe(self, tool: str) -> tuple[str, dict[str, Any]]:
        found = self._loaded().get(tool)
        if found is None:
            raise NotFound(f"tool {tool!r} is not loaded", reason="unknown_tool", tool=tool)
        return found.description, found.params_schema

    async def call(self, tool: str, args: dict[str, Any], principal: Principal) -> Any:
        found = self._loaded().get(tool)
        if found is None:
            raise NotFound(f"tool {tool!r} is not loaded", reason="unknown_tool", tool=tool)
        self._guard(principal, tool)
        return await found.call(args, principal)


class CombinedTools:
    """Built-in tools, plugin tools and MCP servers' tools under one :class:`Tools`; their names
    never overlap (``plugin:`` and ``mcp:`` prefixes, which no method name has)."""

    def __init__(self, builtin: Tools, plugins: Tools, mcp: Tools | None = None) -> None:
        self._builtin = builtin
        self._by_prefix: dict[str, Tools] = {TOOL_PREFIX: plugins}
        if mcp is not None:
            self._by_prefix[MCP_PREFIX] = mcp

    def _of(self, tool: str) -> Tools:
        prefix, colon, _ = tool.partition(":")
        return self._by_prefix.get(prefix + colon, self._builtin) if colon else self._builtin

    @property
    def names(self) -> frozenset[str]:
        return self._builtin.names.union(*(tools.names for tools in self._by_prefix.values()))

    def takes_namespace(self, tool: str) -> bool:
        return self._of(tool).takes_namespace(tool)

    def idempotent(self, tool: str) -> bool:
        return self._of(tool).idempotent(tool)

    def describe(self, tool: str) -> tuple[str, dict[str, Any]]:
        return self._of(tool).describe(tool)

    async def call(self, tool: str, args: dict[str, Any], principal: Principal) -> Any:
        return await self._of(tool).call(tool, args, principal)
