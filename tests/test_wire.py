"""The WebSocket wire under the socket: frames and handshakes a real websockets
server (loopback) sends that the reference server never does."""

from __future__ import annotations

import asyncio
import gc
import shutil
import ssl
import subprocess
import types
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response

from rsocket import BufferConfig, DisconnectError, DisconnectReason
from rsocket.protocol import ServerSession
from rsocket.socket import Socket, SocketConfig
from rsocket.wire import Wire

from .helpers import until

FAST = SocketConfig(keepalive_interval=5, connect_timeout=2, close_timeout=0.2, drain_timeout=1,
                    buffer=BufferConfig(auto_flush=False))
Handler = Callable[[ServerConnection], Awaitable[None]]


async def served(handler: Handler, **kwargs: Any) -> AsyncIterator[str]:
    async with serve(handler, "127.0.0.1", 0, subprotocols=["rsocket.v1.msgpack"],
                     **kwargs) as server:
        port = server.sockets[0].getsockname()[1]
        scheme = "wss" if kwargs.get("ssl") else "ws"
        yield f"{scheme}://127.0.0.1:{port}"


async def opened(ws: ServerConnection, events: int = 0) -> ServerSession:
    """Answer the hello: ready, ``events`` chats.upsert events, offline."""
    session = ServerSession()
    session.receive(await ws.recv())
    await ws.send(session.ready("s1", False, events))
    if events:
        await ws.send(session.batch(1, [("chats.upsert", [{"id": f"c{i}"}]) for i in range(events)]))
    await ws.send(session.offline(events))
    return session


async def test_a_message_split_over_fragments_is_one_frame():
    async def fragments(ws: ServerConnection) -> None:
        session = await opened(ws)
        data = session.batch(1, [("chats.upsert", [{"id": f"c{i}"}]) for i in range(50)])
        third = len(data) // 3
        await ws.send([data[:third], data[third:2 * third], data[2 * third:]])
        await ws.wait_closed()

    async for url in served(fragments):
        sock = Socket(url, "t1", "x", config=FAST)
        got: list[dict[str, Any]] = []
        sock.ev.process(got.append)
        await sock.connect()
        await until(lambda: sock.last_seq == 50)
        assert sum(len(b.get("chats.upsert", [])) for b in got) == 50
        await sock.end()


async def test_a_flood_of_empty_continuation_frames_holds_no_memory(monkeypatch):
    """Fragments count against the frame limit as they arrive: empty ones (which the
    limit cannot see) are not kept, so a flood of them grows nothing."""
    held: list[int] = []
    frame = Wire._frame

    def counting(self: Wire, event: Frame) -> None:
        frame(self, event)
        held.append(len(self._fragments or ()))

    monkeypatch.setattr(Wire, "_frame", counting)

    async def flood(ws: ServerConnection) -> None:
        session = await opened(ws)
        data = session.batch(1, [("chats.upsert", [{"id": "c1"}, {"id": "c2"}])])
        ws.protocol.send_binary(data[:5], fin=False)
        for _ in range(20_000):
            ws.protocol.send_continuation(b"", fin=False)
        ws.protocol.send_continuation(data[5:], fin=True)
        ws.send_data()
        await ws.wait_closed()

    async for url in served(flood):
        sock = Socket(url, "t1", "x", config=FAST)
        await sock.connect()
        await until(lambda: sock.last_seq == 1)
        assert len(held) > 20_000 and max(held) == 1  # the first fragment only
        await sock.end()


@pytest.mark.parametrize("code", [1000, 1001, 1011])
async def test_a_server_that_closes_but_keeps_the_tcp_connection_open_ends_the_socket(code):
    """A close frame, then silence with the TCP connection open: the socket ends (the
    manager can reconnect) instead of staying 'open' forever."""
    done = asyncio.Event()

    async def half_close(ws: ServerConnection) -> None:
        await opened(ws)
        ws.transport.pause_reading()  # never sees the client's answer
        ws.protocol.send_close(code, "bye")
        ws.send_data()
        await done.wait()
        ws.transport.abort()

    async for url in served(half_close):
        sock = Socket(url, "t1", "x", config=FAST)
        await sock.connect()
        await asyncio.wait_for(sock.wait_closed(), 5)
        assert sock.error is not None and sock.error.reason == "connection closed by server"
        assert sock.error.close_code == code
        done.set()


async def test_invalid_utf8_in_a_text_message_closes_with_1007():
    closed_with: list[int | None] = []

    async def bad_text(ws: ServerConnection) -> None:
        await opened(ws)
        ws.protocol.send_frame(Frame(Opcode.TEXT, b"\xff\xfe not utf-8"))
        ws.send_data()
        await ws.wait_closed()
        closed_with.append(ws.close_code)

    async for url in served(bad_text):
        sock = Socket(url, "t1", "x", config=FAST)
        await sock.connect()
        await asyncio.wait_for(sock.wait_closed(), 5)
        await until(lambda: bool(closed_with))
        assert closed_with == [1007]
        assert sock.ev.destroyed


async def test_a_peer_that_never_answers_the_close_is_aborted():
    """The closing handshake is bounded: a peer that stops reading cannot hold end()."""
    done = asyncio.Event()

    async def deaf(ws: ServerConnection) -> None:
        await opened(ws)
        ws.transport.pause_reading()  # the close frame is never read, never answered
        await done.wait()
        ws.transport.abort()

    async for url in served(deaf):
        sock = Socket(url, "t1", "x", config=FAST)
        await sock.connect()
        await asyncio.wait_for(sock.end(), 5)
        assert sock.state == "closed" and sock.ev.destroyed
        wire = sock._wire
        assert wire is not None and wire._gone  # our end of the TCP connection is gone
        done.set()


async def test_extra_headers_reach_the_server_and_a_refused_upgrade_is_an_error():
    seen: list[str | None] = []

    def check(connection: ServerConnection, request: Request) -> Response | None:
        seen.append(request.headers.get("X-Bot"))
        if request.headers.get("X-Bot") != "alice":
            return connection.respond(403, "who are you?\n")
        return None

    async def ok(ws: ServerConnection) -> None:
        await opened(ws)
        await ws.wait_closed()

    async for url in served(ok, process_request=check):
        sock = Socket(url, "t1", "x",
                      config=SocketConfig(connect_timeout=2, headers={"X-Bot": "alice"}))
        await sock.connect()
        assert sock.state == "open"
        await sock.end()

        refused = Socket(url, "t1", "x", config=SocketConfig(connect_timeout=2))
        with pytest.raises(DisconnectError) as info:
            await refused.connect()
        assert info.value.status_code == DisconnectReason.connectionClosed
        assert "403" in str(info.value)
        assert refused.ev.destroyed
    assert seen == ["alice", None]


def reachable(root: object, kind: type, depth: int = 8) -> list[Any]:
    """Objects of ``kind`` reachable from ``root`` (through instances, containers,
    frames and generators; not through modules, types or functions)."""
    seen, found, layer = {id(root)}, [], [root]
    for _ in range(depth):
        nxt = []
        for obj in layer:
            for ref in gc.get_referents(obj):
                if id(ref) in seen or isinstance(ref, (type, types.ModuleType, types.FunctionType)):
                    continue
                seen.add(id(ref))
                if isinstance(ref, kind):
                    found.append(ref)
                nxt.append(ref)
        layer = nxt
    return found


async def test_an_open_wire_keeps_no_handshake_headers():
    """websockets' parser holds the upgrade's response for the connection's life; its
    headers (lists and strs per idle socket) are dropped once the upgrade is done."""
    async def ok(ws: ServerConnection) -> None:
        await opened(ws)
        await ws.wait_closed()

    async for url in served(ok):
        sock = Socket(url, "t1", "x", config=FAST)
        await sock.connect()
        assert sock.state == "open"
        assert [dict(r.headers) for r in reachable(sock._wire, Response)] in ([], [{}])
        await sock.end()


@pytest.mark.parametrize("url", ["http://127.0.0.1:1", "127.0.0.1:8080", "ws//host", ""])
def test_a_url_that_is_not_websocket_fails_at_once(url: str):
    with pytest.raises(ValueError, match="WebSocket URL"):
        Socket(url, "t1", "x")


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert, key


async def test_wss_with_the_applications_tls_context(certificate: tuple[Path, Path]):
    cert, key = certificate
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(cert, key)
    client_tls = ssl.create_default_context(cafile=str(cert))

    async def events(ws: ServerConnection) -> None:
        await opened(ws, events=3)
        await ws.wait_closed()

    async for url in served(events, ssl=server_tls):
        assert url.startswith("wss://")
        sock = Socket(url, "t1", "x", config=SocketConfig(connect_timeout=5, ssl=client_tls))
        await sock.connect()
        await until(lambda: sock.last_seq == 3)
        await sock.end()

        untrusted = Socket(url, "t1", "x", config=SocketConfig(connect_timeout=5))
        with pytest.raises(DisconnectError) as info:  # the system CAs do not know this cert
            await untrusted.connect()
        assert "CERTIFICATE_VERIFY_FAILED" in str(info.value)
