"""Logs (structlog), traces (OpenTelemetry) and metrics (Prometheus text format)."""
