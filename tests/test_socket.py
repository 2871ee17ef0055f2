"""The socket against the real reference server on loopback."""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.asyncio.server import serve

import rsocket
from rsocket import BufferConfig, DisconnectError, DisconnectReason, ProtocolError
from rsocket.errors import QueryError
from rsocket.protocol import ServerSession
from rsocket.socket import Socket, SocketConfig
from rsocket.testing import ReferenceServer, Workload

from .helpers import TENANTS, until
from .whatsapp_payloads import history_set, image_upsert, message

pytestmark = pytest.mark.servers()  # the `server` fixture: the reference server, then the bridge
FAST = SocketConfig(keepalive_interval=0.2, keepalive_grace=0.3, connect_timeout=2,
                    close_timeout=1, drain_timeout=1,
                    buffer=BufferConfig(auto_flush=True, auto_flush_timeout=0.2))


def publish(srv: ReferenceServer, n: int, tenant: str = "t1", seed: int = 1) -> range:
    workload = Workload(seed)
    return srv.publish_many(tenant, workload.take(n))


class Recorder:
    """A batch handler recording seqs and connection updates."""

    def __init__(self, sock: Socket) -> None:
        self.seqs: list[int] = []
        self.updates: list[dict[str, Any]] = []
        sock.ev.process(self.on_batch, with_seqs=True)

    def on_batch(self, batch: dict[str, Any], seqs: range) -> None:
        if "connection.update" in batch:
            self.updates.append(batch["connection.update"])
        self.seqs.extend(seqs)


def assert_gone(sock: Socket, tasks_before: set[asyncio.Task[Any]]) -> None:
    """After end(): buffer destroyed, no task of the socket (all named rsocket-*) left."""
    assert sock.state == "closed" and sock.ev.destroyed
    assert sock.keepalive_at is None and sock._ack is None  # no clock entry, no ack pending
    wire = sock._wire
    assert wire is None or wire.transport is None or wire.transport.is_closing()
    assert not sock.ev._tasks
    leaked = [
        t for t in asyncio.all_tasks() - tasks_before
        if not t.done() and t.get_name().startswith("rsocket-")
    ]
    assert not leaked, leaked


# -- connect and updates -------------------------------------------------------


async def test_connect_updates_and_backlog_delivered_in_one_release(server):
    publish(server, 250)
    base = rsocket.live_buffers()
    before = set(asyncio.all_tasks())
    sock = Socket(server.url, "t1", "token1", config=FAST)
    rec = Recorder(sock)
    releases: list[range] = []
    sock.ev.process(lambda b, s: releases.append(s) if s else None, with_seqs=True)
    await sock.connect()
    assert rsocket.live_buffers() == base + 1
    await until(lambda: sock.last_seq == 250)
    assert releases[0] == range(1, 251)  # the whole backlog was one buffering scope
    assert [u.get("connection") for u in rec.updates] == ["connecting", "open", None]
    # a first connection has no cursor: nothing was resumed (the server replays everything)
    assert rec.updates[1] == {"connection": "open", "resumed": False, "gap": False}
    assert rec.updates[2] == {"receivedPendingNotifications": True}
    publish(server, 10)
    await until(lambda: sock.last_seq == 260)
    await until(lambda: server.stats()["t1"]["acked"] == 260)
    await sock.end()
    assert rsocket.live_buffers() == base
    close = rec.updates[-1]
    assert close["connection"] == "close"
    assert close["lastDisconnect"]["error"].status_code == DisconnectReason.connectionClosed
    assert close["lastDisconnect"]["date"].tzinfo is not None
    assert rec.seqs == list(range(1, 261))
    assert_gone(sock, before)


async def test_async_context_manager_and_query(server):
    async with Socket(server.url, "t1", "token1", config=FAST) as sock:
        assert sock.state == "open"
        assert await sock.query("echo", {"x": [1, 2]}) == {"x": [1, 2]}
        with pytest.raises(QueryError, match="no_such_method"):
            await sock.query("no_such_method")
    assert sock.state == "closed" and sock.ev.destroyed


async def test_query_timeout_is_clear(server):
    async with Socket(server.url, "t1", "token1", config=FAST) as sock:
        server.inject("t1", "stall")
        with pytest.raises(TimeoutError, match="echo"):
            await sock.query("echo", 1, timeout=0.05)


async def test_end_fails_pending_queries_with_428(server):
    before = set(asyncio.all_tasks())
    sock = Socket(server.url, "t1", "token1", config=FAST)
    await sock.connect()
    server.inject("t1", "stall")
    query = asyncio.create_task(sock.query("echo", 1, timeout=5))
    await until(lambda: bool(sock._queries))
    await sock.end()
    with pytest.raises(DisconnectError) as info:
        await query
    assert info.value.status_code == 428
    assert_gone(sock, before | {query})


async def test_connect_refused_is_428_and_leaves_nothing():
    base = rsocket.live_buffers()
    sock = Socket("ws://127.0.0.1:9", "t1", "x", config=FAST)
    rec = Recorder(sock)
    with pytest.raises(DisconnectError) as info:
        await sock.connect()
    assert info.value.status_code == DisconnectReason.connectionClosed
    assert rsocket.live_buffers() == base and sock.ev.destroyed
    assert rec.updates[-1]["lastDisconnect"]["error"] is info.value


async def test_bad_token_is_401(server):
    sock = Socket(server.url, "t1", "wrong", config=FAST)
    with pytest.raises(DisconnectError) as info:
        await sock.connect()
    assert info.value.status_code == DisconnectReason.loggedOut
    assert sock.ev.destroyed


async def silent_server(handler) -> AsyncIterator[str]:
    async with serve(handler, "127.0.0.1", 0, subprotocols=["rsocket.v1.msgpack"]) as ws_server:
        port = ws_server.sockets[0].getsockname()[1]
        yield f"ws://127.0.0.1:{port}"


async def test_ready_timeout_is_408():
    async def never_ready(ws):
        await ws.wait_closed()

    async for url in silent_server(never_ready):
        sock = Socket(url, "t1", "x", config=SocketConfig(connect_timeout=0.2))
        with pytest.raises(DisconnectError) as info:
            await sock.connect()
        assert info.value.status_code == DisconnectReason.timedOut
        assert sock.ev.destroyed


async def test_backlog_without_offline_is_released_by_the_auto_flush_timer():
    async def no_offline(ws):
        session = ServerSession()
        session.receive(await ws.recv())
        await ws.send(session.ready("s1", False, 3))
        await ws.send(session.batch(1, [("chats.upsert", [{"id": f"c{i}"}]) for i in range(3)]))
        await ws.wait_closed()

    async for url in silent_server(no_offline):
        sock = Socket(url, "t1", "x", config=SocketConfig(
            keepalive_interval=30, buffer=BufferConfig(auto_flush_timeout=0.05)))
        got: list[dict] = []
        sock.ev.process(got.append)
        await sock.connect()
        await until(lambda: any("chats.upsert" in b for b in got))
        assert sock.last_seq == 3
        await sock.end()


async def test_malformed_server_frame_ends_with_protocol_error():
    closed_with: list[int | None] = []

    async def garbage(ws):
        session = ServerSession()
        session.receive(await ws.recv())
        await ws.send(session.ready("s1", False, 0))
        await ws.send(session.offline(0))
        await ws.send(b"\xc1 not msgpack")
        await ws.wait_closed()
        closed_with.append(ws.close_code)

    async for url in silent_server(garbage):
        sock = Socket(url, "t1", "x", config=FAST)
        rec = Recorder(sock)
        await sock.connect()
        await asyncio.wait_for(sock.wait_closed(), 5)
        error = rec.updates[-1]["lastDisconnect"]["error"]
        assert error.status_code == DisconnectReason.badSession
        assert isinstance(error.__cause__, ProtocolError)
        await until(lambda: bool(closed_with))
        assert closed_with == [error.__cause__.close_code] == [1007]


# -- every close path leaves nothing behind ---------------------------------------------


@pytest.mark.parametrize(
    ("fault", "kw", "code"),
    [
        ("stream_error", {"code": 503}, 503),
        ("stream_error", {"code": 515}, 515),
        ("stream_error", {"code": 440}, 440),
        ("stream_error", {"code": 401}, 401),
        ("failure", {"code": 500}, 500),
        ("drop", {}, 428),
        ("stall", {}, 408),
    ],
)
async def test_every_server_close_path_destroys_the_buffer(server, fault, kw, code):
    base = rsocket.live_buffers()
    before = set(asyncio.all_tasks())
    sock = Socket(server.url, "t1", "token1", config=FAST)
    rec = Recorder(sock)
    await sock.connect()
    publish(server, 30)
    await until(lambda: sock.last_seq == 30)
    server.inject("t1", fault, **kw)
    async with asyncio.timeout(5):
        await sock.wait_closed()
    assert sock.error.status_code == code
    assert rec.updates[-1]["lastDisconnect"]["error"].status_code == code
    assert rsocket.live_buffers() == base
    assert rec.seqs == list(range(1, 31))
    assert_gone(sock, before)


async def test_end_during_the_initial_backlog_delivers_it(server):
    publish(server, 3000)
    before = set(asyncio.all_tasks())
    sock = Socket(server.url, "t1", "token1", config=FAST)
    rec = Recorder(sock)
    await sock.connect()
    await until(lambda: sock.received > 0)
    assert sock.ev.is_buffering()
    await sock.end()
    # everything received is delivered by the final flush and counts as processed
    assert rec.seqs == list(range(1, sock.received + 1))
    assert sock.last_seq == sock.received
    assert_gone(sock, before)


async def test_end_from_inside_sync_and_async_handlers(server):
    before = set(asyncio.all_tasks())
    sock = Socket(server.url, "t1", "token1", config=FAST)
    ended: list[asyncio.Task[None]] = []

    def sync_handler(batch: dict) -> None:
        if "chats.upsert" in batch and not ended:
            ended.append(asyncio.create_task(sock.end()))

    sock.ev.process(sync_handler)
    await sock.connect()
    server.publish("t1", "chats.upsert", [{"id": "a"}])
    await until(lambda: bool(ended))
    await ended[0]
    assert_gone(sock, before | set(ended))

    sock2 = Socket(server.url, "t1", "token1", config=FAST)
    done = asyncio.Event()

    async def async_handler(batch: dict) -> None:
        if "chats.delete" in batch:
            await sock2.end()
            done.set()

    sock2.ev.process(async_handler)
    await sock2.connect()
    server.publish("t1", "chats.delete", ["a"])
    async with asyncio.timeout(5):
        await done.wait()
    assert sock2.state == "closed" and sock2.ev.destroyed


async def test_end_is_idempotent_and_concurrent(server):
    sock = Socket(server.url, "t1", "token1", config=FAST)
    rec = Recorder(sock)
    await sock.connect()
    await asyncio.gather(*(sock.end() for _ in range(5)))
    await sock.end()
    assert [u.get("connection") for u in rec.updates].count("close") == 1


# -- delivery guarantees --------------------------------------------------------------------


async def test_resume_delivers_every_seq_exactly_once_across_faults(server):
    """20,000 events, 15 faults (503s and TCP drops), a chain of resuming sockets."""
    total, faults = 20_000, 15
    seen: list[int] = []
    resume, epoch, sockets = 0, "", 0
    published = 0
    chunk = total // (faults + 1)
    base = rsocket.live_buffers()
    workload = Workload(7)
    while True:
        sock = Socket(server.url, "t1", "token1", resume=resume, epoch=epoch, config=FAST)
        sock.ev.process(lambda b, s: seen.extend(s), with_seqs=True)
        try:
            await sock.connect()
        except DisconnectError:
            resume, epoch = sock.last_seq, sock.epoch
            continue
        sockets += 1
        if published < total:
            server.publish_many("t1", workload.take(chunk))
            published += chunk
        if sockets <= faults:
            await until(lambda: sock.last_seq >= published - chunk // 2, timeout=10)
            server.inject("t1", "drop" if sockets % 2 else "stream_error", code=503)
            async with asyncio.timeout(5):
                await sock.wait_closed()
        else:
            if published < total:
                server.publish_many("t1", workload.take(total - published))
                published = total
            await until(lambda: sock.last_seq == total, timeout=20)
            await sock.end()
            break
        resume, epoch = sock.last_seq, sock.epoch
        assert rsocket.live_buffers() == base
    assert seen == list(range(1, total + 1))
    assert server.stats()["t1"]["max_concurrent"] == 1


async def test_duplicates_are_dropped():
    async def replays_from_the_start(ws):
        session = ServerSession()
        session.receive(await ws.recv())
        await ws.send(session.ready("s1", False, 5))  # cannot honour resume=3: replays 1..5
        await ws.send(session.batch(1, [("chats.delete", [f"c{i}"]) for i in range(1, 6)]))
        await ws.send(session.offline(5))
        await ws.wait_closed()

    async for url in silent_server(replays_from_the_start):
        sock = Socket(url, "t1", "x", resume=3, epoch="s1", config=FAST)
        rec = Recorder(sock)
        got: list[str] = []
        sock.ev.on("chats.delete", got.extend)
        await sock.connect()
        await until(lambda: sock.last_seq == 5)
        assert got == ["c4", "c5"] and rec.seqs == [4, 5]
        assert rec.updates[1]["gap"] is True
        await sock.end()


async def test_invalid_event_is_dropped_counted_and_acked(server):
    sock = Socket(server.url, "t1", "token1", config=FAST)
    got: list[dict] = []
    sock.ev.process(got.append)
    await sock.connect()
    server.publish("t1", "chats.upsert", [{"no_id": True}])
    server.publish("t1", "chats.upsert", [{"id": "ok"}])
    await until(lambda: sock.last_seq == 2)
    assert [b["chats.upsert"] for b in got if "chats.upsert" in b] == [[{"id": "ok"}]]
    await until(lambda: server.stats()["t1"]["acked"] == 2)
    await sock.end()


async def test_handler_errors_are_logged_and_the_batch_processed_once_dead_lettered(
        server, caplog):
    sock = Socket(server.url, "t1", "token1", config=FAST)
    sock.ev.process(lambda b: 1 / 0 if "chats.upsert" in b else None, retry=None)
    await sock.connect()
    server.publish("t1", "chats.upsert", [{"id": "poison"}])
    await until(lambda: sock.last_seq == 1)
    assert sock.state == "open"
    assert any(r.exc_info and r.exc_info[0] is ZeroDivisionError for r in caplog.records)
    assert any(getattr(r, "event", "") == "dead_letter" for r in caplog.records)
    await sock.end()


async def test_slow_handler_applies_backpressure_with_bounded_memory(server):
    config = SocketConfig(keepalive_interval=0.2, keepalive_grace=0.3, high_water=400,
                          low_water=200, buffer=BufferConfig(auto_flush=False))
    sock = Socket(server.url, "t1", "token1", config=config)
    seen: list[int] = []
    paused = 0

    async def slow(batch: dict, seqs: range) -> None:
        nonlocal paused
        paused += sock.reading_paused
        seen.extend(seqs)
        await asyncio.sleep(0.001)

    sock.ev.process(slow, with_seqs=True)
    await sock.connect()
    gc.collect()
    tracemalloc.start()
    try:
        publish(server, 20_000, seed=3)
        peak_unprocessed = 0
        async with asyncio.timeout(60):
            while sock.last_seq < 20_000:
                peak_unprocessed = max(peak_unprocessed, sock.received - sock.last_seq)
                await asyncio.sleep(0.01)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert paused > 0, "reading never paused"
    assert peak_unprocessed <= config.high_water + server.batch_size
    assert seen == list(range(1, 20_001))
    assert sock.state == "open"  # a paused reader is not a dead peer
    assert peak < 64 * 1024 * 1024
    await sock.end()


async def test_end_while_connecting_leaves_nothing_and_connect_raises():
    accepted = asyncio.Event()
    server_saw_close = asyncio.Event()

    async def slow_ready(ws):
        accepted.set()
        await ws.wait_closed()
        server_saw_close.set()

    async for url in silent_server(slow_ready):
        before = set(asyncio.all_tasks())
        base = rsocket.live_buffers()
        sock = Socket(url, "t1", "x", config=FAST)
        connecting = asyncio.create_task(sock.connect())
        async with asyncio.timeout(5):
            await accepted.wait()
        await sock.end()
        with pytest.raises(DisconnectError) as info:
            await connecting
        assert info.value.status_code == DisconnectReason.connectionClosed
        async with asyncio.timeout(5):
            await server_saw_close.wait()  # no half-open connection left behind
        assert rsocket.live_buffers() == base
        assert_gone(sock, before | {connecting})


# -- regressions found in review -----------------------------------------------------------


@pytest.mark.parametrize(("resume", "epoch_known"), [(0, False), (5, True)])
async def test_a_replay_that_starts_past_last_seq_still_advances_it(resume, epoch_known):
    """The server trimmed its log: the replay starts past resume + 1 (never a stall)."""
    async with ReferenceServer(tenants=TENANTS, replay_window=10, ping_interval=None) as srv:
        publish(srv, 30)
        epoch = srv.stats()["t1"]["session"] if epoch_known else ""
        sock = Socket(srv.url, "t1", "token1", resume=resume, epoch=epoch, config=FAST)
        rec = Recorder(sock)
        await sock.connect()
        await until(lambda: sock.last_seq == 30)
        publish(srv, 5, seed=2)
        await until(lambda: sock.last_seq == 35)
        await until(lambda: srv.stats()["t1"]["acked"] == 35)
        assert rec.seqs == list(range(21, 36))
        assert rec.updates[1]["gap"] is (resume > 0)
        await sock.end()


async def test_end_with_a_long_non_ascii_reason_still_closes_everything(server):
    base = rsocket.live_buffers()
    sock = Socket(server.url, "t1", "token1", config=FAST)
    rec = Recorder(sock)
    await sock.connect()
    await sock.end(DisconnectError(503, "é" * 100))  # 200 bytes: over a close frame's 123
    assert sock.ev.destroyed and rsocket.live_buffers() == base
    assert rec.updates[-1]["connection"] == "close"


# -- frame size: a server fits its frames to the client's max_frame ---------------------


def history_messages(batches: list[dict[str, Any]]) -> list[Any]:
    return [m for b in batches for m in b.get("messaging-history.set", {}).get("messages", [])]


async def test_a_history_sync_larger_than_max_frame_arrives_whole(server):
    """A first login's history sync (5 MB) to a client that takes 1 MiB frames: split
    into sets, cut into frames, merged back, and no reconnect."""
    sync = history_set()
    config = SocketConfig(max_frame=1 << 20, buffer=BufferConfig(auto_flush=False))
    sock = Socket(server.url, "t1", "token1", config=config)
    got: list[dict[str, Any]] = []
    sock.ev.process(got.append)
    await sock.connect()
    seq = server.publish("t1", "messaging-history.set", sync)
    assert seq > 5  # appended as parts
    await until(lambda: sock.last_seq == seq, timeout=20)
    assert history_messages(got) == sync["messages"]
    assert server.stats()["t1"]["connections_total"] == 1 and sock.state == "open"
    await sock.end()


async def test_an_offline_backlog_of_media_is_cut_into_frames_by_bytes(server):
    """100 offline images with 15 KB thumbnails (1.5 MB) reach a client that takes
    256 KiB frames in the backlog, whole, with no reconnect."""
    upsert = image_upsert(100)
    seq = server.publish("t1", "messages.upsert", upsert)
    sock = Socket(server.url, "t1", "token1",
                  config=SocketConfig(max_frame=256 * 1024, buffer=BufferConfig(auto_flush=False)))
    got: list[dict[str, Any]] = []
    sock.ev.process(got.append)
    await sock.connect()
    await until(lambda: sock.last_seq == seq, timeout=20)
    received = [m for b in got for m in b.get("messages.upsert", {}).get("messages", [])]
    assert received == upsert["messages"]
    assert server.stats()["t1"]["connections_total"] == 1
    await sock.end()


async def test_an_event_that_cannot_fit_is_skipped_logged_and_processed(server, caplog):
    sock = Socket(server.url, "t1", "token1", config=SocketConfig(max_frame=64 * 1024))
    got: list[dict[str, Any]] = []
    sock.ev.process(got.append)
    await sock.connect()
    huge = server.publish("t1", "messages.upsert",
                          {"messages": [message(1, thumbnail=100_000)], "type": "notify"})
    after = server.publish("t1", "chats.upsert", [{"id": "after@s.whatsapp.net"}])
    await until(lambda: sock.last_seq == after)
    assert [b["chats.upsert"] for b in got if "chats.upsert" in b] == [
        [{"id": "after@s.whatsapp.net"}]]
    assert not any("messages.upsert" in b for b in got)
    warning = next(r for r in caplog.records if "exceeds max_frame" in r.getMessage())
    assert warning.levelname == "WARNING"
    assert f"seq {huge}" in warning.getMessage() and "messages.upsert" in warning.getMessage()
    await until(lambda: server.stats()["t1"]["acked"] == after)
    assert server.stats()["t1"]["connections_total"] == 1
    await sock.end()


async def test_a_frame_above_max_frame_ends_the_socket_without_waiting_for_the_server():
    """A server that ignores max_frame: the client refuses the frame (1009) and ends at
    once, even though the server never answers the close."""
    done = asyncio.Event()

    async def legacy(ws):
        session = ServerSession()
        session.receive(await ws.recv())
        await ws.send(session.ready("s1", True, 0))
        await ws.send(session.offline(0))
        ws.transport.pause_reading()  # never answers the closing handshake
        await ws.send(session.batch(1, [("chats.delete", ["x" * 100_000])]))
        await done.wait()
        ws.transport.abort()

    async for url in silent_server(legacy):
        sock = Socket(url, "t1", "x", config=SocketConfig(max_frame=64 * 1024, close_timeout=0.5))
        await sock.connect()
        await asyncio.wait_for(sock.wait_closed(), 5)
        assert sock.error is not None and sock.error.status_code == DisconnectReason.badSession
        cause = sock.error.__cause__
        assert isinstance(cause, ProtocolError) and cause.close_code == 1009
        assert "exceeds max_frame 65536" in str(cause)
        done.set()


async def test_baileys_7_events_pass_through_unmerged_without_warnings(server, caplog):
    sock = Socket(server.url, "t1", "token1", config=FAST)
    got: list[dict[str, Any]] = []
    sock.ev.process(got.append)
    await sock.connect()
    events = [
        ("lid-mapping.update", {"lid": "123456@lid", "pn": "5511900000001@s.whatsapp.net"}),
        ("messaging-history.status", {"syncType": 2, "status": "complete", "explicit": True}),
        ("chats.lock", {"id": "5511900000001@s.whatsapp.net", "locked": True}),
        ("settings.update", {"setting": "locale", "value": "pt_BR"}),
        ("newsletter.view", {"id": "1@newsletter", "server_id": "7", "count": 3}),
    ]
    seqs = server.publish_many("t1", events)
    await until(lambda: sock.last_seq == seqs[-1])
    assert [(name, batch[name]) for batch in got for name in batch
            if name != "connection.update"] == events
    assert not [r for r in caplog.records if r.levelno >= 30]
    await sock.end()


@pytest.mark.parametrize("subprotocol", ["rsocket.v1.msgpack", "rsocket.v1.json"])
async def test_values_round_trip_exactly_whatever_text_users_send(server, subprotocol):
    """No in-band markers: a text or a key that looks like one arrives as it was sent,
    next to a 64-bit integer."""
    config = SocketConfig(subprotocol=subprotocol, buffer=BufferConfig(auto_flush=False))
    sock = Socket(server.url, "t1", "token1", config=config)
    got: list[dict[str, Any]] = []
    sock.ev.process(got.append)
    await sock.connect()
    chat = {"id": "a@s.whatsapp.net", "name": "\u0000rsocket-bigint:123",
            "\u0000rsocket-bigint:5": "as a key", "conversationTimestamp": 2**63 - 1,
            "quote": '"}]\\'}
    seq = server.publish("t1", "chats.upsert", [chat])
    await until(lambda: sock.last_seq == seq)
    assert [b["chats.upsert"] for b in got if "chats.upsert" in b] == [[chat]]
    await sock.end()
