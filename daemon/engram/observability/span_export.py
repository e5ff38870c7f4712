"""The OpenTelemetry SDK side of tracing, imported only when spans are exported somewhere: the
provider with its BatchSpanProcessor, and the span file exporter."""

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


def exporting_provider(settings: TracingSettings, state_dir: Path) -> TracerProvider:
    """The SDK provider for ``exporter = "console"`` or ``"file"``."""
    provider = TracerProvider(resource=Resource.create({"service.name": "engramd", "service.version": __version__}))
    exporter: SpanExporter
    if settings.exporter == "console":
        exporter = ConsoleSpanExporter(out=sys.stderr)
    else:
        exporter = JsonLinesSpanExporter(settings.file or state_dir / "traces.jsonl")
    provider.add_span_processor(BatchSpanProcessor(exporter, max_queue_size=2048, schedule_delay_millis=500))
    return provider
