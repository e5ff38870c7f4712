"""The plugin loader's settings section (``[plugins]``)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from engram.sections import PositiveSeconds, Section

__all__ = ["PluginSettings"]


class PluginSettings(Section):
    disabled: list[str] = Field(default_factory=list, description="Entry-point names of providers, and plugin:<name> of tools, not to load.")
    start_timeout: PositiveSeconds = Field(
        default=10.0, description="Seconds a provider may take to load (import and construct), to start, and to stop."
    )
    health_timeout: PositiveSeconds = Field(default=2.0, description="Seconds a provider may take to report health.")
    providers: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Per-provider configuration tables, keyed by entry-point name."
    )
