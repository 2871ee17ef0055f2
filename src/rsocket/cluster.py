"""Many workers share the tenants through Redis: leases, shared cursors, event streams.

docs/SCALING.md. Three Redis parts, each with its own connection pool, each
closed by its owner (``await x.close()``), and the pool that uses them:

- :class:`RedisLeases`: one lease per tenant (``SET NX PX``), renewed every
  ``ttl/3`` by a compare-and-extend script, released by compare-and-delete,
  with a per-tenant fencing token incremented on every take. A lease not
  confirmed for ``ttl/2`` is given up locally (listeners destroy the
  tenant's manager) before Redis can expire it, so two workers never hold one
  tenant at once.
- :class:`RedisSeqStore`: the ``SeqStore`` (``rsocket.cursor``) in Redis; every save
  carries the saver's fencing token and runs as one script that refuses a
  stale token and only moves a cursor forward within an epoch.
- :class:`RedisStreamSink`: a ``pool.process(sink, with_seqs=True)`` handler
  appending each released batch (msgpack) with its tenant and seq range to a
  Redis Stream.
- :class:`LeasedPool`: the lease-driven balancer; it runs a plain
  ``TenantPool`` through its public ``add``/``remove`` (the pool knows
  nothing of leases) for the tenants whose leases this worker holds.

Every key of one tenant carries the tenant as a hash tag
(``rsocket:{tenant}:lease``, ``:fence``, ``:cursor``), so on Redis Cluster a
tenant's lease, token and cursor live in one slot and the scripts are legal.

``redis.asyncio`` is imported lazily: without the ``redis`` package the
constructors raise an ``ImportError`` naming the extra
(``pip install 'rsocket-events[redis]'``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import random
import socket as _socket
import uuid
from collections import deque
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from itertools import islice
from typing import Any, Literal, overload

import msgspec

from ._compat import stop_on_signals
from .buffer import DeadLetterHandler
from .cursor import Cursor, SeqStore
from .leases import LeaseLost, Leases
from .logs import RateLimitedLog, bind
from .manager import (
    ConnectionManager,
    ErrorHandler,
    StateHandler,
    TenantBatchHandler,
    TenantPool,
    TenantSeqsHandler,
)
from .retry import DEFAULT_RETRY, Retry
from .seqs import Seqs

__all__ = ["LeasedPool", "RedisLeases", "RedisSeqStore", "RedisStreamSink", "decode_entry"]

_log = logging.getLogger("rsocket.cluster")

EXTRA_HINT = "pip install 'rsocket-events[redis]'"

_SEP = "|"  # between worker id and token in a lease value

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

# KEYS: cursor (hash epoch/seq/token), fence. ARGV: token, epoch, seq.
# -1: stale token (refused); 0: not a forward move within the epoch; 1: stored.
_SAVE = """
local fence = tonumber(redis.call('GET', KEYS[2]) or '0')
if tonumber(ARGV[1]) ~= fence then return -1 end
local cur = redis.call('HMGET', KEYS[1], 'epoch', 'seq')
if cur[1] == ARGV[2] and tonumber(cur[2]) >= tonumber(ARGV[3]) then return 0 end
redis.call('HSET', KEYS[1], 'epoch', ARGV[2], 'seq', ARGV[3], 'token', ARGV[1])
return 1
"""


def _redis_asyncio() -> Any:
    try:
        import redis.asyncio as aioredis
    except ImportError as exc:
        raise ImportError(
            f"rsocket.cluster needs the 'redis' package (redis>=5): {EXTRA_HINT}"
        ) from exc
    return aioredis


def _client(url: str, timeout: float) -> Any:
    """A client that fails fast: our loops retry, redis-py's own retries would only stall them."""
    aioredis = _redis_asyncio()
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    return aioredis.from_url(
        url, socket_timeout=timeout, socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0), health_check_interval=0,
    )


def _cancelling() -> bool:
    """True when the current task was asked to stop, even if a library swallowed
    the ``CancelledError`` (redis-py may, while tearing a connection down)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def _aclose(client: Any) -> None:
    close = getattr(client, "aclose", None) or client.close
    await close()


def tenant_key(prefix: str, tenant: str, kind: str) -> str:
    """``prefix:{tenant}:kind``: one hash tag per tenant (one Redis Cluster slot)."""
    return f"{prefix}:{{{tenant}}}:{kind}"


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
        self.client = _client(url, self.timeout)
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
        await _aclose(self.client)

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
            if self._closed or _cancelling():
                raise asyncio.CancelledError
            await asyncio.sleep(max(0.0, interval - (loop.time() - started)))


class RedisSeqStore:
    """Resume cursors in Redis, written with fencing tokens (a ``SeqStore``).

    ``save`` takes the fencing token of ``tenant`` from ``leases``: without a
    lease held right now it writes nothing; otherwise one script stores the
    cursor unless the token is stale (another worker took the lease since) or
    the cursor would move backward within its epoch (a new epoch replaces).

    Args:
        url: the Redis URL.
        leases: this worker's ``RedisLeases`` (for the tokens and key prefix).
        timeout: bound of one Redis call (default ``leases.timeout``).
    """

    def __init__(self, url: str, leases: RedisLeases, *, timeout: float | None = None,
                 logger: logging.Logger | logging.LoggerAdapter[Any] | None = None) -> None:
        self.url = url
        self.leases = leases
        self.logger = logger if logger is not None else _log
        self.client = _client(url, timeout if timeout is not None else leases.timeout)
        self._save = self.client.register_script(_SAVE)
        self.counters = {"loads": 0, "saves": 0, "stored": 0, "not_forward": 0,
                         "refused_stale": 0, "refused_not_held": 0}

    async def load(self, tenant: str) -> Cursor:
        epoch, seq = await self.client.hmget(self.leases.key(tenant, "cursor"), "epoch", "seq")
        self.counters["loads"] += 1
        if epoch is None and seq is None:
            return Cursor()
        return Cursor((epoch or b"").decode(), int(seq or 0))

    async def save(self, tenant: str, cursor: Cursor) -> None:
        token = self.leases.token(tenant)
        if token is None:
            self.counters["refused_not_held"] += 1
            self.logger.info("cursor not saved: lease not held",
                             extra={"tenant": tenant, "seq": cursor.seq})
            return
        await self.save_fenced(tenant, cursor, token)

    async def save_fenced(self, tenant: str, cursor: Cursor, token: int) -> int:
        """Run the save script with an explicit token: 1 stored, 0 not forward, -1 stale."""
        self.counters["saves"] += 1
        result = int(await self._save(
            keys=[self.leases.key(tenant, "cursor"), self.leases.key(tenant, "fence")],
            args=[token, cursor.epoch, cursor.seq],
        ))
        if result == 1:
            self.counters["stored"] += 1
        elif result == 0:
            self.counters["not_forward"] += 1
        else:
            self.counters["refused_stale"] += 1
            self.logger.warning("cursor save refused: stale fencing token",
                                extra={"tenant": tenant, "token": token, "seq": cursor.seq})
        return result

    async def writer_token(self, tenant: str) -> int | None:
        """The fencing token that wrote ``tenant``'s stored cursor (diagnostics, tests)."""
        value = await self.client.hget(self.leases.key(tenant, "cursor"), "token")
        return int(value) if value is not None else None

    async def close(self) -> None:
        await _aclose(self.client)


def _enc_hook(obj: Any) -> Any:
    return str(obj)


_encoder = msgspec.msgpack.Encoder(enc_hook=_enc_hook)


def decode_entry(fields: dict[Any, Any]) -> dict[str, Any]:
    """A stream entry as written by :class:`RedisStreamSink`: tenant, first, last,
    batch, and token (the writer's fencing token; None without leases)."""
    get = {k.decode() if isinstance(k, bytes) else k: v for k, v in fields.items()}
    tenant = get["tenant"]
    return {
        "tenant": tenant.decode() if isinstance(tenant, bytes) else tenant,
        "first": int(get["first"]),
        "last": int(get["last"]),
        "batch": msgspec.msgpack.decode(get["batch"]),
        "token": int(get["token"]) if "token" in get else None,
    }


class RedisStreamSink:
    """Appends each released batch to a Redis Stream, for consumer groups downstream.

    Use ``pool.process(sink, with_seqs=True)``. Each entry has the fields
    ``tenant``, ``first`` and ``last`` (the seq range of the release) and
    ``batch`` (msgpack; ``connection.update`` items are left out), and
    ``token`` under a ``LeasedPool`` (the writer's lease fencing token). After a
    takeover, a consumer drops what it already has by seq range; entries never
    carry a token older than one already written for the tenant, since a
    release is delivered only while its lease is proven.

    The sink is an async handler: the buffer holds ``last_seq`` (and so the
    acks and the saved cursor) until the entry is in Redis, so a worker killed
    at any moment loses nothing. The XADDs themselves are queued to one
    background writer task owned by the sink, in order, pipelined (several
    tenants' batches share a round trip); while Redis is unreachable the
    writer retries and handlers wait (backpressure). ``await close()``
    flushes the queue (bounded) and closes the connections.

    Args:
        url: the Redis URL.
        stream: the stream's name, ``{tenant}`` replaced by the tenant.
        maxlen: approximate cap of each stream (``MAXLEN ~``); None: unbounded.
        max_pipeline: most entries per round trip.
    """

    def __init__(
        self,
        url: str,
        stream: str = "rsocket:{tenant}",
        maxlen: int | None = 100_000,
        *,
        max_pipeline: int = 256,
        timeout: float = 5.0,
        logger: logging.Logger | logging.LoggerAdapter[Any] | None = None,
    ) -> None:
        if "{tenant}" not in stream:
            raise ValueError(f"stream must contain '{{tenant}}', got {stream!r}")
        self.url = url
        self.stream = stream
        self.maxlen = maxlen
        self.max_pipeline = max_pipeline
        self.logger = logger if logger is not None else _log
        self.client = _client(url, timeout)
        self._queue: deque[tuple[str, dict[str, Any], asyncio.Future[None]]] = deque()
        self._wakeup: asyncio.Event | None = None
        self._writer: asyncio.Task[None] | None = None
        self._progress: asyncio.Condition | None = None
        self._enqueued = 0  # entries queued so far
        self._settled = 0  # entries written (or failed for good) so far
        self._closing = False
        self._closed = False
        self._failures = RateLimitedLog(self.logger)
        self.counters = {"batches": 0, "events": 0, "round_trips": 0, "errors": 0}

    def stream_for(self, tenant: str) -> str:
        return self.stream.replace("{tenant}", tenant)

    async def __call__(self, tenant: str, batch: dict[str, Any], seqs: Seqs) -> None:
        if self._closing:
            raise RuntimeError("RedisStreamSink is closed")
        if not seqs:
            return  # connection updates: not events
        if "connection.update" in batch:
            batch = {k: v for k, v in batch.items() if k != "connection.update"}
        fields = {"tenant": tenant, "first": seqs.start, "last": seqs.stop - 1,
                  "batch": _encoder.encode(batch)}
        token = getattr(seqs, "token", None)
        if token is not None:  # the writer's fencing token: a consumer can refuse a stale one
            fields["token"] = token
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._queue.append((self.stream_for(tenant), fields, future))
        self._enqueued += 1
        self._ensure_writer(loop)
        await future  # cancelled: the entry stays queued and is still written

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything queued so far is in Redis; False on timeout."""
        target = self._enqueued
        if self._settled >= target:
            return True
        if self._progress is None:
            self._progress = asyncio.Condition()
        try:
            async with asyncio.timeout(timeout), self._progress:
                await self._progress.wait_for(lambda: self._settled >= target)
        except TimeoutError:
            return False
        return True

    async def close(self, timeout: float = 5.0) -> None:
        """Flush what is queued (bounded by ``timeout``), stop the writer, close the connections."""
        if self._closed:
            return
        self._closing = True
        if self._wakeup is not None:
            self._wakeup.set()
        writer = self._writer
        if writer is not None:
            done, _ = await asyncio.wait([writer], timeout=timeout)
            if not done:
                writer.cancel()
                await asyncio.gather(writer, return_exceptions=True)
        self._writer = None
        if self._queue:
            self.logger.warning("sink closed with %d unwritten batch(es)", len(self._queue))
        while self._queue:
            _, _, future = self._queue.popleft()
            if not future.done():
                future.set_exception(ConnectionError("sink closed before the batch was written"))
                future.exception()  # retrieved: nobody may be awaiting it
        self._closed = True
        await _aclose(self.client)

    def _ensure_writer(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._wakeup is None:
            self._wakeup = asyncio.Event()
        self._wakeup.set()
        if self._writer is None or self._writer.done():
            self._writer = loop.create_task(self._write_loop(), name="rsocket-stream-sink")

    async def _write_loop(self) -> None:
        assert self._wakeup is not None
        delay = 0.05
        while True:
            while not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
            items = list(islice(self._queue, self.max_pipeline))
            try:
                async with self.client.pipeline(transaction=False) as pipe:
                    for stream, fields, _ in items:
                        pipe.xadd(stream, fields, maxlen=self.maxlen, approximate=True)
                    results = await pipe.execute(raise_on_error=False)
            except Exception as exc:  # connection trouble: retry the same entries, in order
                self.counters["errors"] += 1
                self._failures.failed("stream append failed, retrying", exc)
                if _cancelling():
                    raise asyncio.CancelledError from None
                await asyncio.sleep(delay)  # close() bounds this while closing
                delay = min(delay * 2, 1.0)
                continue
            self._failures.recovered("stream appends work again")
            delay = 0.05
            self.counters["round_trips"] += 1
            for (_, fields, future), result in zip(items, results, strict=True):
                self._queue.popleft()
                if future.done():
                    pass
                elif isinstance(result, Exception):  # e.g. WRONGTYPE: the handler reports it
                    future.set_exception(result)
                else:
                    self.counters["batches"] += 1
                    self.counters["events"] += fields["last"] - fields["first"] + 1
                    future.set_result(None)
            self._settled += len(items)
            if self._progress is not None:
                async with self._progress:
                    self._progress.notify_all()




# -- the lease-driven pool ------------------------------------------------------------------


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
            if _cancelling():  # a swallowed CancelledError
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
