"""``engram ask``: a question answered with recalled memories as context (route.ask)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from engram.clitools import Output, call, client_command, stream_call

__all__ = ["ask"]


@click.command("ask")
@click.argument("question")
@click.option("--namespace", help="Memory namespace (default: your own).")
@click.option("--session", help="Working-memory session used as context; the exchange is remembered in it.")
@click.option("--k", type=click.IntRange(min=0), help="Episodes recalled as context (default router.ask.k).")
@click.option("--route", "route_name", help="A generate route (default router.ask.route, else the generate chain).")
@click.option("--no-remember", is_flag=True, help="Do not remember the exchange.")
@client_command
def ask(question: str, namespace: str | None, session: str | None, k: int | None, route_name: str | None, no_remember: bool,
        socket_path: Path | None, as_json: bool, timeout: float) -> None:
    """Ask QUESTION (route.ask): recalled memories as context, the answer streamed to stdout, then
    its sources, path and audit seq on stderr (--json: the whole result on stdout)."""
    params: dict[str, Any] = {"question": question, "namespace": namespace, "session": session, "k": k, "route": route_name}
    if no_remember:
        params["remember"] = False
    params = {key: value for key, value in params.items() if value is not None}
    if as_json:
        Output(True).emit(call(socket_path, timeout, "route.ask", params))
        return
    result = stream_call(socket_path, timeout, "route.ask", {**params, "stream": True})
    for source in result["sources"]:
        click.echo(f"-- [{source['tier']}] {source['id']} ({source['score']:.3f}) {' '.join(source['text'].split())[:120]}",
                   err=True)
    origin = "cache" if result["cached"] else f"{result['path']} via {result['provider'] or '-'}"
    click.echo(f"-- {origin}, route {result['route'] or '-'}, remembered {', '.join(result['remembered']) or 'no'}, "
               f"audit seq {result.get('audit_seq')}", err=True)
