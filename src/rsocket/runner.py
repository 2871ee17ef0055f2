"""One handler's calls, in order: async work, retries after a failure, dead letters.

Every listener of an ``EventBuffer`` has a :class:`HandlerRunner`. An async
handler's calls always go through it (one batch at a time, on the running
loop). A sync handler is called inline by the merge core, and only a call
that raises hands the runner its batch: from then on the core queues that
handler's later batches on the runner (``listener.runner`` is set), which
calls them again in order after a backoff, and gives the handler back to
the core once its queue is empty. Each queued call holds its release's
settlement, so the socket's cursor never passes a batch its handler has not
finished; after the policy's last attempt the batch is dead-lettered and
only then settled.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .retry import Retry
from .seqs import Seqs

if TYPE_CHECKING:
    from .buffer import EventBuffer

__all__ = ["FailureLog", "HandlerRunner", "check_handler", "shape"]

#: one handler's failures are logged at most once per this many seconds
REPORT_INTERVAL = 60.0
_log = logging.getLogger("rsocket.buffer")


class _Call:
    """One batch (or one event's payload) a handler still owes."""

    __slots__ = ("args", "error", "failures", "released", "settlement", "wait")

    def __init__(self, args: tuple[Any, ...], settlement: Any, failures: int = 0,
                 error: BaseException | None = None) -> None:
        self.args = args
        self.settlement = settlement
        self.released = time.monotonic()
        self.failures = failures
        self.error = error
        self.wait = 0.0  # the backoff before the next attempt (what the log line says)


class HandlerRunner:
    """Runs one handler's queued calls in order on the running loop, with retries.

    Args:
        fn: the application's handler.
        is_async: ``fn`` is an ``async def`` (every call is queued here).
        owner: the buffer (its logs, metrics, hooks and tasks).
        retry: the handler's policy.
        event: the event name of an ``on()`` handler (None: a batch handler).
    """

    __slots__ = ("__weakref__", "abandoned", "event", "fn", "is_async", "listener", "owner",
                 "queue", "retry", "since", "task", "waiting")

    def __init__(self, fn: Callable[..., Any], is_async: bool, owner: EventBuffer,
                 retry: Retry, event: str | None) -> None:
        self.fn = fn
        self.is_async = is_async
        self.owner = owner
        self.retry = retry
        self.event = event
        self.listener: Any = None  # the core's Listener, set once it is made
        self.queue: deque[_Call] | None = None
        self.task: asyncio.Task[None] | None = None
        #: when the batch being handled now was released (None: idle)
        self.since: float | None = None
        self.waiting = False  # sleeping before a retry
        self.abandoned = False

    # -- what the core calls ------------------------------------------------------------

    def submit(self, args: tuple[Any, ...], settlement: Any) -> None:
        """Queue a call (the core does, for an async handler or a sync one retrying)."""
        loop = asyncio.get_running_loop()  # RuntimeError without one: reported to emit()
        self._queue(_Call(args, settlement), loop)

    def __call__(self, listener: Any, args: tuple[Any, ...], settlement: Any,
                 exc: Exception) -> None:
        """A sync call raised inline: take its batch over. Never raises.

        Without a running loop nothing can be retried: the exception reaches
        the caller of ``emit()``/``flush()`` and that is all.
        """
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        try:
            mark_handled(exc)
            call = _Call(args, settlement, failures=1, error=exc)
            if self.owner.destroyed:  # a final flush: the next connection delivers it again
                if settlement is not None:
                    settlement.pending += 1  # never done: its seqs stay unprocessed
                self._report(call, exc, None)
                return
            listener.runner = self  # later batches queue behind this one
            call.wait = self.retry.delay(1)
            self._report(call, exc, call.wait if self.retry.attempts > 1 else None)
            self._queue(call, loop)
        except Exception:  # pragma: no cover - reporting must never break a release
            _log.exception("could not take over a failed handler call")

    def oldest(self) -> float | None:
        """When the oldest batch this handler has not finished was released."""
        if self.since is not None:
            return self.since
        return self.queue[0].released if self.queue else None

    def abandon(self) -> int:
        """The buffer is destroyed: stop retrying (a backoff is cut short); what is
        left stays unsettled, for the next connection. Returns the calls left."""
        if not self.queue or not self.queue[0].failures:
            return 0  # healthy: queued work still runs (see EventBuffer.drain)
        self.abandoned = True
        if self.waiting and self.task is not None:
            self.task.cancel()
        return len(self.queue)

    # -- internals ---------------------------------------------------------------------------

    def _queue(self, call: _Call, loop: asyncio.AbstractEventLoop) -> None:
        if self.queue is None:
            self.queue = deque()
        self.queue.append(call)
        if call.settlement is not None:
            call.settlement.pending += 1
        if self.task is None:
            self.task = loop.create_task(self._run(), name="rsocket-handler")
            self.owner._track(self.task)

    async def _run(self) -> None:
        queue = self.queue
        assert queue is not None
        try:
            while queue and not self.abandoned:
                call = queue[0]
                self.since = call.released
                if call.failures < self.retry.attempts:
                    if call.failures:
                        self.owner._count_retry()
                        self.waiting = True
                        try:
                            await asyncio.sleep(call.wait)
                        finally:
                            self.waiting = False
                    if not await self._attempt(call):
                        continue
                else:
                    await self.owner._dead_letter(self, call)
                queue.popleft()
                if call.settlement is not None:
                    call.settlement.done()
        except asyncio.CancelledError:
            if not self.abandoned:
                raise
        finally:
            self.task = None
            self.since = None
            if not self.is_async and self.listener is not None and (
                    not queue or self.abandoned):
                self.listener.runner = None  # the core calls the handler inline again
            if self.abandoned and queue:
                self.owner._abandoned(self, len(queue))
                queue.clear()
                self.abandoned = False

    async def _attempt(self, call: _Call) -> bool:
        """Call the handler once; True when it returned."""
        slow = None
        if self.is_async:
            slow = asyncio.get_running_loop().call_later(
                self.owner.config.slow_handler_threshold, self.owner._handler_slow, self,
                call.args[0])
        try:
            result = self.fn(*call.args)
            if self.is_async:
                await result
        except Exception as exc:
            call.failures += 1
            call.error = exc
            last = call.failures >= self.retry.attempts or self.owner.destroyed
            if self.owner.destroyed:
                self.abandoned = True  # no retry after a destroy: redelivered instead
            call.wait = self.retry.delay(call.failures)
            self._report(call, exc, None if last else call.wait)
            return False
        finally:
            if slow is not None:
                slow.cancel()
        return True

    def _report(self, call: _Call, exc: BaseException, retry_in: float | None) -> None:
        try:
            self.owner._handler_failed(self, call, exc, retry_in)
        except Exception:  # reporting must never end the runner
            _log.exception("could not report a handler error")

    # -- what a dead letter and a log line say --------------------------------------------

    def batch_of(self, call: _Call) -> dict[str, Any]:
        """The batch of a call, as ``{event name: payload}``."""
        payload = call.args[0]
        return {self.event: payload} if self.event is not None else payload

    def seqs_of(self, call: _Call) -> Seqs:
        """The seqs of a call, with their epoch."""
        for arg in call.args[1:]:
            if isinstance(arg, Seqs):
                return arg
        settled = call.settlement.seqs if call.settlement is not None else range(0)
        return Seqs(settled.start, settled.stop, self.owner.epoch)


class FailureLog:
    """One handler's failure lines, process-wide (every tenant and connection
    runs its own copy of a handler: a bug in it is one story, told once with
    its traceback, then in one line per ``REPORT_INTERVAL`` with a count)."""

    __slots__ = ("left_out", "reported_at", "reports")

    _by_handler: dict[str, FailureLog] = {}

    def __init__(self) -> None:
        self.reported_at = -REPORT_INTERVAL
        self.left_out = 0  # failures not logged since the last line
        self.reports = 0  # lines logged so far

    @classmethod
    def of(cls, handler: str) -> FailureLog:
        log = cls._by_handler.get(handler)
        if log is None:
            log = cls._by_handler[handler] = cls()
        return log

    @classmethod
    def forget(cls) -> None:
        """Start afresh: the next failure of every handler is logged in full."""
        cls._by_handler.clear()

    def due(self) -> int | None:
        """None: not now (counted); else how many were left out since the last line."""
        now = time.monotonic()
        if self.reports and now - self.reported_at < REPORT_INTERVAL:
            self.left_out += 1
            return None
        self.reported_at = now
        self.reports += 1
        left_out, self.left_out = self.left_out, 0
        return left_out


def mark_handled(exc: BaseException) -> None:
    """``exc`` is owned by a retry policy: its reports are the runner's."""
    try:
        exc.__rsocket_handled__ = True  # type: ignore[attr-defined]
    except AttributeError:  # pragma: no cover - an exception type without a __dict__
        pass


def is_handled(exc: BaseException) -> bool:
    return getattr(exc, "__rsocket_handled__", False)


def shape(batch: Any) -> dict[str, int]:
    """Event names and item counts of a batch, for logs."""
    if not isinstance(batch, dict):
        return {}
    result = {}
    for name, payload in batch.items():
        if isinstance(payload, list):
            result[name] = len(payload)
        elif name == "messages.upsert" and isinstance(payload, dict):
            result[name] = len(payload.get("messages") or ())
        else:
            result[name] = 1
    return result


def check_handler(fn: Callable[..., Any], nargs: int, where: str,
                  names: str = "") -> None:
    """Raise ``TypeError`` now, at registration, when ``fn`` cannot take ``nargs``
    positional arguments (instead of failing on every batch later)."""
    if not callable(fn):
        raise TypeError(f"{where}: the handler must be callable, got {fn!r}")
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin without a signature: trust it
        return
    try:
        signature.bind(*range(nargs))
    except TypeError as exc:
        what = f" ({names})" if names else ""
        raise TypeError(
            f"{where}: handler {getattr(fn, '__qualname__', fn)!r}{signature} cannot be called "
            f"with {nargs} argument(s){what}: {exc}") from None
