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
    exporter: Literal["none", "console", "file", "otlp"] = Field(
        default="none",
        description="Where OpenTelemetry spans go: nowhere, stderr, a JSON-lines file, or an OTLP/HTTP receiver "
        "(http/protobuf, e.g. an OpenTelemetry Collector or Jaeger).",
    )
    file: Path | None = Field(
        default=None, description="Span file for exporter = \"file\" (default: <state_dir>/traces.jsonl)."
    )
    otlp_endpoint: str = Field(
        default="http://127.0.0.1:4318/v1/traces",
        pattern=r"^https?://[^\s/?#]+(/[^\s]*)?$",
        description="The OTLP/HTTP traces URL for exporter = \"otlp\". A host other than loopback is data leaving "
        "the machine: the policy's egress decision (provider \"otlp\", method \"tracing.export\") must allow it, "
        "or the daemon does not start.",
    )
    otlp_headers: dict[str, str] = Field(
        default_factory=dict, description="HTTP headers sent with every OTLP export (e.g. an authorization token)."
    )
    otlp_timeout: float = Field(
        default=10.0, gt=0, le=300, description="Seconds one OTLP export may take before it is given up."
    )
    queue_size: int = Field(
        default=2048,
        ge=16,
        le=1_000_000,
        description="Finished spans waiting for export at most; past it new spans are dropped, not queued.",
    )
