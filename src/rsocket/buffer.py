"""The event buffer: merges bursts of events into one consolidated batch.

``EventBuffer`` is the public facade. The per-event path (dispatch, merge
rules, history cache, consolidation) comes from the compiled core
``rsocket._buffer`` when it is built, else from its pure-Python twin
``rsocket._buffer_py``; ``IMPLEMENTATION`` says which. Everything here runs at
releases only: handler calls, the auto-flush timer, logs and metrics.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import itertools
import logging
import math
import os
import time
import traceback
import weakref
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, fields, replace
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast, overload

from . import lifecycle, metrics
from ._compat import NO_EXTENSIONS, parse_flag
from .enums import DisconnectReason, MessageStatus
from .logs import bind

# isort: off
if TYPE_CHECKING or NO_EXTENSIONS:
    from ._buffer_py import BUFFERABLE_EVENTS, BufferCore, BufferedData

    IMPLEMENTATION = "python"
else:
    try:
        from ._buffer import BUFFERABLE_EVENTS, BufferCore, BufferedData

        IMPLEMENTATION = "cython"
    except ImportError as exc:  # pragma: no cover - built without a compiler
        from ._buffer_py import BUFFERABLE_EVENTS, BufferCore, BufferedData

        IMPLEMENTATION = "python"
        logging.getLogger("rsocket.buffer").warning(
            "the compiled core is not available (%s): using the pure-Python core, "
            "about 3x slower (install with a C compiler, or set RSOCKET_NO_EXTENSIONS=1 "
            "to choose the pure core and silence this)", exc,
        )
# isort: on

__all__ = [
    "BUFFERABLE_EVENTS",
    "IMPLEMENTATION",
    "Batch",
    "BatchHandler",
    "BufferConfig",
    "BufferStats",
    "BufferedData",
    "DisconnectReason",
    "EventBuffer",
    "MessageStatus",
    "SeqsHandler",
    "live_buffers",
]

_ids = itertools.count(1)  # a short id per buffer, for lifecycle lines
_NO_SEQS = range(0)

#: A released batch: event name -> payload (SPEC section 3).
Batch = dict[str, Any]
#: ``handler(batch)``, sync or ``async def``
BatchHandler = Callable[[Batch], object]
#: ``handler(batch, seqs)``: ``seqs`` is the ``range`` of seqs the release covers
SeqsHandler = Callable[[Batch, range], object]
#: ``handler(payload)`` of one event name (``on``)
EventHandler = Callable[[Any], object]
Handler = Callable[..., object]
AsyncHandler = Callable[..., Awaitable[object]]
F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


# -- configuration --------------------------------------------------------------


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


# -- live-buffer accounting -----------------------------------------------------

_live = 0
_live_set: weakref.WeakSet[_Facade] = weakref.WeakSet()


def live_buffers() -> int:
    """Buffers created and not yet destroyed, process-wide."""
    return _live


def _oldest_pending_age() -> float:
    return max((b.oldest_pending_age() for b in list(_live_set)), default=0.0)


metrics.gauge_function("buffer_oldest_pending_seconds", _oldest_pending_age)


# -- handlers -------------------------------------------------------------------


class _Settlement:
    """One release waiting for its async handler work, for ``_on_settled``."""

    __slots__ = ("created", "pending", "seqs")

    def __init__(self, seqs: range) -> None:
        self.seqs = seqs
        self.pending = 0
        self.created = time.monotonic()


class _AsyncRunner:
    """Runs one async handler: one batch at a time, in order, on the running loop.

    A call that runs longer than the config's ``slow_handler_threshold`` is
    reported once (WARNING with the handler's stack, a metric) by a timer the
    runner owns for that call.
    """

    __slots__ = ("__weakref__", "fn", "owner", "queue", "since", "task")

    def __init__(self, fn: Callable[..., Awaitable[object]], owner: _Facade) -> None:
        self.fn = fn
        self.owner = owner
        self.queue: deque[tuple[tuple[Any, ...], _Settlement | None, float]] = deque()
        self.task: asyncio.Task[None] | None = None
        #: when the batch being handled now was released (None: idle)
        self.since: float | None = None

    def submit(self, args: tuple[Any, ...], settlement: _Settlement | None) -> None:
        loop = asyncio.get_running_loop()  # RuntimeError without one: reported to emit()
        self.queue.append((args, settlement, time.monotonic()))
        if settlement is not None:
            settlement.pending += 1
        if self.task is None:
            self.task = loop.create_task(self._run(), name="rsocket-handler")
            self.owner._tasks.add(self.task)
            self.task.add_done_callback(self.owner._tasks.discard)

    def oldest(self) -> float | None:
        """When the oldest batch this handler has not finished was released."""
        if self.since is not None:
            return self.since
        return self.queue[0][2] if self.queue else None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        threshold = self.owner.config.slow_handler_threshold
        try:
            while self.queue:
                args, settlement, self.since = self.queue.popleft()
                slow = loop.call_later(threshold, self.owner._handler_slow, self, args[0])
                try:
                    await self.fn(*args)
                except Exception as exc:
                    try:
                        self.owner._handler_failed(self.fn, args[0], exc)
                    except Exception:  # reporting must never end the runner
                        logging.getLogger("rsocket.buffer").exception(
                            "could not report an async handler error"
                        )
                finally:
                    slow.cancel()
                    self.since = None
                    if settlement is not None:
                        settlement.pending -= 1
                        self.owner._settle_ready()
        finally:
            self.task = None


class _Listener:
    __slots__ = ("fn", "runner", "with_seqs")

    def __init__(self, fn: Handler, owner: _Facade, with_seqs: bool = False) -> None:
        self.fn = fn
        self.with_seqs = with_seqs
        self.runner = _AsyncRunner(cast(AsyncHandler, fn), owner) if _is_async(fn) else None


def _is_async(fn: Handler) -> bool:
    target = fn.func if isinstance(fn, functools.partial) else fn
    return inspect.iscoroutinefunction(target) or inspect.iscoroutinefunction(
        getattr(target, "__call__", None)  # noqa: B004 - async callable objects
    )


def _name(fn: Handler) -> str:
    target = fn.func if isinstance(fn, functools.partial) else fn
    return getattr(target, "__qualname__", repr(target))


def _await_stack(task: asyncio.Task[Any]) -> str:
    """Where a task waits: every coroutine of its ``await`` chain, outermost first
    (``Task.print_stack`` shows only the task's own coroutine)."""
    frames = []
    coro: Any = task.get_coro()
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is not None:
            frames.append(traceback.FrameSummary(
                frame.f_code.co_filename, frame.f_lineno, frame.f_code.co_name))
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return "".join(traceback.StackSummary.from_list(frames).format()).rstrip()


def _shape(batch: Any) -> dict[str, int]:
    """Event names and item counts of a batch, for logs."""
    if not isinstance(batch, dict):
        return {}
    shape = {}
    for name, payload in batch.items():
        if isinstance(payload, list):
            shape[name] = len(payload)
        elif name == "messages.upsert" and isinstance(payload, dict):
            shape[name] = len(payload.get("messages") or ())
        else:
            shape[name] = 1
    return shape


# -- the buffer -------------------------------------------------------------------


class _Facade:
    """Everything ``EventBuffer`` adds to a merge core: handlers, timer, logs, metrics."""

    # what the merge core (BufferCore) provides, listed for type checkers
    if TYPE_CHECKING:
        _depth: int
        _destroyed: bool
        _items: int
        _oldest: float
        pending: BufferedData

        def _take(self) -> tuple[dict[str, Any], int, int, int]: ...
        def _reset(self) -> None: ...
        def _cache_size(self) -> int: ...
        def _cache_evicted(self) -> int: ...

    def __init__(
        self,
        logger: logging.Logger | logging.LoggerAdapter[Any] | None = None,
        config: BufferConfig | None = None,
    ) -> None:
        global _live
        config = BufferConfig.from_env() if config is None else config
        super().__init__(config.max_history_cache, config.max_buffer_items)  # type: ignore[call-arg]
        self.config = config
        self.logger = bind(logger, "rsocket.buffer")
        self.id = next(_ids)
        self._listeners: dict[str, list[_Listener]] = {}
        self._batch_listeners: list[_Listener] = []
        self._timer: asyncio.TimerHandle | None = None
        self._flush_count = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._settling: deque[_Settlement] = deque()
        self._on_settled: Callable[[range], None] | None = None
        self._reported_cache = 0
        self._reported_evicted = 0
        _live += 1
        _live_set.add(self)
        metrics.get().buffers_live.inc()

    # -- listeners ------------------------------------------------------------------

    def on(self, event: str, handler: EventHandler) -> None:
        """Call ``handler(payload)`` for every released ``event`` (sync or async)."""
        if not self._destroyed:
            self._listeners.setdefault(event, []).append(_Listener(handler, self))

    def off(self, event: str, handler: EventHandler) -> None:
        """Remove one registration of ``handler`` for ``event`` (no-op if absent)."""
        listeners = self._listeners.get(event, [])
        for i, listener in enumerate(listeners):
            if listener.fn == handler:
                del listeners[i]
                break
        if not listeners:
            self._listeners.pop(event, None)

    def remove_all_listeners(self, event: str | None = None) -> None:
        """Remove ``event``'s per-event handlers, or every handler of both kinds."""
        if event is None:
            self._listeners.clear()
            self._batch_listeners.clear()
        else:
            self._listeners.pop(event, None)

    @overload
    def process(
        self, handler: BatchHandler, with_seqs: Literal[False] = False
    ) -> Callable[[], None]: ...
    @overload
    def process(self, handler: SeqsHandler, with_seqs: Literal[True]) -> Callable[[], None]: ...

    def process(self, handler: Handler, with_seqs: bool = False) -> Callable[[], None]:
        """Register a batch handler: ``handler(batch)`` or ``handler(batch, seqs)``.

        ``batch`` maps each released event name to its payload; ``seqs`` is
        the ``range`` of event seqs the release covers. Returns a function
        that unsubscribes the handler.
        """
        listener = _Listener(handler, self, with_seqs)
        if not self._destroyed:
            self._batch_listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._batch_listeners:
                self._batch_listeners.remove(listener)

        return unsubscribe

    # -- buffering --------------------------------------------------------------------

    def buffer(self) -> None:
        """Open (or nest) a buffering scope; the first one starts the auto-flush timer."""
        if self._destroyed:
            return
        self._depth += 1
        if self._depth != 1:
            return
        if lifecycle.enabled():
            lifecycle.record("buffer_start", **self._fields())
        if self.config.auto_flush and self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return  # buffering works without a loop, only the timer needs one
            self._timer = loop.call_later(self.config.auto_flush_timeout, self._on_timeout)

    def is_buffering(self) -> bool:
        """True while a buffering scope is open."""
        return self._depth > 0

    def flush(self, force: bool = False) -> bool:
        """Close a buffering scope; release the batch when the last one closes.

        Returns False when not buffering, destroyed, or scopes remain open;
        True when the batch was released. Handler exceptions are raised after
        every handler got the batch (several: an ``ExceptionGroup``).
        """
        if self._destroyed or not self._depth:
            return False
        if force:
            self._depth = 0
        else:
            self._depth -= 1
            if self._depth:
                return False
        self._cancel_timer()
        errors = self._release("forced" if force else "flush")
        if errors:
            self._raise(errors)
        return True

    def buffered(self, fn: F) -> F:
        """Wrap an async function in one buffering scope (nested calls release once)."""

        @functools.wraps(fn)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            self.buffer()
            try:
                return await fn(*args, **kwargs)
            finally:
                self.flush()

        return wrapper  # type: ignore[return-value]

    @property
    def destroyed(self) -> bool:
        """True once :meth:`destroy` has run."""
        return self._destroyed

    def stats(self) -> BufferStats:
        """Pending items, releases so far, history cache size, depth and timer."""
        return BufferStats(
            items_buffered=self._items,
            flush_count=self._flush_count,
            history_cache_size=self._cache_size(),
            buffers_in_progress=self._depth,
            has_timer=self._timer is not None,
        )

    def oldest_pending_age(self) -> float:
        """Seconds since the oldest event not yet processed was buffered: still
        in the pending batch, or released to an async handler that has not
        finished it (0.0 when there is none). A stalled handler shows here."""
        times = [self._oldest] if self._items else []
        if self._settling:
            times.append(self._settling[0].created)
        for listener in self._batch_listeners + [x for xs in self._listeners.values() for x in xs]:
            if listener.runner is not None and (since := listener.runner.oldest()) is not None:
                times.append(since)
        return time.monotonic() - min(times) if times else 0.0

    async def drain(self) -> None:
        """Wait until every queued async handler call has finished."""
        while self._tasks:
            await asyncio.wait(list(self._tasks))

    def destroy(self) -> None:
        """Stop the timer, deliver what is pending, remove listeners. Never raises.

        Idempotent. Async handler work already queued still runs (see
        :meth:`drain`). Afterwards ``emit`` drops events and ``buffer``/
        ``flush`` do nothing.
        """
        global _live
        if self._destroyed:
            return
        before = self._fields()
        self._cancel_timer()
        self._destroyed = (
            True  # emits from the final flush's handlers are dropped, not lost silently
        )
        had_pending = bool(self._items or self.pending.chat_conditionals)
        if had_pending:
            self._depth = 0
            try:
                errors = self._release("final")
            except Exception as exc:  # defensive: destroy() never raises
                errors = [exc]
            if errors:
                self._count_handler_errors(len(errors))
            for error in errors:
                self.logger.error(
                    "handler failed during the final flush",
                    exc_info=error,
                    extra={"event": "buffer_destroyed"},
                )
            undecided = sum(len(v) for v in self.pending.chat_conditionals.values())
            if undecided:
                self.logger.warning(
                    "dropping %d undecided conditional chat update(s) at destroy",
                    undecided,
                    extra={"undecided": undecided},
                )
            metrics.get().buffer_final_flush_total.inc()
        self._depth = 0
        self._listeners.clear()
        self._batch_listeners.clear()
        self._reset()
        self._flush_count = 0
        self._report_cache()
        _live -= 1
        _live_set.discard(self)
        m = metrics.get()
        m.buffers_live.dec()
        m.buffer_destroyed_total.labels(had_pending="true" if had_pending else "false").inc()
        self.logger.info(
            "event buffer destroyed: %d item(s) pending, %d flush(es), cache %d, timer %s",
            before["items"],
            before["flushes"],
            before["cache"],
            before["timer"],
            extra={"event": "buffer_destroyed", **before},
        )
        if lifecycle.enabled():
            lifecycle.record("buffer_destroyed", **before)

    # -- release machinery (called by the core) -------------------------------------

    def _release(self, reason: str) -> list[BaseException]:
        started = time.perf_counter()
        batch, items, first, last = self._take()
        seqs = range(first, last + 1) if first >= 0 else _NO_SEQS
        errors = self._dispatch(batch, seqs)
        if batch:
            self._flush_count += 1
            m = metrics.get()
            m.buffer_flush_total.labels(forced="false" if reason == "flush" else "true").inc()
            m.buffer_items_flushed_total.inc(items)
            m.buffer_flush_duration_seconds.observe(time.perf_counter() - started)
            if reason == "overflow":
                m.buffer_overflow_total.inc()
        self._report_cache()
        if batch and lifecycle.enabled():
            event = _LIFECYCLE_BY_REASON.get(reason, "buffer_flush")
            lifecycle.record(event, reason=reason, released=items, **self._fields())
        if reason == "type_mismatch":
            self.logger.debug("messages.upsert type changed: released the pending batch")
        return errors

    def _deliver(self, event: str, data: Any, seq: int | None) -> list[BaseException]:
        return self._dispatch({event: data}, range(seq, seq + 1) if seq is not None else _NO_SEQS)

    def _dispatch(self, batch: dict[str, Any], seqs: range) -> list[BaseException]:
        # the hot path of unbuffered delivery: calls inlined, copies of the listener
        # lists only (a handler may subscribe or unsubscribe while we iterate)
        settlement = _Settlement(seqs) if seqs and self._on_settled is not None else None
        errors: list[BaseException] = []
        if batch:
            for listener in self._batch_listeners[:]:
                try:
                    if listener.runner is not None:
                        args = (batch, seqs) if listener.with_seqs else (batch,)
                        listener.runner.submit(args, settlement)
                    elif listener.with_seqs:
                        listener.fn(batch, seqs)
                    else:
                        listener.fn(batch)
                except Exception as exc:
                    errors.append(exc)
            if self._listeners:
                for name, payload in batch.items():
                    for listener in self._listeners.get(name, [])[:]:
                        try:
                            if listener.runner is not None:
                                listener.runner.submit((payload,), settlement)
                            else:
                                listener.fn(payload)
                        except Exception as exc:
                            errors.append(exc)
        if settlement is not None:
            if not settlement.pending and not self._settling and self._on_settled is not None:
                self._on_settled(seqs)  # nothing async, nothing earlier waiting: settled now
            else:
                self._settling.append(settlement)
                self._settle_ready()
        return errors

    def _settle_ready(self) -> None:
        settling = self._settling
        while settling and settling[0].pending == 0:
            seqs = settling.popleft().seqs
            if self._on_settled is not None:
                self._on_settled(seqs)

    def _raise(self, errors: list[BaseException]) -> None:
        if len(errors) == 1:
            raise errors[0]
        raise ExceptionGroup(f"{len(errors)} event handlers raised", errors)  # type: ignore[type-var]

    def _dropped(self, event: str) -> None:
        metrics.get().events_dropped_total.inc()
        self.logger.debug("event %s dropped: buffer destroyed", event, extra={"event": event})

    def _count_handler_errors(self, n: int = 1) -> None:
        m = metrics.get()
        tenant = str((self.logger.extra or {}).get("tenant", ""))
        m.tenant(m.handler_errors_total, tenant).inc(n)

    def _handler_failed(self, fn: Handler, batch: Any, exc: BaseException) -> None:
        self._count_handler_errors()
        self.logger.error(
            "async handler %s failed on a batch %s",
            _name(fn),
            _shape(batch),
            exc_info=exc,
            extra={"batch_shape": _shape(batch)},
        )

    def _handler_slow(self, runner: _AsyncRunner, batch: Any) -> None:
        m = metrics.get()
        tenant = str((self.logger.extra or {}).get("tenant", ""))
        m.tenant(m.handler_slow_total, tenant).inc()
        stack = _await_stack(runner.task) if runner.task is not None else "(no task)"
        self.logger.warning(
            "async handler %s has been running for over %.3gs on a batch %s; where it waits:\n%s",
            _name(runner.fn), self.config.slow_handler_threshold, _shape(batch), stack,
            extra={"event": "handler_slow", "batch_shape": _shape(batch)},
        )

    def _on_timeout(self) -> None:
        self._timer = None
        if self._destroyed or not self._depth:
            return
        fields = self._fields()
        self.logger.warning(
            "auto-flush timer fired after %.3gs with %d scope(s) open: forcing a flush",
            self.config.auto_flush_timeout,
            self._depth,
            extra={"event": "buffer_timeout", **fields},
        )
        if lifecycle.enabled():
            lifecycle.record("buffer_timeout", **fields)
        self._depth = 0
        errors = self._release("timeout")
        if errors:
            self._count_handler_errors(len(errors))
        for exc in errors:
            self.logger.error("handler failed during an auto-flush", exc_info=exc)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _report_cache(self) -> None:
        size = self._cache_size()
        if size != self._reported_cache:
            metrics.get().buffer_cache_size.inc(size - self._reported_cache)
            self._reported_cache = size
        evicted = self._cache_evicted()
        if evicted != self._reported_evicted:
            if lifecycle.enabled():
                lifecycle.record(
                    "cache_cleanup", evicted=evicted - self._reported_evicted, cache=size
                )
            self._reported_evicted = evicted

    def _fields(self) -> dict[str, Any]:
        return {
            **(self.logger.extra or {}),
            "buffer": self.id,
            "depth": self._depth,
            "items": self._items,
            "flushes": self._flush_count,
            "cache": self._cache_size(),
            "timer": self._timer is not None,
        }


class EventBuffer(_Facade, BufferCore):
    """Merges bursts of chat events into consolidated batches.

    Args:
        logger: a ``Logger`` or ``LoggerAdapter`` (e.g. one carrying the
            tenant); defaults to ``logging.getLogger("rsocket.buffer")``.
        config: limits and timer; None reads ``BufferConfig.from_env()``.

    Raises:
        ValueError: ``config`` is None and an ``RSOCKET_BUFFER_*`` variable is malformed.
    """


@functools.cache
def event_buffer_class(core: ModuleType) -> type[EventBuffer]:
    """``EventBuffer`` built on a given merge core module (the tests run both)."""
    if core.BufferCore is BufferCore:
        return EventBuffer
    cls = type("EventBuffer", (_Facade, core.BufferCore), {"__doc__": EventBuffer.__doc__})
    cls.__module__ = __name__
    return cls


_LIFECYCLE_BY_REASON = {
    "overflow": "buffer_overflow",
    "type_mismatch": "type_mismatch_flush",
    "timeout": "buffer_flush",
}
