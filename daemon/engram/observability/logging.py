"""structlog setup: a console renderer for people, JSON for machines.

Under systemd (``JOURNAL_STREAM`` is set) or whenever stderr is not a terminal the daemon writes
one JSON object per line, which journald and log shippers keep structured.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import structlog

from engram.observability.settings import LogSettings

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def wants_json(fmt: str) -> bool:
    if fmt != "auto":
        return fmt == "json"
    return bool(os.environ.get("JOURNAL_STREAM")) or not sys.stderr.isatty()


class _Threshold:
    """The level below which a log call returns at once. One for the process, changed in place on
    reload: loggers are assembled once and cached (structlog's ``cache_logger_on_first_use``),
    which spares every call the assembly, so a new level must reach the loggers already made."""

    level = logging.INFO


def logs_at(level: int) -> bool:
    """Whether a log call at ``level`` would be written: for a hot path that would otherwise
    build the call's arguments for nothing."""
    return level >= _Threshold.level


def _method(name: str, number: int) -> Any:
    def log_at(self: structlog.BoundLoggerBase, event: str | None = None, *args: Any, **kw: Any) -> Any:
        if number < _Threshold.level:
            return None
        return self._proxy_to_logger(name, event % args if args else event, **kw)

    log_at.__name__ = name
    return log_at


class GatedBoundLogger(structlog.BoundLoggerBase):
    """structlog's filtering bound logger, with the level read per call from :class:`_Threshold`
    instead of fixed in the class when it is made."""

    debug = _method("debug", logging.DEBUG)
    info = _method("info", logging.INFO)
    warning = _method("warning", logging.WARNING)
    error = _method("error", logging.ERROR)
    critical = _method("critical", logging.CRITICAL)

    def exception(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        kw.setdefault("exc_info", True)
        return self.error(event, *args, **kw)

    def is_enabled_for(self, level: int) -> bool:
        return logs_at(level)


class _StderrLogger:
    """Writes each rendered line to the ``sys.stderr`` of the moment (a cached logger holding the
    stream it was made with would miss a redirection)."""

    def msg(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    debug = info = warning = error = critical = exception = msg


# The processors, one list for the process: a reload rewrites it in place, so that the cached
# loggers, which hold this very list, render the new way.
_PROCESSORS: list[Any] = []


def configure_logging(settings: LogSettings) -> None:
    """(Re)configure logging; safe to call again on reload."""
    renderer = (
        structlog.processors.JSONRenderer()
        if wants_json(settings.format)
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    _PROCESSORS[:] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
        renderer,
    ]
    _Threshold.level = _LEVELS[settings.level]
    structlog.configure(
        processors=_PROCESSORS,
        wrapper_class=GatedBoundLogger,
        logger_factory=lambda *args: _StderrLogger(),
        cache_logger_on_first_use=True,
    )
