"""``engram generate`` and ``engram chat``: one question to a provider, streamed to the terminal
(:func:`engram.clitools.stream_call`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from engram.clitools import Output, call, client_command, stream_call


def _options(func: Any) -> Any:
    for option in (
        click.option("--provider", help="Ask this provider only (default: the capability's fallback chain)."),
        click.option("--model", help="Model at the provider."),
        click.option("--tag", "tags", multiple=True, help="Data tag for the policy (repeatable)."),
        click.option("--stream/--no-stream", default=True, show_default=True, help="Print the answer as it comes."),
    ):
        func = option(func)
    return client_command(func)


def _provenance(result: dict[str, Any], streamed: bool) -> None:
    """Who answered, on stderr so that stdout holds the answer alone."""
    chunks = f", {result['chunks']} chunks" if streamed else ""
    click.echo(f"-- {result['provider']} ({result['locality']}){chunks}", err=True)


def _answer(result: dict[str, Any]) -> None:
    click.echo(result["text"])
    _provenance(result, streamed=False)


def _run(method: str, params: dict[str, Any], stream: bool, socket_path: Path | None, timeout: float, as_json: bool) -> None:
    if stream and not as_json:
        _provenance(stream_call(socket_path, timeout, method, {**params, "stream": True}), streamed=True)
        return
    Output(as_json).emit(call(socket_path, timeout, method, params), _answer)


@click.command("generate")
@click.argument("prompt")
@click.option("--system", help="A system prompt.")
@_options
def generate(
    prompt: str, system: str | None, provider: str | None, model: str | None, tags: tuple[str, ...], stream: bool,
    socket_path: Path | None, as_json: bool, timeout: float,
) -> None:
    """Generate text from PROMPT (infer.generate), through the policy and the generate chain."""
    params = {"prompt": prompt, "system": system, "provider": provider, "model": model, "tags": list(tags)}
    _run("infer.generate", params, stream, socket_path, timeout, as_json)


@click.command("chat")
@click.argument("message")
@click.option("--system", help="A system message first.")
@_options
def chat(
    message: str, system: str | None, provider: str | None, model: str | None, tags: tuple[str, ...], stream: bool,
    socket_path: Path | None, as_json: bool, timeout: float,
) -> None:
    """Send one user MESSAGE (infer.chat), through the policy and the chat chain."""
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": message}]
    params = {"messages": messages, "provider": provider, "model": model, "tags": list(tags)}
    _run("infer.chat", params, stream, socket_path, timeout, as_json)
