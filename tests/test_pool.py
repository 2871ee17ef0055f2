"""TenantPool against the reference server."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

import rsocket
from rsocket.pool import TenantPool

from .helpers import FAST, rsocket_tasks, until

TENANTS = {f"t{i}": f"token{i}" for i in range(1, 6)}  # pools of five
pytestmark = pytest.mark.server_options(tenants=TENANTS)


async def test_pool_add_is_idempotent_and_process_reaches_every_tenant(server):
    pool = TenantPool(watchdog=False, **FAST)
    got: list[str] = []
    m1 = await pool.add("t1", server.url, TENANTS["t1"])
    pool.process(lambda tenant, batch: got.append(tenant) if "chats.delete" in batch else None)
    assert await pool.add("t1", server.url, TENANTS["t1"]) is m1
    await pool.add("t2", server.url, TENANTS["t2"])
    server.publish("t1", "chats.delete", ["x"])
    server.publish("t2", "chats.delete", ["y"])
    await until(lambda: sorted(got) == ["t1", "t2"])
    status = pool.status()
    assert set(status) == {"t1", "t2"}
    assert status["t1"]["connected"] and status["t1"]["circuit"] == "closed"
    await pool.remove("t1")
    assert pool.get("t1") is None and m1.destroyed
    await pool.destroy_all()
    assert not rsocket_tasks()


async def test_pool_admission_bounds_concurrent_handshakes(server):
    pool = TenantPool(max_concurrent_connects=1, watchdog=False, **FAST)
    waiting: list[int] = []
    connecting: list[int] = []

    async def sample() -> None:
        while True:
            status = pool.status().values()
            waiting.append(sum(s["waiting_admission"] for s in status))
            connecting.append(sum(s["state"] == "connecting" and not s["waiting_admission"]
                                  for s in status))
            await asyncio.sleep(0)

    sampler = asyncio.create_task(sample())
    await asyncio.gather(*(pool.add(t, server.url, tok) for t, tok in TENANTS.items()))
    sampler.cancel()
    await asyncio.gather(sampler, return_exceptions=True)
    assert max(waiting) >= 1  # visible in status()
    assert max(connecting) == 1  # never two handshakes at once
    assert all(s["connected"] for s in pool.status().values())
    await pool.destroy_all()


async def test_destroy_all_leaves_nothing_behind(server):
    base = rsocket.live_buffers()
    pool = TenantPool(**FAST)
    finals: list[str] = []
    pool.process(lambda tenant, batch: finals.append(tenant)
                 if batch.get("connection.update", {}).get("connection") == "close" else None)
    for tenant, token in TENANTS.items():
        await pool.add(tenant, server.url, token)
    assert rsocket.live_buffers() == base + 5
    await pool.destroy_all()
    assert sorted(finals) == sorted(TENANTS)
    assert rsocket.live_buffers() == base
    assert not rsocket_tasks()
    assert not pool._watchdog.running


async def test_run_forever_stops_gracefully_on_sigterm(server):
    pool = TenantPool(watchdog=False, **FAST)
    await pool.add("t1", server.url, TENANTS["t1"])
    runner = asyncio.create_task(pool.run_forever())
    await asyncio.sleep(0)  # let it install its signal handlers
    os.kill(os.getpid(), signal.SIGTERM)
    async with asyncio.timeout(5):
        await runner
    assert len(pool) == 0 and not rsocket_tasks()
