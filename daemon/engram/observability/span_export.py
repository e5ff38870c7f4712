"""The OpenTelemetry SDK side of tracing, imported only when spans are exported somewhere: the
provider with its BatchSpanProcessor, the span file exporter, and the OTLP http/protobuf exporter
(the official one, imported only for ``exporter = "otlp"``)."""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
    SpanExportResult,
)

from engram import __version__
from engram.errors import StartupError
from engram.observability.settings import TracingSettings
from engram.storage.files import make_private_dir


class JsonLinesSpanExporter(SpanExporter):
    """Append each finished span as one JSON object per line (mode 0600, like all state)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        try:
            make_private_dir(path.parent)  # this may be the first thing to create the state folder
        except OSError as exc:
            raise StartupError(f"cannot create the folder of the span file {path}: {exc.strerror}") from None

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = "".join(json.dumps(json.loads(span.to_json()), separators=(",", ":")) + "\n" for span in spans)
        with self._lock:
            with open(self._path, "a", encoding="utf-8", opener=_private_opener) as handle:
                handle.write(lines)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def _private_opener(path: str, flags: int) -> int:
    return os.open(path, flags, 0o600)


def exporting_provider(settings: TracingSettings, state_dir: Path, export_now: bool = True) -> TracerProvider:
    """The SDK provider for ``exporter = "console"``, ``"file"`` or ``"otlp"``.

    With ``export_now`` False (an OTLP endpoint off this machine, which the policy must allow
    first) the provider has no exporter yet: its spans go nowhere until :func:`add_export`."""
    provider = TracerProvider(resource=Resource.create({"service.name": "engramd", "service.version": __version__}))
    if export_now:
        add_export(provider, settings, state_dir)
    return provider


def add_export(provider: TracerProvider, settings: TracingSettings, state_dir: Path) -> None:
    """Send ``provider``'s finished spans where ``settings`` say, through a BatchSpanProcessor
    whose queue holds at most ``queue_size`` spans (it drops new ones rather than grow)."""
    exporter: SpanExporter
    if settings.exporter == "console":
        exporter = ConsoleSpanExporter(out=sys.stderr)
    elif settings.exporter == "otlp":
        exporter = _otlp_exporter(settings)
    else:
        exporter = JsonLinesSpanExporter(settings.file or state_dir / "traces.jsonl")
    batch = min(512, settings.queue_size)
    provider.add_span_processor(
        BatchSpanProcessor(
            exporter,
            max_queue_size=settings.queue_size,
            max_export_batch_size=batch,
            schedule_delay_millis=500,
            export_timeout_millis=int(settings.otlp_timeout * 1000),
        )
    )


def _otlp_exporter(settings: TracingSettings) -> SpanExporter:
    import requests
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    # Spans go to the configured endpoint and nowhere else: no HTTP_PROXY and the like from the
    # daemon's environment (the rule of provider HTTP clients too, engram.plugins.locality).
    session = requests.Session()
    session.trust_env = False
    return OTLPSpanExporter(
        endpoint=settings.otlp_endpoint,
        headers=dict(settings.otlp_headers),
        timeout=settings.otlp_timeout,
        session=session,
    )
