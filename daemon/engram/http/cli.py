"""``engram token``: the HTTP gateway's bearer tokens (token.create, token.list, token.revoke).

The daemon keeps the tokens (only their hashes), so a revocation holds from the next request on.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import click

from engram.clitools import Output, call, client_command

__all__ = ["token"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}


def _seconds(value: str | None) -> float | None:
    if value is None:
        return None
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd]?)", value.strip())
    if match is None:
        raise click.BadParameter(f"{value!r}: a duration such as 3600, 90m, 12h or 30d", param_hint="--expires")
    return float(match[1]) * _UNITS[match[2] or "s"]


@click.group("token")
def token() -> None:
    """Bearer tokens of the HTTP gateway (docs/http.md)."""


@token.command("create")
@click.option("--name", required=True, help="A name for the token (letters, digits, . _ -); the audit log shows it.")
@click.option("--uid", type=click.IntRange(min=0), help="The user the token acts as: the policy decides for it as for this uid.")
@click.option("--owner", is_flag=True, help="Act as the daemon's own user (owner-only methods included) instead of --uid.")
@click.option("--expires", help="Lifetime: seconds, or 90m, 12h, 30d (default: never expires).")
@client_command
def create(name: str, uid: int | None, owner: bool, expires: str | None, socket_path: Path | None, as_json: bool,
           timeout: float) -> None:
    """Make a token and print it (once: only its hash is kept). Give --uid or --owner."""
    params: dict[str, Any] = {"name": name, "owner": owner, "expires_in": _seconds(expires)}
    if uid is not None:
        params["uid"] = uid
    result = call(socket_path, timeout, "token.create", {k: v for k, v in params.items() if v is not None})

    def human(data: dict[str, Any]) -> None:
        info = data["info"]
        click.echo(data["token"])
        click.echo(f"-- token {info['name']} acts as uid {info['uid']} ({info['user'] or '?'}), "
                   f"expires {info['expires_at'] or 'never'}; it is not shown again", err=True)

    Output(as_json).emit(result, human)


@token.command("list")
@client_command
def list_tokens(socket_path: Path | None, as_json: bool, timeout: float) -> None:
    """The tokens: name, uid, created, expiry (never the tokens themselves)."""
    result = call(socket_path, timeout, "token.list")

    def human(data: dict[str, Any]) -> None:
        for info in data["tokens"]:
            state = "expired" if info["expired"] else f"expires {info['expires_at'] or 'never'}"
            click.echo(f"{info['name']}\tuid {info['uid']} ({info['user'] or '?'})\tcreated {info['created_at']}\t{state}")

    Output(as_json).emit(result, human)


@token.command("revoke")
@click.argument("name")
@client_command
def revoke(name: str, socket_path: Path | None, as_json: bool, timeout: float) -> None:
    """Revoke token NAME: its next request is answered 401."""
    Output(as_json).emit(call(socket_path, timeout, "token.revoke", {"name": name}), lambda _: click.echo(f"revoked {name}"))
