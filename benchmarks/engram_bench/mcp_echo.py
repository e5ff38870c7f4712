"""A minimal MCP server on stdio for ``engram bench tasks --mcp``: one read-only tool, ``echo``,
that answers the text it was given as structured content. Run as a script (``python
mcp_echo.py``): the daemon starts it with a minimal environment, so it imports only the MCP SDK."""

from __future__ import annotations

from mcp.server.mcpserver import MCPServer
from mcp_types import ToolAnnotations
from pydantic import BaseModel

server = MCPServer("engram-bench-echo")


class Echoed(BaseModel):
    text: str


@server.tool(annotations=ToolAnnotations(read_only_hint=True))
def echo(text: str) -> Echoed:
    """The text it was given."""
    return Echoed(text=text)


if __name__ == "__main__":
    server.run()
