"""The settings sections of logs (``[log]``) and traces (``[tracing]``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from engram.sections import Section

__all__ = ["LogSettings", "TracingSettings"]


class LogSettings(Section):
    level: Literal["debug", "info", "warning", "error"] = Field(default="info", description="Log level.")
    format: Literal["auto", "console", "json"] = Field(
        default="auto",
        description="auto: console on a terminal, JSON otherwise (and always JSON under systemd).",
    )


class TracingSettings(Section):
    exporter: Literal["none", "console", "file"] = Field(
        default="none", description="Where OpenTelemetry spans go: nowhere, stderr, or a JSON-lines file."
    )
    file: Path | None = Field(
        default=None, description="Span file for exporter = \"file\" (default: <state_dir>/traces.jsonl)."
    )
