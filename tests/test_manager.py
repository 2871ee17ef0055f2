"""ConnectionManager against the reference server."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from typing import Any

import pytest

import rsocket
from rsocket.breaker import CircuitBreaker
from rsocket.manager import ConnectionManager
from rsocket.pool import TenantPool
from rsocket.testing import ReferenceServer, Workload

from .helpers import FAST, FAST_SOCKET, rsocket_tasks, until

TENANTS = {f"t{i}": f"token{i}" for i in range(1, 6)}  # pools of five
pytestmark = pytest.mark.server_options(tenants=TENANTS)


def manager(srv: ReferenceServer, tenant: str = "t1", **kw: Any) -> ConnectionManager:
    return ConnectionManager(tenant, srv.url, TENANTS[tenant], **{**FAST, **kw})


# -- the incident ---------------------------------------------------------------------


async def test_the_incident_reconnects_under_503_leave_no_orphaned_buffer(server):
    """5 tenants, 20 injected 503s: live buffers == connected sockets, nothing lost."""
    base = rsocket.live_buffers()
    breaker = {"failure_threshold": 1000}
    seen: dict[str, list[int]] = defaultdict(list)
    pool = TenantPool(watchdog=False, **FAST)
    pool.process(lambda tenant, batch, seqs: seen[tenant].extend(seqs), with_seqs=True)
    samples: list[tuple[int, int]] = []

    def sample() -> None:
        live = rsocket.live_buffers() - base
        connected = sum(m.socket is not None and not m.socket.ev.destroyed
                        for m in pool.managers.values())
        samples.append((live, connected))
        assert live == connected <= len(TENANTS), (live, connected)

    for tenant, token in TENANTS.items():
        await pool.add(tenant, server.url, token, breaker=CircuitBreaker(name=tenant, **breaker))
    workloads = {t: Workload(i) for i, t in enumerate(TENANTS)}
    published = dict.fromkeys(TENANTS, 0)
    for round_ in range(20):
        tenant = f"t{round_ % 5 + 1}"
        for t in TENANTS:
            published[t] = server.publish_many(t, workloads[t].take(50)).stop - 1
        sample()
        await until(lambda: pool.get(tenant).connected)
        server.inject(tenant, "stream_error", code=503)
        await until(lambda: pool.get(tenant).reconnects > round_ // 5)
        sample()
    await until(lambda: all(m.connected for m in pool.managers.values()))
    await until(lambda: all(pool.get(t).socket.last_seq == published[t] for t in TENANTS))
    sample()
    status = pool.status()
    assert sum(s["reconnects"] for s in status.values()) == 20
    for t in TENANTS:
        assert seen[t] == list(range(1, published[t] + 1)), t  # every seq exactly once, in order
        assert server.stats()[t]["max_concurrent"] == 1
    await pool.destroy_all()
    assert rsocket.live_buffers() == base
    assert not rsocket_tasks()


# -- start guards ---------------------------------------------------------------------------


async def test_concurrent_starts_create_exactly_one_socket(server, caplog):
    caplog.set_level(logging.DEBUG, logger="rsocket")
    m = manager(server)
    await asyncio.gather(*(m.start() for _ in range(10)))
    assert m.connected and m.generation == 1
    assert server.stats()["t1"]["connections_total"] == 1
    assert any("already in progress" in r.getMessage() for r in caplog.records)
    await m.start()
    assert m.generation == 1
    assert any("already connected" in r.getMessage() for r in caplog.records)
    await m.destroy()


async def test_start_after_destroy_does_nothing(server, caplog):
    caplog.set_level(logging.DEBUG, logger="rsocket")
    base = rsocket.live_buffers()
    m = manager(server)
    await m.start()
    await m.destroy()
    await m.destroy()  # idempotent
    await m.start()
    assert m.socket.state == "closed" and m.generation == 1
    assert any("destroyed" in r.getMessage() for r in caplog.records)
    assert rsocket.live_buffers() == base
    assert not rsocket_tasks()


async def test_a_close_we_cause_never_schedules_a_reconnect(server):
    m = manager(server)
    seen_pending: list[int] = []
    m.process(lambda b: seen_pending.append(m.pending_manual_close)
              if b.get("connection.update", {}).get("connection") == "close" else None)
    await m.start()
    await m.destroy()
    assert seen_pending == [1]  # counted while its end() ran
    assert m.pending_manual_close == 0
    assert m.reconnects == 0 and m._reconnect is None


async def test_old_socket_is_ended_before_the_new_one_is_created(server):
    m = manager(server)
    order: list[tuple[str, int]] = []
    m.process(lambda b: order.append((b["connection.update"].get("connection"), m.generation))
              if "connection.update" in b else None)
    await m.start()
    server.inject("t1", "stream_error", code=503)
    await until(lambda: m.generation == 2 and m.connected)
    states = [s for s, _ in order if s]
    assert states == ["connecting", "open", "close", "connecting", "open"]
    await m.destroy()


# -- close codes ---------------------------------------------------------------------------------


async def test_401_destroys_the_manager_without_reconnect(server):
    m = manager(server)
    await m.start()
    server.inject("t1", "stream_error", code=401)
    await until(lambda: m.destroyed)
    assert m.state == "logged_out" and m.reconnects == 0
    assert m.status()["last_disconnect"] == 401
    await m.destroy()


async def test_440_stops_reconnecting(server):
    m = manager(server)
    await m.start()
    server.inject("t1", "stream_error", code=440)
    await until(lambda: m.state == "replaced")
    assert m.reconnects == 0 and m._reconnect is None and not m.destroyed
    await m.destroy()


async def test_resume_from_the_last_processed_seq_across_reconnects(server):
    m = manager(server)
    seqs: list[int] = []
    m.process(lambda b, s: seqs.extend(s), with_seqs=True)
    server.publish_many("t1", Workload(2).take(100))
    await m.start()
    await until(lambda: m.socket.last_seq == 100)
    server.inject("t1", "drop")
    server.publish_many("t1", Workload(3).take(100))
    await until(lambda: m.generation == 2 and m.connected and m.socket.last_seq == 200)
    assert seqs == list(range(1, 201))
    await m.destroy()


# -- breaker ------------------------------------------------------------------------------------------


class FakeClock:
    """The breaker's clock: moves only when the test moves it, and counts its reads."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        return self.now


async def test_open_breaker_delays_reconnect_and_half_open_probe_closes_it(server):
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, failure_window=60, open_timeout=30,
                             success_threshold=2, clock=clock, name="t1")
    m = manager(server, breaker=breaker, stable_after=0.05)
    await m.start()
    server.inject("t1", "stream_error", code=503)
    await until(lambda: str(breaker.state) == "open")
    reads = clock.reads
    await until(lambda: clock.reads > reads)  # the reconnect, due, asks the open breaker
    assert m.generation == 1 and not m.connected and m.state == "waiting"
    clock.now += 30  # open_timeout elapsed: one half-open probe goes through
    await until(lambda: m.connected)
    assert m.generation == 2
    await until(lambda: str(breaker.state) == "closed")  # open success + stable success
    await m.destroy()


# -- reconnects ---------------------------------------------------------------------------


async def test_a_reconnect_due_during_a_slow_failing_connect_is_not_dropped():
    """The reconnect wakes while the failed socket still drains a slow handler."""
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    m = ConnectionManager("t1", f"ws://127.0.0.1:{port}", "x", backoff=(0.01,), jitter=0,
                          breaker=CircuitBreaker(failure_threshold=100),
                          socket_config=FAST_SOCKET)

    async def slow(batch: dict) -> None:
        await asyncio.sleep(0.05)

    m.process(slow)
    await m.start()
    await until(lambda: m.generation >= 4)  # attempts keep coming
    await m.destroy()
    assert not rsocket_tasks()


async def test_unsubscribe_detaches_from_the_current_socket(server):
    m = manager(server)
    got: list[dict] = []
    unsubscribe = m.process(got.append)
    await m.start()
    unsubscribe()
    server.publish("t1", "chats.delete", ["x"])
    await until(lambda: m.socket.last_seq == 1)
    assert not any("chats.delete" in b for b in got)
    await m.destroy()
