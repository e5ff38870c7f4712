"""OpenTelemetry tracing: one span per request, named after the RPC method.

The tracer provider is the daemon's own (not the global one), so tests and embedders can run
several daemons in one process. Spans leave through a BatchSpanProcessor, whose queue is bounded
(it drops rather than grows when the exporter falls behind).

When spans go nowhere (the default, ``exporter = "none"``) the OpenTelemetry SDK is not even
imported (about 35 ms of start-up): the provider is :class:`NoSpans`. The SDK side lives in
:mod:`engram.observability.span_export`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from opentelemetry import trace

from engram.observability.settings import TracingSettings

__all__ = ["NoSpans", "SpanProvider", "build_tracer_provider", "tracer"]


class SpanProvider(Protocol):
    """What the daemon holds: tracers to hand out, and a shutdown that flushes queued spans."""

    def get_tracer(self, instrumenting_module_name: str) -> trace.Tracer: ...

    def shutdown(self) -> None: ...


class NoSpans:
    """The provider when spans are exported nowhere: no-op tracers, nothing to flush."""

    def get_tracer(self, instrumenting_module_name: str) -> trace.Tracer:
        return trace.NoOpTracer()

    def shutdown(self) -> None:
        """No span was queued, so there is nothing to flush."""


def build_tracer_provider(settings: TracingSettings, state_dir: Path) -> SpanProvider:
    if settings.exporter == "none":
        return NoSpans()
    from engram.observability.span_export import exporting_provider

    return exporting_provider(settings, state_dir)


def tracer(provider: SpanProvider, settings: TracingSettings) -> trace.Tracer:
    """The daemon's tracer; a no-op one when spans go nowhere, so that unexported spans cost
    nothing on the request path (span creation is a measurable share of a ping)."""
    if settings.exporter == "none":
        return trace.NoOpTracer()
    return provider.get_tracer("engram")
