"""``engram mcp``: the MCP server over stdio, for MCP clients (editors, agents, desktop apps)."""

from __future__ import annotations

import re
from pathlib import Path

import click

from engram.clitools import EXIT_USAGE, fail, socket_option, timeout_option

_NAMESPACE = re.compile(r"^[A-Za-z0-9_.:@-]{1,128}$")


@click.command("mcp")
@click.option(
    "--namespace",
    help="Memory namespace for tool calls and resources that name none (default: the caller's own, uid:<uid>).",
)
@click.option(
    "--recent",
    type=click.IntRange(1, 1000),
    default=20,
    show_default=True,
    help="Episodes listed by the engram://episodes/recent resource.",
)
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="warning", show_default=True,
              help="Log level (logs go to stderr; stdout carries the protocol).")
@click.option("--ask-timeout", type=float, default=300.0, show_default=True,
              help="Seconds the ask tool waits for the daemon (a model generating an answer).")
@socket_option
@timeout_option
def mcp_command(
    namespace: str | None, recent: int, log_level: str, ask_timeout: float, socket_path: Path | None, timeout: float
) -> None:
    """Serve MCP over stdio, forwarding tools and resources to the running daemon."""
    import anyio

    from engram.observability.settings import LogSettings
    from engram.mcpserver.server import BridgeSettings, serve_stdio
    from engram.observability.logging import configure_logging

    if namespace is not None and not _NAMESPACE.match(namespace):
        fail(EXIT_USAGE, f"--namespace: {namespace!r} is not a namespace (letters, digits, _.:@-, at most 128)")
    if timeout <= 0 or ask_timeout <= 0:
        fail(EXIT_USAGE, "--timeout and --ask-timeout: must be positive")
    configure_logging(LogSettings.model_validate({"level": log_level, "format": "json"}))
    settings = BridgeSettings(socket=socket_path, timeout=timeout, ask_timeout=ask_timeout, namespace=namespace, recent=recent)
    try:
        anyio.run(serve_stdio, settings)
    except KeyboardInterrupt:
        pass
