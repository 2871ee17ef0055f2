"""Event-loop watchdog: a blocked loop is reported, not mistaken for a network drop.

The loop side beats every ``interval`` and measures how late each beat runs
(the loop lag, also a gauge). A daemon thread watches the beats: when the loop
has not beaten for ``threshold`` seconds it logs a WARNING with the loop
thread's current stack, taken while the loop is still blocked, so the
blocking handler is found at once; once the loop runs again, the beat logs
the block's measured length.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
import traceback
from typing import Any

from . import metrics
from .logs import bind

__all__ = ["LoopWatchdog"]

class LoopWatchdog:
    """Measures loop lag every ``interval`` s; warns with a stack above ``threshold`` s.

    Args:
        interval: seconds between beats.
        threshold: lag that counts as a blocked loop.
        logger: a ``Logger`` or ``LoggerAdapter``.
    """

    def __init__(
        self,
        interval: float = 0.5,
        threshold: float = 1.0,
        logger: logging.Logger | logging.LoggerAdapter[Any] | None = None,
    ) -> None:
        if interval <= 0 or threshold <= 0:
            raise ValueError("interval and threshold must be positive")
        self.interval = interval
        self.threshold = threshold
        self.logger = bind(logger, "rsocket.watchdog")
        #: last measured lag, seconds
        self.lag = 0.0
        #: blocked-loop warnings so far
        self.stalls = 0
        #: beats the loop has run (each measures the lag once)
        self.beats = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._expected = 0.0
        self._last_beat = 0.0
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._loop_thread_id = 0

    @property
    def running(self) -> bool:
        return self._thread is not None

    def start(self) -> None:
        """Start on the running loop (idempotent)."""
        if self._thread is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._loop_thread_id = threading.get_ident()
        self._stop.clear()
        self._last_beat = time.monotonic()
        self._schedule()
        self._thread = threading.Thread(target=self._watch, name="rsocket-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the beats and the thread (idempotent)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=2 * self.interval + 1)
            self._thread = None

    def _schedule(self) -> None:
        assert self._loop is not None
        self._expected = self._loop.time() + self.interval
        self._timer = self._loop.call_later(self.interval, self._beat)

    def _beat(self) -> None:
        assert self._loop is not None
        self.lag = max(0.0, self._loop.time() - self._expected)
        self._last_beat = time.monotonic()
        self.beats += 1
        metrics.get().event_loop_lag_seconds.set(self.lag)
        if self.lag >= self.threshold:  # the measured block, once the loop runs again
            self.logger.warning("event loop was blocked for %.2fs", self.lag,
                                extra={"lag": round(self.lag, 3)})
        self._schedule()

    def _watch(self) -> None:
        reported = 0.0
        while not self._stop.wait(self.interval / 2):
            last = self._last_beat
            silent = time.monotonic() - last - self.interval
            if silent < self.threshold or last == reported:
                continue
            reported = last  # one warning per stall
            self.stalls += 1
            frame = sys._current_frames().get(self._loop_thread_id)
            stack = "".join(traceback.format_stack(frame)) if frame is not None else "(no frame)"
            self.logger.warning(
                "event loop blocked for %.2fs so far; loop thread stack:\n%s", silent, stack,
                extra={"lag": round(silent, 3), "stack": stack},
            )
