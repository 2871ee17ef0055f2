"""Connection manager per tenant.

``ConnectionManager`` is the other half of the fix for orphaned buffers: it
closes the old socket (and so destroys its buffer) BEFORE it creates a new
one, tells a close it caused from a failure, never runs two starts at once,
and reconnects with backoff, jitter and a circuit breaker. The pool of many
tenants is ``rsocket.pool.TenantPool``.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from types import ModuleType
from typing import Any, Literal, overload

from . import lifecycle, metrics
from .breaker import CircuitBreaker, CircuitState
from .buffer import Batch, BatchHandler, DeadLetterHandler, SeqsHandler
from .cursor import Cursor, FileSeqStore, MemorySeqStore, SeqStore
from .enums import DisconnectReason
from .errors import DisconnectError, ProtocolError
from .logs import FieldsAdapter, bind
from .retry import DEFAULT_RETRY, Retry
from .runner import check_handler
from .seqs import Seqs
from .socket import Socket, SocketConfig
from .wire import check_url

resource: ModuleType | None
try:  # imported now: out of file descriptors, an import could not open its file
    import resource
except ImportError:  # pragma: no cover - not a Unix
    resource = None

__all__ = [
    "ConnectionManager",
    "Cursor",
    "ErrorHandler",
    "FileSeqStore",
    "MemorySeqStore",
    "SeqStore",
    "StateHandler",
    "TenantBatchHandler",
    "TenantSeqsHandler",
]

#: ``handler(tenant, batch)``, sync or ``async def``
TenantBatchHandler = Callable[[str, Batch], object]
#: ``handler(tenant, exc)``: an exception a batch handler raised, or the
#: ``DisconnectError`` of a socket that failed or ended (see ``on_error``)
ErrorHandler = Callable[[str, BaseException], object]
#: ``handler(tenant, state, code)``: the manager's new state, with the status code
#: of the disconnect behind it (None for connecting, open...)
StateHandler = Callable[[str, str, "int | None"], object]
#: ``handler(tenant, batch, seqs)``: ``seqs`` is the :class:`Seqs` the release covers
TenantSeqsHandler = Callable[[str, Batch, Seqs], object]

#: close codes after which reconnecting is pointless
_LOGGED_OUT = frozenset({DisconnectReason.loggedOut, DisconnectReason.forbidden})
_REPLACED = DisconnectReason.connectionReplaced
#: manager states: not running and not destroyed (``start()`` runs them again)
STOPPED = frozenset({"idle", "replaced", "rejected"})
#: manager states: no reconnect coming
ENDED = frozenset({"replaced", "rejected", "logged_out", "destroyed"})
_log = logging.getLogger("rsocket.manager")
_LOOP_RECONNECTS = 5  # this many reconnects...
_LOOP_WINDOW = 60.0  # ...within this many seconds flag a reconnect loop
_FAILING_EVERY = 60.0  # a tenant that cannot connect is reported at most this often
# a frame above our max_frame refused this many connections in a row, at the same
# seq, ends the tenant: the server does not fit frames to us (an older server)
_TOO_BIG_LIMIT = 3
_MESSAGE_TOO_BIG = 1009  # the WebSocket close code


class _Subscription:
    """An application batch handler, attached to each socket a manager creates."""

    __slots__ = ("detach", "handler", "retry", "with_seqs")

    def __init__(self, handler: Callable[..., object], with_seqs: bool,
                 retry: Retry | None) -> None:
        self.handler = handler
        self.with_seqs = with_seqs
        self.retry = retry
        self.detach: Callable[[], None] = lambda: None

    def attach(self, sock: Socket) -> None:
        self.detach = sock.ev.process(self.handler, self.with_seqs,  # type: ignore[call-overload]
                                      retry=self.retry)


def counts_as_failure(error: BaseException | None) -> bool:
    """The default breaker filter: a logout, a replacement, frames the server
    rejects, this process out of file descriptors or a tenant between two servers
    of a fleet (no server holds it for a moment) are not the service failing."""
    code = getattr(error, "status_code", None)
    return (code not in _LOGGED_OUT and code != _REPLACED
            and not getattr(error, "rejected", False)
            and not getattr(error, "out_of_files", False)
            and not getattr(error, "unserved", False))


class _FileLimit:
    """Out of file descriptors: one condition of the whole process, reported as one
    ERROR naming the limit and the tenants waiting (at most once a minute), not as
    thousands of reconnect lines or a breaker opened against a healthy server."""

    interval = 60.0

    def __init__(self) -> None:
        self.waiting: set[str] = set()
        self._reported: float | None = None  # when last logged; None: not short of files

    def hit(self, tenant: str, error: DisconnectError) -> None:
        self.waiting.add(tenant)
        now = time.monotonic()
        if self._reported is not None and now - self._reported < self.interval:
            return
        self._reported = now
        limit = _open_files_limit()
        _log.error(
            "out of file descriptors (%s): the limit is %s (`ulimit -n`) and each tenant "
            "needs one; %d tenant(s) waiting to connect, retrying with backoff. Raise the "
            "limit to run this many tenants", error.__cause__ or error, limit, len(self.waiting),
            extra={"open_files_limit": limit, "waiting": len(self.waiting)},
        )

    def clear(self, tenant: str) -> None:
        self.waiting.discard(tenant)
        if not self.waiting and self._reported is not None:
            self._reported = None
            _log.warning("file descriptors available again: every tenant waiting for one "
                         "has connected or stopped")


def _open_files_limit() -> int | str:
    if resource is None:  # pragma: no cover - not a Unix
        return "unknown"
    return int(resource.getrlimit(resource.RLIMIT_NOFILE)[0])


_file_limit = _FileLimit()


class ConnectionManager:
    """Keeps one tenant connected: one socket at a time, reconnects on failure.

    Args:
        tenant: account name.
        url: the server.
        token: the tenant's secret.
        socket_config: config of every socket it creates.
        breaker: a ``CircuitBreaker`` (None: one with the default settings).
        backoff: reconnect delays in seconds, the last one repeating.
        jitter: +-fraction applied to each delay (spreads reconnect storms).
        stable_after: seconds a connection must stay open before the attempt
            counter resets (a flapping link keeps backing off).
        seq_store: where the resume cursor lives (None: in memory).
        logger: a ``Logger`` or ``LoggerAdapter``.
        admission: a semaphore bounding concurrent handshakes (the pool's).
        save_interval: while a socket is open, save the cursor as it advances,
            at most once per this many seconds, so a crashed process (or a
            takeover by another worker) replays at most about that much.
            0: save only between sockets.
        reconnect_replaced: a 440 (another connection took the tenant over)
            is logged and followed by a reconnect after backoff, instead of
            stopping. For workers whose lease is the authority (``LeasedPool``).
        fence: ``fence() -> token | None``, asked at every release: delivered only
            while it returns a token (``LeasedPool`` proves its lease with it).
        resolve: ``await resolve(tenant) -> url | None``, asked before every
            connect: the server that serves the tenant now (a fleet of bridges
            moves accounts between them: ``rsocket.discovery.BridgeResolver``).
            None, or an exception, is a failed attempt (backoff, breaker); ``url``
            is only the first guess.

    States: idle, connecting, open, waiting (a reconnect is scheduled),
    replaced (440: another connection took over), logged_out (401/403),
    rejected (the server closed with a code that rejects our own frames:
    retrying cannot succeed), destroyed.

    What a user must see is logged at WARNING or ERROR, so it reaches stderr
    even when the application configured no logging: exceptions raised by
    handlers, a tenant that ends (401/403, 440, rejected), connects that keep
    failing (once a minute per tenant), a reconnect loop. ``on_error`` takes
    these over; routine lines (open, close, reconnect scheduled) are DEBUG.

    Raises:
        ValueError: ``url`` is not a ``ws://``/``wss://`` URL, or a bad
            ``backoff``/``jitter``/``save_interval``.
    """

    __slots__ = ("__weakref__", "_closed", "_connecting", "_cursor", "_dead_letter_hook",
                 "_destroyed", "_error_hook", "_failing_since", "_handlers", "_last_save", "_logger",
                 "_manual", "_processed_before", "_recent", "_reconnect", "_save_lock",
                 "_save_timer", "_stable", "_state_hook", "_tasks", "_too_big", "_warned_at",
                 "admission", "attempts", "backoff", "breaker", "fence", "generation", "jitter",
                 "last_disconnect", "reconnect_replaced", "reconnects", "resolve", "save_interval",
                 "seq_store", "socket", "socket_config", "stable_after", "state",
                 "tenant", "token", "url", "waiting_admission")

    def __init__(
        self,
        tenant: str,
        url: str,
        token: str,
        *,
        socket_config: SocketConfig | None = None,
        breaker: CircuitBreaker | None = None,
        backoff: Sequence[float] = (1, 2, 5, 10, 20, 30),
        jitter: float = 0.25,
        stable_after: float = 10.0,
        seq_store: SeqStore | None = None,
        logger: logging.Logger | logging.LoggerAdapter[Any] | None = None,
        admission: asyncio.Semaphore | None = None,
        save_interval: float = 1.0,
        reconnect_replaced: bool = False,
        fence: Callable[[], int | None] | None = None,
        resolve: Callable[[str], Awaitable[str | None]] | None = None,
    ) -> None:
        if not backoff or any(d < 0 for d in backoff):
            raise ValueError(f"backoff must be non-empty delays >= 0, got {backoff!r}")
        if not 0 <= jitter < 1:
            raise ValueError(f"jitter must be in [0, 1), got {jitter!r}")
        check_url(url)  # a URL that cannot work fails here, not as retries forever
        self.tenant = tenant
        self.url = url
        self.token = token
        self.socket_config = socket_config if socket_config is not None else SocketConfig()
        self.breaker = (
            breaker if breaker is not None
            else CircuitBreaker(name=tenant, error_filter=counts_as_failure, logger=logger)
        )
        self.backoff = tuple(backoff)
        self.jitter = jitter
        self.stable_after = stable_after
        self.seq_store: SeqStore = seq_store if seq_store is not None else MemorySeqStore()
        if save_interval < 0:
            raise ValueError(f"save_interval must be >= 0, got {save_interval!r}")
        self.save_interval = save_interval
        self._logger = logger  # sockets and the breaker bind their own names to it
        self.admission = admission
        self.socket: Socket | None = None
        self.state = "idle"
        #: advances when a new socket is created, after the old one's end() returned
        self.generation = 0
        #: consecutive attempts since the last stable connection
        self.attempts = 0
        self.reconnects = 0
        self.reconnect_replaced = reconnect_replaced
        #: ``fence() -> token | None`` asked at each release (see ``EventBuffer.fence``)
        self.fence = fence
        #: ``await resolve(tenant) -> url | None`` before each connect (see Args)
        self.resolve = resolve
        self._processed_before = 0  # events processed by sockets already replaced
        self.last_disconnect: DisconnectError | None = None
        self.waiting_admission = False
        # Created when first needed: an idle tenant holds no empty container.
        self._manual: set[Socket] | None = None  # sockets whose end() we started, not returned
        self._handlers: list[_Subscription] = []
        # set while a start or reconnect runs (one at a time), done when it ends
        self._connecting: asyncio.Future[None] | None = None
        self._destroyed = False
        self._cursor: Cursor | None = None
        self._reconnect: asyncio.Task[None] | None = None
        self._stable: asyncio.TimerHandle | None = None
        self._save_timer: asyncio.TimerHandle | None = None
        self._save_lock: asyncio.Lock | None = None
        self._last_save = float("-inf")
        self._tasks: set[asyncio.Task[Any]] | None = None
        self._recent: collections.deque[float] | None = None  # when reconnects were scheduled
        self._closed: asyncio.Future[None] | None = None  # set once destroy() has finished
        self._error_hook: ErrorHandler | None = None
        self._state_hook: StateHandler | None = None
        self._dead_letter_hook: DeadLetterHandler | None = None
        self._warned_at = float("-inf")  # when "cannot connect" was last logged
        self._failing_since = 0  # attempts that failed since the last open
        self._too_big: tuple[int, int] | None = None  # (last_seq, refusals in a row there)

    # -- public API ---------------------------------------------------------------

    @property
    def logger(self) -> FieldsAdapter:
        """The manager's logger, carrying the tenant (built when a line is logged)."""
        return bind(self._logger, "rsocket.manager", tenant=self.tenant)

    @property
    def pending_manual_close(self) -> int:
        """Sockets whose ``end()`` the manager started and that have not returned."""
        return len(self._manual or ())

    @property
    def connected(self) -> bool:
        return self.socket is not None and self.socket.state == "open"

    @property
    def events_processed(self) -> int:
        """Events whose handlers have finished, over every socket of this manager."""
        sock = self.socket
        return self._processed_before + (sock.events_processed if sock is not None else 0)

    @property
    def destroyed(self) -> bool:
        return self._destroyed

    def on_error(self, handler: ErrorHandler | None) -> None:
        """Take over what this manager would log as errors: ``handler(tenant, exc)``
        gets each exception a handler raised and the ``DisconnectError`` of every
        socket that failed to connect or ended unexpectedly (a tenant that ends:
        ``manager.state`` says so). None gives them back to the log. A handler
        that raises is logged."""
        self._error_hook = handler
        if self.socket is not None:
            self.socket.ev.on_error = self._handler_raised if handler is not None else None

    def on_dead_letter(self, hook: DeadLetterHandler | None) -> None:
        """``hook(dead_letter)`` gets each batch a handler gave up on after its
        last attempt (``EventBuffer.on_dead_letter``), on every socket of this
        manager; an async hook (a store) is awaited before the cursor moves
        past the batch. None: dead letters are logged at ERROR."""
        self._dead_letter_hook = hook
        if self.socket is not None:
            self.socket.ev.on_dead_letter(hook)

    def on_state(self, handler: StateHandler | None) -> None:
        """Call ``handler(tenant, state, code)`` on every state change (``code``: the
        status code of the disconnect behind ``waiting``, ``replaced``,
        ``logged_out``, ``rejected``; None otherwise). None removes it."""
        self._state_hook = handler

    async def query(self, method: str, params: Any = None, timeout: float = 10.0) -> Any:
        """Call a server method on the tenant's open socket (e.g. send a message)
        and return its result data.

        Raises:
            DisconnectError: the tenant is not connected (428), or its socket
                ended before the answer.
            TimeoutError: no answer within ``timeout`` seconds.
            QueryError: the server answered with an error.
        """
        sock = self.socket
        if sock is None or not self.connected:
            raise DisconnectError(DisconnectReason.connectionClosed,
                                  f"tenant {self.tenant} is not connected (state {self.state})")
        return await sock.query(method, params, timeout)

    async def start(self) -> None:
        """Connect, unless a start is in progress, a socket is open, or destroyed."""
        if self._destroyed:
            self._info("start ignored: manager destroyed")
            return
        if self._connecting is not None:
            self._info("start ignored: a start is already in progress")
            return
        if self.connected:
            self._info("start ignored: already connected")
            return
        self._cancel_reconnect()
        await self._connect()

    async def destroy(self) -> None:
        """Stop for good: cancel the reconnect, end the socket (final flush delivered)."""
        if self._destroyed:
            assert self._closed is not None
            await asyncio.shield(self._closed)
            return
        self._destroyed = True
        self._closed = closed = asyncio.get_running_loop().create_future()
        _file_limit.clear(self.tenant)
        if self.state != "logged_out":
            self._set_state("destroyed")
        try:
            self._cancel_reconnect()
            self._cancel_save_timer()
            current = asyncio.current_task()
            for task in list(self._tasks or ()):
                if task is not current:
                    task.cancel()
            sock = self.socket
            if sock is not None:
                await self._end_socket(sock)
            others = [t for t in self._tasks or () if t is not current]
            if others:
                await asyncio.gather(*others, return_exceptions=True)
        finally:  # a later destroy() never waits forever, even if this one was cancelled
            closed.set_result(None)
        self._info("manager destroyed")

    # one process() signature across buffer, manager and pools: the same overloads
    @overload
    def process(
        self, handler: BatchHandler, with_seqs: Literal[False] = False, *,
        retry: Retry | None = DEFAULT_RETRY,
    ) -> Callable[[], None]: ...
    @overload
    def process(self, handler: SeqsHandler, with_seqs: Literal[True], *,
                retry: Retry | None = DEFAULT_RETRY) -> Callable[[], None]: ...

    def process(self, handler: Callable[..., object], with_seqs: bool = False, *,
                retry: Retry | None = DEFAULT_RETRY) -> Callable[[], None]:
        """Attach a batch handler to every socket this manager creates.

        ``handler(batch)``, or ``handler(batch, seqs)`` with ``with_seqs``
        (:class:`Seqs`: the range, with its ``epoch``); the application sees
        one stream across reconnects. A call that raises is retried per
        ``retry``, then dead-lettered (see ``EventBuffer.process``). Returns
        an unsubscribe function.

        Raises:
            TypeError: ``handler`` cannot be called with these arguments.
        """
        check_handler(handler, 2 if with_seqs else 1, "process()")
        sub = _Subscription(handler, with_seqs, retry)
        self._handlers.append(sub)
        if self.socket is not None and not self.socket.ev.destroyed:
            sub.attach(self.socket)

        def unsubscribe() -> None:
            if sub in self._handlers:
                self._handlers.remove(sub)
                sub.detach()

        return unsubscribe

    def status(self) -> dict[str, Any]:
        """A snapshot for dashboards and tests."""
        now = time.monotonic()
        recent = [t for t in self._recent or () if now - t <= _LOOP_WINDOW]
        last = self.last_disconnect
        sock = self.socket
        return {
            "tenant": self.tenant,
            "connected": self.connected,
            "state": self.state,
            "circuit": str(self.breaker.state),
            "attempts": self.attempts,
            "reconnects": self.reconnects,
            "reconnect_loop": len(recent) >= _LOOP_RECONNECTS,
            "last_disconnect": last.status_code if last is not None else None,
            "events_processed": self.events_processed,
            "events_waiting": sock.unprocessed if sock is not None else 0,
            "oldest_pending_seconds": sock.ev.oldest_pending_age() if sock is not None else 0.0,
            "reading_paused": sock.reading_paused if sock is not None else False,
            "last_seq": sock.last_seq if sock is not None else None,
            "generation": self.generation,
            "pending_manual_close": self.pending_manual_close,
            "waiting_admission": self.waiting_admission,
        }

    def __repr__(self) -> str:
        return f"<ConnectionManager {self.tenant} {self.state} gen={self.generation}>"

    # -- connecting ------------------------------------------------------------------

    async def _connect(self) -> None:
        """Replace the socket: end the old one first, then open a new one."""
        self._connecting = done = asyncio.get_running_loop().create_future()
        try:
            await self._replace_socket()
        finally:
            self._connecting = None
            done.set_result(None)

    async def _replace_socket(self) -> None:
        old = self.socket
        if old is not None:
            await self._end_socket(old)  # old socket and its buffer gone BEFORE the new one
        if self._destroyed:
            return
        if self._cursor is None:
            try:
                self._cursor = await self.seq_store.load(self.tenant)
            except Exception as exc:  # a store restarting, a timeout, a bad file
                error = DisconnectError(
                    DisconnectReason.connectionClosed,
                    f"cursor load failed: {str(exc) or type(exc).__name__}",
                )
                error.__cause__ = exc
                self.last_disconnect = error
                self._on_failure(error, connecting=True)  # like any failure: breaker, ONE retry
                return
        if not self.breaker.can_execute():
            self._schedule_reconnect(self.breaker.time_until_half_open(), reason="circuit open")
            return
        if self.resolve is not None and not await self._resolve():
            return
        self._set_state("connecting")
        if self.admission is not None:
            self.waiting_admission = True
            try:
                await self.admission.acquire()
            finally:
                self.waiting_admission = False
        try:
            if self._destroyed:
                return
            self.generation += 1
            self.socket = self._new_socket()
            try:
                await self.socket.connect()
            except DisconnectError:
                pass  # its close already decided what happens next
        finally:
            if self.admission is not None:
                self.admission.release()

    async def _resolve(self) -> bool:
        """Ask where the tenant is served now; False: a failed attempt (retried)."""
        assert self.resolve is not None
        try:
            url = await self.resolve(self.tenant)
            if url is not None:
                check_url(url)
        except Exception as exc:  # the directory restarting, a timeout, a bad entry
            reason = f"resolving the server failed: {str(exc) or type(exc).__name__}"
            cause: BaseException | None = exc
        else:
            if url is not None:
                self.url = url
                return True
            reason, cause = "no server serves this tenant now", None
        # none serving (a takeover under way) is retried, but is no breaker failure
        error = DisconnectError(DisconnectReason.connectionClosed, reason, unserved=cause is None)
        error.__cause__ = cause
        self.last_disconnect = error
        self._on_failure(error, connecting=True)
        return False

    def _new_socket(self) -> Socket:
        cursor = self._cursor or Cursor()
        if self.socket is not None:
            self._processed_before += self.socket.events_processed
        sock = Socket(
            self.url, self.tenant, self.token,
            resume=cursor.seq, epoch=cursor.epoch,
            config=self.socket_config, logger=self._logger,
        )
        sock.on_state(self._on_state)
        if self.save_interval:
            sock.on_progress(self._on_progress)
        if self._error_hook is not None:
            sock.ev.on_error = self._handler_raised
        sock.ev.on_dead_letter(self._dead_letter_hook)
        sock.ev.fence = self.fence
        for sub in self._handlers:
            sub.attach(sock)
        return sock

    async def _end_socket(self, sock: Socket) -> None:
        """End a socket we chose to close (not a failure), then save its cursor."""
        if sock.state != "closed":  # a socket already gone adds nothing
            manual = self._manual
            if manual is None:
                manual = self._manual = set()
            manual.add(sock)
            try:
                await sock.end()
            finally:
                manual.discard(sock)
                if not manual and manual is self._manual:
                    self._manual = None
        else:
            await sock.end()  # returns once its end (final flush) has completed
        await self._save(sock)

    async def _save(self, sock: Socket) -> None:
        if self._save_lock is None:  # made on the first save: idle tenants hold none
            self._save_lock = asyncio.Lock()
        async with self._save_lock:  # one save at a time, in order
            cursor = Cursor(sock.epoch, sock.last_seq)
            if cursor == self._cursor:
                return
            self._cursor = cursor  # what the next socket resumes from, saved or not
            self._last_save = time.monotonic()
            try:
                await self.seq_store.save(self.tenant, cursor)
            except Exception as exc:  # a failing store must not wedge the manager
                self.logger.warning(
                    "cursor save failed: %s", str(exc) or type(exc).__name__,
                    extra={"tenant": self.tenant, "seq": cursor.seq, "epoch": cursor.epoch},
                )

    # -- periodic saves ----------------------------------------------------------------

    def _schedule_save(self) -> None:
        if self._save_timer is not None or self._destroyed:
            return
        delay = max(0.0, self._last_save + self.save_interval - time.monotonic())
        self._save_timer = asyncio.get_running_loop().call_later(delay, self._on_save_timer)

    def _on_save_timer(self) -> None:
        self._save_timer = None
        sock = self.socket
        if sock is not None and not self._destroyed:
            self._spawn(self._periodic_save(sock))

    async def _periodic_save(self, sock: Socket) -> None:
        await self._save(sock)

    def _cancel_save_timer(self) -> None:
        if self._save_timer is not None:
            self._save_timer.cancel()
            self._save_timer = None

    # -- socket events ---------------------------------------------------------------------

    def _on_progress(self, last_seq: int) -> None:
        self._schedule_save()

    def _on_state(self, sock: Socket, state: str, error: DisconnectError | None) -> None:
        if sock is not self.socket:
            return  # a replaced socket can never drive this manager
        if state == "open":
            if self._warned_at > float("-inf"):
                self.logger.warning("connected after %d failed attempt(s)", self._failing_since)
            self._warned_at, self._failing_since = float("-inf"), 0
            self._set_state("open")
            _file_limit.clear(self.tenant)
            self.breaker.record_success()
            self._cancel_stable()
            if self.attempts or self.breaker.state is not CircuitState.CLOSED:
                # a recovery to confirm; a first connection has nothing to reset (and
                # 10,000 idle tenants then hold no timer)
                self._stable = asyncio.get_running_loop().call_later(
                    self.stable_after, self._on_stable, sock
                )
        elif state == "closed":
            assert error is not None
            self._cancel_stable()
            self.last_disconnect = error
            if sock in (self._manual or ()) or self._destroyed:
                return  # a close we caused: no reconnect
            self._on_failure(error, connecting=self.state == "connecting")

    def _on_stable(self, sock: Socket) -> None:
        self._stable = None
        if sock is self.socket and self.connected:
            self.attempts = 0
            self.breaker.record_success()

    def _on_failure(self, error: DisconnectError, *, connecting: bool = False) -> None:
        """A socket failed to connect (``connecting``) or ended without our asking."""
        code = error.status_code
        hook = self._report(error)
        if code in _LOGGED_OUT:
            self._set_state("logged_out")
            self._say(hook, logging.WARNING, "logged out (%d %s): destroying the manager, "
                      "no reconnect", code, error.reason, status_code=code)
            self._spawn(self.destroy())
            return
        if self._refused_too_often(error):
            self._set_state("rejected")
            self._say(hook, logging.ERROR, "the server sent a frame larger than max_frame (%d "
                      "bytes) %d connections in a row at seq %d: not reconnecting (%s; the "
                      "server does not fit frames to this client: update it, or raise "
                      "SocketConfig.max_frame)", self.socket_config.max_frame,
                      _TOO_BIG_LIMIT, self._too_big[0] if self._too_big else 0,
                      error.__cause__, status_code=code)
            return
        if error.rejected:
            self._set_state("rejected")
            self._say(hook, logging.ERROR, "the server rejected this client's frames (%s): not "
                      "reconnecting", error, status_code=code, close_code=error.close_code)
            return
        if code == _REPLACED:
            if not self.reconnect_replaced:
                self._set_state("replaced")
                self._say(hook, logging.WARNING, "connection replaced (440): another connection "
                          "took this tenant over; not reconnecting")
                return
            self._say(hook, logging.WARNING, "connection replaced (440) while this worker holds "
                      "the lease: reconnecting")
        self.breaker.record_failure(error)  # its filter leaves 440 out
        delay = self.backoff[min(self.attempts, len(self.backoff) - 1)]
        delay *= 1 + random.uniform(-self.jitter, self.jitter)
        self.attempts += 1
        if connecting:
            self._failing_since += 1
            if error.out_of_files:
                _file_limit.hit(self.tenant, error)  # one line for the whole process
            elif time.monotonic() - self._warned_at >= _FAILING_EVERY:
                self._warned_at = time.monotonic()
                self._say(hook, logging.WARNING, "cannot connect to %s: %s; retrying in %.1fs "
                          "(attempt %d; reported at most once a minute)", self.url, error,
                          delay, self._failing_since)
        self._schedule_reconnect(delay, reason=str(error))

    def _refused_too_often(self, error: DisconnectError) -> bool:
        """Count the connections that ended on a frame above our ``max_frame``
        with no progress in between; True at the limit."""
        cause = error.__cause__
        if not (isinstance(cause, ProtocolError) and cause.close_code == _MESSAGE_TOO_BIG
                and error.close_code is None):
            self._too_big = None
            return False
        at = self.socket.last_seq if self.socket is not None else 0
        count = self._too_big[1] + 1 if self._too_big and self._too_big[0] == at else 1
        self._too_big = (at, count)
        return count >= _TOO_BIG_LIMIT

    def _report(self, error: BaseException) -> ErrorHandler | None:
        """Give ``error`` to the application's ``on_error`` hook, if it has one
        (returned: the log lines that follow are then DEBUG)."""
        hook = self._error_hook
        if hook is not None:
            try:
                hook(self.tenant, error)
            except Exception:
                self.logger.exception("the on_error hook raised")
        return hook

    def _say(self, hook: ErrorHandler | None, level: int, message: str, *args: Any,
             **fields: Any) -> None:
        """Log what a user must see at ``level``, or at DEBUG when a hook took it."""
        self.logger.log(logging.DEBUG if hook is not None else level, message, *args,
                        extra={"tenant": self.tenant, **fields})

    def _handler_raised(self, exc: BaseException) -> None:
        """The current socket's buffer: a handler raised ``exc`` (on_error is set)."""
        self._report(exc)

    def _set_state(self, state: str) -> None:
        if state == self.state:
            return
        self.state = state
        hook = self._state_hook
        if hook is not None:
            last = self.last_disconnect
            code = (last.status_code if last is not None
                    and state in ("waiting", "replaced", "logged_out", "rejected") else None)
            try:
                hook(self.tenant, state, code)
            except Exception:
                self.logger.exception("the on_state hook raised")

    # -- reconnecting ------------------------------------------------------------------------

    def _schedule_reconnect(self, delay: float, *, reason: str) -> None:
        if self._destroyed or self._reconnect is not None:
            return  # ONE scheduled reconnect at a time
        self._set_state("waiting")
        self.reconnects += 1
        now = time.monotonic()
        if self._recent is None:
            self._recent = collections.deque(maxlen=_LOOP_RECONNECTS)
        self._recent.append(now)
        m = metrics.get()
        m.tenant(m.reconnects_total, self.tenant).inc()
        fields = {"tenant": self.tenant, "delay": round(delay, 3), "attempt": self.attempts,
                  "reason": reason}
        self.logger.debug("reconnect in %.2fs (%s)", delay, reason, extra=fields)
        recent = [t for t in self._recent if now - t <= _LOOP_WINDOW]
        if len(recent) >= _LOOP_RECONNECTS and self.tenant not in _file_limit.waiting:
            self._say(self._error_hook, logging.WARNING, "reconnect loop: %d reconnects in %.0fs "
                      "(last: %s)", len(recent), _LOOP_WINDOW, reason)
        if lifecycle.enabled():
            lifecycle.record("reconnect_scheduled", **fields)
        self._reconnect = self._spawn(self._reconnect_after(delay))

    async def _reconnect_after(self, delay: float) -> None:
        try:
            await asyncio.sleep(delay)
            while self.breaker.state is CircuitState.OPEN:  # wait an open breaker out
                # bounded naps: the breaker's clock is injectable and need not be ours
                await asyncio.sleep(min(max(self.breaker.time_until_half_open(), 0.01), 1.0))
        finally:
            self._reconnect = None
        while self._connecting is not None:  # after a start (or failing connect) in progress
            await asyncio.shield(self._connecting)
        if not self._destroyed and not self.connected:
            await self._connect()

    def _cancel_reconnect(self) -> None:
        if self._reconnect is not None and self._reconnect is not asyncio.current_task():
            self._reconnect.cancel()
            self._reconnect = None
        self._cancel_stable()

    def _cancel_stable(self) -> None:
        if self._stable is not None:
            self._stable.cancel()
            self._stable = None

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=f"rsocket-manager-{self.tenant}")
        if self._tasks is None:
            self._tasks = set()
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _info(self, message: str) -> None:
        self.logger.debug(message, extra={"tenant": self.tenant, "state": self.state})


def __getattr__(name: str) -> Any:
    """``rsocket.manager.TenantPool``, moved to ``rsocket.pool`` (``rsocket.TenantPool``)."""
    if name == "TenantPool":
        import warnings

        warnings.warn("rsocket.manager.TenantPool moved: import it from rsocket (or rsocket.pool)",
                      DeprecationWarning, stacklevel=2)
        from .pool import TenantPool

        return TenantPool
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
