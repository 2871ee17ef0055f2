"""Connection manager per tenant, and the tenant pool.

``ConnectionManager`` is the other half of the fix for orphaned buffers: it
closes the old socket (and so destroys its buffer) BEFORE it creates a new
one, tells a close it caused from a failure, never runs two starts at once,
and reconnects with backoff, jitter and a circuit breaker. ``TenantPool``
holds one manager per tenant and bounds how many handshakes run at once.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import random
import signal
import time
from collections.abc import Callable, Sequence
from typing import Any

from . import lifecycle, metrics
from .breaker import CircuitBreaker, CircuitState
from .cursor import Cursor, FileSeqStore, MemorySeqStore, SeqStore
from .enums import DisconnectReason
from .errors import DisconnectError
from .logs import bind
from .socket import Socket, SocketConfig
from .watchdog import LoopWatchdog

__all__ = [
    "ConnectionManager",
    "Cursor",
    "FileSeqStore",
    "MemorySeqStore",
    "SeqStore",
    "TenantPool",
]


BatchHandler = Callable[..., Any]

#: close codes after which reconnecting is pointless
_LOGGED_OUT = frozenset({DisconnectReason.loggedOut, DisconnectReason.forbidden})
_REPLACED = DisconnectReason.connectionReplaced
_STOPPED = frozenset({"idle", "replaced", "rejected"})  # not running, not destroyed
_LOOP_RECONNECTS = 5  # this many reconnects...
_LOOP_WINDOW = 60.0  # ...within this many seconds flag a reconnect loop


class _Subscription:
    """An application batch handler, attached to each socket a manager creates."""

    __slots__ = ("detach", "handler", "with_seqs")

    def __init__(self, handler: BatchHandler, with_seqs: bool) -> None:
        self.handler = handler
        self.with_seqs = with_seqs
        self.detach: Callable[[], None] = lambda: None

    def attach(self, sock: Socket) -> None:
        self.detach = sock.ev.process(self.handler, with_seqs=self.with_seqs)


def counts_as_failure(error: BaseException | None) -> bool:
    """The default breaker filter: a logout, a replacement or frames the server
    rejects are not the service failing."""
    code = getattr(error, "status_code", None)
    return code not in _LOGGED_OUT and code != _REPLACED and not getattr(error, "rejected", False)


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
        save_interval: with a shared store (``seq_store.shared``, e.g.
            ``RedisSeqStore``), also save the cursor after releases, at most
            once per this many seconds, so a takeover by another worker
            replays at most about that much. None: 1 s with a shared store,
            never otherwise (saves then happen only between sockets); 0: never.
        reconnect_replaced: a 440 (another connection took the tenant over)
            is logged and followed by a reconnect after backoff, instead of
            stopping. For workers whose lease is the authority (``LeasedPool``).

    States: idle, connecting, open, waiting (a reconnect is scheduled),
    replaced (440: another connection took over), logged_out (401/403),
    rejected (the server closed with a code that rejects our own frames:
    retrying cannot succeed), destroyed.
    """

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
        save_interval: float | None = None,
        reconnect_replaced: bool = False,
    ) -> None:
        if not backoff or any(d < 0 for d in backoff):
            raise ValueError(f"backoff must be non-empty delays >= 0, got {backoff!r}")
        if not 0 <= jitter < 1:
            raise ValueError(f"jitter must be in [0, 1), got {jitter!r}")
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
        if save_interval is None:
            save_interval = 1.0 if getattr(self.seq_store, "shared", False) else 0.0
        if save_interval < 0:
            raise ValueError(f"save_interval must be >= 0, got {save_interval!r}")
        self.save_interval = save_interval
        self.logger = bind(logger, "rsocket.manager", tenant=tenant)
        self._user_logger = logger  # sockets bind their own names to it
        self.admission = admission
        self.socket: Socket | None = None
        self.state = "idle"
        #: advances when a new socket is created, after the old one's end() returned
        self.generation = 0
        #: consecutive attempts since the last stable connection
        self.attempts = 0
        self.reconnects = 0
        self.reconnect_replaced = reconnect_replaced
        self._processed_before = 0  # events processed by sockets already replaced
        self.last_disconnect: DisconnectError | None = None
        self.waiting_admission = False
        self._manual: set[Socket] = set()  # sockets whose end() we started, not yet returned
        self._handlers: list[_Subscription] = []
        self._start_lock = asyncio.Lock()  # one start or reconnect at a time
        self._destroyed = False
        self._cursor: Cursor | None = None
        self._reconnect: asyncio.Task[None] | None = None
        self._stable: asyncio.TimerHandle | None = None
        self._save_timer: asyncio.TimerHandle | None = None
        self._save_lock = asyncio.Lock()
        self._last_save = float("-inf")
        self._tasks: set[asyncio.Task[Any]] = set()
        self._recent: collections.deque[float] = collections.deque(maxlen=_LOOP_RECONNECTS)
        self._closed = asyncio.Event()

    # -- public API ---------------------------------------------------------------

    @property
    def pending_manual_close(self) -> int:
        """Sockets whose ``end()`` the manager started and that have not returned."""
        return len(self._manual)

    @property
    def connected(self) -> bool:
        return self.socket is not None and self.socket.state == "open"

    @property
    def events_processed(self) -> int:
        """Events whose handlers have finished, over every socket of this manager."""
        sock = self.socket
        return self._processed_before + (sock.processed if sock is not None else 0)

    @property
    def destroyed(self) -> bool:
        return self._destroyed

    async def start(self) -> None:
        """Connect, unless a start is in progress, a socket is open, or destroyed."""
        if self._destroyed:
            self._info("start ignored: manager destroyed")
            return
        if self._start_lock.locked():
            self._info("start ignored: a start is already in progress")
            return
        if self.connected:
            self._info("start ignored: already connected")
            return
        async with self._start_lock:
            self._cancel_reconnect()
            await self._connect()

    async def destroy(self) -> None:
        """Stop for good: cancel the reconnect, end the socket (final flush delivered)."""
        if self._destroyed:
            await self._closed.wait()
            return
        self._destroyed = True
        if self.state != "logged_out":
            self.state = "destroyed"
        try:
            self._cancel_reconnect()
            self._cancel_save_timer()
            current = asyncio.current_task()
            for task in list(self._tasks):
                if task is not current:
                    task.cancel()
            sock = self.socket
            if sock is not None:
                await self._end_socket(sock)
            others = [t for t in self._tasks if t is not current]
            if others:
                await asyncio.gather(*others, return_exceptions=True)
        finally:  # a later destroy() never waits forever, even if this one was cancelled
            self._closed.set()
        self._info("manager destroyed")

    def process(self, handler: BatchHandler, with_seqs: bool = False) -> Callable[[], None]:
        """Attach a batch handler to every socket this manager creates.

        ``handler(batch)``, or ``handler(batch, seqs)`` with ``with_seqs``;
        the application sees one stream across reconnects. Returns an
        unsubscribe function.
        """
        sub = _Subscription(handler, with_seqs)
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
        recent = [t for t in self._recent if now - t <= _LOOP_WINDOW]
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
                    f"cursor load failed: {exc or type(exc).__name__}",
                )
                error.__cause__ = exc
                self.logger.warning("start failed: %s", error.reason,
                                    extra={"tenant": self.tenant})
                self.last_disconnect = error
                self._on_failure(error)  # a failure like any other: breaker, ONE retry
                return
        if not self.breaker.can_execute():
            self._schedule_reconnect(self.breaker.time_until_half_open(), reason="circuit open")
            return
        self.state = "connecting"
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
            self.socket = self._new_socket(self.generation)
            try:
                await self.socket.connect()
            except DisconnectError:
                pass  # its close already decided what happens next
        finally:
            if self.admission is not None:
                self.admission.release()

    def _new_socket(self, generation: int) -> Socket:
        cursor = self._cursor or Cursor()
        if self.socket is not None:
            self._processed_before += self.socket.processed
        sock = Socket(
            self.url, self.tenant, self.token,
            resume=cursor.seq, epoch=cursor.epoch,
            config=self.socket_config, logger=self._user_logger,
        )
        sock.on_state(functools.partial(self._on_state, generation, sock))
        if self.save_interval:
            sock.on_progress(functools.partial(self._on_progress, sock))
        for sub in self._handlers:
            sub.attach(sock)
        return sock

    async def _end_socket(self, sock: Socket) -> None:
        """End a socket we chose to close (not a failure), then save its cursor."""
        if sock.state != "closed":  # a socket already gone adds nothing
            self._manual.add(sock)
            try:
                await sock.end()
            finally:
                self._manual.discard(sock)
        else:
            await sock.end()  # returns once its end (final flush) has completed
        await self._save(sock)

    async def _save(self, sock: Socket) -> None:
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
                    "cursor save failed: %s", exc or type(exc).__name__,
                    extra={"tenant": self.tenant, "seq": cursor.seq, "epoch": cursor.epoch},
                )

    # -- periodic saves (shared stores) ------------------------------------------------

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

    def _on_progress(self, sock: Socket, last_seq: int) -> None:
        if sock is self.socket:
            self._schedule_save()

    def _on_state(
        self, generation: int, sock: Socket, state: str, error: DisconnectError | None
    ) -> None:
        if generation != self.generation or sock is not self.socket:
            return  # a replaced socket can never drive this manager
        if state == "open":
            self.state = "open"
            self.breaker.record_success()
            self._cancel_stable()
            self._stable = asyncio.get_running_loop().call_later(
                self.stable_after, self._on_stable, generation
            )
        elif state == "closed":
            assert error is not None
            self._cancel_stable()
            self.last_disconnect = error
            if sock in self._manual or self._destroyed:
                return  # a close we caused: no reconnect
            self._on_failure(error)

    def _on_stable(self, generation: int) -> None:
        self._stable = None
        if generation == self.generation and self.connected:
            self.attempts = 0
            self.breaker.record_success()

    def _on_failure(self, error: DisconnectError) -> None:
        code = error.status_code
        if code in _LOGGED_OUT:
            self.state = "logged_out"
            self.logger.warning(
                "logged out (%d): destroying the manager, no reconnect", code,
                extra={"tenant": self.tenant, "status_code": code},
            )
            self._spawn(self.destroy())
            return
        if error.rejected:
            self.state = "rejected"
            self.logger.error(
                "the server rejected this client's frames (%s): not reconnecting", error,
                extra={"tenant": self.tenant, "status_code": code, "close_code": error.close_code},
            )
            return
        if code == _REPLACED:
            if not self.reconnect_replaced:
                self.state = "replaced"
                self.logger.warning(
                    "connection replaced (440): not reconnecting", extra={"tenant": self.tenant}
                )
                return
            self.logger.warning(
                "connection replaced (440) while this worker holds the lease: reconnecting",
                extra={"tenant": self.tenant},
            )
        self.breaker.record_failure(error)  # its filter leaves 440 out
        delay = self.backoff[min(self.attempts, len(self.backoff) - 1)]
        delay *= 1 + random.uniform(-self.jitter, self.jitter)
        self.attempts += 1
        self._schedule_reconnect(delay, reason=str(error))

    # -- reconnecting ------------------------------------------------------------------------

    def _schedule_reconnect(self, delay: float, *, reason: str) -> None:
        if self._destroyed or self._reconnect is not None:
            return  # ONE scheduled reconnect at a time
        self.state = "waiting"
        self.reconnects += 1
        now = time.monotonic()
        self._recent.append(now)
        m = metrics.get()
        m.tenant(m.reconnects_total, self.tenant).inc()
        fields = {"tenant": self.tenant, "delay": round(delay, 3), "attempt": self.attempts,
                  "reason": reason}
        self.logger.info("reconnect in %.2fs (%s)", delay, reason, extra=fields)
        recent = [t for t in self._recent if now - t <= _LOOP_WINDOW]
        if len(recent) >= _LOOP_RECONNECTS:
            self.logger.warning(
                "reconnect loop: %d reconnects in %.0fs", len(recent), _LOOP_WINDOW,
                extra={"tenant": self.tenant},
            )
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
        async with self._start_lock:  # after a start (or failing connect) in progress
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
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _info(self, message: str) -> None:
        self.logger.info(message, extra={"tenant": self.tenant, "state": self.state})


class TenantPool:
    """One ``ConnectionManager`` per tenant, with admission control and a loop watchdog.

    Args:
        max_concurrent_connects: handshakes in flight at once across the pool,
            so a storm of reconnects arrives in waves.
        watchdog: run a ``LoopWatchdog`` while the pool has tenants.
        lag_threshold: loop lag (s) the watchdog reports with a stack.
        logger: a ``Logger`` or ``LoggerAdapter``.
        leases: share the tenants with other workers (a ``RedisLeases``):
            ``add`` then only registers a tenant, whose manager runs only
            while this worker holds its lease. Every ``ttl/3`` (jittered) the
            pool takes free leases up to its share (tenants / live workers,
            at most ``capacity``), hands surplus tenants back gracefully, and
            wakes when a dead worker's lease expires to take it over. Without
            a ``seq_store`` the pool uses a ``RedisSeqStore`` on the same
            Redis (closed by ``destroy_all``), so a takeover resumes from the
            shared cursor.
        capacity: most tenants this worker runs at once (with ``leases``).
        **manager_defaults: default keyword arguments of every manager
            (``socket_config``, ``backoff``, ``seq_store``...); ``add`` may
            override them per tenant.
    """

    def __init__(
        self,
        *,
        max_concurrent_connects: int = 32,
        watchdog: bool = True,
        lag_threshold: float = 1.0,
        logger: logging.Logger | logging.LoggerAdapter[Any] | None = None,
        leases: Any = None,
        capacity: int | None = None,
        **manager_defaults: Any,
    ) -> None:
        if max_concurrent_connects < 1:
            raise ValueError(f"max_concurrent_connects must be >= 1, got {max_concurrent_connects}")
        if capacity is not None and capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        if capacity is not None and leases is None:
            raise ValueError("capacity bounds leased tenants: pass leases= too")
        self.max_concurrent_connects = max_concurrent_connects
        self.logger = bind(logger, "rsocket.manager")
        self._user_logger = logger
        self.manager_defaults = manager_defaults
        self.leases = leases
        self.capacity = capacity
        self._admission = asyncio.Semaphore(max_concurrent_connects)
        self._managers: dict[str, ConnectionManager] = {}
        self._handlers: list[tuple[BatchHandler, bool]] = []
        self._watchdog = LoopWatchdog(threshold=lag_threshold, logger=self.logger) if watchdog else None
        # shared mode (leases)
        self._specs: dict[str, tuple[str, str, dict[str, Any]]] = {}
        self._starting: set[str] = set()
        self._stopping: set[str] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._balancer: asyncio.Task[None] | None = None
        self._closing = False  # destroy_all() started: take no more leases
        self._in_round = False  # a balancing round is talking to Redis
        self._owned_store: Any = None
        self._unsubscribe_lost: Callable[[], None] | None = None
        self._balance_failing = False

    def __len__(self) -> int:
        return len(self._managers)

    def __contains__(self, tenant: object) -> bool:
        return tenant in self._managers

    @property
    def managers(self) -> dict[str, ConnectionManager]:
        """Tenant -> manager (a copy); with leases, the tenants this worker runs now."""
        return dict(self._managers)

    @property
    def registered(self) -> list[str]:
        """With leases: every tenant added, held here or not."""
        return list(self._specs)

    async def add(
        self, tenant: str, url: str, token: str, **manager_kwargs: Any
    ) -> ConnectionManager | None:
        """Create and start the tenant's manager; the existing one if already added.

        With ``leases``: register the tenant (idempotent) and return its
        manager if this worker runs it already, else None; the manager starts
        once this worker takes the tenant's lease.
        """
        manager = self._managers.get(tenant)
        if manager is not None and self.leases is None:
            if manager.destroyed:  # logged out or destroyed: a new manager
                del self._managers[tenant]
            else:
                if manager.state in _STOPPED:  # never started, replaced, rejected
                    await manager.start()
                return manager
        elif manager is not None:
            return manager
        if self.leases is not None:
            self._specs.setdefault(tenant, (url, token, manager_kwargs))
            self._start_balancer()
            if self._watchdog is not None:
                self._watchdog.start()
            return None
        manager = self._create(tenant, url, token, manager_kwargs)
        self._managers[tenant] = manager
        if self._watchdog is not None:
            self._watchdog.start()
        await manager.start()
        return manager

    async def remove(self, tenant: str) -> None:
        """Destroy and forget the tenant's manager (no-op if unknown); with leases,
        also unregister the tenant and release its lease."""
        if self.leases is not None:
            self._specs.pop(tenant, None)
            if tenant in self._managers:
                await self._stop(tenant, reason="removed")
            return
        manager = self._managers.pop(tenant, None)
        if manager is not None:
            await manager.destroy()
        if not self._managers and self._watchdog is not None:
            self._watchdog.stop()  # it runs while the pool has tenants

    def get(self, tenant: str) -> ConnectionManager | None:
        return self._managers.get(tenant)

    def process(self, handler: BatchHandler, with_seqs: bool = False) -> None:
        """``handler(tenant, batch)`` (or ``(tenant, batch, seqs)``) for every tenant,
        added before or after this call."""
        self._handlers.append((handler, with_seqs))
        for tenant, manager in self._managers.items():
            manager.process(functools.partial(handler, tenant), with_seqs=with_seqs)

    def status(self) -> dict[str, dict[str, Any]]:
        """Tenant -> ``ConnectionManager.status()``."""
        return {tenant: m.status() for tenant, m in self._managers.items()}

    async def destroy_all(self) -> None:
        """Destroy every manager; returns once every socket ended and every buffer
        is destroyed (final flushes delivered). With leases: stops balancing,
        saves each cursor, then releases each lease."""
        self._closing = True
        balancer, self._balancer = self._balancer, None
        if balancer is not None:
            # a round talking to Redis finishes (bounded by its own timeout): a lease
            # taken but not yet recorded would otherwise outlive the shutdown
            if not self._in_round:
                balancer.cancel()
            await asyncio.gather(balancer, return_exceptions=True)
        if self.leases is not None:
            self._specs.clear()
            await asyncio.gather(*(self._stop(t, reason="shutdown") for t in list(self._managers)))
            while self._tasks:  # starts and stops in flight (each bounded)
                await asyncio.gather(*list(self._tasks), return_exceptions=True)
            if self._unsubscribe_lost is not None:
                self._unsubscribe_lost()
                self._unsubscribe_lost = None
            store, self._owned_store = self._owned_store, None
            if store is not None:
                await store.close()
        managers = list(self._managers.values())
        self._managers.clear()
        await asyncio.gather(*(m.destroy() for m in managers))
        if self._watchdog is not None:
            self._watchdog.stop()

    async def run_forever(self) -> None:
        """Run until SIGINT or SIGTERM, then destroy every tenant gracefully."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        signals = (signal.SIGINT, signal.SIGTERM)
        for sig in signals:
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
            self.logger.info("signal received: destroying %d tenant(s)", len(self._managers))
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)
            await self.destroy_all()

    # -- internals ---------------------------------------------------------------------

    def _create(self, tenant: str, url: str, token: str,
                manager_kwargs: dict[str, Any]) -> ConnectionManager:
        options = {"logger": self._user_logger, **self.manager_defaults, **manager_kwargs}
        if self.leases is not None:  # the lease is the authority, not a 440
            options.setdefault("reconnect_replaced", True)
        if self._owned_store is not None:
            options.setdefault("seq_store", self._owned_store)
        manager = ConnectionManager(tenant, url, token, admission=self._admission, **options)
        for handler, with_seqs in self._handlers:
            manager.process(functools.partial(handler, tenant), with_seqs=with_seqs)
        return manager

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- shared mode (leases) -------------------------------------------------------------

    def _start_balancer(self) -> None:
        if self._balancer is not None and not self._balancer.done():
            return
        leases = self.leases
        if self._owned_store is None and "seq_store" not in self.manager_defaults:
            from .cluster import RedisSeqStore

            self._owned_store = RedisSeqStore(leases.url, leases, logger=self.logger)
        if self._unsubscribe_lost is None:
            self._unsubscribe_lost = leases.on_lost(self._on_lease_lost)
        leases.start()
        self._closing = False
        self._balancer = asyncio.get_running_loop().create_task(
            self._balance_loop(), name="rsocket-pool-balancer"
        )

    def _on_lease_lost(self, tenant: str, token: int) -> None:
        if tenant in self._managers:
            self._spawn(self._stop(tenant, lost_token=token, reason="lease lost"),
                        name=f"rsocket-pool-stop-{tenant}")

    async def _balance_loop(self) -> None:
        interval = self.leases.ttl / 3
        # registered workers first, so simultaneous starts see each other
        await asyncio.sleep(interval * random.uniform(0.5, 1.0))
        while not self._closing:
            wait = interval * random.uniform(0.8, 1.2)
            try:
                async with asyncio.timeout(interval * 2):
                    self._in_round = True
                    try:
                        soonest = await self._balance_once()
                    finally:
                        self._in_round = False
                if soonest is not None and soonest < wait:
                    # a lease expires before the next round: be there when it does
                    wait = soonest + random.uniform(0.0, 0.05) * self.leases.ttl
                if self._balance_failing:
                    self._balance_failing = False
                    self.logger.warning("balancing resumed")
            except Exception as exc:
                if not self._balance_failing:
                    self._balance_failing = True
                    self.logger.warning("balancing failed: %s", exc or type(exc).__name__)
            task = asyncio.current_task()
            if task is not None and task.cancelling():  # a swallowed CancelledError
                raise asyncio.CancelledError
            if self._closing:
                return
            await asyncio.sleep(wait)

    def _target(self, live: int) -> int:
        share = -(-len(self._specs) // max(live, 1))
        return min(share, self.capacity) if self.capacity is not None else share

    async def _balance_once(self) -> float | None:
        """One round: shed surplus or take free leases. Returns the seconds until
        the soonest lease held elsewhere expires (None: none)."""
        leases = self.leases
        target = self._target(await leases.workers())
        running = [t for t in self._managers if t not in self._starting]
        surplus = len(self._managers) - target
        if surplus > 0:  # hand tenants back gracefully (cursor saved, then released)
            for tenant in random.sample(running, min(surplus, len(running))):
                self._spawn(self._stop(tenant, reason="rebalance"),
                            name=f"rsocket-pool-stop-{tenant}")
        candidates = [t for t in self._specs
                      if t not in self._managers and t not in self._stopping]
        expiry = await leases.peek(candidates)
        free = [t for t, left in expiry.items() if left is None]
        random.shuffle(free)  # competing workers start from different tenants
        for tenant in free[: max(0, target - len(self._managers))]:
            if self._closing:
                break
            if tenant not in self._specs or tenant in self._managers:
                continue
            token = await leases.take(tenant)
            if token is not None and self._closing:  # shutting down meanwhile: hand it back
                await leases.release(tenant)
            elif token is not None:
                self._start(tenant)
        pending = [left for left in expiry.values() if left is not None]
        return min(pending) if pending else None

    def _start(self, tenant: str) -> None:
        url, token, kwargs = self._specs[tenant]
        manager = self._create(tenant, url, token, kwargs)
        self._managers[tenant] = manager
        self._starting.add(tenant)
        self._spawn(self._run_start(tenant, manager), name=f"rsocket-pool-start-{tenant}")

    async def _run_start(self, tenant: str, manager: ConnectionManager) -> None:
        try:
            await manager.start()
        except Exception as exc:  # not left dark holding the lease: hand it back
            self.logger.error("start failed: %s", exc, extra={"tenant": tenant}, exc_info=exc)
            self._starting.discard(tenant)
            await self._stop(tenant, reason="start failed")
        finally:
            self._starting.discard(tenant)

    async def _stop(self, tenant: str, *, lost_token: int | None = None, reason: str) -> None:
        """Destroy the tenant's manager (final flush, cursor saved while the lease
        is still held), then release its lease."""
        manager = self._managers.pop(tenant, None)
        if manager is None:
            return
        self._stopping.add(tenant)
        try:
            self.logger.info("stopping tenant: %s", reason, extra={"tenant": tenant})
            await manager.destroy()
            try:
                async with asyncio.timeout(self.leases.timeout * 2):
                    await self.leases.release(tenant, lost_token)
            except Exception as exc:  # it expires by itself
                self.logger.info("lease not released: %s", exc or type(exc).__name__,
                                 extra={"tenant": tenant})
        finally:
            self._stopping.discard(tenant)
