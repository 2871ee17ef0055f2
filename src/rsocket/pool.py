"""The tenant pool: one ``ConnectionManager`` per tenant, with admission control.

``TenantPool`` bounds how many handshakes run at once across its tenants (a
storm of reconnects arrives in waves), runs a loop watchdog while it holds
tenants, and fans handlers and hooks out to every manager, present and future.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
from collections.abc import Callable
from typing import Any, Literal, overload

from .buffer import DeadLetterHandler
from .cursor import MemorySeqStore
from .logs import bind
from .manager import (
    ENDED,
    STOPPED,
    ConnectionManager,
    ErrorHandler,
    StateHandler,
    TenantBatchHandler,
    TenantSeqsHandler,
)
from .retry import DEFAULT_RETRY, Retry
from .runner import check_handler
from .signals import stop_on_signals
from .watchdog import LoopWatchdog

__all__ = ["TenantPool"]


class TenantPool:
    """One ``ConnectionManager`` per tenant, with admission control and a loop watchdog.

    Args:
        max_concurrent_connects: handshakes in flight at once across the pool,
            so a storm of reconnects arrives in waves.
        watchdog: run a ``LoopWatchdog`` while the pool has tenants.
        lag_threshold: loop lag (s) the watchdog reports with a stack.
        logger: a ``Logger`` or ``LoggerAdapter``.
        **manager_defaults: default keyword arguments of every manager
            (``socket_config``, ``backoff``, ``seq_store``...); ``add`` may
            override them per tenant.

    Stop it with ``await pool.close()`` (or ``async with TenantPool() as pool:``),
    or with SIGINT/SIGTERM under :meth:`run_forever`. Errors a user must see are
    logged (see ``ConnectionManager``) unless :meth:`on_error` takes them over.

    Tenants shared with other workers through leases: ``rsocket.cluster.LeasedPool``,
    which drives a ``TenantPool`` through ``add``/``remove``.
    """

    def __init__(
        self,
        *,
        max_concurrent_connects: int = 32,
        watchdog: bool = True,
        lag_threshold: float = 1.0,
        logger: logging.Logger | logging.LoggerAdapter[Any] | None = None,
        **manager_defaults: Any,
    ) -> None:
        if max_concurrent_connects < 1:
            raise ValueError(f"max_concurrent_connects must be >= 1, got {max_concurrent_connects}")
        self.max_concurrent_connects = max_concurrent_connects
        self.logger = bind(logger, "rsocket.manager")
        self._logger = logger
        # one in-memory cursor store for every tenant (not one each), unless given
        manager_defaults.setdefault("seq_store", MemorySeqStore())
        self.manager_defaults = manager_defaults
        self._admission = asyncio.Semaphore(max_concurrent_connects)
        self._managers: dict[str, ConnectionManager] = {}
        self._handlers: list[tuple[Callable[..., object], bool, Retry | None]] = []
        self._dead_letter_hook: DeadLetterHandler | None = None
        self._watchdog = LoopWatchdog(threshold=lag_threshold, logger=self.logger) if watchdog else None
        self._stopped = asyncio.Event()
        self._running = False  # inside run_forever()
        self._error_hook: ErrorHandler | None = None
        self._state_hook: StateHandler | None = None
        # managers ended by close(): their final status stays visible until re-added
        self._closed: dict[str, ConnectionManager] = {}

    def __len__(self) -> int:
        return len(self._managers)

    def __contains__(self, tenant: object) -> bool:
        return tenant in self._managers

    @property
    def managers(self) -> dict[str, ConnectionManager]:
        """Tenant -> manager (a copy)."""
        return dict(self._managers)

    async def add(self, tenant: str, url: str, token: str, **manager_kwargs: Any) -> ConnectionManager:
        """Create and start the tenant's manager; idempotent.

        An existing manager is returned as it is, started again first if it
        is not running (never started, replaced, rejected); a destroyed one
        (logged out) is replaced by a new one.
        """
        manager = self._managers.get(tenant)
        if manager is not None and not manager.destroyed:
            if manager.state in STOPPED:
                await manager.start()
            return manager
        manager = self._create(tenant, url, token, manager_kwargs)
        self._closed.pop(tenant, None)
        self._managers[tenant] = manager
        if self._watchdog is not None:
            self._watchdog.start()
        await manager.start()
        return manager

    async def remove(self, tenant: str) -> None:
        """Destroy and forget the tenant's manager (final flush delivered, cursor
        saved); a no-op for an unknown tenant."""
        manager = self._managers.pop(tenant, None)
        if manager is not None:
            await manager.destroy()
        if not self._managers and self._watchdog is not None:
            self._watchdog.stop()  # it runs while the pool has tenants

    def get(self, tenant: str) -> ConnectionManager | None:
        return self._managers.get(tenant)

    async def query(self, tenant: str, method: str, params: Any = None,
                    timeout: float = 10.0) -> Any:
        """Call a server method on ``tenant``'s socket (a reply, a command) and
        return its result data: ``await pool.query("t1", "send_message", {...})``.

        Raises:
            KeyError: ``tenant`` is not in the pool.
            DisconnectError: the tenant is not connected (428).
            TimeoutError: no answer within ``timeout`` seconds.
            QueryError: the server answered with an error.
        """
        manager = self._managers.get(tenant)
        if manager is None:
            raise KeyError(f"tenant {tenant!r} is not in the pool")
        return await manager.query(method, params, timeout)

    def on_error(self, handler: ErrorHandler | None) -> None:
        """``handler(tenant, exc)`` takes over every tenant's errors (added before
        or after this call): exceptions raised by handlers, and the
        ``DisconnectError`` of each socket that failed to connect or ended
        unexpectedly. Without it they are logged (WARNING/ERROR: on stderr
        even with no logging configured). None gives them back to the log."""
        self._error_hook = handler
        for manager in self._managers.values():
            manager.on_error(handler)

    def on_state(self, handler: StateHandler | None) -> None:
        """``handler(tenant, state, code)`` on every tenant's state changes
        (``ConnectionManager.on_state``), for tenants added before or after."""
        self._state_hook = handler

    # one process() signature across buffer, manager and pools: the same overloads
    @overload
    def process(self, handler: TenantBatchHandler, with_seqs: Literal[False] = False, *,
                retry: Retry | None = DEFAULT_RETRY) -> None: ...
    @overload
    def process(self, handler: TenantSeqsHandler, with_seqs: Literal[True], *,
                retry: Retry | None = DEFAULT_RETRY) -> None: ...

    def process(self, handler: Callable[..., object], with_seqs: bool = False, *,
                retry: Retry | None = DEFAULT_RETRY) -> None:
        """``handler(tenant, batch)`` (or ``(tenant, batch, seqs)``) for every tenant,
        added before or after this call. ``seqs`` is a :class:`Seqs` (the range,
        with its ``epoch``: ``(seqs.epoch, seq)`` is stable across reconnects and
        restarts). A call that raises is retried per ``retry``
        (``Retry(attempts=5, backoff=(0.5, 30.0))`` by default; None: no retry),
        then dead-lettered (:meth:`on_dead_letter`).

        Raises:
            TypeError: ``handler`` cannot be called with these arguments.
        """
        check_handler(handler, 3 if with_seqs else 2, "TenantPool.process()",
                      "tenant, batch, seqs" if with_seqs else "tenant, batch")
        self._handlers.append((handler, with_seqs, retry))
        for tenant, manager in self._managers.items():
            manager.process(functools.partial(handler, tenant), with_seqs,  # type: ignore[call-overload]
                            retry=retry)

    def on_dead_letter(self, hook: DeadLetterHandler | None) -> None:
        """``hook(dead_letter)`` for every tenant's dead letters (added before or
        after this call): a function, or a store such as
        ``rsocket.deadletters.FileDeadLetters(path)``. See ``DeadLetter``."""
        self._dead_letter_hook = hook
        for manager in self._managers.values():
            manager.on_dead_letter(hook)

    def status(self) -> dict[str, dict[str, Any]]:
        """Tenant -> ``ConnectionManager.status()``; after :meth:`close`, the final
        status of the tenants it stopped (state ``destroyed``, events processed,
        last seq)."""
        closed = {tenant: m.status() for tenant, m in self._closed.items()}
        return {**closed, **{tenant: m.status() for tenant, m in self._managers.items()}}

    async def close(self) -> None:
        """Stop every tenant: returns once every socket ended and every buffer is
        destroyed (final flushes delivered, cursors saved); :meth:`run_forever`
        returns too. The pool can be used again (``add``)."""
        managers = dict(self._managers)
        self._managers.clear()
        self._closed.update(managers)
        await asyncio.gather(*(m.destroy() for m in managers.values()))
        if self._watchdog is not None:
            self._watchdog.stop()
        self._stopped.set()

    async def destroy_all(self) -> None:
        """The same as :meth:`close`."""
        await self.close()

    async def __aenter__(self) -> TenantPool:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def run_forever(self) -> None:
        """Run until SIGINT or SIGTERM (or :meth:`close` from code), then stop
        every tenant gracefully."""
        self._stopped.clear()
        self._running = True
        try:
            with stop_on_signals(self._stopped):
                self._check_running()
                await self._stopped.wait()
        finally:
            self._running = False
        if self._managers:
            self.logger.info("stopping: destroying %d tenant(s)", len(self._managers))
        await self.close()

    def _on_state(self, tenant: str, state: str, code: int | None) -> None:
        hook = self._state_hook
        if hook is not None:
            try:
                hook(tenant, state, code)
            except Exception:
                self.logger.exception("the on_state hook raised", extra={"tenant": tenant})
        if state in ENDED:
            self._check_running()

    def _check_running(self) -> None:
        """Under run_forever: say so when every tenant has ended (it keeps waiting)."""
        managers = self._managers
        if self._running and managers and all(m.state in ENDED for m in managers.values()):
            states = collections.Counter(m.state for m in managers.values())
            self.logger.warning(
                "no tenant is running: all %d ended (%s); run_forever() waits for SIGINT, "
                "SIGTERM or close()", len(managers),
                ", ".join(f"{n} {state}" for state, n in states.items()),
                extra={"event": "no_tenant_running", "states": dict(states)})

    def _create(self, tenant: str, url: str, token: str,
                manager_kwargs: dict[str, Any]) -> ConnectionManager:
        options = {"logger": self._logger, **self.manager_defaults, **manager_kwargs}
        manager = ConnectionManager(tenant, url, token, admission=self._admission, **options)
        manager.on_error(self._error_hook)
        manager.on_state(self._on_state)
        manager.on_dead_letter(self._dead_letter_hook)
        for handler, with_seqs, retry in self._handlers:
            manager.process(functools.partial(handler, tenant), with_seqs,  # type: ignore[call-overload]
                            retry=retry)
        return manager
