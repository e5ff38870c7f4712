"""structlog setup: a console renderer for people, JSON for machines.

Under systemd (``JOURNAL_STREAM`` is set) or whenever stderr is not a terminal the daemon writes
one JSON object per line, which journald and log shippers keep structured.
"""

from __future__ import annotations

import logging
import os
import sys

import structlog

from engram.observability.settings import LogSettings

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def wants_json(fmt: str) -> bool:
    if fmt != "auto":
        return fmt == "json"
    return bool(os.environ.get("JOURNAL_STREAM")) or not sys.stderr.isatty()


def configure_logging(settings: LogSettings) -> None:
    """(Re)configure logging; safe to call again on reload."""
    renderer = (
        structlog.processors.JSONRenderer()
        if wants_json(settings.format)
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[settings.level]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
