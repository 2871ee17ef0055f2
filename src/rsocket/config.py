"""The event buffer's configuration: ``BufferConfig`` (and ``RSOCKET_BUFFER_*``), ``BufferStats``."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields, replace
from typing import Any

from ._compat import parse_flag

__all__ = ["BufferConfig", "BufferStats"]


def _env_int(name: str, minimum: int) -> int | None:
    raw = os.environ.get(name, "")
    if not raw.strip():
        return None
    try:
        value = int(raw.strip())
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise ValueError(f"{name}={raw!r}: expected an integer >= {minimum}")
    return value


def _env_ms(name: str) -> float | None:
    raw = os.environ.get(name, "")
    if not raw.strip():
        return None
    try:
        value = float(raw.strip())
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}={raw!r}: expected a positive number of milliseconds")
    return value / 1000.0


def _env_bool(name: str) -> bool | None:
    raw = os.environ.get(name, "")
    if not raw.strip():
        return None
    value = parse_flag(raw)
    if value is None:
        raise ValueError(f"{name}={raw!r}: expected one of true/false/1/0/yes/no")
    return value


@dataclass(frozen=True, slots=True)
class BufferConfig:
    """Limits and timer of one ``EventBuffer``.

    Holds explicit values and defaults only; :meth:`from_env` reads the
    ``RSOCKET_BUFFER_*`` variables.

    Attributes:
        max_history_cache: ids remembered across history syncs (FIFO eviction).
        max_buffer_items: merged ``emit()`` calls a batch may hold before it is
            released (buffering goes on).
        auto_flush_timeout: seconds before a buffering scope is force-flushed.
        auto_flush: whether a buffering scope starts that timer at all.
        slow_handler_threshold: seconds an async handler may spend on one
            batch before a WARNING with its stack (it is not cancelled).
    """

    max_history_cache: int = 10_000
    max_buffer_items: int = 1_000
    auto_flush_timeout: float = 5.0
    auto_flush: bool = True
    slow_handler_threshold: float = 30.0

    def __post_init__(self) -> None:
        checks = (
            (
                "max_history_cache",
                type(self.max_history_cache) is int and self.max_history_cache >= 0,
                "an integer >= 0",
            ),
            (
                "max_buffer_items",
                type(self.max_buffer_items) is int and self.max_buffer_items >= 1,
                "an integer >= 1",
            ),
            (
                "auto_flush_timeout",
                isinstance(self.auto_flush_timeout, int | float)
                and math.isfinite(self.auto_flush_timeout)
                and self.auto_flush_timeout > 0,
                "a positive number of seconds",
            ),
            ("auto_flush", isinstance(self.auto_flush, bool), "a bool"),
            (
                "slow_handler_threshold",
                isinstance(self.slow_handler_threshold, int | float)
                and self.slow_handler_threshold > 0,
                "a positive number of seconds",
            ),
        )
        for name, ok, expected in checks:
            if not ok:
                raise ValueError(
                    f"BufferConfig.{name}={getattr(self, name)!r}: expected {expected}"
                )

    @classmethod
    def from_env(cls, **overrides: Any) -> BufferConfig:
        """Defaults, then ``RSOCKET_BUFFER_*`` variables, then ``overrides``.

        Raises:
            ValueError: a variable is malformed (the message names it and its value).
        """
        env = {
            "max_history_cache": _env_int("RSOCKET_BUFFER_MAX_CACHE", 0),
            "max_buffer_items": _env_int("RSOCKET_BUFFER_MAX_ITEMS", 1),
            "auto_flush_timeout": _env_ms("RSOCKET_BUFFER_TIMEOUT_MS"),
            "auto_flush": _env_bool("RSOCKET_BUFFER_AUTO_FLUSH"),
        }
        values: dict[str, Any] = {k: v for k, v in env.items() if v is not None}
        unknown = set(overrides) - {f.name for f in fields(cls)}
        if unknown:
            raise TypeError(f"BufferConfig has no field(s) {sorted(unknown)}")
        values.update(overrides)
        return cls(**values)

    def replace(self, **changes: Any) -> BufferConfig:
        """A copy with some fields changed."""
        return replace(self, **changes)


@dataclass(frozen=True, slots=True)
class BufferStats:
    """A snapshot of one buffer (see ``EventBuffer.stats``)."""

    items_buffered: int
    flush_count: int
    history_cache_size: int
    buffers_in_progress: int
    has_timer: bool


