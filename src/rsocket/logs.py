"""How the library logs: stdlib ``logging`` with structured fields in ``extra``.

``bind`` gives a component its logger (``FieldsAdapter`` adds fixed fields);
``RateLimitedLog`` keeps a repeating condition to one line a minute. The
library never installs handlers: the command line's formatters are in
``rsocket.apps.logformat``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

__all__ = ["FieldsAdapter", "RateLimitedLog", "bind"]


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


_MOVED = frozenset({"JsonFormatter", "TextFormatter", "configure", "record_fields"})


def __getattr__(name: str) -> object:
    """The command line's formatters, moved to ``rsocket.apps.logformat``."""
    if name in _MOVED:
        import warnings

        from .apps import logformat

        warnings.warn(f"rsocket.logs.{name} moved to rsocket.apps.logformat",
                      DeprecationWarning, stacklevel=2)
        return getattr(logformat, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
