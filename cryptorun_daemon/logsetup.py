"""Structured logging: JSON lines to stdout (journald-friendly), console on a TTY.

This module owns structlog's global configuration (like structlog's own
``_config``); :func:`configure_logging` may be called again (SIGHUP reload
changes the level) and :func:`reset_logging` restores defaults for tests.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
_current_level = "info"


def configure_logging(
    level: str = "info", fmt: str = "auto", *, stream: TextIO | None = None
) -> None:
    """Route structlog (and stdlib logging) to ``stream`` at ``level``.

    ``fmt`` is ``json``, ``console`` or ``auto`` (console when the stream is a
    TTY). Timestamps are UTC ISO-8601. Context bound with
    ``structlog.contextvars.bind_contextvars`` (the daemon binds ``region``)
    appears on every line.
    """
    global _current_level
    stream = stream if stream is not None else sys.stdout
    renderer: Any
    use_console = fmt == "console" or (fmt == "auto" and stream.isatty())
    if use_console:
        renderer = structlog.dev.ConsoleRenderer()
    else:
        renderer = structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info if not use_console else structlog.dev.set_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    # Libraries (aiohttp access logs, websockets) log through stdlib; keep them
    # at WARNING so a busy mirror does not flood the journal.
    logging.basicConfig(stream=stream, level=logging.WARNING, format="%(name)s %(message)s")
    _current_level = level


def current_level() -> str:
    return _current_level


def reset_logging() -> None:
    """Restore structlog's defaults (for tests)."""
    global _current_level
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    _current_level = "info"
