"""Compact lifecycle lines (``RSOCKET_LOG=1``) for grepping production logs.

One line per lifecycle event (buffer_start, buffer_flush, buffer_timeout,
buffer_overflow, cache_cleanup, type_mismatch_flush, buffer_destroyed,
connection_open, connection_close, breaker_transition, reconnect_scheduled)
on the ``rsocket.lifecycle`` logger, at DEBUG: routine lines, which a plain
``logging.basicConfig(level=logging.INFO)`` does not show. With ``RSOCKET_LOG``
set to 1/true/yes a stderr handler is installed at import; otherwise the lines
reach whatever the application configured for DEBUG, and ``record`` costs one
cached level check.
"""

from __future__ import annotations

import logging
import sys

from ._compat import env_flag

__all__ = ["enabled", "logger", "record"]

logger = logging.getLogger("rsocket.lifecycle")


class _LineFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "lifecycle", {})
        tail = " ".join(f"{k}={v}" for k, v in fields.items())
        return f"rsocket {self.formatTime(record)} {record.getMessage()} {tail}".rstrip()


if env_flag("RSOCKET_LOG"):
    _handler = logging.StreamHandler(sys.stderr)
    _handler.setFormatter(_LineFormatter())
    logger.addHandler(_handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False


def enabled() -> bool:
    """True when lifecycle lines would be written (cheap; checked before building fields)."""
    return logger.isEnabledFor(logging.DEBUG)


def record(event: str, **fields: object) -> None:
    """Write one lifecycle line: ``event`` plus ``key=value`` fields."""
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug(event, extra={"lifecycle": fields, "event": event})
