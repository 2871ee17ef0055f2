"""The event buffer: merges bursts of events into one consolidated batch.

``EventBuffer`` is the public facade; it holds a merge core (``self._core``):
the compiled ``rsocket._buffer`` when it is built, else its pure-Python twin
``rsocket._buffer_py`` (``IMPLEMENTATION`` says which). The core does all the
per-event work (merge rules, releases, calling handlers, seq settlement) and
``ev.emit`` is the core's own method, a direct call into C. The facade adds
what runs per scope or per lifetime: the auto-flush timer, async handler
runners, destroy, logs, lifecycle lines and metrics (read from the core's
counters when Prometheus scrapes).
"""

from __future__ import annotations

import asyncio
import difflib
import functools
import inspect
import itertools
import logging
import time
import traceback
import warnings
import weakref
from collections.abc import Awaitable, Callable, Collection, Sequence
from types import ModuleType
from typing import Any, Literal, Protocol, TypeVar, cast, overload

from . import events, lifecycle, metrics
from ._core import IMPLEMENTATION
from ._core import module as _core_module
from .config import BufferConfig, BufferStats
from .enums import DisconnectReason, MessageStatus
from .logs import FieldsAdapter, bind
from .retry import DEFAULT_RETRY, NO_RETRY, DeadLetter, Retry
from .runner import REPORT_INTERVAL, FailureLog, HandlerRunner, check_handler, is_handled, shape
from .seqs import Seqs

BUFFERABLE_EVENTS: frozenset[str] = _core_module.BUFFERABLE_EVENTS
BufferedData = _core_module.BufferedData
_FLUSH_BUCKETS: tuple[float, ...] = _core_module.FLUSH_BUCKETS

__all__ = [
    "BUFFERABLE_EVENTS",
    "IMPLEMENTATION",
    "Batch",
    "BatchHandler",
    "BufferConfig",
    "BufferStats",
    "BufferedData",
    "DeadLetter",
    "DeadLetterHandler",
    "DisconnectReason",
    "EventBuffer",
    "MessageStatus",
    "Retry",
    "Seqs",
    "SeqsHandler",
    "live_buffers",
]

_ids = itertools.count(1)  # a short id per buffer, for lifecycle lines

#: A released batch: event name -> payload.
Batch = dict[str, Any]
#: ``handler(batch)``, sync or ``async def``
BatchHandler = Callable[[Batch], object]
#: ``handler(batch, seqs)``: ``seqs`` is the :class:`Seqs` the release covers
#: (a range of seqs, with their log's ``epoch``)
SeqsHandler = Callable[[Batch, Seqs], object]
#: ``hook(dead_letter)``, sync or ``async def`` (awaited before the cursor moves on)
DeadLetterHandler = Callable[[DeadLetter], object]
#: ``handler(payload)`` of one event name (``on``)
EventHandler = Callable[[Any], object]
Handler = Callable[..., object]
AsyncHandler = Callable[..., Awaitable[object]]
F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


# -- live buffers, and the counters metrics read at scrape time -----------------------

_live = 0
_live_set: weakref.WeakSet[EventBuffer] = weakref.WeakSet()
_COUNTERS = ("flushes", "forced_flushes", "items_flushed", "overflows", "dropped",
             "flush_seconds")
# what destroyed buffers counted (their cores are gone)
_retired: dict[str, Any] = dict.fromkeys(_COUNTERS, 0)
_retired["flush_buckets"] = [0] * (len(_FLUSH_BUCKETS) + 1)


def live_buffers() -> int:
    """Buffers created and not yet destroyed, process-wide."""
    return _live


def _totals() -> dict[str, Any]:
    """Every buffer's counters summed, for the metrics collector."""
    totals = dict(_retired)
    buckets = list(_retired["flush_buckets"])
    cache = 0
    oldest = 0.0
    for ev in list(_live_set):
        core = ev._core
        for name in _COUNTERS:
            totals[name] += getattr(core, name)
        buckets = [a + b for a, b in zip(buckets, core.flush_buckets, strict=True)]
        cache += core.cache_size()
        oldest = max(oldest, ev.oldest_pending_age())
    totals.update(flush_buckets=buckets, flush_bounds=_FLUSH_BUCKETS,
                  cache_size=cache, live=_live, oldest_pending=oldest)
    return totals


metrics.buffer_source(_totals)


# -- handlers -----------------------------------------------------------------------------


def _is_async(fn: Handler) -> bool:
    target = fn.func if isinstance(fn, functools.partial) else fn
    return inspect.iscoroutinefunction(target) or inspect.iscoroutinefunction(
        getattr(target, "__call__", None)  # noqa: B004 - async callable objects
    )


def _name(fn: Handler) -> str:
    target = fn.func if isinstance(fn, functools.partial) else fn
    return getattr(target, "__qualname__", None) or type(target).__qualname__


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


def _dropped(event: str, data: Any, seq: int | None = None) -> bool:
    """``emit`` of a destroyed buffer: the event is dropped, and counted."""
    _retired["dropped"] += 1
    return False


class _Emit(Protocol):
    def __call__(self, event: str, data: Any, seq: int | None = None) -> bool: ...


class _Ingest(Protocol):
    def __call__(
        self, first: int, frame_events: list[Any], scoped: bool, received: int
    ) -> tuple[int, int, list[tuple[int, str, str]] | None, list[Exception] | None]: ...


_warned_names: set[str] = set()


def _unknown_event(name: str, strict: bool) -> None:
    close = difflib.get_close_matches(name, sorted(events.BAILEYS_EVENTS), n=1)
    text = (f"unknown event name {name!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
            + ": no Baileys event has this name, so the handler would never be called")
    if strict:
        raise ValueError(text)
    if name not in _warned_names:
        _warned_names.add(name)
        warnings.warn(text, UserWarning, stacklevel=3)


def _unsubscribe(listeners: list[Any], listener: Any) -> None:
    if listener in listeners:
        listeners.remove(listener)


# -- the buffer -------------------------------------------------------------------


class EventBuffer:
    """Merges bursts of chat events into consolidated batches.

    Args:
        logger: a ``Logger`` or ``LoggerAdapter``; defaults to
            ``logging.getLogger("rsocket.buffer")``.
        config: limits and timer; None reads ``BufferConfig.from_env()``.
        core: the merge core module (``rsocket._buffer`` or
            ``rsocket._buffer_py``); None: the compiled one when it is built.
        tenant: the account whose events it merges: a field of its log lines
            and the ``tenant`` label of its metrics.

    Raises:
        ValueError: ``config`` is None and an ``RSOCKET_BUFFER_*`` variable is malformed.
    """

    __slots__ = ("__weakref__", "_core", "_dead_letter_hook", "_evicted_seen", "_listener",
                 "_logger", "_owner_close", "_tasks", "_timer", "config", "emit", "id", "ingest",
                 "on_error", "tenant")

    _core: _core_module.BufferCore
    emit: _Emit
    """``emit(event, data, seq=None) -> bool``: merge ``event`` into the pending
    batch, or deliver it at once (not buffering, or not a bufferable event).

    Returns True when the event was merged or delivered, False when it was
    dropped (destroyed buffer, or nothing in it). Handler exceptions from a
    release it triggered (overflow, upsert type change, a ``{jid, all}``
    delete) are raised after the event is merged. ``seq`` (0 <= seq < 2**63)
    is the event's sequence number; each release knows the range of its seqs.
    """

    ingest: _Ingest
    """``ingest(first, frame_events, scoped, received)``: one received frame's
    events at once (what a ``Socket`` calls): duplicates skipped, payloads
    validated (invalid ones dropped, their seqs processed at once), the rest
    emitted with their seqs (one scope when ``scoped``); handler exceptions
    collected. Returns ``(received, duplicates, invalid, errors)``."""

    on_error: Callable[[BaseException], object] | None
    """``on_error(exc)`` is called with each exception a handler raised, instead of
    logging it at ERROR (None, the default: logged with a rate limit, so that no
    handler bug goes unseen). It changes nothing to retries and dead letters."""

    def __init__(
        self,
        logger: logging.Logger | logging.LoggerAdapter[Any] | None = None,
        config: BufferConfig | None = None,
        *,
        core: ModuleType | None = None,
        tenant: str = "",
    ) -> None:
        global _live
        config = BufferConfig.from_env() if config is None else config
        module = _core_module if core is None else core
        self.config = config
        self._logger = logger
        if not tenant and isinstance(logger, logging.LoggerAdapter):  # an adapter carrying it
            tenant = str((logger.extra or {}).get("tenant", ""))
        self.tenant = tenant
        self.id = next(_ids)
        self._core = module.BufferCore(config.max_history_cache, config.max_buffer_items)
        self._listener = module.Listener
        self.emit = self._core.emit  # the per-event call goes straight into the core
        self.ingest = self._core.ingest
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] | None = None  # async handler calls running
        self.on_error = None
        self._dead_letter_hook: DeadLetterHandler | None = None
        self._owner_close: Callable[[], None] | None = None
        self._evicted_seen = 0
        if lifecycle.enabled():
            self._core.observer = self._observe
        _live += 1
        _live_set.add(self)

    # -- listeners ------------------------------------------------------------------

    def on(self, event: str, handler: EventHandler, *, strict: bool = False,
           retry: Retry | None = DEFAULT_RETRY) -> None:
        """Call ``handler(payload)`` for every released ``event`` (sync or async).

        An event name that is not one of Baileys' (a typo such as
        ``chats.upsrt``: the handler would never run) gets a warning, once per
        name; with ``strict`` it is an error. ``retry``: as for :meth:`process`.

        Raises:
            ValueError: ``strict`` and ``event`` is not a Baileys event name.
            TypeError: ``handler`` cannot be called with one argument.
        """
        if event not in events.BAILEYS_EVENTS:
            _unknown_event(event, strict)
        check_handler(handler, 1, "on()")
        if not self._core.destroyed:
            self._core.event_listeners.setdefault(event, []).append(
                self._make(handler, False, retry, event))

    def off(self, event: str, handler: EventHandler) -> None:
        """Remove one registration of ``handler`` for ``event`` (no-op if absent)."""
        listeners = self._core.event_listeners.get(event, [])
        for i, listener in enumerate(listeners):
            if listener.fn == handler:
                del listeners[i]
                break
        if not listeners:
            self._core.event_listeners.pop(event, None)

    def remove_all_listeners(self, event: str | None = None) -> None:
        """Remove ``event``'s per-event handlers, or every handler of both kinds."""
        if event is None:
            self._core.event_listeners.clear()
            self._core.batch_listeners.clear()
        else:
            self._core.event_listeners.pop(event, None)

    @overload
    def process(
        self, handler: BatchHandler, with_seqs: Literal[False] = False, *,
        retry: Retry | None = DEFAULT_RETRY,
    ) -> Callable[[], None]: ...
    @overload
    def process(self, handler: SeqsHandler, with_seqs: Literal[True], *,
                retry: Retry | None = DEFAULT_RETRY) -> Callable[[], None]: ...

    def process(self, handler: Handler, with_seqs: bool = False, *,
                retry: Retry | None = DEFAULT_RETRY) -> Callable[[], None]:
        """Register a batch handler: ``handler(batch)`` or ``handler(batch, seqs)``.

        ``batch`` maps each released event name to its payload; ``seqs`` is
        the :class:`Seqs` the release covers (a range, with its ``epoch``).
        A call that raises is retried per ``retry`` (:class:`Retry`; None:
        no retry): the same batch, in order, after a backoff, its later
        batches waiting; after the last attempt the batch is dead-lettered
        (:meth:`on_dead_letter`). Retries need a running event loop: without
        one, the exception only reaches the caller of ``emit()``/``flush()``.
        Returns a function that unsubscribes the handler.

        Raises:
            TypeError: ``handler`` cannot be called with these arguments.
        """
        check_handler(handler, 2 if with_seqs else 1, "process()")
        listener = self._make(handler, with_seqs, retry, None)
        listeners = self._core.batch_listeners
        if not self._core.destroyed:
            listeners.append(listener)
        return functools.partial(_unsubscribe, listeners, listener)

    def on_dead_letter(self, hook: DeadLetterHandler | None) -> None:
        """``hook(dead_letter)`` gets each batch a handler gave up on (a
        :class:`DeadLetter`); an ``async`` hook (a store such as
        ``rsocket.deadletters.FileDeadLetters``) is awaited before the batch
        counts as processed. Without a hook, dead letters are logged at ERROR.
        Either way they are counted (``rsocket_dead_letters_total``)."""
        self._dead_letter_hook = hook

    def _make(self, fn: Handler, with_seqs: bool, retry: Retry | None, event: str | None) -> Any:
        is_async = _is_async(fn)
        runner = HandlerRunner(fn, is_async, self, NO_RETRY if retry is None else retry, event)
        listener = self._listener(fn, with_seqs, runner if is_async else None,
                                  None if is_async else runner)
        runner.listener = listener
        return listener

    # -- buffering --------------------------------------------------------------------

    def buffer(self) -> None:
        """Open (or nest) a buffering scope; the first one starts the auto-flush timer."""
        if not self._core.buffer():
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
        return self._core.depth > 0

    def flush(self, force: bool = False) -> bool:
        """Close a buffering scope; release the batch when the last one closes.

        Returns False when not buffering, destroyed, or scopes remain open;
        True when the batch was released. Handler exceptions are raised after
        every handler got the batch (several: an ``ExceptionGroup``).
        """
        if force or self._core.depth == 1:
            self._cancel_timer()
        return self._core.flush(force)

    def buffered(self, fn: F) -> F:
        """Wrap an async function in one buffering scope (nested calls release once)."""

        @functools.wraps(fn)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            self.buffer()
            try:
                return await fn(*args, **kwargs)
            finally:
                self.flush()

        return cast(F, wrapper)

    @property
    def destroyed(self) -> bool:
        """True once :meth:`destroy` has run."""
        return self._core.destroyed

    @property
    def epoch(self) -> str:
        """The log session the seqs belong to ("" none): given to handlers with
        their seqs (:class:`Seqs`) and in dead letters. A socket sets it."""
        return self._core.epoch

    @epoch.setter
    def epoch(self, epoch: str) -> None:
        self._core.epoch = epoch

    @property
    def fence(self) -> Callable[[], int | None] | None:
        """``fence() -> token | None``, asked at each release: None means this process
        can no longer prove it owns the tenant (its lease), so the release is not
        delivered (nor settled: the new owner delivers it); a token is handed to
        ``with_seqs`` handlers as ``seqs.token``. ``rsocket.cluster`` sets it."""
        return self._core.fence

    @fence.setter
    def fence(self, fence: Callable[[], int | None] | None) -> None:
        self._core.fence = fence

    @property
    def pending(self) -> BufferedData:
        """The batch being buffered (what a conditional chat update reads)."""
        return self._core.pending

    @property
    def on_settled(self) -> Callable[[range], None] | None:
        """Called with each release's seq range once its handlers are done with it
        (async work included), in release order; also with the seq of an event
        that :attr:`ingest` dropped as invalid or empty. What a socket's
        ``last_seq`` follows. None: nobody listens."""
        return self._core.on_settled

    @on_settled.setter
    def on_settled(self, callback: Callable[[range], None] | None) -> None:
        self._core.on_settled = callback

    def set_owner(self, close: Callable[[], None] | None) -> None:
        """Hand :meth:`destroy` to an owner: while set, ``destroy()`` calls
        ``close()`` instead, so the owner (a socket) ends itself first; the owner
        clears it and then destroys the buffer."""
        self._owner_close = close

    def stats(self) -> BufferStats:
        """Pending items, releases so far, history cache size, depth and timer."""
        core = self._core
        return BufferStats(
            items_buffered=core.items,
            flush_count=core.flushes,
            history_cache_size=core.cache_size(),
            buffers_in_progress=core.depth,
            has_timer=self._timer is not None,
        )

    def oldest_pending_age(self) -> float:
        """Seconds since the oldest event not yet processed was buffered: still
        in the pending batch, or released to an async handler that has not
        finished it (0.0 when there is none). A stalled handler shows here."""
        core = self._core
        times = [core.oldest] if core.items else []
        if settling := core.oldest_settling():
            times.append(settling)
        listeners = [*core.batch_listeners, *(x for xs in core.event_listeners.values() for x in xs)]
        for listener in listeners:
            if listener.runner is not None and (since := listener.runner.oldest()) is not None:
                times.append(since)
        return time.monotonic() - min(times) if times else 0.0

    async def drain(self, timeout: float | None = None,
                    exclude: Collection[asyncio.Task[Any]] = ()) -> bool:
        """Wait until every queued async handler call has finished (those running
        in ``exclude``, e.g. tasks awaiting this buffer's owner, aside).

        Returns False when ``timeout`` seconds passed first.
        """
        try:
            async with asyncio.timeout(timeout):
                while tasks := [t for t in self._tasks or () if t not in exclude]:
                    await asyncio.wait(tasks)
        except TimeoutError:
            return False
        return True

    async def cancel_handlers(self, exclude: Collection[asyncio.Task[Any]] = ()) -> int:
        """Cancel the async handler calls still running (``exclude`` aside) and
        wait for them to unwind; returns how many were cancelled."""
        tasks = [t for t in self._tasks or () if t not in exclude and not t.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return len(tasks)

    def destroy(self) -> None:
        """Stop the timer, deliver what is pending, remove listeners. Never raises.

        Idempotent. Async handler work already queued still runs (see
        :meth:`drain`). Afterwards ``emit`` drops events and ``buffer``/
        ``flush`` do nothing.
        """
        global _live
        owner_close, self._owner_close = self._owner_close, None
        if owner_close is not None:
            owner_close()  # the owner ends itself, then destroys the buffer
            return
        core = self._core
        if core.destroyed:
            return
        before = self._fields()
        self._cancel_timer()
        runners = self._runners()
        had_pending, errors, undecided = core.destroy()
        self.report_unhandled(errors, "handler failed during the final flush")
        for runner in runners:  # a retry in progress is left for the next connection
            runner.abandon()
        if undecided:
            self.logger.warning(
                "dropping %d undecided conditional chat update(s) at destroy", undecided,
                extra={"undecided": undecided},
            )
        m = metrics.get()
        if had_pending:
            m.buffer_final_flush_total.inc()
        m.buffer_destroyed_total.labels(had_pending="true" if had_pending else "false").inc()
        counters = core.take_counters()
        for name in _COUNTERS:
            _retired[name] += counters[name]
        _retired["flush_buckets"] = [
            a + b for a, b in zip(_retired["flush_buckets"], counters["flush_buckets"], strict=True)]
        _live -= 1
        _live_set.discard(self)
        self.emit = _dropped  # a destroyed core counts nothing any more
        self.logger.debug(
            "event buffer destroyed: %d item(s) pending, %d flush(es), cache %d, timer %s",
            before["items"], before["flushes"], before["cache"], before["timer"],
            extra={"event": "buffer_destroyed", **before},
        )
        if lifecycle.enabled():
            lifecycle.record("buffer_destroyed", **before)

    @property
    def logger(self) -> FieldsAdapter:
        """The buffer's logger, with its tenant (built when a line is logged)."""
        fields = {"tenant": self.tenant} if self.tenant else {}
        return bind(self._logger, "rsocket.buffer", **fields)

    def report_error(self, exc: BaseException, message: str = "event handler raised",
                     extra: dict[str, Any] | None = None) -> bool:
        """A handler raised ``exc``: to :attr:`on_error` when set (True), else False."""
        hook = self.on_error
        if hook is not None:
            try:
                hook(exc)
                return True
            except Exception:
                self.logger.exception("the on_error hook raised")
        if message:
            self.logger.error(message, exc_info=exc, extra=extra)
        return False

    def report_unhandled(self, errors: Sequence[BaseException], message: str) -> None:
        """Report what ``emit()``/``flush()``/``ingest`` raised that no retry policy took
        over (a handler raising with no running loop): the policies report their own."""
        m = metrics.get()
        for error in errors:
            if not is_handled(error):
                m.tenant(m.handler_errors_total, self.tenant).inc()
                self.report_error(error, message)

    # -- internals ------------------------------------------------------------------------

    def _track(self, task: asyncio.Task[None]) -> None:
        tasks = self._tasks
        if tasks is None:
            tasks = self._tasks = set()
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def _observe(self, reason: str, items: int) -> None:
        """After a release, when lifecycle lines are on (the core's observer)."""
        if reason == "type_mismatch":
            self.logger.debug("messages.upsert type changed: released the pending batch")
        if lifecycle.enabled():
            event = _LIFECYCLE_BY_REASON.get(reason, "buffer_flush")
            lifecycle.record(event, reason=reason, released=items, **self._fields())
            evicted = self._core.cache_evicted()
            if evicted != self._evicted_seen:
                lifecycle.record("cache_cleanup", evicted=evicted - self._evicted_seen,
                                 cache=self._core.cache_size())
                self._evicted_seen = evicted

    def _runners(self) -> list[HandlerRunner]:
        core = self._core
        listeners = [*core.batch_listeners, *(x for xs in core.event_listeners.values() for x in xs)]
        return [listener.runner or listener.failed for listener in listeners]

    def _handler_failed(self, runner: HandlerRunner, call: Any, exc: BaseException,
                        retry_in: float | None) -> None:
        """A handler call raised (the runner reports each failure here)."""
        m = metrics.get()
        m.tenant(m.handler_errors_total, self.tenant).inc()
        if self.report_error(exc, ""):
            return
        name = _name(runner.fn)
        log = FailureLog.of(name)
        left_out = log.due()
        if left_out is None:
            return
        seqs = runner.seqs_of(call)
        if retry_in is not None:
            then = f"retrying in {retry_in:.2g}s"
        elif self.destroyed:
            then = "not retried: the connection is closing, the next one delivers it again"
        else:
            then = "giving up: dead-lettered"
        fields = {"event": "handler_failed", "handler": name,
                  "batch_shape": shape(runner.batch_of(call)), "attempt": call.failures,
                  "attempts": runner.retry.attempts, "first_seq": seqs.start if seqs else None,
                  "last_seq": seqs.stop - 1 if seqs else None, "left_out": left_out}
        where = f"seqs {seqs.start}-{seqs.stop - 1}" if seqs else "no seqs"
        if log.reports > 1:
            self.logger.error(
                "handler %s raised again (%d more failure(s) in the last %ds, not logged): %s: %s;"
                " %s", fields["handler"], left_out, int(REPORT_INTERVAL), type(exc).__name__,
                exc, then, extra=fields)
        else:
            self.logger.error(
                "handler %s raised on a batch %s (%s, attempt %d of %d): %s",
                fields["handler"], fields["batch_shape"], where, call.failures,
                runner.retry.attempts, then, exc_info=exc, extra=fields)

    def _count_retry(self) -> None:
        m = metrics.get()
        m.tenant(m.handler_retries_total, self.tenant).inc()

    async def _dead_letter(self, runner: HandlerRunner, call: Any) -> None:
        """``call`` failed its last attempt: hand it to the hook (awaited), log, count."""
        seqs = runner.seqs_of(call)
        letter = DeadLetter(self.tenant, seqs, seqs.epoch or self.epoch, runner.batch_of(call),
                            call.error, call.failures, _name(runner.fn))
        m = metrics.get()
        m.tenant(m.dead_letters_total, self.tenant).inc()
        hook = self._dead_letter_hook
        self.logger.log(
            logging.WARNING if hook is not None else logging.ERROR,
            "dead letter: handler %s gave up on seqs %s (epoch %r) after %d attempt(s): %s: %s",
            letter.handler, f"{seqs.start}-{seqs.stop - 1}" if seqs else "(none)", letter.epoch,
            letter.attempts, type(letter.error).__name__, letter.error,
            extra={"event": "dead_letter", "handler": letter.handler, "attempts": letter.attempts,
                   "first_seq": seqs.start if seqs else None,
                   "last_seq": seqs.stop - 1 if seqs else None},
        )
        if hook is None:
            return
        try:
            result = hook(letter)
            if inspect.isawaitable(result):
                await result
        except Exception:
            self.logger.exception("the dead-letter hook raised: the dead letter is only logged")

    def _abandoned(self, runner: HandlerRunner, left: int) -> None:
        self.logger.info(  # routine: they come again, in order
            "handler %s: %d batch(es) not processed when the buffer was destroyed: not "
            "acknowledged, so the next connection delivers them again", _name(runner.fn), left,
            extra={"event": "handler_abandoned", "handler": _name(runner.fn), "left": left})

    def _handler_slow(self, runner: HandlerRunner, batch: Any) -> None:
        m = metrics.get()
        m.tenant(m.handler_slow_total, self.tenant).inc()
        stack = _await_stack(runner.task) if runner.task is not None else "(no task)"
        self.logger.warning(
            "async handler %s has been running for over %.3gs on a batch %s; where it waits:\n%s",
            _name(runner.fn), self.config.slow_handler_threshold, shape(batch), stack,
            extra={"event": "handler_slow", "batch_shape": shape(batch)},
        )

    def _on_timeout(self) -> None:
        self._timer = None
        core = self._core
        if core.destroyed or not core.depth:
            return
        fields = self._fields()
        self.logger.warning(
            "auto-flush timer fired after %.3gs with %d scope(s) open: forcing a flush",
            self.config.auto_flush_timeout, core.depth,
            extra={"event": "buffer_timeout", **fields},
        )
        if lifecycle.enabled():
            lifecycle.record("buffer_timeout", **fields)
        m = metrics.get()
        m.tenant(m.buffer_timer_flushes_total, self.tenant).inc()
        core.depth = 0
        try:
            core.release("timeout")
        except Exception as exc:
            errors = list(exc.exceptions) if isinstance(exc, BaseExceptionGroup) else [exc]
            self.report_unhandled(errors, "handler failed during an auto-flush")

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fields(self) -> dict[str, Any]:
        core = self._core
        return {
            **(self.logger.extra or {}),
            "buffer": self.id,
            "depth": core.depth,
            "items": core.items,
            "flushes": core.flushes,
            "cache": core.cache_size(),
            "timer": self._timer is not None,
        }


@functools.cache
def event_buffer_class(core: ModuleType) -> Callable[..., EventBuffer]:
    """``EventBuffer`` on a given merge core module (what the tests and benchmarks run)."""
    return functools.partial(EventBuffer, core=core)


_LIFECYCLE_BY_REASON = {
    "overflow": "buffer_overflow",
    "type_mismatch": "type_mismatch_flush",
    "timeout": "buffer_flush",
}
