"""Faults an operator found that left a tenant dark or silent (issue 19), one test each.

Each test reproduces the fault against a real server on loopback (the reference
server, or a hand-written hostile one) and checks the behaviour docs/RELIABILITY.md
describes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator

import msgspec
import pytest
from websockets.asyncio.server import serve

from rsocket import BufferConfig, DisconnectError, ProtocolError, Socket, SocketConfig
from rsocket.cursor import Cursor, MemorySeqStore
from rsocket.manager import ConnectionManager
from rsocket.pool import TenantPool
from rsocket.protocol import MAX_SEQ, ClientSession, ServerSession
from rsocket.testing import ReferenceServer
from rsocket.watchdog import LoopWatchdog

from ..helpers import FAST, FAST_SOCKET, TENANTS, until


class FlakyStore(MemorySeqStore):
    """A cursor store whose first ``failures`` loads raise (Redis restarting, a DB timeout)."""

    def __init__(self, failures: int = 1) -> None:
        super().__init__()
        self.failures = failures
        self.loads = 0

    async def load(self, tenant: str) -> Cursor:
        self.loads += 1
        if self.loads <= self.failures:
            raise ConnectionError("store restarting")
        return await super().load(tenant)


# -- 1. a tenant whose first start fails --------------------------------------------------


async def test_a_failed_first_start_is_retried_like_any_failure(server, caplog):
    store = FlakyStore(failures=2)
    m = ConnectionManager("t1", server.url, "token1", seq_store=store, **FAST)
    await m.start()
    assert m.state == "waiting" and not m.connected  # ONE retry scheduled, not dark
    assert "cursor load failed" in caplog.text
    await until(lambda: m.connected)
    assert store.loads == 3 and m.reconnects == 2
    server.publish("t1", "chats.upsert", [{"id": "c1"}])
    await until(lambda: m.events_processed == 1)
    await m.destroy()


async def test_pool_add_starts_a_tenant_whose_manager_is_not_running(server):
    pool = TenantPool(watchdog=False, **FAST)
    m = await pool.add("t1", server.url, "token1")
    await until(lambda: m.connected)
    server.inject("t1", "stream_error", code=440)  # replaced: the manager stops
    await until(lambda: m.state == "replaced")
    assert await pool.add("t1", server.url, "token1") is m
    await until(lambda: m.connected)
    await pool.destroy_all()


async def test_pool_add_replaces_a_destroyed_manager(server):
    pool = TenantPool(watchdog=False, **FAST)
    m = await pool.add("t1", server.url, "token1")
    await m.destroy()
    again = await pool.add("t1", server.url, "token1")
    assert again is not m and again.connected
    await pool.destroy_all()


# -- 2. a handler that never returns ------------------------------------------------------


async def test_a_hung_handler_is_reported_and_visible_in_status(server, caplog):
    config = SocketConfig(keepalive_interval=0.5, keepalive_grace=0.5,
                          buffer=BufferConfig(auto_flush_timeout=0.2, slow_handler_threshold=0.2))
    pool = TenantPool(watchdog=False, socket_config=config, backoff=(0.05,), stable_after=0.2)
    release = asyncio.Event()

    async def stuck_db_call(tenant: str, batch: dict) -> None:
        if "chats.upsert" in batch:
            await release.wait()

    pool.process(stuck_db_call)
    m = await pool.add("t1", server.url, "token1")
    server.publish("t1", "chats.upsert", [{"id": "c1"}])
    await until(lambda: "has been running for over" in caplog.text)
    [record] = [r for r in caplog.records if "has been running for over" in r.getMessage()]
    assert record.levelno == logging.WARNING and record.tenant == "t1"
    assert "stuck_db_call" in record.getMessage()  # the handler's stack
    assert "release.wait()" in record.getMessage()
    status = pool.status()["t1"]
    assert status["events_processed"] == 0  # the handler has not finished it
    assert status["events_waiting"] == 1
    assert status["oldest_pending_seconds"] >= 0.2
    release.set()
    await until(lambda: pool.status()["t1"]["events_processed"] == 1)
    assert pool.status()["t1"]["events_waiting"] == 0
    assert m.socket.last_seq == 1
    await pool.destroy_all()


@pytest.mark.parametrize("fault", ["drop", "stream_error"])
async def test_a_paused_socket_notices_its_transport_closing(fault):
    # a handler stuck on the first batch; enough events to pause reading. The server's
    # close frame waits behind events the client does not read, so the server aborts
    # the transport after its close timeout: what the client must notice.
    async with ReferenceServer(tenants=TENANTS, ping_interval=None, close_timeout=0.3) as srv:
        await paused_socket_sees_close(srv, fault)


async def paused_socket_sees_close(server: ReferenceServer, fault: str) -> None:
    config = SocketConfig(keepalive_interval=0.2, keepalive_grace=0.3, high_water=50,
                          low_water=20, drain_timeout=0.2, buffer=BufferConfig(auto_flush=False))
    sock = Socket(server.url, "t1", "token1", config=config)
    stuck = asyncio.Event()

    async def handler(batch: dict) -> None:
        await stuck.wait()

    sock.ev.process(handler)
    await sock.connect()
    server.publish_many("t1", [("chats.upsert", [{"id": f"c{i}"}]) for i in range(5_000)])
    await until(lambda: sock.reading_paused)
    server.inject("t1", fault)
    async with asyncio.timeout(5):  # ended, not "open" for as long as the handler hangs
        await sock.wait_closed()
    assert sock.state == "closed"
    stuck.set()


# -- 3. connection.update from the server is not the socket's own ------------------------


async def test_a_relayed_connection_update_does_not_impersonate_the_socket(server):
    pool = TenantPool(watchdog=False, **FAST)
    updates: list[dict] = []
    pool.process(lambda tenant, batch: updates.extend(
        [batch["connection.update"]] if "connection.update" in batch else []))
    m = await pool.add("t1", server.url, "token1")
    await until(lambda: m.connected)
    upstream = {"connection": "close",
                "lastDisconnect": {"error": {"statusCode": 428}, "date": 1_700_000_000}}
    server.publish("t1", "connection.update", upstream)
    await until(lambda: any(u.get("upstream") for u in updates))
    relayed = [u for u in updates if u.get("upstream")]
    assert relayed == [{**upstream, "upstream": True}]
    assert not any("upstream" in u for u in updates if u not in relayed)  # our own updates
    assert m.state == "open" and m.connected and m.last_disconnect is None
    status = pool.status()["t1"]  # used to raise AttributeError
    assert status["state"] == "open" and status["last_disconnect"] is None
    await pool.destroy_all()


# -- 4. seqs of 2**63 and above --------------------------------------------------------


def test_seq_above_a_signed_64_bit_integer_is_a_protocol_error():
    client, server = ClientSession("t1", "x"), ServerSession()
    server.receive(client.hello())
    client.receive(server.ready("s", False, 0))
    client.receive(server.offline(0))
    assert client.receive(server.event(1, "chats.delete", ["c"]))
    raw = msgspec.msgpack.encode
    assert client.receive(raw({"op": "event", "seq": 2, "name": "chats.delete", "data": ["c"]}))
    for frame in (
        {"op": "event", "seq": MAX_SEQ + 1, "name": "chats.delete", "data": ["c"]},
        {"op": "batch", "first": MAX_SEQ, "events": [{"name": "chats.delete", "data": ["c"]}] * 2},
    ):
        session = ClientSession("t1", "x")
        session.hello()
        session.receive(server_ready())
        with pytest.raises(ProtocolError) as info:
            session.receive(raw(frame))
        assert info.value.close_code == 1007


def server_ready() -> bytes:
    server = ServerSession()
    server.receive(ClientSession("t1", "x").hello())
    return server.ready("s", False, 0)


def test_both_cores_refuse_a_seq_out_of_range(EventBuffer):
    ev = EventBuffer(config=BufferConfig(auto_flush=False))
    ev.buffer()
    for seq in (1 << 63, -1):
        with pytest.raises(ValueError, match="out of range"):
            ev.emit("chats.upsert", [{"id": "c"}], seq=seq)
    assert ev.emit("chats.upsert", [{"id": "c"}], seq=(1 << 63) - 1)
    ev.destroy()


async def hostile(handler) -> AsyncIterator[str]:
    async with serve(handler, "127.0.0.1", 0, subprotocols=["rsocket.v1.msgpack"]) as ws_server:
        yield f"ws://127.0.0.1:{ws_server.sockets[0].getsockname()[1]}"


async def test_a_server_sending_seq_2_63_ends_the_socket_with_a_protocol_error():
    closed_with: list[int | None] = []

    async def huge_seqs(ws):
        session = ServerSession()
        session.receive(await ws.recv())
        await ws.send(session.ready("s1", False, 0))
        await ws.send(session.offline(0))
        await ws.send(msgspec.msgpack.encode(
            {"op": "event", "seq": 1 << 63, "name": "chats.delete", "data": ["c"]}))
        await ws.wait_closed()
        closed_with.append(ws.close_code)

    async for url in hostile(huge_seqs):
        sock = Socket(url, "t1", "x", config=FAST_SOCKET)
        await sock.connect()
        async with asyncio.timeout(5):
            await sock.wait_closed()
        assert sock.error.status_code == 500 and isinstance(sock.error.__cause__, ProtocolError)
        await until(lambda: bool(closed_with))
        assert closed_with == [1007]


# -- 5. a blocked loop is not a network drop -------------------------------------------


async def test_a_blocked_loop_is_not_taken_for_a_silent_peer(server):
    config = SocketConfig(keepalive_interval=0.2, keepalive_grace=0.2)
    sock = Socket(server.url, "t1", "token1", config=config)
    await sock.connect()
    await until(lambda: sock.latency is not None)  # a ping/pong round trip
    sock.latency = None
    time.sleep(1.0)  # the loop blocked for 2.5x interval + grace, the peer fine
    await until(lambda: sock.latency is not None)  # still open: the next ping is answered
    assert sock.state == "open"
    await sock.end()


async def test_the_watchdog_reports_the_measured_block(caplog):
    dog = LoopWatchdog(interval=0.05, threshold=0.2)
    dog.start()
    try:
        await until(lambda: dog.beats >= 1, 5.0, "the first beat")
        time.sleep(0.6)
        await until(lambda: "was blocked for" in caplog.text)
    finally:
        dog.stop()
    [record] = [r for r in caplog.records if "was blocked for" in r.getMessage()]
    # the measured block (less the part before the beat was due), not the threshold
    assert record.lag >= 0.6 - dog.interval > dog.threshold


# -- 6. frames the server rejects are not retried ---------------------------------------


async def test_a_hello_the_server_refuses_as_too_big_ends_the_tenant(server, caplog):
    big = "t" * (2 << 20)  # a 2 MiB tenant name: the server closes with 1009
    m = ConnectionManager(big, server.url, "token", **FAST)
    await m.start()
    await until(lambda: m.state == "rejected")
    assert m.last_disconnect.close_code == 1009 and m.last_disconnect.rejected
    assert m._reconnect is None  # no retry scheduled: the tenant has ended
    assert m.reconnects == 0 and m.generation == 1
    assert str(m.breaker.state) == "closed"
    assert any(r.levelno == logging.ERROR and "rejected" in r.getMessage()
               for r in caplog.records)
    await m.destroy()


async def test_a_server_that_ignores_max_frame_ends_the_tenant_after_three_refusals(caplog):
    """An older server sends a frame above the client's max_frame on every connection:
    the client refuses it (1009), and the third refusal at the same seq ends the
    tenant with an ERROR naming the size and the limit, instead of a reconnect loop."""
    connections = 0

    async def legacy(ws):
        nonlocal connections
        connections += 1
        session = ServerSession()
        session.receive(await ws.recv())
        await ws.send(session.ready("s1", True, 1))
        await ws.send(session.batch(1, [("chats.delete", ["x" * 100_000])]))
        await ws.wait_closed()

    async with serve(legacy, "127.0.0.1", 0) as ws_server:
        url = f"ws://127.0.0.1:{ws_server.sockets[0].getsockname()[1]}"
        config = dataclasses.replace(FAST_SOCKET, max_frame=64 * 1024)
        m = ConnectionManager("t1", url, "k", **{**FAST, "socket_config": config})
        await m.start()
        await until(lambda: m.state == "rejected")
        assert connections == 3 and m.reconnects == 2
        [error] = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert "max_frame (65536 bytes) 3 connections in a row" in error.getMessage()
        assert "exceeds max_frame 65536" in error.getMessage()
        await m.destroy()


async def test_a_resume_the_server_calls_a_protocol_violation_is_not_retried(server):
    server.publish("t1", "chats.upsert", [{"id": "c1"}])
    session = server.stats()["t1"]["session"]
    store = MemorySeqStore()
    await store.save("t1", Cursor(session, 99))  # above the log's last seq: 1002
    m = ConnectionManager("t1", server.url, "token1", seq_store=store, **FAST)
    await m.start()
    await until(lambda: m.state == "rejected")
    assert m.last_disconnect.close_code == 1002
    assert m.reconnects == 0
    await m.destroy()


def test_a_rejected_disconnect_survives_pickling():
    import pickle

    error = pickle.loads(pickle.dumps(DisconnectError(500, "bad", close_code=1009)))
    assert (error.status_code, error.reason, error.close_code, error.rejected) == (
        500, "bad", 1009, True)


# -- 8. reference server: reset() on a connected tenant -----------------------------------


async def test_server_reset_ends_live_connections_cleanly(server):
    m = ConnectionManager("t1", server.url, "token1", **FAST)
    seen: list[int] = []
    m.process(lambda batch, seqs: seen.extend(seqs), with_seqs=True)
    await m.start()
    server.publish_many("t1", [("chats.upsert", [{"id": f"c{i}"}]) for i in range(500)])
    await until(lambda: len(seen) == 500)
    old_session = server.stats()["t1"]["session"]
    server.reset("t1")
    server.publish_many("t1", [("chats.upsert", [{"id": f"d{i}"}]) for i in range(3)])
    await until(lambda: m.last_disconnect is not None and m.connected)
    assert m.last_disconnect.status_code == 515
    await until(lambda: len(seen) == 503)  # the new log's seqs 1..3, after a gap
    assert seen[500:] == [1, 2, 3]
    assert m.socket.epoch != old_session
    stats = server.stats()["t1"]
    assert stats["connections"] == 1 and stats["max_concurrent"] == 1
    await m.destroy()
    await until(lambda: server.stats()["t1"]["connections"] == 0)

