"""The reference server over real loopback WebSockets, with a minimal client."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosedError, InvalidStatus

import rsocket
from rsocket.protocol import (
    JSON,
    MSGPACK,
    Ack,
    Batch,
    BatchItem,
    ClientSession,
    Event,
    Failure,
    Hello,
    Offline,
    Ping,
    Pong,
    Query,
    Ready,
    Result,
    StreamError,
    codec_for,
    validate_event,
)
from rsocket.testing import ReferenceServer

from .helpers import TENANTS, until

# the `server` fixture on the reference server, then the bridge; no_leaks set up first,
# so it checks what the server started too
pytestmark = [pytest.mark.servers(), pytest.mark.usefixtures("no_leaks")]
UPSERT = {
    "messages": [{"key": {"remoteJid": "a@s.whatsapp.net", "id": "1", "fromMe": False}}],
    "type": "notify",
}
WAIT = 5.0  # bound on every wait for something that should happen promptly


class Client:
    """The least a client needs: frames in, frames out, over websockets directly."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.codec = codec_for(ws.subprotocol)

    async def send(self, frame: Any) -> None:
        await self.ws.send(self.codec.encode(frame))

    async def recv(self) -> Any:
        async with asyncio.timeout(WAIT):
            return self.codec.decode_server(await self.ws.recv())

    async def hello(self, tenant: str = "t1", token: str = "token1", **kw: Any) -> Ready:
        await self.send(Hello(tenant, token, **kw))
        ready = await self.recv()
        assert isinstance(ready, Ready), ready
        return ready

    async def backlog(self, received: int = 0) -> list[tuple[int, str, Any]]:
        """Receive event/batch frames up to offline; check its count."""
        events: list[tuple[int, str, Any]] = []
        while True:
            frame = await self.recv()
            if isinstance(frame, Offline):
                assert frame.count == received + len(events)
                return events
            events += seqs(frame)

    async def closed(self) -> tuple[list[Any], int | None]:
        """Frames received until the connection closes, and the close code received."""
        frames = []
        try:
            async with asyncio.timeout(WAIT):
                async for message in self.ws:
                    frames.append(self.codec.decode_server(message))
        except ConnectionClosedError:
            pass
        rcvd = self.ws.protocol.close_rcvd
        return frames, (rcvd.code if rcvd is not None else None)


def seqs(frame: Any) -> list[tuple[int, str, Any]]:
    if isinstance(frame, Event):
        return [(frame.seq, frame.name, frame.data)]
    assert isinstance(frame, Batch), frame
    return [(frame.first + i, e.name, e.data) for i, e in enumerate(frame.events)]


class Connector:
    def __init__(self, url: str) -> None:
        self.url = url

    def __call__(self, subprotocol: str = MSGPACK, **kw: Any) -> _Connect:
        return _Connect(self.url, subprotocol, kw)


class _Connect:
    def __init__(self, url: str, subprotocol: str, kw: dict[str, Any]) -> None:
        self.cm = connect(url, subprotocols=[subprotocol], open_timeout=WAIT, **kw)  # type: ignore[list-item]

    async def __aenter__(self) -> Client:
        return Client(await self.cm.__aenter__())

    async def __aexit__(self, *exc: Any) -> None:
        await self.cm.__aexit__(*exc)


async def make_server(**kw: Any) -> ReferenceServer:
    kw.setdefault("tenants", TENANTS)
    srv = ReferenceServer(**kw)
    await srv.start()
    return srv


@pytest.fixture
def client(server: ReferenceServer) -> Connector:
    return Connector(server.url)


# -- basics ------------------------------------------------------------------------


async def test_defaults_bind_loopback_only() -> None:
    async with ReferenceServer() as srv:
        assert srv.url == f"ws://127.0.0.1:{srv.port}" and srv.port > 0
        assert srv.sockets and {s.getsockname()[0] for s in srv.sockets} == {"127.0.0.1"}
        assert list(srv.stats()) == ["t1"]
        async with Connector(srv.url)() as c:
            await c.hello("t1", "token1")
    assert srv.sockets == ()


async def test_publish_inject_stats_for_unknown_tenant(server: ReferenceServer) -> None:
    with pytest.raises(KeyError):
        server.publish("nobody", "chats.delete", ["a"])
    with pytest.raises(KeyError):
        server.inject("nobody", "drop")
    with pytest.raises(KeyError):
        server.reset("nobody")
    with pytest.raises(ValueError, match="unknown fault"):
        server.inject("t1", "explode")
    # Known tenant, nobody connected: never raises.
    assert server.publish("t1", "chats.delete", ["a"]) == 1
    server.inject("t1", "drop")
    stats = server.stats()["t1"]
    assert {k: stats[k] for k in ("connections", "sent", "acked", "last_seq")} == {
        "connections": 0,
        "sent": 0,
        "acked": 0,
        "last_seq": 1,
    }


@pytest.mark.parametrize("subprotocol", [MSGPACK, JSON])
async def test_replay_then_live(server: ReferenceServer, client: Connector, subprotocol: str) -> None:
    for i in range(150):
        server.publish("t1", "chats.delete", [f"c{i}"])
    async with client(subprotocol) as c:
        ready = await c.hello()
        assert ready == Ready(server.stats()["t1"]["session"], True, 150)
        first = await c.recv()
        assert isinstance(first, Batch) and first.first == 1 and len(first.events) == 100
        rest = await c.backlog(received=100)
        assert [s for s, _, _ in seqs(first) + rest] == list(range(1, 151))
        assert server.publish("t1", "messages.upsert", UPSERT) == 151
        assert await c.recv() == Event(151, "messages.upsert", UPSERT)
        assert server.publish_many("t1", [("chats.delete", ["x"])] * 3) == range(152, 155)
        assert await c.recv() == Batch(152, [BatchItem("chats.delete", ["x"])] * 3)
        await c.send(Ack(154))
        await c.send(Ping(7))
        assert await c.recv() == Pong(7)  # answered after the ack was read
        stats = server.stats()["t1"]
        assert (stats["sent"], stats["acked"], stats["last_seq"]) == (154, 154, 154)
        assert (stats["connections"], stats["connections_total"]) == (1, 1)


async def test_resume_replays_after_the_cursor(server: ReferenceServer, client: Connector) -> None:
    server.publish_many("t1", [("chats.delete", [str(i)]) for i in range(10)])
    session = server.stats()["t1"]["session"]
    async with client() as c:
        assert await c.hello(resume=7, epoch=session) == Ready(session, True, 3)
        assert [s for s, _, _ in await c.backlog()] == [8, 9, 10]
    async with client() as c:
        assert await c.hello(resume=10, epoch=session) == Ready(session, True, 0)
        assert await c.backlog() == []


async def test_resume_with_the_client_session(server: ReferenceServer, client: Connector) -> None:
    # The protocol core and the server agree, frame by frame.
    server.publish_many("t1", [("messages.upsert", UPSERT)] * 5)
    async with client() as c:
        session = ClientSession("t1", "token1", resume=2, epoch=server.stats()["t1"]["session"])
        await c.ws.send(session.hello())
        received: list[Any] = []
        while not session.offline:
            async with asyncio.timeout(WAIT):
                received += session.receive(await c.ws.recv())
        assert session.resumed is True
        seqs = [s for r in received if isinstance(r, Batch)
                for s in range(r.first, r.first + len(r.events))]
        seqs += [r.seq for r in received if isinstance(r, Event)]
        assert sorted(seqs) == [3, 4, 5]
        await c.ws.send(session.ack(session.last_seq))
        await c.ws.send(session.query(1, "echo", {"x": 1}))
        async with asyncio.timeout(WAIT):
            assert session.receive(await c.ws.recv()) == [Result(1, True, {"x": 1})]
        assert server.stats()["t1"]["acked"] == 5


async def test_window_exceeded_answers_not_resumed() -> None:
    async with ReferenceServer(TENANTS, replay_window=10) as srv:
        srv.publish_many("t1", [("chats.delete", [str(i)]) for i in range(30)])
        session = srv.stats()["t1"]["session"]
        async with Connector(srv.url)() as c:
            assert await c.hello(resume=5, epoch=session) == Ready(session, False, 10)
            assert [s for s, _, _ in await c.backlog()] == list(range(21, 31))
        async with Connector(srv.url)() as c:  # resume 0: everything retained, no gap
            assert await c.hello(resume=0) == Ready(session, True, 10)
            assert [s for s, _, _ in await c.backlog()] == list(range(21, 31))
        async with Connector(srv.url)() as c:  # the window still holds resume + 1
            assert await c.hello(resume=20, epoch=session) == Ready(session, True, 10)


async def test_epoch_mismatch_is_a_gap(server: ReferenceServer, client: Connector) -> None:
    server.publish_many("t1", [("chats.delete", ["a"])] * 4)
    old = server.stats()["t1"]["session"]
    server.reset("t1")  # as after a server restart
    new = server.stats()["t1"]["session"]
    assert new != old and server.stats()["t1"]["last_seq"] == 0
    server.publish_many("t1", [("chats.delete", ["b"])] * 2)
    async with client() as c:
        assert await c.hello(resume=4, epoch=old) == Ready(new, False, 2)
        assert [s for s, _, _ in await c.backlog()] == [1, 2]


async def test_resume_above_last_seq_is_a_protocol_error(
    server: ReferenceServer, client: Connector
) -> None:
    server.publish("t1", "chats.delete", ["a"])
    async with client() as c:
        await c.send(Hello("t1", "token1", 5, server.stats()["t1"]["session"]))
        frames, code = await c.closed()
    assert code == 1002
    assert len(frames) == 1 and isinstance(frames[0], Failure) and frames[0].code == 500
    assert "`resume` is 5, above the last seq 1" in frames[0].reason


async def test_queries(server: ReferenceServer, client: Connector) -> None:
    async with client() as c:
        await c.hello()
        await c.backlog()
        await c.send(Query(1, "echo", [1, "two"]))
        assert await c.recv() == Result(1, True, [1, "two"])
        await c.send(Query(2, "send_message", {"jid": "a@s.whatsapp.net", "text": "hi"}))
        event = await c.recv()  # the message lands in the tenant's own log first
        assert isinstance(event, Event) and event.seq == 1 and event.name == "messages.upsert"
        assert event.data["messages"][0]["message"] == {"conversation": "hi"}
        result = await c.recv()
        assert result.id == 2 and result.ok and result.data["seq"] == 1
        assert result.data["key"] == event.data["messages"][0]["key"]
        await c.send(Query(3, "send_message", {"jid": 1}))
        assert (await c.recv()).ok is False
        await c.send(Query(4, "reboot"))
        assert await c.recv() == Result(4, False, error="unknown method 'reboot'")


# -- refusals and limits -------------------------------------------------------------------


@pytest.mark.parametrize(("tenant", "token"), [("t1", "token2"), ("t1", ""), ("t9", "token1")])
async def test_bad_token(server: ReferenceServer, client: Connector, tenant: str, token: str) -> None:
    async with client() as c:
        await c.send(Hello(tenant, token))
        frames, code = await c.closed()
    assert frames == [Failure(401, "bad token")] and code == 1008
    assert server.stats()["t1"]["connections_total"] == 0


@pytest.mark.parametrize(
    ("first", "code", "match"),
    [
        (Ack(0), 1002, "first frame must be `hello`, got `ack`"),
        (Event(1, "chats.delete", []), 1003, "not a client op"),
        ({"op": "launch"}, 1003, "op 'launch' is unknown"),
        ({"op": "hello", "tenant": 1}, 1007, "invalid `hello` frame"),
    ],
)
async def test_bad_first_frame(
    server: ReferenceServer, client: Connector, first: Any, code: int, match: str
) -> None:
    async with client() as c:
        if isinstance(first, dict):
            import msgspec

            await c.ws.send(msgspec.msgpack.encode(first))
        else:
            await c.send(first)
        frames, got = await c.closed()
    assert got == code
    assert len(frames) == 1 and frames[0].code == 500 and match in frames[0].reason


@pytest.mark.parametrize(
    ("frame", "code", "match"),
    [
        (Hello("t1", "token1"), 1002, "second `hello`"),
        (Ack(1), 1002, "above the last sent seq 0"),
        (Pong(1), 1003, "not a client op"),
    ],
)
async def test_violation_after_ready(
    server: ReferenceServer, client: Connector, frame: Any, code: int, match: str
) -> None:
    async with client() as c:
        await c.hello()
        await c.backlog()
        await c.send(frame)
        frames, got = await c.closed()
    assert got == code
    assert len(frames) == 1 and isinstance(frames[0], Failure) and match in frames[0].reason
    await until(lambda: server.stats()["t1"]["connections"] == 0)


async def test_oversized_message_is_1009() -> None:
    async with ReferenceServer(TENANTS, max_size=1000) as srv, Connector(srv.url)() as c:
        await c.hello()
        await c.backlog()
        await c.send(Query(1, "echo", "x" * 1000))
        _, code = await c.closed()
    assert code == 1009


async def test_no_hello_is_1008() -> None:
    async with ReferenceServer(TENANTS, hello_timeout=0.2) as srv, Connector(srv.url)() as c:
        frames, code = await c.closed()
    assert frames == [] and code == 1008


async def test_unknown_subprotocol_is_refused(server: ReferenceServer) -> None:
    with pytest.raises(InvalidStatus):
        async with connect(server.url, subprotocols=["rsocket.v9"], open_timeout=WAIT):  # type: ignore[list-item]
            pass


async def test_no_subprotocol_means_msgpack(server: ReferenceServer) -> None:
    async with connect(server.url, open_timeout=WAIT) as ws:
        await ws.send(codec_for(MSGPACK).encode(Hello("t1", "token1")))
        async with asyncio.timeout(WAIT):
            assert isinstance(codec_for(MSGPACK).decode_server(await ws.recv()), Ready)


# -- faults ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "kw", "expected"),
    [
        ("stream_error", {"code": 503}, StreamError(503, "injected")),
        ("stream_error", {"code": 515, "reason": "restart"}, StreamError(515, "restart")),
        ("failure", {"code": 403, "reason": "forbidden"}, Failure(403, "forbidden")),
    ],
)
async def test_queued_fault_applies_right_after_offline(
    server: ReferenceServer, client: Connector, fault: str, kw: dict[str, Any], expected: Any
) -> None:
    server.publish("t1", "chats.delete", ["a"])
    server.inject("t1", fault, **kw)
    server.inject("t1", "stream_error", code=500, reason="second")  # for the next connection
    async with client() as c:
        await c.hello()
        assert len(await c.backlog()) == 1
        server.publish("t1", "chats.delete", ["b"])  # never sent: the fault came first
        frames, code = await c.closed()
    assert frames == [expected] and code == 1000
    async with client() as c:
        await c.hello(resume=1, epoch=server.stats()["t1"]["session"])
        assert [s for s, _, _ in await c.backlog()] == [2]
        frames, code = await c.closed()
    assert frames == [StreamError(500, "second")] and code == 1000
    async with client() as c:  # nothing queued any more
        await c.hello()
        await c.backlog()
        await c.send(Ping(1))
        assert await c.recv() == Pong(1)


async def test_fault_while_live_applies_at_once(server: ReferenceServer, client: Connector) -> None:
    async with client() as c:
        await c.hello()
        await c.backlog()
        server.inject("t1", "stream_error", code=428, reason="bye")
        frames, code = await c.closed()
    assert frames == [StreamError(428, "bye")] and code == 1000


async def test_drop_aborts_without_close_frame(server: ReferenceServer, client: Connector) -> None:
    async with client() as c:
        await c.hello()
        await c.backlog()
        server.inject("t1", "drop")
        with pytest.raises(ConnectionClosedError) as info:
            async with asyncio.timeout(WAIT):
                await c.ws.recv()
        assert info.value.rcvd is None  # no close frame: an abrupt TCP drop
    await until(lambda: server.stats()["t1"]["connections"] == 0)


async def test_stall_stops_every_frame(server: ReferenceServer, client: Connector) -> None:
    async with client() as c:
        await c.hello()
        await c.backlog()
        server.inject("t1", "stall")
        server.publish("t1", "chats.delete", ["a"])
        await c.send(Ping(1))
        await c.send(Query(2, "echo", 1))
        # Waiting for something that must not come: bounded by a short timeout.
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await c.ws.recv()
        assert server.stats()["t1"]["connections"] == 1
    # The stall ended with its connection: the next one is served (and replays).
    async with client() as c:
        await c.hello()
        assert [s for s, _, _ in await c.backlog()] == [1]


async def test_stall_queued_before_connect(server: ReferenceServer, client: Connector) -> None:
    server.inject("t1", "stall")
    async with client() as c:
        await c.hello()
        assert await c.recv() == Offline(0)
        await c.send(Ping(1))
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await c.ws.recv()


async def test_replacement_closes_the_old_connection(
    server: ReferenceServer, client: Connector
) -> None:
    async with client() as old:
        await old.hello()
        await old.backlog()
        async with client() as new:
            await new.hello()
            frames, code = await old.closed()
            assert frames == [StreamError(440, "replaced")] and code == 1000
            await new.backlog()
            server.publish("t1", "chats.delete", ["a"])
            assert await new.recv() == Event(1, "chats.delete", ["a"])
            stats = server.stats()["t1"]
            assert (stats["replaced"], stats["connections"], stats["connections_total"]) == (
                1,
                1,
                2,
            )
            # Two connections were open at once: exactly what a double owner looks like.
            assert stats["max_concurrent"] == 2


async def test_reconnect_after_close_keeps_one_connection(
    server: ReferenceServer, client: Connector
) -> None:
    for _ in range(3):
        async with client() as c:
            await c.hello()
            await c.backlog()
    stats = server.stats()["t1"]
    assert (stats["max_concurrent"], stats["replaced"], stats["connections_total"]) == (1, 0, 3)


async def test_slow_consumer_is_disconnected() -> None:
    async with ReferenceServer(TENANTS, max_outbound=20, write_limit=4096) as srv:
        # max_queue=1: the client's own buffer stops reading the socket at once;
        # no compression, or the kernel's buffers take forever to fill.
        async with Connector(srv.url)(max_queue=1, compression=None) as c:
            await c.hello()
            await c.backlog()
            blob = {"blob": "x" * 65536}
            async with asyncio.timeout(WAIT * 2):
                while not srv.stats()["t1"]["slow_consumers"]:
                    srv.publish("t1", "test.blob", blob)
                    await asyncio.sleep(0)  # a producer yielding, not a wait
            frames, code = await c.closed()  # now read what was sent
        assert frames[-1] == StreamError(503, "slow consumer") and code == 1000
        assert all(isinstance(f, Event) for f in frames[:-1])
        await until(lambda: srv.stats()["t1"]["connections"] == 0)


async def test_a_burst_is_not_a_slow_consumer() -> None:
    async with ReferenceServer(TENANTS, max_outbound=10) as srv:
        async with Connector(srv.url)() as c:
            await c.hello()
            await c.backlog()
            srv.publish_many("t1", [("chats.delete", ["a"])] * 2000)
            got = 0
            while got < 2000:
                got += len(seqs(await c.recv()))
        assert srv.stats()["t1"]["slow_consumers"] == 0


# -- traffic, shutdown, command line ----------------------------------------------------------


async def test_traffic_generator_sends_the_standard_mix(
    server: ReferenceServer, client: Connector
) -> None:
    async with client() as c:
        session = ClientSession("t1", "token1")
        await c.ws.send(session.hello())
        server.start_traffic(2000, ["t1"])
        items = []
        async with asyncio.timeout(WAIT):
            while len(items) < 200:
                for r in session.receive(await c.ws.recv()):
                    if isinstance(r, Batch):
                        items += r.events
                    elif isinstance(r, Event):
                        items.append(r)
        server.stop_traffic()
    assert all(validate_event(i.name, i.data) is None for i in items)
    assert {i.name for i in items} >= {"messages.upsert", "messages.update"}
    with pytest.raises(KeyError):
        server.start_traffic(1, ["nobody"])
    with pytest.raises(ValueError, match="rate"):
        server.start_traffic(0)


async def test_traffic_is_one_task_per_call_and_a_restart_moves_only_its_tenants() -> None:
    names = [f"t{i}" for i in range(300)]
    async with ReferenceServer({n: "x" for n in names}) as srv:
        srv.start_traffic(50, names)
        assert len(set(srv._traffic.tasks.values())) == 1  # one task for 300 tenants
        first = srv._traffic.tasks["t0"]
        srv.start_traffic(50, ["t0"])  # restarted: t0 moves to a new generator...
        assert srv._traffic.tasks["t0"] is not first and srv._traffic.tasks["t1"] is first
        assert not first.done()  # ...the others keep theirs
        await until(lambda: all(srv.stats()[n]["last_seq"] > 0 for n in names), WAIT,
                    "traffic for every tenant")
        generators = set(srv._traffic.tasks.values())
        srv.stop_traffic()
        await asyncio.sleep(0)
        # every generator has ended: nothing is left that could publish
        assert all(g.done() for g in generators) and first in generators
        assert not srv._traffic.tasks


async def test_close_ends_connections_and_traffic() -> None:
    srv = await make_server()
    srv.start_traffic(100)
    async with Connector(srv.url)() as c:
        await c.hello()
        srv.inject("t2", "stall")
        await srv.close()
        _, code = await c.closed()
    assert code == 1001
    await srv.close()  # idempotent


async def test_server_is_not_imported_by_the_package() -> None:
    code = "import rsocket, sys; assert 'rsocket.testing' not in sys.modules"
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", code, env=_env())
    async with asyncio.timeout(30):
        assert await proc.wait() == 0


def _env() -> dict[str, str]:
    src = str(Path(rsocket.__file__).resolve().parents[1])
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": src if not path else f"{src}{os.pathsep}{path}"}


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
async def test_command_line_serves_and_stops_on_sigterm() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "rsocket", "serve", "--port", "0", "--tenants", "2", "--rate", "50",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=_env(),
    )  # fmt: skip
    try:
        async with asyncio.timeout(30):
            banner = (await proc.stdout.readline()).decode()  # type: ignore[union-attr]
            assert "listening on ws://127.0.0.1:" in banner, banner
            url = banner.split()[-1]
            tokens = {}
            for _ in range(2):
                _, tenant, _, token = (await proc.stdout.readline()).decode().split()  # type: ignore[union-attr]
                tokens[tenant] = token
            assert set(tokens) == {"t1", "t2"}
            async with Connector(url)() as c:
                await c.hello("t2", tokens["t2"])
                assert isinstance(await c.recv(), Batch | Event | Offline)
                proc.send_signal(signal.SIGTERM)
                _, code = await c.closed()
                assert code == 1001
            _, err = await proc.communicate()
            assert proc.returncode == 0, err.decode()
            assert b"Traceback" not in err
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_client_vanishing_mid_backlog(server: ReferenceServer, client: Connector) -> None:
    server.publish_many("t1", [("chats.delete", ["a"])] * 5000)
    async with client() as c:
        await c.hello()
        c.ws.transport.abort()
    await until(lambda: server.stats()["t1"]["connections"] == 0)
    # Nothing is left behind: checked by no_leaks.


def test_both_test_servers_satisfy_the_server_protocol():
    from rsocket.testing import BridgeServer, Server

    assert isinstance(ReferenceServer(), Server) and isinstance(BridgeServer(), Server)
