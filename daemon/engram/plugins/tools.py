"""What a tool plugin is, and how the plugins part loads one.

A plugin distribution registers a tool in the ``engram.tools`` entry-point group::

    [project.entry-points."engram.tools"]
    wordcount = "engram_words:WordCount"

The entry point refers to a factory, called with no arguments, that returns an object
implementing :class:`ToolPlugin`. Its ``name`` must be the entry point's name (lower case
letters, digits, ``_`` and ``-``). Plans call it as ``plugin:<name>``: a method name never holds
a colon, so a plugin tool can never shadow a built-in one. Its ``params`` is a pydantic model:
a step's arguments are validated against it before the call (-32602 with
``data.reason = "invalid_params"`` when they do not match), and ``call`` gets the validated
model. Like a provider, the tool runs on a thread of its own with its own event loop
(:mod:`engram.plugins.worker`); ``call`` may be ``async`` or a plain ``def``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import BaseModel

from engram.errors import InternalSignal
from engram.principal import Principal

__all__ = ["TOOL_ENTRY_POINT_GROUP", "TOOL_NAME", "TOOL_PREFIX", "ToolContext", "ToolPlugin", "check_tool"]

TOOL_ENTRY_POINT_GROUP = "engram.tools"
TOOL_PREFIX = "plugin:"
TOOL_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


@dataclass(frozen=True)
class ToolContext:
    """What a tool learns of the call besides its arguments: who the task runs as."""

    principal: Principal


class ToolPlugin(Protocol):
    name: str
    description: str
    params: type[BaseModel]
    idempotent: bool

    async def call(self, args: BaseModel, context: ToolContext) -> Any:
        """The tool's result: JSON values (dicts, lists, strings, numbers, booleans, None)."""


class ToolInvalid(InternalSignal):
    """A tool object that does not implement :class:`ToolPlugin` as its entry point requires."""


def check_tool(obj: Any, name: str) -> ToolPlugin:
    """``obj`` when it is a valid tool registered as ``name``; raises :class:`ToolInvalid` if not."""
    missing = [attr for attr in ("name", "description", "params", "idempotent", "call") if not hasattr(obj, attr)]
    if missing:
        raise ToolInvalid(f"{type(obj).__name__} lacks {', '.join(missing)} of the tool protocol")
    if not TOOL_NAME.match(name):
        raise ToolInvalid(f"tool name {name!r} must be lower case letters, digits, '_' or '-' (at most 64)")
    if obj.name != name:
        raise ToolInvalid(f"the tool calls itself {obj.name!r} but is registered as {name!r}")
    if not isinstance(obj.params, type) or not issubclass(obj.params, BaseModel):
        raise ToolInvalid("params must be a pydantic model class")
    if not isinstance(obj.idempotent, bool):
        raise ToolInvalid("idempotent must be True or False")
    if not isinstance(obj.description, str):
        raise ToolInvalid("description must be a string")
    if not callable(obj.call):
        raise ToolInvalid("call must be callable")
    return obj
