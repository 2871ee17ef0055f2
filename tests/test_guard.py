"""Token guessing and connection floods: the HelloGuard alone, then in the reference server."""

from __future__ import annotations

import asyncio

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from rsocket import DisconnectError, Socket, SocketConfig
from rsocket.guard import GuardConfig, HelloGuard, raise_open_files_limit
from rsocket.testing import ReferenceServer

from .helpers import until

QUICK = SocketConfig(connect_timeout=2, close_timeout=1, keepalive_interval=5)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_failures_from_one_address_lock_it_out_for_a_while():
    clock = Clock()
    guard = HelloGuard(GuardConfig(max_failures=3, window=10, lockout=30), clock)
    for _ in range(2):
        guard.failed("10.0.0.1", "t1")
    assert guard.locked("10.0.0.1") == 0.0
    guard.failed("10.0.0.1", "t1")
    assert guard.locked("10.0.0.1") == 30.0 and guard.locked("10.0.0.2") == 0.0
    clock.now += 31
    assert guard.locked("10.0.0.1") == 0.0


def test_a_tenant_under_guessing_slows_every_hello_down_and_old_failures_expire():
    clock = Clock()
    guard = HelloGuard(GuardConfig(max_failures=3, window=10, slow_down=2.0), clock)
    for address in ("a", "b", "c"):  # three addresses, one failure each
        guard.failed(address, "t1")
    assert guard.delay("t1") == 2.0 and guard.delay("t2") == 0.0
    assert not any(guard.locked(a) for a in "abc")  # no address is over its own limit
    clock.now += 11
    assert guard.delay("t1") == 0.0


def test_unknown_tenant_names_do_not_grow_the_table():
    guard = HelloGuard(GuardConfig(max_failures=1000))
    for _ in range(100):
        guard.failed("a", "")
    assert set(guard._failures) == {"a:a"}


def test_unauthenticated_connections_are_capped_per_address_and_in_total():
    guard = HelloGuard(GuardConfig(per_address=2, total=3))
    assert guard.admit("a") is None and guard.admit("a") is None
    assert "from a" in guard.admit("a")
    assert guard.admit("b") is None
    assert guard.admit("c") == "too many unauthenticated connections"
    guard.settled("a")
    assert guard.admit("c") is None
    assert guard.counters["flood_refused"] == 2


def test_the_open_files_limit_is_raised_to_the_hard_limit():
    resource = pytest.importorskip("resource")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 256), hard))
    try:
        assert raise_open_files_limit() == resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= 256
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# -- in both servers, on loopback ------------------------------------------------------------


async def hello_fails(url: str, tenant: str, token: str) -> DisconnectError:
    sock = Socket(url, tenant, token, config=QUICK)
    with pytest.raises(DisconnectError) as info:
        await sock.connect()
    return info.value


async def connects(url: str, tenant: str, token: str) -> bool:
    sock = Socket(url, tenant, token, config=QUICK)
    try:
        await sock.connect()
    except DisconnectError:
        return False
    await sock.end()
    return True


@pytest.mark.servers()
@pytest.mark.server_options(guard=GuardConfig(max_failures=3, failure_delay=0.01, lockout=0.5,
                                              window=5, slow_down=0.2))
async def test_token_guessing_is_slowed_then_refused_and_the_address_recovers(server):
    for _ in range(3):
        assert (await hello_fails(server.url, "t1", "wrong")).status_code == 401
    refused = await hello_fails(server.url, "t1", "token1")  # locked out: even the right one
    assert refused.status_code == 429 and "failed hellos" in refused.reason
    # once the lockout ends its owner gets in (slowed down while t1 is being guessed)
    await until(lambda: connects(server.url, "t1", "token1"), 5.0, "the lockout to end")
    if isinstance(server, ReferenceServer):
        assert server.guard.counters["failed_hellos"] == 3
        assert server.guard.counters["slowed"] >= 1


@pytest.mark.servers()
@pytest.mark.server_options(guard=GuardConfig(per_address=5, total=5))
async def test_a_flood_of_idle_connections_is_capped_and_tenants_keep_being_served(server):
    bot = Socket(server.url, "t1", "token1", config=QUICK)
    got: list[int] = []
    bot.ev.process(lambda batch, seqs: got.extend(seqs), with_seqs=True)
    await bot.connect()
    idle = [await connect(server.url, subprotocols=["rsocket.v1.msgpack"]) for _ in range(5)]
    try:
        extra = await connect(server.url, subprotocols=["rsocket.v1.msgpack"])
        with pytest.raises(ConnectionClosed) as info:
            await asyncio.wait_for(extra.recv(), 5)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1013
        server.publish("t1", "chats.upsert", [{"id": "during the flood"}])
        await until(lambda: got == [1], 5.0, "the tenant's event")
    finally:
        for ws in idle:
            await ws.close()
    await bot.end()
    await until(lambda: connects(server.url, "t1", "token1"), 5.0, "the flood gone")
