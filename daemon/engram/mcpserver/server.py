"""An MCP server (stdio) that forwards to the running engramd.

Every tool call and resource read opens its own connection to the daemon's socket, with a
timeout: a daemon restarted in between is simply found again, and a daemon that is down makes
that one call fail with a clear message (the MCP server itself stays up). Daemon errors become
tool results with ``isError`` whose text names the JSON-RPC code and ``data.reason``, so the
model reads them and can correct its arguments; for resources they become MCP errors carrying
the daemon's code.

stdout carries the protocol: nothing else may write there (logging goes to stderr).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from typing import Any

import mcp_types as types
import structlog
from mcp.server import Server
from mcp.server.context import ServerRequestContext
from mcp.server.stdio import stdio_server
from mcp.shared.exceptions import MCPError
from pydantic import ValidationError

from engram import __version__
from engram.client import AsyncClient
from engram.errors import DaemonUnreachable, EngramError, InternalSignal, RPCError
from engram.mcpserver.tools import TOOLS, input_schema, structured

__all__ = ["Bridge", "BridgeSettings", "build_server", "serve_stdio"]

log = structlog.get_logger("engram.mcp")

RECENT_URI = "engram://episodes/recent"
EPISODE_TEMPLATE = "engram://episodes/{id}"
_EPISODE_URI = re.compile(r"^engram://episodes/(ep_[A-Za-z0-9_-]{1,61})$")
RESOURCE_NOT_FOUND = -32002  # MCP's code for an unknown resource (the daemon's NotFound shares it)
INSTRUCTIONS = (
    "engram is this machine's private, local memory. Use `remember` for what should outlast the "
    "conversation, `recall` before answering from memory, `ask` to have the local model answer with "
    "memories as context, `forget` when told to. Ids look like ep_...; every write returns the "
    "audit_seq of its entry in a signed log that `audit_prove` proves."
)


@dataclass(frozen=True)
class BridgeSettings:
    socket: str | os.PathLike[str] | None = None  # None: $ENGRAM_SOCKET, then the usual places
    timeout: float = 30.0  # seconds per daemon call
    ask_timeout: float = 300.0  # seconds for `ask`, which waits for a model to generate
    connect_timeout: float = 5.0
    namespace: str | None = None  # filled into tool calls and resources that do not name one
    recent: int = 20  # episodes in engram://episodes/recent


class DaemonCallError(InternalSignal):
    """A daemon call failed; ``text`` says how, for a person or a model."""

    def __init__(self, text: str, error: dict[str, Any]) -> None:
        super().__init__(text)
        self.text = text
        self.error = error


class Bridge:
    """Forwards MCP requests to engramd."""

    def __init__(self, settings: BridgeSettings) -> None:
        self.settings = settings

    async def call(self, method: str, params: dict[str, Any] | None = None, *, timeout: float | None = None) -> Any:
        s = self.settings
        try:
            async with AsyncClient(s.socket, timeout=timeout or s.timeout, connect_timeout=s.connect_timeout) as client:
                return await client.call(method, params)
        except DaemonUnreachable as exc:
            raise DaemonCallError(
                f"engramd is not reachable: {exc}. Start it (engramd, or `systemctl --user start engramd`) and retry.",
                {"code": None, "reason": "daemon_unreachable", "message": str(exc)},
            ) from None
        except RPCError as exc:
            detail = {k: v for k, v in exc.data.items() if k != "reason"}
            extra = f" {json.dumps(detail, default=str)}" if detail else ""
            raise DaemonCallError(
                f"engramd error {exc.code} ({exc.reason}) from {method}: {exc.message}{extra}",
                {"code": exc.code, "reason": exc.reason, "message": exc.message, "data": exc.data},
            ) from None
        except EngramError as exc:  # a protocol-level surprise: say what it was
            raise DaemonCallError(f"engramd call {method} failed: {exc}", {"code": None, "reason": "client_error", "message": str(exc)}) from None

    # --- tools ------------------------------------------------------------------------------------

    def tools(self) -> list[types.Tool]:
        return [
            types.Tool(
                name=spec.name,
                title=spec.title,
                description=spec.description,
                input_schema=input_schema(spec.input),
                annotations=types.ToolAnnotations(
                    title=spec.title,
                    read_only_hint=spec.read_only,
                    destructive_hint=spec.destructive,
                    open_world_hint=False,
                ),
            )
            for spec in TOOLS.values()
        ]

    async def call_tool(self, name: str, arguments: dict[str, Any] | None) -> types.CallToolResult:
        spec = TOOLS.get(name)
        if spec is None:
            raise MCPError(code=types.INVALID_PARAMS, message=f"unknown tool {name!r}; the tools are {', '.join(TOOLS)}")
        try:
            args = spec.input.model_validate(arguments or {})
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(arguments)'}: {e['msg']}" for e in exc.errors())
            return _error_result(f"invalid arguments for {name}: {problems}", {"reason": "invalid_arguments"})
        params = spec.params(args)
        if spec.namespaced and "namespace" not in params and self.settings.namespace is not None:
            params["namespace"] = self.settings.namespace
        try:
            result = await self.call(spec.method, params, timeout=self.settings.ask_timeout if spec.generates else None)
        except DaemonCallError as exc:
            log.info("tool failed", tool=name, method=spec.method, error=exc.error.get("reason"))
            return _error_result(exc.text, exc.error)
        return types.CallToolResult(content=[types.TextContent(text=spec.text(result))], structured_content=structured(result))

    # --- resources --------------------------------------------------------------------------------

    def _namespace(self) -> dict[str, Any]:
        return {"namespace": self.settings.namespace} if self.settings.namespace is not None else {}

    async def resources(self) -> list[types.Resource]:
        listed = [
            types.Resource(
                uri=RECENT_URI,
                name="recent-episodes",
                title="Recent memories",
                description=f"The {self.settings.recent} most recently remembered episodes, newest first (JSON).",
                mime_type="application/json",
            )
        ]
        try:
            page = await self.call("memory.list", {"limit": self.settings.recent, **self._namespace()})
        except DaemonCallError as exc:
            log.warning("cannot list episodes", error=exc.text)
            return listed  # reading the resource says what is wrong
        for episode in page["episodes"]:
            text = " ".join(episode["text"].split())
            listed.append(
                types.Resource(
                    uri=f"engram://episodes/{episode['id']}",
                    name=episode["id"],
                    title=text[:80] + ("…" if len(text) > 80 else ""),
                    mime_type="application/json",
                    size=len(episode["text"].encode()),
                )
            )
        return listed

    def templates(self) -> list[types.ResourceTemplate]:
        return [
            types.ResourceTemplate(
                uri_template=EPISODE_TEMPLATE,
                name="episode",
                title="A memory by id",
                description="One episode (ep_...): its text, time, session, kind, tags and metadata (JSON).",
                mime_type="application/json",
            )
        ]

    async def read(self, uri: str) -> types.ReadResourceResult:
        try:
            if uri == RECENT_URI:
                page = await self.call("memory.list", {"limit": self.settings.recent, **self._namespace()})
                data: Any = {"episodes": page["episodes"], "next": page["next"]}
            elif match := _EPISODE_URI.match(uri):
                got = await self.call("memory.get", {"ids": [match.group(1)], **self._namespace()})
                data = got["episodes"][0]
            else:
                raise MCPError(
                    code=RESOURCE_NOT_FOUND,
                    message=f"no resource {uri!r}: engram serves {RECENT_URI} and {EPISODE_TEMPLATE}",
                    data={"uri": uri},
                )
        except DaemonCallError as exc:
            code = exc.error.get("code")
            raise MCPError(code=code if isinstance(code, int) else types.INTERNAL_ERROR, message=exc.text, data={**exc.error, "uri": uri}) from None
        return types.ReadResourceResult(
            contents=[types.TextResourceContents(uri=uri, mime_type="application/json", text=json.dumps(data, ensure_ascii=False))]
        )


def _error_result(text: str, error: dict[str, Any]) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(text=text)], structured_content={"error": error}, is_error=True)


def build_server(bridge: Bridge) -> Server[Any]:
    """The MCP server object: tools, resources and a template, each handler forwarding to ``bridge``."""

    async def list_tools(ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        return types.ListToolsResult(tools=bridge.tools())

    async def call_tool(ctx: ServerRequestContext[Any], params: types.CallToolRequestParams) -> types.CallToolResult:
        return await bridge.call_tool(params.name, params.arguments)

    async def list_resources(ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None) -> types.ListResourcesResult:
        return types.ListResourcesResult(resources=await bridge.resources())

    async def list_templates(
        ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListResourceTemplatesResult:
        return types.ListResourceTemplatesResult(resource_templates=bridge.templates())

    async def read_resource(ctx: ServerRequestContext[Any], params: types.ReadResourceRequestParams) -> types.ReadResourceResult:
        return await bridge.read(params.uri)

    return Server(
        "engram",
        version=__version__,
        title="engram",
        description="A local-first cognitive daemon: private memory, local models, a signed audit log.",
        instructions=INSTRUCTIONS,
        on_list_tools=list_tools,
        on_call_tool=call_tool,
        on_list_resources=list_resources,
        on_list_resource_templates=list_templates,
        on_read_resource=read_resource,
    )


async def serve_stdio(settings: BridgeSettings) -> None:
    """Serve one MCP client on stdin/stdout until it closes stdin."""
    server = build_server(Bridge(settings))
    log.info("mcp server ready", socket=str(settings.socket) if settings.socket else None, namespace=settings.namespace)
    async with stdio_server() as (read_stream, write_stream):
        await server.run(read_stream, write_stream, server.create_initialization_options())
