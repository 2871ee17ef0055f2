"""Redis clients for the parts that use Redis (cluster, discovery, dead letters).

``redis.asyncio`` is imported when a client is made: without the ``redis``
package that raises an ``ImportError`` naming the extra to install.
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["EXTRA_HINT", "aclose", "cancelling", "client", "redis_asyncio", "tenant_key"]

EXTRA_HINT = "pip install 'rsocket-events[redis]'"


def redis_asyncio() -> Any:
    try:
        import redis.asyncio as aioredis
    except ImportError as exc:
        raise ImportError(
            f"rsocket needs the 'redis' package for this (redis>=5): {EXTRA_HINT}"
        ) from exc
    return aioredis


def client(url: str, timeout: float) -> Any:
    """A client that fails fast: our loops retry, redis-py's own retries would only stall them."""
    aioredis = redis_asyncio()
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    return aioredis.from_url(
        url, socket_timeout=timeout, socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0), health_check_interval=0,
    )


def cancelling() -> bool:
    """True when the current task was asked to stop, even if a library swallowed
    the ``CancelledError`` (redis-py may, while tearing a connection down)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def aclose(client: Any) -> None:
    close = getattr(client, "aclose", None) or client.close
    await close()


def tenant_key(prefix: str, tenant: str, kind: str) -> str:
    """``prefix:{tenant}:kind``: one hash tag per tenant (one Redis Cluster slot)."""
    return f"{prefix}:{{{tenant}}}:{kind}"
