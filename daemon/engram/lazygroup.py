"""A click group that imports a subcommand's module only when that subcommand is asked for.

Every part of engram adds its commands from its own ``cli`` module. Imported eagerly, those
modules would make every ``engram`` call, ``--help`` included, pay for all of them; named in a
table of ``"module:attribute"`` strings, only the command being run is imported (click's
"Lazily Loading Subcommands" pattern).

Listing commands (``--help``) imports every module in the table, so that the short help comes
from each command's own docstring rather than from a copy here that could drift. That is cheap
as long as the ``cli`` modules import little more than click and :mod:`engram.clitools` at
their top and leave the heavy imports to the command functions;
``tests/unit/core/test_cli_imports.py`` holds them to it.
"""

from __future__ import annotations

import importlib
from typing import Any

import click

__all__ = ["LazyGroup"]


class LazyGroup(click.Group):
    """A group whose ``lazy_commands`` (name -> ``"module:attribute"``) load on first use."""

    def __init__(self, *args: Any, lazy_commands: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_commands = dict(lazy_commands or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy_commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy_commands and cmd_name not in self.commands:
            self.add_command(self._import(cmd_name), cmd_name)
        return super().get_command(ctx, cmd_name)

    def _import(self, cmd_name: str) -> click.Command:
        module_name, _, attribute = self.lazy_commands[cmd_name].partition(":")
        command = getattr(importlib.import_module(module_name), attribute)
        if not isinstance(command, click.Command):
            raise TypeError(f"{self.lazy_commands[cmd_name]} is a {type(command).__name__}, not a click command")
        return command
