"""Bad input at the API (issue #8): each case has a documented outcome.

| input | outcome |
|---|---|
| wrong payload type to ``emit()`` of a bufferable event inside a scope | ``TypeError("invalid '<event>' payload: ...")``; what was buffered before is released intact |
| ``None`` / empty payload | safe no-op, ``emit()`` returns False |
| wrong payload outside a scope, or a non-bufferable / non-str event name | delivered unchanged (the buffer is a plain emitter there; the socket validates wire events) |
| wrong payload types from the server | dropped, counted, acked; neighbours delivered; socket stays open |
| sync handler raises | other handlers still get the batch; ``flush()`` raises it (several: ``ExceptionGroup``); in a socket: logged, counted, batch processed |
| async handler raises | logged and counted; the batch counts as processed |
| async handler hangs | ``end()`` returns after ``drain_timeout`` (cancels it, warns); ``last_seq`` stays before that batch, so the next socket redelivers it: nothing lost |
| ``end()`` from several tasks at once (and a handler, and a server close) | one close, one close update, one final flush; every call returns |
| ``ev.destroy()`` inside a handler of a standalone buffer | the current release completes; later ``emit()`` returns False (dropped, counted) |
| ``sock.ev.destroy()`` inside a socket's handler | ends the socket (428 "event buffer destroyed by the application"): close update, final flush of everything received, no task left; a manager reconnects and resumes |
"""

from __future__ import annotations

import asyncio
import logging

import pytest

import rsocket
from rsocket import BufferConfig, DisconnectReason, Retry
from rsocket.manager import ConnectionManager
from rsocket.socket import Socket, SocketConfig
from rsocket.testing import Workload

from ..helpers import rsocket_tasks, until

FAST = SocketConfig(keepalive_interval=0.2, keepalive_grace=0.3, connect_timeout=2,
                    close_timeout=1, drain_timeout=0.3,
                    buffer=BufferConfig(auto_flush=True, auto_flush_timeout=0.2))
BUFFERABLE = ["messages.upsert", "messages.update", "messages.delete", "messages.reaction",
              "message-receipt.update", "messaging-history.set", "chats.upsert", "chats.update",
              "contacts.upsert", "contacts.update", "groups.update"]
BAD = ["a string", 5, 2.5, [1, 2], b"bytes", object()]


# -- emit() with wrong payloads (both cores) ------------------------------------------------


def test_wrong_payload_in_a_scope_is_a_clear_typeerror_and_keeps_buffered_data(make_buffer):
    ev = make_buffer()
    got: list[dict] = []
    ev.process(got.append)
    ev.buffer()
    ev.emit("chats.upsert", [{"id": "a@s.whatsapp.net", "name": "A"}])
    ev.emit("messages.upsert", {"messages": [{"key": {"remoteJid": "a@s.whatsapp.net",
                                                      "id": "M1", "fromMe": False}}],
                                "type": "notify"})
    errors = 0
    for name in BUFFERABLE:
        for bad in BAD:
            if name == "messages.upsert" and isinstance(bad, list | bytes | str):
                pass  # still a TypeError: checked below like the others
            try:
                ev.emit(name, bad)
            except TypeError as exc:
                assert name in str(exc) and "payload" in str(exc), exc
                errors += 1
    assert errors >= len(BUFFERABLE) * 4  # scalars and foreign objects are refused everywhere
    assert ev.flush()
    (batch,) = got
    assert batch["chats.upsert"][0]["id"] == "a@s.whatsapp.net"
    assert [m["key"]["id"] for m in batch["messages.upsert"]["messages"]] == ["M1"]


def test_none_and_empty_payloads_are_no_ops(make_buffer):
    ev = make_buffer()
    got: list[dict] = []
    ev.process(got.append)
    for scoped in (False, True):
        if scoped:
            ev.buffer()
        for name in BUFFERABLE:
            assert ev.emit(name, None) is False
        for name in ("chats.upsert", "contacts.upsert", "messages.update"):
            assert ev.emit(name, []) is False
        if scoped:
            ev.flush()
    assert got == []


def test_wrong_payload_outside_a_scope_and_odd_names_pass_through_unchanged(make_buffer):
    ev = make_buffer()
    got: list[dict] = []
    ev.process(got.append)
    ev.emit("messages.update", "not a list")
    ev.emit(123, {"a": 1})  # type: ignore[arg-type]
    ev.emit("my.app.event", {"x": 1})
    assert got == [{"messages.update": "not a list"}, {123: {"a": 1}}, {"my.app.event": {"x": 1}}]


async def test_wrong_payload_types_from_the_server_are_dropped_counted_and_acked(server):
    sock = Socket(server.url, "t1", "token1", config=FAST)
    got: list[dict] = []
    sock.ev.process(got.append)
    await sock.connect()
    server.publish("t1", "chats.delete", ["before"])
    for name in ("messages.upsert", "chats.update", "messages.update", "messaging-history.set"):
        for bad in ("x", 5, [1], {"nope": True}, None):
            server.publish("t1", name, bad)
    server.publish("t1", "unknown.event", {"x": 1})
    last = server.publish("t1", "chats.delete", ["after"])
    await until(lambda: sock.last_seq == last)
    deletes = [b["chats.delete"] for b in got if "chats.delete" in b]
    assert deletes == [["before"], ["after"]]
    assert not any(k in b for b in got for k in ("messages.upsert", "chats.update",
                                                 "unknown.event"))
    assert sock.state == "open"
    await until(lambda: server.stats()["t1"]["acked"] == last)
    await sock.end()


# -- handlers that raise or hang ---------------------------------------------------------------


def test_sync_handler_raising_does_not_stop_the_others(make_buffer):
    ev = make_buffer()
    got: list[dict] = []
    ev.process(lambda b: 1 / 0)
    ev.process(got.append)
    ev.process(lambda b: [][1])
    ev.buffer()
    ev.emit("chats.upsert", [{"id": "a"}])
    with pytest.raises(ExceptionGroup) as info:
        ev.flush()
    assert {type(e) for e in info.value.exceptions} == {ZeroDivisionError, IndexError}
    assert got == [{"chats.upsert": [{"id": "a"}]}]
    with pytest.raises(ExceptionGroup):  # the buffer keeps working (and reporting)
        ev.emit("chats.delete", ["b"])
    assert got[-1] == {"chats.delete": ["b"]}


async def test_async_handler_raising_is_logged_then_dead_lettered(server, caplog):
    sock = Socket(server.url, "t1", "token1", config=FAST)

    async def bad(batch: dict) -> None:
        raise RuntimeError("handler bug")

    sock.ev.process(bad, retry=Retry(attempts=2, backoff=(0.01, 0.01)))
    await sock.connect()
    last = server.publish("t1", "chats.delete", ["x"])
    await until(lambda: sock.last_seq == last)
    assert sock.state == "open"
    assert any(r.exc_info and r.exc_info[0] is RuntimeError for r in caplog.records)
    assert any(getattr(r, "event", "") == "dead_letter" and r.levelno == logging.ERROR
               for r in caplog.records)
    await sock.end()


async def test_hanging_async_handler_bounds_end_and_loses_nothing(server, caplog):
    caplog.set_level(logging.WARNING, logger="rsocket")
    sock = Socket(server.url, "t1", "token1", config=FAST)
    hung = asyncio.Event()

    async def hangs(batch: dict, seqs: range) -> None:
        if "chats.delete" in batch:
            hung.set()
            await asyncio.Event().wait()  # never returns

    sock.ev.process(hangs, with_seqs=True)
    await sock.connect()
    first = server.publish("t1", "chats.upsert", [{"id": "ok"}])
    await until(lambda: sock.last_seq == first)
    stuck = server.publish("t1", "chats.delete", ["x"])
    async with asyncio.timeout(5):
        await hung.wait()
    loop = asyncio.get_running_loop()
    started = loop.time()
    await sock.end()
    assert loop.time() - started < FAST.drain_timeout + FAST.close_timeout + 0.5
    assert sock.last_seq == first < stuck  # the hung batch is not counted as processed
    assert any("still running" in r.getMessage() for r in caplog.records)
    assert not rsocket_tasks()
    # the next socket resumes before the hung batch: it is delivered again, not lost
    again = Socket(server.url, "t1", "token1", resume=sock.last_seq, epoch=sock.epoch, config=FAST)
    seen: list[int] = []
    again.ev.process(lambda b, s: seen.extend(s), with_seqs=True)
    await again.connect()
    await until(lambda: again.last_seq == stuck)
    assert seen == [stuck]
    await again.end()


# -- end() from everywhere at once -------------------------------------------------------------


async def test_concurrent_end_from_tasks_a_handler_and_the_server(server):
    base = rsocket.live_buffers()
    server.publish_many("t1", Workload(2).take(500))  # a backlog: one open scope
    sock = Socket(server.url, "t1", "token1", config=FAST)
    closes: list[dict] = []
    seen: list[int] = []
    from_handler: list[asyncio.Task[None]] = []

    def handler(batch: dict, seqs: range) -> None:
        seen.extend(seqs)
        update = batch.get("connection.update") or {}
        if update.get("connection") == "close":
            closes.append(update)
        if seqs and not from_handler:
            from_handler.append(asyncio.ensure_future(sock.end()))

    sock.ev.process(handler, with_seqs=True)
    await sock.connect()
    server.inject("t1", "stream_error", code=503)
    enders = [asyncio.create_task(sock.end()) for _ in range(8)]
    async with asyncio.timeout(5):
        await asyncio.gather(*enders, *from_handler)
        await sock.end()
    assert len(closes) == 1
    assert seen == list(range(1, sock.last_seq + 1))  # what arrived, exactly once
    assert sock.last_seq == sock.received
    assert rsocket.live_buffers() == base
    assert not rsocket_tasks()


# -- destroy() inside a handler ---------------------------------------------------------------


def test_destroy_inside_a_handler_of_a_standalone_buffer(make_buffer):
    ev = make_buffer()
    got: list[dict] = []

    def handler(batch: dict) -> None:
        got.append(batch)
        ev.destroy()

    ev.process(handler)
    ev.buffer()
    ev.emit("chats.upsert", [{"id": "a"}])
    ev.emit("chats.delete", ["b"])
    ev.flush()
    assert got == [{"chats.upsert": [{"id": "a"}], "chats.delete": ["b"]}]
    assert ev.destroyed
    assert ev.emit("chats.delete", ["c"]) is False  # dropped (and counted), not an error
    ev.destroy()  # idempotent


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_socket_buffer_destroyed_inside_a_handler_ends_the_socket(server, kind):
    base = rsocket.live_buffers()
    sock = Socket(server.url, "t1", "token1", config=FAST)
    seen: list[int] = []
    updates: list[dict] = []

    def on_batch(batch: dict, seqs: range) -> None:
        seen.extend(seqs)
        if "connection.update" in batch:
            updates.append(batch["connection.update"])
        if 3 in seqs:
            sock.ev.destroy()

    async def on_batch_async(batch: dict, seqs: range) -> None:
        on_batch(batch, seqs)

    sock.ev.process(on_batch if kind == "sync" else on_batch_async, with_seqs=True)
    await sock.connect()
    for i in range(10):
        server.publish("t1", "chats.delete", [f"c{i}"])
    async with asyncio.timeout(5):
        await sock.wait_closed()
    assert sock.error is not None
    assert sock.error.status_code == DisconnectReason.connectionClosed
    assert "destroyed" in sock.error.reason
    assert updates[-1]["connection"] == "close"  # listeners still saw the close
    assert seen == list(range(1, sock.last_seq + 1))  # everything received, once
    assert sock.last_seq == sock.received
    assert sock.ev.destroyed and rsocket.live_buffers() == base
    await sock.end()
    assert not rsocket_tasks()


async def test_manager_reconnects_after_its_socket_buffer_is_destroyed(server):
    seen: list[int] = []
    destroyed = False
    manager = ConnectionManager("t1", server.url, "token1", socket_config=FAST,
                                backoff=(0.01,), stable_after=0.1)

    def handler(batch: dict, seqs: range) -> None:
        nonlocal destroyed
        seen.extend(seqs)
        if 5 in seqs and not destroyed:
            destroyed = True
            manager.socket.ev.destroy()

    manager.process(handler, with_seqs=True)
    await manager.start()
    last = server.publish_many("t1", Workload(5).take(40)).stop - 1
    await until(lambda: manager.connected and manager.socket.last_seq == last)
    assert destroyed and manager.reconnects >= 1
    assert seen == list(range(1, last + 1))
    await manager.destroy()
    assert not rsocket_tasks()
