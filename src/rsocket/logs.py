"""Log formatters for the CLI: JSON lines (pino-like) or human text.

The library only logs through stdlib ``logging`` with structured fields in
``extra``; it never installs handlers (``configure`` is for the CLI).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from datetime import UTC, datetime
from typing import Any, TextIO

__all__ = [
    "FieldsAdapter",
    "JsonFormatter",
    "RateLimitedLog",
    "TextFormatter",
    "bind",
    "configure",
    "record_fields",
]

# attributes every LogRecord has: anything else came in through ``extra``
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message", "asctime", "taskName",
}


class FieldsAdapter(logging.LoggerAdapter):  # type: ignore[type-arg]
    """A ``LoggerAdapter`` that merges its fields with each call's ``extra``, and
    names its tenant (when it carries one) at the start of the message, so a
    plain ``logging.basicConfig()`` line says which account it is about.

    The stock adapter (before Python 3.13's ``merge_extra``) replaces a call's
    ``extra`` with its own, which would drop the structured fields rsocket logs.
    """

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        extra = self.extra or {}
        kwargs["extra"] = {**extra, **(kwargs.get("extra") or {})}
        tenant = extra.get("tenant")
        return (f"{tenant}: {msg}" if tenant else msg), kwargs


def bind(
    logger: logging.Logger | logging.LoggerAdapter[Any] | None,
    default: str = "rsocket",
    **fields: Any,
) -> FieldsAdapter:
    """``logger`` (or ``logging.getLogger(default)``) carrying ``fields`` in every record.

    A ``LoggerAdapter`` given by the application keeps its own ``extra`` (e.g. the
    tenant) and gains the fields of each log call.
    """
    if logger is None:
        logger = logging.getLogger(default)
    if isinstance(logger, logging.LoggerAdapter):
        return FieldsAdapter(logger.logger, {**(logger.extra or {}), **fields})
    return FieldsAdapter(logger, fields)


class RateLimitedLog:
    """The WARNINGs of a background loop that retries: each kind of failure (its
    exception type) at most once per ``interval`` seconds, with the number of
    repeats left out since; one line when it works again.

    Args:
        logger: where to log.
        interval: seconds between two reports of one kind of failure.
    """

    def __init__(
        self, logger: logging.Logger | logging.LoggerAdapter[Any], interval: float = 60.0
    ) -> None:
        self.logger = logger
        self.interval = interval
        self.failing = False
        self._reported: dict[str, float] = {}  # kind -> when last logged
        self._repeats: dict[str, int] = {}  # kind -> failures not logged since

    def failed(self, what: str, exc: BaseException, extra: dict[str, Any] | None = None) -> None:
        self.failing = True
        kind = f"{what}: {type(exc).__name__}"
        now = time.monotonic()
        if now - self._reported.get(kind, -self.interval) < self.interval:
            self._repeats[kind] = self._repeats.get(kind, 0) + 1
            return
        self._reported[kind] = now
        repeats = self._repeats.pop(kind, 0)
        suffix = f" (and {repeats} time(s) since the last report)" if repeats else ""
        self.logger.warning("%s: %s%s", what, str(exc) or type(exc).__name__, suffix,
                            extra={**(extra or {}), "repeats": repeats})

    def recovered(self, message: str, extra: dict[str, Any] | None = None) -> None:
        if self.failing:
            self.failing = False
            self._reported.clear()
            self._repeats.clear()
            self.logger.warning(message, extra=extra)


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The structured fields a record carries (its ``extra``)."""
    return {k: v for k, v in vars(record).items() if k not in _STANDARD}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, msg, fields (and exc)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "fields": record_fields(record),
        }
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``HH:MM:SS.mmm LEVEL logger: msg key=value ...`` for people."""

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.fromtimestamp(record.created).strftime("%H:%M:%S.%f")[:-3]
        fields = " ".join(f"{k}={v}" for k, v in record_fields(record).items())
        text = f"{when} {record.levelname:<7} {record.name}: {record.getMessage()}"
        if fields:
            text = f"{text}  {fields}"
        if record.exc_info:
            text = f"{text}\n{self.formatException(record.exc_info)}"
        return text


def configure(fmt: str = "text", level: str | int = "INFO", stream: TextIO | None = None) -> None:
    """Install one stderr handler on the root logger (what the CLI does)."""
    if fmt not in ("json", "text"):
        raise ValueError(f"log format must be 'json' or 'text', got {fmt!r}")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper() if isinstance(level, str) else level)
