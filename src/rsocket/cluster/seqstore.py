"""The cursor store in Redis, fenced by the lease's token (:class:`RedisSeqStore`)."""

from __future__ import annotations

import logging
from typing import Any

from .._redis import aclose, client
from ..cursor import Cursor
from .leases import RedisLeases

__all__ = ["RedisSeqStore"]

_log = logging.getLogger("rsocket.cluster")

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
        self.client = client(url, timeout if timeout is not None else leases.timeout)
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
        await aclose(self.client)
