"""``rsocket worker``: one worker of a fleet sharing the tenants through Redis.

Every worker gets the whole tenant list; it runs the tenants whose leases it
holds (``LeasedPool``), resumes them from the shared cursors and appends every
released batch to a Redis Stream.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path
from typing import Any

from ..cluster import LeasedPool, RedisLeases, RedisStreamSink
from ..discovery import BridgeResolver
from ..signals import stop_on_signals
from ..socket import SocketConfig

__all__ = ["load_tenants", "run_worker"]

_log = logging.getLogger("rsocket.worker")


def load_tenants(
    path: str | os.PathLike[str], *, url_required: bool = True
) -> list[tuple[str, str, str]]:
    """Read a tenants file: ``(tenant, url, token)`` triples.

    JSON: ``{"url": "ws://host:port", "tenants": {"t1": "token1",
    "t2": {"token": "token2", "url": "ws://other:port"}}}`` (a tenant's own
    ``url`` overrides the file's; ``url_required=False``: "" when none).

    Raises:
        ValueError: the file cannot be read or has the wrong shape (the
            message names the file and what was wrong).
    """
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
        default_url = raw.get("url")
        result = []
        for tenant, spec in raw["tenants"].items():
            if isinstance(spec, str):
                spec = {"token": spec}
            url = spec.get("url", default_url) or ""
            if not url and url_required:
                raise ValueError(f"tenant {tenant!r} has no url")
            result.append((str(tenant), str(url), str(spec["token"])))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"cannot read tenants from {path}: {exc!r}") from exc
    return result


async def run_worker(
    redis_url: str,
    tenants: list[tuple[str, str, str]],
    *,
    capacity: int | None = None,
    ttl: float = 15.0,
    worker_id: str | None = None,
    prefix: str = "rsocket",
    stream: str | None = "rsocket:{tenant}",
    maxlen: int | None = 100_000,
    backoff: tuple[float, ...] = (1, 2, 5, 10, 20, 30),
    socket_config: SocketConfig | None = None,
    stop: asyncio.Event | None = None,
    logger: logging.Logger | logging.LoggerAdapter[Any] | None = None,
    bridges_prefix: str | None = None,
) -> dict[str, Any]:
    """Run one worker until ``stop`` is set or SIGINT/SIGTERM arrives.

    ``bridges_prefix``: the tenants are served by a fleet of bridges sharing this
    Redis (``bridge/lib/fleet.js``); each connect first asks which bridge serves the
    tenant now (``rsocket.discovery.BridgeResolver``), the file's URL being the first
    guess. Shuts down gracefully (cursors saved, leases released, the stream sink
    flushed) and returns its counters.
    """
    log = logger if logger is not None else _log
    if socket_config is None:
        socket_config = SocketConfig(close_timeout=min(2.0, ttl / 4),
                                     drain_timeout=min(5.0, ttl / 2))
    leases = RedisLeases(redis_url, worker_id, ttl, prefix=prefix, logger=log)
    sink = RedisStreamSink(redis_url, stream, maxlen, logger=log) if stream else None
    pool = LeasedPool(leases, capacity=capacity, socket_config=socket_config, backoff=backoff,
                      logger=log)
    resolver = BridgeResolver(redis_url, prefix=bridges_prefix) if bridges_prefix else None
    store = pool.seq_store
    started: set[str] = set()
    stop = stop if stop is not None else asyncio.Event()
    try:
        with stop_on_signals(stop):
            if sink is not None:
                pool.process(sink, with_seqs=True)
            pool.process(lambda tenant, batch: started.add(tenant))
            for tenant, url, token in tenants:
                await pool.add(tenant, url, token, resolve=resolver)
            log.info("worker running",
                     extra={"worker": leases.worker_id, "tenants": len(tenants)})
            await stop.wait()
            log.info("worker stopping", extra={"worker": leases.worker_id})
    finally:
        reconnects = sum(s["reconnects"] for s in pool.status().values())
        await pool.close()
        if sink is not None:
            await sink.close()
        await leases.close()
        if resolver is not None:
            await resolver.close()
    return {
        "worker": leases.worker_id,
        "tenants_run": sorted(started),
        "reconnects": reconnects,
        "leases": leases.counters,
        "store": dict(getattr(store, "counters", {})),
        "sink": sink.counters if sink is not None else None,
    }
