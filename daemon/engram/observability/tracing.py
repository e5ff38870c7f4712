"""OpenTelemetry tracing: one span per request, named after the RPC method.

The tracer provider is the daemon's own (not the global one), so tests and embedders can run
several daemons in one process. Spans leave through a BatchSpanProcessor, whose queue is bounded
(it drops rather than grows when the exporter falls behind).

When spans go nowhere (the default, ``exporter = "none"``) the OpenTelemetry SDK is not even
imported (about 35 ms of start-up): the provider is :class:`NoSpans`. The SDK side lives in
:mod:`engram.observability.span_export`.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Protocol

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

from engram.observability.settings import TracingSettings

__all__ = [
    "NO_SPANS",
    "NoSpans",
    "SpanProvider",
    "Spans",
    "build_tracer_provider",
    "inject_trace_context",
    "remote_parent",
    "start_export",
    "tracer",
]


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


def build_tracer_provider(settings: TracingSettings, state_dir: Path, export_now: bool = True) -> SpanProvider:
    """The daemon's span provider; with ``export_now`` False its spans are kept from the exporter
    until :func:`start_export` (an OTLP endpoint that the policy's egress decision must allow)."""
    if settings.exporter == "none":
        return NoSpans()
    from engram.observability.span_export import exporting_provider

    return exporting_provider(settings, state_dir, export_now)


def start_export(provider: SpanProvider, settings: TracingSettings, state_dir: Path) -> None:
    """Begin exporting the spans of a provider built with ``export_now=False``."""
    from engram.observability.span_export import add_export

    add_export(provider, settings, state_dir)  # type: ignore[arg-type]  # an SDK provider: exporter != none


def tracer(provider: SpanProvider, settings: TracingSettings) -> trace.Tracer:
    """The daemon's tracer; a no-op one when spans go nowhere, so that unexported spans cost
    nothing on the request path (span creation is a measurable share of a ping)."""
    if settings.exporter == "none":
        return trace.NoOpTracer()
    return provider.get_tracer("engram")


_NO_SPAN: AbstractContextManager[trace.Span] = nullcontext(trace.INVALID_SPAN)
_TRACE_CONTEXT = TraceContextTextMapPropagator()


class Spans:
    """The tracer port: what a part gets from the composition root to open its own spans.

    ``span(name, attributes)`` is a child of the span current where it is opened (the request's,
    or a part's span around it): OpenTelemetry keeps the current span in its context, which is
    the library's own way of nesting spans and the only thing read from it here. The tracer
    itself is never global: each part holds the :class:`Spans` it was handed.

    Off (``tracing.exporter = "none"``, or a part built without one) a span is one shared
    ``nullcontext``: the request path pays an attribute test and nothing else.
    """

    def __init__(self, tracer: trace.Tracer | None = None) -> None:
        self._tracer = tracer if tracer is not None else trace.NoOpTracer()
        self.records = not isinstance(self._tracer, trace.NoOpTracer)

    def span(
        self,
        name: str,
        attributes: Mapping[str, AttributeValue] | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
    ) -> AbstractContextManager[trace.Span]:
        """A span around the ``with`` block, current inside it; an exception leaving the block
        marks it failed. The span's ``set_attribute`` adds what is only known at the end."""
        if not self.records:
            return _NO_SPAN
        return self._tracer.start_as_current_span(name, kind=kind, attributes=attributes)


NO_SPANS = Spans()
"""The port of a part built without tracing (tests, tools): every span is the no-op one."""


def remote_parent(traceparent: str) -> Context | None:
    """The OpenTelemetry context whose current span is the client's, from a W3C ``traceparent``
    header value (``00-<trace id>-<parent id>-<flags>``); None when it does not parse."""
    context = _TRACE_CONTEXT.extract({"traceparent": traceparent})
    return context if trace.get_current_span(context).get_span_context().is_valid else None


def inject_trace_context(headers: MutableMapping[str, str]) -> None:
    """Add ``traceparent`` (and ``tracestate``) of the current span to outgoing HTTP ``headers``,
    so that the server called sees the same trace; nothing when no span is recording here."""
    _TRACE_CONTEXT.inject(headers)
