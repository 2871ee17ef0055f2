"""Per-tenant leases in Redis, with fencing tokens (:class:`RedisLeases`)."""

from __future__ import annotations

import asyncio
import logging
import os
import socket as _socket
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .._redis import aclose, cancelling, client, tenant_key
from ..leases import LeaseLost
from ..logs import RateLimitedLog

__all__ = ["RedisLeases", "default_worker_id"]

_log = logging.getLogger("rsocket.cluster")

_SEP = "|"  # between worker id and token in a lease value

# bridge/lib/leases.js runs these scripts word for word: one lease format on both sides.

# KEYS: lease, fence. ARGV: worker id, ttl ms.
# Free: SET NX PX. Held by an earlier incarnation of this same worker (a take
# whose answer was lost): taken again. Held by another worker: 0.
_TAKE = """
local cur = redis.call('GET', KEYS[1])
local mine = ARGV[1] .. '|'
if cur and string.sub(cur, 1, #mine) ~= mine then return 0 end
local token = redis.call('INCR', KEYS[2])
local value = mine .. token
if cur then
  redis.call('SET', KEYS[1], value, 'XX', 'PX', ARGV[2])
elseif not redis.call('SET', KEYS[1], value, 'NX', 'PX', ARGV[2]) then
  return 0
end
return token
"""

# KEYS: lease. ARGV: value, ttl ms. Compare-and-extend.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# KEYS: lease. ARGV: value. Compare-and-delete.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# KEYS: workers (sorted set, score = expiry in Redis ms). ARGV: worker id, ttl ms,
# mode (1 register, 0 count only, -1 unregister). Returns the live workers.
_WORKERS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if ARGV[3] == '1' then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
  redis.call('PEXPIRE', KEYS[1], 2 * tonumber(ARGV[2]))
elseif ARGV[3] == '-1' then
  redis.call('ZREM', KEYS[1], ARGV[1])
end
return redis.call('ZCARD', KEYS[1])
"""


def default_worker_id() -> str:
    """``host:pid:random``, unique across restarts."""
    return f"{_socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass(slots=True)
class _Lease:
    token: int
    deadline: float  # loop time: given up locally at this moment (sent + ttl/2)
    timer: asyncio.TimerHandle | None = None



class RedisLeases:
    """One lease per tenant in Redis, with fencing tokens.

    Args:
        url: ``redis://host:port/db`` (``rediss://`` for TLS).
        worker_id: this worker's name (default ``host:pid:random``); no ``|``.
        ttl: lease time to live, seconds. Renewed every ``ttl/3``; given up
            locally ``ttl/2`` after the last confirmed renewal.
        prefix: key prefix (``prefix:{tenant}:lease``...).
        timeout: bound of one Redis call (default ``ttl/4``).
        logger: a ``Logger`` or ``LoggerAdapter``.

    ``start()`` (called by ``take``) runs the renewal loop, which also keeps
    this worker registered in ``prefix:workers`` (the live-worker count the
    pool balances on). ``on_lost(callback)``: ``callback(tenant, token)`` when
    a lease is given up (renewal refused, or not confirmed within ``ttl/2``).
    ``await close()`` stops the loop, releases every lease still held and
    closes the connections.
    """

    def __init__(
        self,
        url: str,
        worker_id: str | None = None,
        ttl: float = 15.0,
        *,
        prefix: str = "rsocket",
        timeout: float | None = None,
        logger: logging.Logger | logging.LoggerAdapter[Any] | None = None,
    ) -> None:
        if not ttl > 0:
            raise ValueError(f"ttl must be > 0 seconds, got {ttl!r}")
        worker_id = worker_id if worker_id is not None else default_worker_id()
        if not worker_id or _SEP in worker_id:
            raise ValueError(f"worker_id must be non-empty without {_SEP!r}, got {worker_id!r}")
        self.url = url
        self.worker_id = worker_id
        self.ttl = float(ttl)
        self.prefix = prefix
        self.timeout = timeout if timeout is not None else max(0.05, self.ttl / 4)
        self.logger = logger if logger is not None else _log
        self.client = client(url, self.timeout)
        self._take = self.client.register_script(_TAKE)
        self._renew = self.client.register_script(_RENEW)
        self._release = self.client.register_script(_RELEASE)
        self._workers = self.client.register_script(_WORKERS)
        self._held: dict[str, _Lease] = {}
        self._listeners: list[LeaseLost] = []
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._failures = RateLimitedLog(self.logger)
        self.counters = {"takes": 0, "renew_round_trips": 0, "renewals": 0, "lost": 0,
                         "releases": 0}

    # -- keys ----------------------------------------------------------------------

    def key(self, tenant: str, kind: str) -> str:
        return tenant_key(self.prefix, tenant, kind)

    @property
    def workers_key(self) -> str:
        return f"{self.prefix}:workers"

    def _value(self, token: int) -> str:
        return f"{self.worker_id}{_SEP}{token}"

    # -- local view ------------------------------------------------------------------

    @property
    def held(self) -> dict[str, int]:
        """Tenant -> fencing token of every lease held and confirmed within ``ttl/2``."""
        now = asyncio.get_running_loop().time()
        return {t: lease.token for t, lease in self._held.items() if now < lease.deadline}

    def token(self, tenant: str) -> int | None:
        """The fencing token of ``tenant`` if this worker holds its lease now, else None.

        Checks the deadline itself (does not wait for the timer), so a worker
        resumed after a pause never uses a token it has given up.
        """
        lease = self._held.get(tenant)
        if lease is None or asyncio.get_running_loop().time() >= lease.deadline:
            return None
        return lease.token

    def on_lost(self, callback: LeaseLost) -> Callable[[], None]:
        """Call ``callback(tenant, token)`` when a lease is given up; returns an unsubscribe."""
        self._listeners.append(callback)

        def unsubscribe() -> None:
            if callback in self._listeners:
                self._listeners.remove(callback)

        return unsubscribe

    # -- Redis operations ---------------------------------------------------------------

    def start(self) -> None:
        """Start the renewal loop (idempotent; needs a running loop)."""
        if self._closed:
            raise RuntimeError("RedisLeases is closed")
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"rsocket-leases-{self.worker_id}"
            )

    async def take(self, tenant: str) -> int | None:
        """Take ``tenant``'s lease if it is free: its new fencing token, or None."""
        self.start()
        if self.token(tenant) is not None:
            return self._held[tenant].token
        loop = asyncio.get_running_loop()
        sent = loop.time()
        token = int(await self._take(
            keys=[self.key(tenant, "lease"), self.key(tenant, "fence")],
            args=[self.worker_id, int(self.ttl * 1000)],
        ))
        if not token:
            return None
        self.counters["takes"] += 1
        old = self._held.pop(tenant, None)
        if old is not None and old.timer is not None:
            old.timer.cancel()
        lease = _Lease(token, sent + self.ttl / 2)
        self._held[tenant] = lease
        self._arm(tenant, lease)
        self.logger.info("lease taken", extra={"tenant": tenant, "token": token,
                                               "worker": self.worker_id})
        return token

    async def renew_all(self) -> None:
        """Register this worker and extend every held lease, in one round trip."""
        loop = asyncio.get_running_loop()
        held = list(self._held.items())
        ttl_ms = int(self.ttl * 1000)
        sent = loop.time()
        async with self.client.pipeline(transaction=False) as pipe:
            await self._workers(keys=[self.workers_key], args=[self.worker_id, ttl_ms, 1],
                                client=pipe)
            for tenant, lease in held:
                await self._renew(keys=[self.key(tenant, "lease")],
                                  args=[self._value(lease.token), ttl_ms], client=pipe)
            results = await pipe.execute(raise_on_error=False)
        self.counters["renew_round_trips"] += 1
        for (tenant, lease), result in zip(held, results[1:], strict=True):
            if self._held.get(tenant) is not lease:
                continue  # released or taken again meanwhile
            if isinstance(result, Exception):
                continue  # the deadline decides
            if int(result) != 1:
                self._lose(tenant, "renewal refused: the lease is gone or not ours")
            elif loop.time() < lease.deadline:
                self.counters["renewals"] += 1
                lease.deadline = sent + self.ttl / 2
                self._arm(tenant, lease)

    async def release(self, tenant: str, token: int | None = None) -> bool:
        """Compare-and-delete ``tenant``'s lease (``token``: an earlier one, after a loss).

        Returns True when the lease was ours and is now free.
        """
        lease = self._held.get(tenant)
        if token is None:
            if lease is None:
                return False
            token = lease.token
        if lease is not None and lease.token == token:
            self._held.pop(tenant)
            if lease.timer is not None:
                lease.timer.cancel()
        deleted = int(await self._release(keys=[self.key(tenant, "lease")],
                                          args=[self._value(token)]))
        if deleted:
            self.counters["releases"] += 1
            self.logger.info("lease released", extra={"tenant": tenant, "token": token,
                                                      "worker": self.worker_id})
        return bool(deleted)

    async def peek(self, tenants: Iterable[str]) -> dict[str, float | None]:
        """Seconds until each tenant's lease expires; None when it is free (one round trip)."""
        tenants = list(tenants)
        if not tenants:
            return {}
        async with self.client.pipeline(transaction=False) as pipe:
            for tenant in tenants:
                pipe.pttl(self.key(tenant, "lease"))
            results = await pipe.execute()
        return {t: (None if int(ms) == -2 else max(int(ms), 0) / 1000)
                for t, ms in zip(tenants, results, strict=True)}

    async def owner(self, tenant: str) -> tuple[str, int] | None:
        """(worker id, token) of the lease's holder, None when free."""
        value = await self.client.get(self.key(tenant, "lease"))
        if value is None:
            return None
        worker, _, token = value.decode().rpartition(_SEP)
        return worker, int(token)

    async def fence(self, tenant: str) -> int:
        """The latest fencing token issued for ``tenant`` (0: never taken)."""
        value = await self.client.get(self.key(tenant, "fence"))
        return int(value or 0)

    async def workers(self) -> int:
        """Live workers (registered within the last ``ttl``)."""
        count = await self._workers(keys=[self.workers_key],
                                    args=[self.worker_id, int(self.ttl * 1000), 0])
        return int(count)

    async def close(self, *, release: bool = True) -> None:
        """Stop renewing, release held leases (bounded), unregister, close the connections."""
        if self._closed:
            return
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        held = list(self._held.items())
        for _, lease in held:
            if lease.timer is not None:
                lease.timer.cancel()
        self._held.clear()
        try:
            async with asyncio.timeout(self.timeout * 2):
                if release:
                    for tenant, lease in held:
                        await self._release(keys=[self.key(tenant, "lease")],
                                            args=[self._value(lease.token)])
                await self._workers(keys=[self.workers_key],
                                    args=[self.worker_id, int(self.ttl * 1000), -1])
        except Exception as exc:  # Redis gone: the leases expire by themselves
            self.logger.warning("could not release leases on close: %s", exc,
                                extra={"worker": self.worker_id})
        await aclose(self.client)

    # -- internals --------------------------------------------------------------------------

    def _arm(self, tenant: str, lease: _Lease) -> None:
        if lease.timer is not None:
            lease.timer.cancel()
        lease.timer = asyncio.get_running_loop().call_at(
            lease.deadline, self._expire, tenant, lease
        )

    def _expire(self, tenant: str, lease: _Lease) -> None:
        lease.timer = None
        if self._held.get(tenant) is lease:
            self._lose(tenant, f"not renewed for {self.ttl / 2:.3g}s (ttl/2)")

    def _lose(self, tenant: str, reason: str) -> None:
        lease = self._held.pop(tenant, None)
        if lease is None:
            return
        if lease.timer is not None:
            lease.timer.cancel()
            lease.timer = None
        self.counters["lost"] += 1
        self.logger.warning("lease lost: %s", reason,
                            extra={"tenant": tenant, "token": lease.token,
                                   "worker": self.worker_id})
        for callback in tuple(self._listeners):
            try:
                callback(tenant, lease.token)
            except Exception:
                self.logger.exception("lease-lost listener failed", extra={"tenant": tenant})

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.ttl / 3
        while True:
            started = loop.time()
            try:
                async with asyncio.timeout(interval):
                    await self.renew_all()
                self._failures.recovered("lease renewals work again",
                                         extra={"worker": self.worker_id})
            except Exception as exc:
                self._failures.failed("lease renewal failed", exc,
                                      extra={"worker": self.worker_id, "held": len(self._held)})
            if self._closed or cancelling():
                raise asyncio.CancelledError
            await asyncio.sleep(max(0.0, interval - (loop.time() - started)))
