"""The tools of external MCP servers (``tasks.mcp_servers``), reached over stdio with the official
MCP client (``mcp.client.stdio``, :class:`mcp.client.ClientSession`).

Each configured server is a child process that this part starts, lists the tools of, keeps, and
stops. Its tools are ``mcp:<server>.<tool>`` in plans: a method name has no colon and a plugin
tool's name starts ``plugin:``, so no name can collide.

A server's life is one supervising task: start the process (with only HOME, LOGNAME, PATH, SHELL,
TERM, USER and the server's own ``env``: the daemon's environment, secrets included, stays here),
initialize the session and list the tools within ``start_timeout``, then serve calls until the
server's stdout ends (it exited or crashed) or the part stops. A server that ends, or that could
not be started, is started again after a pause that doubles from :data:`RESTART_BACKOFF` up to
:data:`MAX_RESTART_BACKOFF` (back to the start once a connection has lasted that long); meanwhile
its calls fail at once with -32005 ``tool_unavailable``, which the executor retries for
idempotent tools and counts in the tool's breaker. The tools of a server that never started are
absent (a plan naming one is refused with ``unknown_tool``); a server that restarts keeps the
names of its last listing.

A call, in order: the policy decides whether the submitting principal may use the tool
(``Policy.tool_guard``, the tool's name as the action, as for plugin tools); the arguments are
checked against the tool's ``inputSchema`` (-32602 ``invalid_params`` with ``data.field``); for
a server whose ``locality`` is ``remote`` the policy's egress decision follows, exactly as for a
remote provider (provider ``mcp:<server>``, locality ``remote``: refused unless a rule allows it,
redacted where a rule obliges it); then ``tools/call`` with the server's ``timeout``. Shutdown is
the SDK's: the server's stdin is closed, then after 2 s it gets SIGTERM, after 2 more SIGKILL.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any, TextIO

import anyio
import anyio.abc
import mcp_types
import structlog
from jsonschema import exceptions as schema_errors
from jsonschema import validators
from mcp.client import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.shared.exceptions import MCPError
from mcp.shared.message import SessionMessage
from pydantic import ValidationError

from engram.bus import EventBus
from engram.errors import Conflict, InvalidParams, NotFound, RPCError, Timeout, Unavailable
from engram.lifecycle import Health, Part
from engram.principal import Principal
from engram.tasks.events import McpServerChanged
from engram.tasks.ports import Egress
from engram.tasks.settings import McpServerSettings
from engram.tasks.tools import MCP_PREFIX, ToolGuard

__all__ = ["MAX_RESTART_BACKOFF", "MCP_PREFIX", "RESTART_BACKOFF", "McpServer", "McpTool", "McpTools"]

log = structlog.get_logger("engram.tasks.mcp")

RESTART_BACKOFF = 1.0  # seconds before the first restart of a server that ended or failed to start
MAX_RESTART_BACKOFF = 60.0  # the longest pause; a connection that lasted this long resets it
MAX_TOOLS = 1000  # tools taken from one server's listing; past it the rest are left out
MAX_LISTING_PAGES = 100  # tools/list pages followed at most
TOOL_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")  # the MCP specification's tool names
MAX_ERROR_TEXT = 2000  # characters of a tool's error text kept in the step's error


@dataclass(frozen=True)
class McpTool:
    """One tool of a server, as its last listing described it."""

    name: str  # mcp:<server>.<tool>
    server: str
    remote_name: str  # the server's own name for it
    description: str
    idempotent: bool
    validator: Any  # a jsonschema validator of its inputSchema


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        return _describe(exc.exceptions[0])
    if isinstance(exc, TimeoutError):
        return "no answer to initialize and tools/list within start_timeout"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class McpServer:
    """One configured server: its child process and session, restarted when it ends."""

    def __init__(self, name: str, settings: McpServerSettings, bus: EventBus, errlog: TextIO) -> None:
        self.name = name
        self.settings = settings
        self._bus = bus
        self._errlog = errlog
        self.tools: dict[str, McpTool] = {}  # by mcp:<server>.<tool>; the last listing, kept across restarts
        self.session: ClientSession | None = None  # while connected
        self.error: str | None = None  # why the last start or connection ended
        self.starts = 0
        self.first_attempt = anyio.Event()  # set once the first start has succeeded or failed

    @property
    def running(self) -> bool:
        return self.session is not None

    def health(self) -> Health:
        if self.running:
            return Health(True, f"running, {len(self.tools)} tools, started {self.starts} times")
        if self.error is None:
            return Health(False, "starting")
        return Health(False, f"not running ({self.error}); started again after a pause")

    async def run(self) -> None:
        """Connect, serve until the connection ends, pause, again; until cancelled."""
        backoff = RESTART_BACKOFF
        while True:
            began = time.monotonic()
            try:
                await self._connect()
                self.error = "its output ended: the process exited"
            except Exception as exc:
                self.error = _describe(exc)
            finally:
                self.session = None
                self.first_attempt.set()
            if time.monotonic() - began >= MAX_RESTART_BACKOFF:
                backoff = RESTART_BACKOFF
            log.warning("mcp server not running", server=self.name, error=self.error, restart_in_s=backoff)
            self._bus.publish(McpServerChanged(server=self.name, state="down", tools=len(self.tools), starts=self.starts,
                                               error=self.error, restart_in_s=backoff))
            await anyio.sleep(backoff)
            backoff = min(backoff * 2, MAX_RESTART_BACKOFF)

    async def _connect(self) -> None:
        settings = self.settings
        params = StdioServerParameters(
            command=settings.command[0], args=settings.command[1:], env=settings.env or None, cwd=settings.cwd
        )
        async with stdio_client(params, errlog=self._errlog) as (read, write):
            # The session reads through a relay whose end says the server's output ended: the
            # process exited or crashed, which the session alone would notice only at a call.
            relay_send, relay_receive = anyio.create_memory_object_stream[SessionMessage | Exception](0)
            ended = anyio.Event()
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(_relay, read, relay_send, ended)
                async with ClientSession(relay_receive, write) as session:
                    with anyio.fail_after(settings.start_timeout):
                        await session.initialize()
                        listed = await self._list(session)
                    self.tools = listed
                    self.session = session
                    self.starts += 1
                    self.error = None
                    self.first_attempt.set()
                    log.info("mcp server started", server=self.name, tools=sorted(listed), starts=self.starts)
                    self._bus.publish(McpServerChanged(server=self.name, state="running", tools=len(listed),
                                                       starts=self.starts))
                    await ended.wait()
                    self.session = None
                tasks.cancel_scope.cancel()

    async def _list(self, session: ClientSession) -> dict[str, McpTool]:
        tools: list[mcp_types.Tool] = []
        cursor: str | None = None
        for _ in range(MAX_LISTING_PAGES):
            page = await session.list_tools(params=mcp_types.PaginatedRequestParams(cursor=cursor) if cursor else None)
            tools.extend(page.tools)
            cursor = page.next_cursor
            if cursor is None or len(tools) >= MAX_TOOLS:
                break
        if len(tools) > MAX_TOOLS:
            log.warning("mcp server lists too many tools; the rest are left out", server=self.name, limit=MAX_TOOLS)
        listed: dict[str, McpTool] = {}
        for tool in tools[:MAX_TOOLS]:
            made = self._tool(tool)
            if made is not None:
                listed[made.name] = made
        unknown = set(self.settings.idempotent) - {tool.remote_name for tool in listed.values()}
        if unknown:
            log.warning("tasks.mcp_servers names idempotent tools the server does not have", server=self.name,
                        tools=sorted(unknown))
        return listed

    def _tool(self, tool: mcp_types.Tool) -> McpTool | None:
        if not TOOL_NAME.match(tool.name):
            log.warning("mcp tool left out: its name is not 1-128 of A-Z a-z 0-9 _ . -", server=self.name, tool=tool.name)
            return None
        try:
            validator_class = validators.validator_for(tool.input_schema)
            validator_class.check_schema(tool.input_schema)
        except schema_errors.SchemaError as exc:
            log.warning("mcp tool left out: its inputSchema is not a JSON Schema", server=self.name, tool=tool.name,
                        error=exc.message)
            return None
        hints = tool.annotations
        idempotent = tool.name in self.settings.idempotent or bool(
            hints is not None and (hints.read_only_hint or hints.idempotent_hint)
        )
        return McpTool(
            name=f"{MCP_PREFIX}{self.name}.{tool.name}", server=self.name, remote_name=tool.name,
            description=tool.description or "", idempotent=idempotent, validator=validator_class(tool.input_schema),
        )


async def _relay(
    source: anyio.abc.ObjectReceiveStream[SessionMessage | Exception],
    sink: anyio.abc.ObjectSendStream[SessionMessage | Exception],
    ended: anyio.Event,
) -> None:
    try:
        async with sink:
            async for item in source:
                await sink.send(item)
    except (anyio.BrokenResourceError, anyio.ClosedResourceError):
        pass  # the session has gone: the connection is being closed
    finally:
        ended.set()


class McpTools(Part):
    """The part that holds the configured servers; a :class:`engram.tasks.tools.Tools` of theirs."""

    def __init__(
        self, servers: Mapping[str, McpServerSettings], guard: ToolGuard, egress: Egress, bus: EventBus,
        errlog: TextIO | None = None,
    ) -> None:
        super().__init__("mcp")
        self._guard = guard
        self._egress = egress
        stream = errlog or sys.__stderr__ or sys.stderr  # the servers' stderr: the daemon's own
        self.servers = {name: McpServer(name, settings, bus, stream) for name, settings in servers.items()}

    async def setup(self, stack: AsyncExitStack) -> None:
        if not self.servers:
            return
        await self.start_tasks(stack)
        for server in self.servers.values():
            self.spawn(server.run, f"mcp-server-{server.name}", restart=True)
        # Wait for every server's first start to succeed or fail, so that a plan submitted once
        # the daemon is ready finds the tools of those that came up. Starting the process itself
        # is not under start_timeout: a little more is allowed for it.
        with anyio.move_on_after(max(s.settings.start_timeout for s in self.servers.values()) + 5.0):
            for server in self.servers.values():
                await server.first_attempt.wait()

    async def named_checks(self) -> dict[str, Health]:
        return {f"{MCP_PREFIX}{name}": server.health() for name, server in self.servers.items()}

    def _tool(self, tool: str) -> McpTool | None:
        server_name = tool.removeprefix(MCP_PREFIX).partition(".")[0]
        server = self.servers.get(server_name)
        return None if server is None else server.tools.get(tool)

    # --- the Tools protocol ------------------------------------------------------------------

    @property
    def names(self) -> frozenset[str]:
        return frozenset(name for server in self.servers.values() for name in server.tools)

    def takes_namespace(self, tool: str) -> bool:
        return False

    def idempotent(self, tool: str) -> bool:
        found = self._tool(tool)
        return found is not None and found.idempotent

    async def call(self, tool: str, args: dict[str, Any], principal: Principal) -> Any:
        found = self._tool(tool)
        if found is None:
            raise NotFound(f"tool {tool!r} is not offered by any MCP server", reason="unknown_tool", tool=tool)
        self._guard(principal, tool)
        _check_args(found, args)
        server = self.servers[found.server]
        if server.settings.locality == "remote":
            decision = await self._egress.require_egress(
                principal, method=tool, provider=f"{MCP_PREFIX}{server.name}", locality="remote", payload=args
            )
            args = decision.payload
        session = server.session
        if session is None:
            raise Unavailable(
                f"{tool}: MCP server {server.name!r} is not running ({server.error or 'starting'})",
                reason="tool_unavailable", tool=tool, server=server.name,
            )
        timeout = server.settings.timeout
        try:
            result = await session.call_tool(found.remote_name, args, read_timeout_seconds=timeout)
        except MCPError as exc:
            raise _call_error(tool, server.name, timeout, exc) from None
        except (RuntimeError, ValidationError) as exc:  # a result the protocol or its outputSchema does not allow
            raise Conflict(f"{tool}: the server's answer is not a valid result: {exc}", reason="bad_tool_result",
                           tool=tool) from None
        if result.is_error:
            text = _text(result.content)
            raise Conflict(f"{tool} failed: {text[:200]}", reason="tool_error", tool=tool, detail=text[:MAX_ERROR_TEXT])
        if result.structured_content is not None:
            return result.structured_content
        return {"content": [block.model_dump(mode="json", by_alias=True, exclude_none=True) for block in result.content]}


def _check_args(tool: McpTool, args: dict[str, Any]) -> None:
    """The step's arguments against the tool's inputSchema; InvalidParams naming the first fault."""
    error = schema_errors.best_match(tool.validator.iter_errors(args))
    if error is None:
        return
    path = [str(part) for part in error.absolute_path]
    # A member that is missing or not allowed: name it, not the object that should hold it.
    if error.validator == "required" and isinstance(error.instance, dict):
        path += [key for key in error.validator_value if key not in error.instance][:1]
    elif error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = set(error.schema.get("properties", {}))
        path += [key for key in error.instance if key not in allowed][:1]
    field = ".".join(path) or "args"
    raise InvalidParams(f"{tool.name}: {field}: {error.message}", reason="invalid_params", field=field, tool=tool.name)


def _call_error(tool: str, server: str, timeout: float, exc: MCPError) -> RPCError:
    if exc.code == mcp_types.REQUEST_TIMEOUT:
        return Timeout(
            f"{tool} did not answer within {timeout:g} s (tasks.mcp_servers.{server}.timeout)",
            reason="tool_timeout", tool=tool, limit_s=timeout,
        )
    if exc.code == mcp_types.CONNECTION_CLOSED:
        return Unavailable(f"{tool}: the MCP server {server!r} closed the connection", reason="tool_unavailable",
                           tool=tool, server=server)
    if exc.code == mcp_types.INVALID_PARAMS:
        return InvalidParams(f"{tool}: the server refused the arguments: {exc.message}", reason="invalid_params",
                             field="args", tool=tool)
    return Conflict(f"{tool}: the server answered error {exc.code}: {exc.message}", reason="tool_error", tool=tool,
                    mcp_code=exc.code)


def _text(content: list[Any]) -> str:
    texts = [block.text for block in content if isinstance(block, mcp_types.TextContent)]
    return "\n".join(texts) or "(no text)"
