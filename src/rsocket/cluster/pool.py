"""The lease-driven balancer of a worker's tenants (:class:`LeasedPool`)."""

from __future__ import annotations

import asyncio
import functools
import logging
import random
from collections.abc import Callable, Coroutine
from typing import Any, Literal, overload

from .._redis import cancelling
from ..buffer import DeadLetterHandler
from ..cursor import SeqStore
from ..leases import Leases
from ..logs import RateLimitedLog, bind
from ..manager import (
    ConnectionManager,
    ErrorHandler,
    StateHandler,
    TenantBatchHandler,
    TenantSeqsHandler,
)
from ..pool import TenantPool
from ..retry import DEFAULT_RETRY, Retry
from ..signals import stop_on_signals
from .leases import RedisLeases
from .seqstore import RedisSeqStore

__all__ = ["LeasedPool"]

class LeasedPool:
    """A worker's share of tenants that many workers share through leases (docs/SCALING.md).

    Every worker is given the whole tenant list: :meth:`add` registers a
    tenant, and the pool starts it (on its own ``TenantPool``, through
    ``add``/``remove``) only while this worker holds the tenant's lease.
    Every ``ttl/3`` (jittered) a balancing round takes free leases up to this
    worker's share (tenants / live workers, at most ``capacity``), hands
    surplus tenants back gracefully (cursor saved, then lease released), and
    wakes when another worker's lease expires, to take a dead worker's
    tenants over from the shared cursor. A lease lost (not renewed in time)
    stops its tenant at once. A 440 while the lease is held is not the end:
    the lease is the authority, and the tenant reconnects after backoff.

    Args:
        leases: this worker's leases (e.g. ``RedisLeases``).
        capacity: most tenants this worker runs at once (None: no bound).
        seq_store: the cursors, shared by every worker; None with
            ``RedisLeases``: a ``RedisSeqStore`` on the same Redis, fenced by
            the leases, owned (and closed) by this pool.
        logger: a ``Logger`` or ``LoggerAdapter``.
        **pool_options: ``TenantPool`` arguments (``max_concurrent_connects``,
            ``watchdog``...) and manager defaults (``socket_config``...).
    """

    def __init__(
        self,
        leases: Leases,
        *,
        capacity: int | None = None,
        seq_store: SeqStore | None = None,
        logger: logging.Logger | logging.LoggerAdapter[Any] | None = None,
        **pool_options: Any,
    ) -> None:
        if capacity is not None and capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self._owned_store: RedisSeqStore | None = None
        if seq_store is None:
            if not isinstance(leases, RedisLeases):
                raise ValueError("pass the seq_store the workers share (a fenced cursor store)")
            seq_store = self._owned_store = RedisSeqStore(leases.url, leases, logger=logger)
        self.leases = leases
        self.capacity = capacity
        self.seq_store = seq_store
        self.logger = bind(logger, "rsocket.cluster")
        self.pool = TenantPool(logger=logger, seq_store=seq_store, reconnect_replaced=True,
                               **pool_options)
        self._specs: dict[str, tuple[str, str, dict[str, Any]]] = {}
        self._running: set[str] = set()  # leases held and tenants started (or starting)
        self._starting: set[str] = set()
        self._stopping: set[str] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._balancer: asyncio.Task[None] | None = None
        self._unsubscribe_lost: Callable[[], None] | None = None
        self._closing = False  # close() started: take no more leases
        self._in_round = False  # a balancing round is talking to the backend
        self._failures = RateLimitedLog(self.logger)
        self._stopped = asyncio.Event()
        self._fenced: set[str] = set()  # tenants whose releases were refused (logged once)
        #: releases not delivered because the lease could not be proven at that moment
        self.fenced = 0

    def __len__(self) -> int:
        return len(self._running)

    def __contains__(self, tenant: object) -> bool:
        return tenant in self._running

    @property
    def registered(self) -> list[str]:
        """Every tenant added, held here or not."""
        return list(self._specs)

    @property
    def managers(self) -> dict[str, ConnectionManager]:
        """Tenant -> manager of the tenants this worker runs now."""
        return self.pool.managers

    def get(self, tenant: str) -> ConnectionManager | None:
        return self.pool.get(tenant)

    async def add(self, tenant: str, url: str, token: str, **manager_kwargs: Any) -> None:
        """Register a tenant (idempotent); it starts here once this worker holds its lease."""
        self._specs.setdefault(tenant, (url, token, manager_kwargs))
        self._start_balancer()

    async def remove(self, tenant: str) -> None:
        """Unregister a tenant; if it runs here, stop it and release its lease."""
        self._specs.pop(tenant, None)
        if tenant in self._running:
            await self._stop(tenant, reason="removed")

    # one process() signature across buffer, manager and pools: the same overloads
    @overload
    def process(self, handler: TenantBatchHandler, with_seqs: Literal[False] = False, *,
                retry: Retry | None = DEFAULT_RETRY) -> None: ...
    @overload
    def process(self, handler: TenantSeqsHandler, with_seqs: Literal[True], *,
                retry: Retry | None = DEFAULT_RETRY) -> None: ...

    def process(self, handler: Callable[..., object], with_seqs: bool = False, *,
                retry: Retry | None = DEFAULT_RETRY) -> None:
        """``handler(tenant, batch)`` (or ``(tenant, batch, seqs)``) for every tenant run
        here, retried per ``retry`` (``TenantPool.process``)."""
        self.pool.process(handler, with_seqs, retry=retry)  # type: ignore[call-overload]

    def on_dead_letter(self, hook: DeadLetterHandler | None) -> None:
        """``TenantPool.on_dead_letter`` for every tenant run here."""
        self.pool.on_dead_letter(hook)

    def status(self) -> dict[str, dict[str, Any]]:
        """Tenant -> ``ConnectionManager.status()`` of the tenants run here."""
        return self.pool.status()

    async def query(self, tenant: str, method: str, params: Any = None,
                    timeout: float = 10.0) -> Any:
        """``TenantPool.query`` for a tenant run here (``KeyError`` otherwise)."""
        return await self.pool.query(tenant, method, params, timeout)

    def on_error(self, handler: ErrorHandler | None) -> None:
        """``TenantPool.on_error`` for every tenant run here."""
        self.pool.on_error(handler)

    def on_state(self, handler: StateHandler | None) -> None:
        """``TenantPool.on_state`` for every tenant run here."""
        self.pool.on_state(handler)

    async def close(self) -> None:
        """Stop balancing, stop every tenant run here (final flush, cursor saved),
        release their leases and close the store this pool created."""
        self._closing = True
        balancer, self._balancer = self._balancer, None
        if balancer is not None:
            # a round talking to the backend finishes (bounded by its own timeout): a
            # lease taken but not yet recorded would otherwise outlive the shutdown
            if not self._in_round:
                balancer.cancel()
            await asyncio.gather(balancer, return_exceptions=True)
        self._specs.clear()
        await asyncio.gather(*(self._stop(t, reason="shutdown") for t in list(self._running)))
        while self._tasks:  # starts and stops in flight (each bounded)
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        if self._unsubscribe_lost is not None:
            self._unsubscribe_lost()
            self._unsubscribe_lost = None
        await self.pool.destroy_all()
        store, self._owned_store = self._owned_store, None
        if store is not None:
            await store.close()
        self._stopped.set()

    async def run_forever(self) -> None:
        """Run until SIGINT or SIGTERM (or :meth:`close` from code), then close."""
        self._stopped.clear()
        with stop_on_signals(self._stopped):
            await self._stopped.wait()
        self.logger.info("stopping: %d tenant(s) run here", len(self._running))
        await self.close()

    # -- balancing -------------------------------------------------------------------------

    def _start_balancer(self) -> None:
        if self._balancer is not None and not self._balancer.done():
            return
        if self._unsubscribe_lost is None:
            self._unsubscribe_lost = self.leases.on_lost(self._on_lease_lost)
        self.leases.start()
        self._closing = False
        self._balancer = asyncio.get_running_loop().create_task(
            self._balance_loop(), name="rsocket-pool-balancer"
        )

    def _on_lease_lost(self, tenant: str, token: int) -> None:
        if tenant in self._running:
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
                self._failures.recovered("balancing works again")
            except Exception as exc:
                self._failures.failed("balancing failed", exc)
            if cancelling():  # a swallowed CancelledError
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
        settled = [t for t in self._running if t not in self._starting]
        surplus = len(self._running) - target
        if surplus > 0:  # hand tenants back gracefully (cursor saved, then released)
            for tenant in random.sample(settled, min(surplus, len(settled))):
                self._spawn(self._stop(tenant, reason="rebalance"),
                            name=f"rsocket-pool-stop-{tenant}")
        candidates = [t for t in self._specs if t not in self._running and t not in self._stopping]
        expiry = await leases.peek(candidates)
        free = [t for t, left in expiry.items() if left is None]
        random.shuffle(free)  # competing workers start from different tenants
        for tenant in free[: max(0, target - len(self._running))]:
            if self._closing:
                break
            if tenant not in self._specs or tenant in self._running:
                continue
            token = await leases.take(tenant)
            if token is not None and self._closing:  # shutting down meanwhile: hand it back
                await leases.release(tenant)
            elif token is not None:
                self._running.add(tenant)
                self._starting.add(tenant)
                self._spawn(self._start(tenant), name=f"rsocket-pool-start-{tenant}")
        pending = [left for left in expiry.values() if left is not None]
        return min(pending) if pending else None

    async def _start(self, tenant: str) -> None:
        url, token, kwargs = self._specs[tenant]
        self._fenced.discard(tenant)
        try:
            await self.pool.add(tenant, url, token, fence=functools.partial(self._fence, tenant),
                                **kwargs)
        except Exception as exc:  # not left dark holding the lease: hand it back
            self.logger.error("start failed: %s", exc, extra={"tenant": tenant}, exc_info=exc)
            self._starting.discard(tenant)
            await self._stop(tenant, reason="start failed")
        finally:
            self._starting.discard(tenant)

    def _fence(self, tenant: str) -> int | None:
        """Asked by the tenant's buffer at every release: the lease's fencing token
        while its deadline has not passed, else None (the release is not delivered).

        A timer cannot do this: a process frozen past its lease (a GC pause,
        SIGSTOP, an overloaded host) wakes with its sockets' reads before its
        due timers, and would deliver after the new owner."""
        token = self.leases.token(tenant)
        if token is None:
            self.fenced += 1
            if tenant not in self._fenced:
                self._fenced.add(tenant)
                self.logger.warning(
                    "lease of %s cannot be proven: releases are not delivered here (its new "
                    "owner delivers them)", tenant, extra={"tenant": tenant, "event": "fenced"})
        return token

    async def _stop(self, tenant: str, *, lost_token: int | None = None, reason: str) -> None:
        """Stop the tenant (final flush, cursor saved while the lease is still
        held), then release its lease."""
        if tenant not in self._running or tenant in self._stopping:
            return
        self._stopping.add(tenant)
        try:
            self.logger.info("stopping tenant: %s", reason, extra={"tenant": tenant})
            await self.pool.remove(tenant)
            self._running.discard(tenant)
            try:
                async with asyncio.timeout(self.leases.timeout * 2):
                    await self.leases.release(tenant, lost_token)
            except Exception as exc:  # it expires by itself
                self.logger.info("lease not released: %s", str(exc) or type(exc).__name__,
                                 extra={"tenant": tenant})
        finally:
            self._running.discard(tenant)
            self._stopping.discard(tenant)

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task
