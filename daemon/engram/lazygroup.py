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

Other distributions add commands to a group through an entry-point group (``entry_point_group``:
name -> ``"module:attribute"``, the same strings): engram-bench adds ``engram bench ...`` and
``engram models conformance`` that way. When a command the user asks for is not there, the
group's ``install_hint`` says which distribution brings it.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any

import click

__all__ = ["LazyGroup"]


class LazyGroup(click.Group):
    """A group whose ``lazy_commands`` (name -> ``"module:attribute"``) load on first use, with
    the commands installed distributions declare under ``entry_point_group`` beside them."""

    def __init__(
        self,
        *args: Any,
        lazy_commands: dict[str, str] | None = None,
        entry_point_group: str | None = None,
        install_hint: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_commands = dict(lazy_commands or {})
        self.entry_point_group = entry_point_group
        self.install_hint = install_hint
        self._contributed: dict[str, str] | None = None

    def _table(self) -> dict[str, str]:
        # Read once and only when needed: scanning the installed distributions' metadata costs
        # milliseconds that `engram ping` need not pay.
        if self._contributed is None:
            found = entry_points(group=self.entry_point_group) if self.entry_point_group else ()
            self._contributed = {point.name: point.value for point in found}
        return {**self._contributed, **self.lazy_commands}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self._table()})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in (table := self._table()):
            self.add_command(self._import(table[cmd_name]), cmd_name)
        return super().get_command(ctx, cmd_name)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        # A group with nothing in it (no distribution installed that adds to it) says so at once,
        # --help included: an empty list of commands would not tell anyone what to install.
        if self.install_hint and not ctx.resilient_parsing and not self.list_commands(ctx):
            # Without the context, click prints the message alone (no "Try --help"), exit status 2.
            raise click.UsageError(f"{ctx.command_path}: no commands installed ({self.install_hint})")
        return super().parse_args(ctx, args)

    def resolve_command(self, ctx: click.Context, args: list[str]) -> tuple[str | None, click.Command | None, list[str]]:
        name = args[0] if args else None
        if self.install_hint and name and not name.startswith("-") and self.get_command(ctx, name) is None:
            raise click.UsageError(f"No such command {name!r} ({self.install_hint}).", ctx)
        return super().resolve_command(ctx, args)

    @staticmethod
    def _import(target: str) -> click.Command:
        module_name, _, attribute = target.partition(":")
        command = getattr(importlib.import_module(module_name), attribute)
        if not isinstance(command, click.Command):
            raise TypeError(f"{target} is a {type(command).__name__}, not a click command")
        return command
