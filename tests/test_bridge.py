"""The Baileys bridge (bridge/, Node) as the server: what only it does.

Events enter through Baileys' own event emitter (``makeEventBuffer`` of the npm
package) of a test socket; the Python side is the unchanged ``Socket``/``TenantPool``.
The protocol and socket suites also run against it (``tests/test_reference.py``,
``tests/test_socket.py``, the ``bridge`` parameter of their server fixture).
"""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from collections import defaultdict
from itertools import islice
from pathlib import Path
from typing import Any

import pytest

from rsocket import DisconnectError, Socket, SocketConfig, TenantPool
from rsocket.protocol import validate_event
from rsocket.testing import Workload
from rsocket.testing.bridge import BridgeServer

from .helpers import FAST, TENANTS, server_of, until

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.servers("bridge")
WAIT = 10.0


@pytest.fixture
def bridge(server: BridgeServer) -> BridgeServer:
    """conftest's ``server``, on the bridge only (``servers("bridge")`` below)."""
    return server


class Batches:
    """What a socket's application handler got."""

    def __init__(self) -> None:
        self.batches: list[dict[str, Any]] = []
        self.seqs: list[int] = []

    def __call__(self, batch: dict[str, Any], seqs: range) -> None:
        self.batches.append(batch)
        self.seqs.extend(seqs)

    def events(self, name: str) -> list[Any]:
        return [batch[name] for batch in self.batches if name in batch]


async def open_socket(srv: BridgeServer, tenant: str = "t1") -> tuple[Socket, Batches]:
    sock = Socket(srv.url, tenant, TENANTS[tenant])
    got = Batches()
    sock.ev.process(got, with_seqs=True)
    await sock.connect()
    return sock, got


# -- payloads as Baileys produces them ----------------------------------------------------


async def test_long_buffer_and_undefined_arrive_as_int_bytes_and_absent(bridge: BridgeServer):
    message = {
        "key": {"remoteJid": "1555@s.whatsapp.net", "fromMe": False, "id": "ABC"},
        "messageTimestamp": {"$long": "1700000123"},  # a protobuf Long
        "messageStubParameters": [{"$undefined": 1}],
        "reactions": [{"senderTimestampMs": {"$long": "1712345678901"}}],  # past 32 bits
        "message": {"imageMessage": {"fileSha256": {"$bytes": "AAEC/w=="},  # a Buffer
                                     "fileLength": {"$long": "9007199254740993"},  # > 2**53
                                     "caption": {"$undefined": 1}}},
        "pushName": {"$undefined": 1},
    }
    seq = bridge.publish("t1", "messages.upsert", {"messages": [message], "type": "notify"})
    sock, got = await open_socket(bridge)
    try:
        await until(lambda: sock.last_seq >= seq, WAIT)
    finally:
        await sock.end()
    (upsert,) = got.events("messages.upsert")
    received = upsert["messages"][0]
    assert received["messageTimestamp"] == 1700000123
    ms = received["reactions"][0]["senderTimestampMs"]
    assert ms == 1712345678901 and type(ms) is int  # a 64-bit integer, not a float
    assert received["messageStubParameters"] == [None]  # undefined in an array: null
    image = received["message"]["imageMessage"]
    assert image["fileSha256"] == b"\x00\x01\x02\xff"
    assert image["fileLength"] == 9007199254740993  # exact: a 64-bit integer, not a float
    assert "caption" not in image and "pushName" not in received
    assert validate_event("messages.upsert", upsert) is None
    # the log holds the converted payload: a replay is the same
    assert bridge.retained("t1")[0][1]["messages"][0]["message"]["imageMessage"]["fileSha256"] \
        == b"\x00\x01\x02\xff"


async def test_creds_update_never_leaves_the_bridge(bridge: BridgeServer):
    seqs = bridge.publish_many("t1", [("creds.update", {"noiseKey": {"private": {"$bytes": "AQ=="}}}),
                                      ("chats.delete", ["c1"])])
    assert list(seqs) == [1]  # only chats.delete got a seq
    assert [name for name, _ in bridge.retained("t1")] == ["chats.delete"]
    with pytest.raises(ValueError, match=r"appended no event for 'creds\.update'"):
        bridge.publish("t1", "creds.update", {})


async def test_baileys_consolidation_reaches_the_client_as_it_releases(bridge: BridgeServer):
    """Events emitted while Baileys buffers come out of its emitter consolidated, as one
    map: the bridge appends what Baileys released, in its order."""
    key = {"remoteJid": "1555@s.whatsapp.net", "fromMe": False, "id": "M1"}
    events = [
        ("messages.upsert", {"messages": [{"key": key, "message": {"conversation": "hi"},
                                           "messageTimestamp": 1700000000}], "type": "notify"}),
        ("messages.update", [{"key": key, "update": {"status": 4}}]),
        ("chats.update", [{"id": "1555@s.whatsapp.net", "unreadCount": 1}]),
    ]
    seqs = bridge.publish_many("t1", events, buffered=True)
    retained = bridge.retained("t1")
    names = [name for name, _ in retained]
    # the update was merged into the pending upsert by Baileys: no messages.update
    assert "messages.update" not in names and "messages.upsert" in names
    assert len(seqs) == len(retained) < len(events) + 1
    upsert = dict(retained)["messages.upsert"]
    assert upsert["messages"][0]["status"] == 4


# -- queries ----------------------------------------------------------------------------


async def test_send_message_calls_baileys_and_returns_the_key_and_seq(bridge: BridgeServer):
    sock, got = await open_socket(bridge)
    try:
        result = await sock.query("send_message", {"jid": "1555@s.whatsapp.net", "text": "pong"},
                                  timeout=WAIT)
        await until(lambda: sock.last_seq >= result["seq"], WAIT)
        with pytest.raises(Exception, match="unknown method 'nope'"):
            await sock.query("nope", {}, timeout=WAIT)
        with pytest.raises(Exception, match=r"send_message expects params \{jid: str, text: str\}"):
            await sock.query("send_message", {"jid": 5}, timeout=WAIT)
    finally:
        await sock.end()
    assert bridge.sent("t1") == [{"jid": "1555@s.whatsapp.net", "content": {"text": "pong"}}]
    key = result["key"]
    assert key["remoteJid"] == "1555@s.whatsapp.net" and key["fromMe"] is True and key["id"]
    (upsert,) = got.events("messages.upsert")
    assert upsert["type"] == "append" and upsert["messages"][0]["key"] == key


async def test_the_reply_bot_example_runs_unchanged_on_the_bridge(tmp_path: Path):
    async with server_of("bridge", tenants={"t1": "secret"}, ping_interval=None) as srv:
        message = {"key": {"remoteJid": "5511900000001@s.whatsapp.net", "id": "ABC",
                           "fromMe": False},
                   "message": {"conversation": "hello"}, "messageTimestamp": {"$long": "1"}}
        srv.publish("t1", "messages.upsert", {"messages": [message], "type": "notify"})
        bot = await asyncio.create_subprocess_exec(
            sys.executable, str(ROOT / "examples" / "reply_bot.py"), "--url", srv.url,
            "--seconds", "1.5", stdout=asyncio.subprocess.PIPE)
        out, _ = await asyncio.wait_for(bot.communicate(), 60)
        assert bot.returncode == 0
        assert "t1: replied to 5511900000001@s.whatsapp.net" in out.decode()
        # through Baileys' sendMessage, and its upsert came back into the log
        assert srv.sent("t1") == [{"jid": "5511900000001@s.whatsapp.net",
                                   "content": {"text": "you said: hello"}}]
        assert any(name == "messages.upsert" and data["messages"][0]["key"]["fromMe"]
                   for name, data in srv.retained("t1"))


# -- Baileys' connection state ------------------------------------------------------------


async def test_logout_ends_the_tenant_with_401_and_refuses_it_until_attached_again(
    bridge: BridgeServer,
):
    pool = TenantPool(backoff=(0.05,))
    states: list[tuple[str, str, int | None]] = []
    pool.on_state(lambda tenant, state, code: states.append((tenant, state, code)))
    updates: list[dict[str, Any]] = []
    pool.process(lambda tenant, batch: updates.append(batch.get("connection.update", {})))
    try:
        bridge.publish("t1", "chats.delete", ["c1"])
        await pool.add("t1", bridge.url, "token1")
        await until(lambda: pool.status()["t1"]["last_seq"] == 1, WAIT)
        bridge.logout("t1")
        await until(lambda: pool.status()["t1"]["state"] == "logged_out", WAIT)
    finally:
        await pool.close()
    # the upstream close came first (its lastDisconnect converted), then the 401
    upstream = [u for u in updates if u.get("upstream") and u.get("connection") == "close"]
    assert upstream and upstream[0]["lastDisconnect"]["error"]["statusCode"] == 401
    assert ("t1", "logged_out", 401) in states
    assert bridge.stats()["t1"]["logged_out"] and not bridge.stats()["t1"]["attached"]
    # a new hello is refused with 401 until a socket is attached again (a new login)
    with pytest.raises(DisconnectError) as refused:
        await Socket(bridge.url, "t1", "token1").connect()
    assert refused.value.status_code == 401
    bridge.attach("t1")
    sock, _ = await open_socket(bridge)
    await sock.end()


async def test_one_connection_per_tenant_the_older_gets_440(bridge: BridgeServer):
    first, _ = await open_socket(bridge)
    ended = asyncio.get_running_loop().create_future()
    first.on_state(lambda sock, state, error: state == "closed" and not ended.done()
                   and ended.set_result(error))
    second, _ = await open_socket(bridge)
    try:
        error = await asyncio.wait_for(ended, WAIT)
        assert isinstance(error, DisconnectError) and error.status_code == 440
        stats = bridge.stats()["t1"]
        assert stats["replaced"] == 1 and stats["connections_total"] == 2
        assert second.state == "open"
    finally:
        await second.end()


# -- 20,000 events through Baileys, drops and a bot restart ---------------------------------


async def _bot_lines(bot: asyncio.subprocess.Process, seqs: dict[str, list[int]]) -> None:
    assert bot.stdout is not None
    while line := (await bot.stdout.readline()).decode():
        if m := re.match(r"(t\d): seqs (\d+)\.\.(\d+)", line):
            seqs[m[1]].extend(range(int(m[2]), int(m[3]) + 1))


async def test_20000_events_through_baileys_drops_and_a_bot_restart_each_seq_once_in_order(
    tmp_path: Path,
):
    tenants = {"t1": "secret", "t2": "secret"}  # pool_bot.py takes one token for all
    per_tenant = 10_000
    seqs: dict[str, list[int]] = defaultdict(list)
    args = [str(ROOT / "examples" / "pool_bot.py"), "--tenants", "t1,t2",
            "--cursors", str(tmp_path / "cursors.json")]

    async def start_bot(url: str) -> tuple[asyncio.subprocess.Process, asyncio.Task[None]]:
        bot = await asyncio.create_subprocess_exec(sys.executable, *args, "--url", url,
                                                   stdout=asyncio.subprocess.PIPE)
        return bot, asyncio.create_task(_bot_lines(bot, seqs))

    async def stop_bot(bot: asyncio.subprocess.Process, reader: asyncio.Task[None]) -> None:
        bot.send_signal(signal.SIGTERM)  # graceful: last batches delivered, cursors saved
        assert await asyncio.wait_for(bot.wait(), 30) == 0
        await asyncio.wait_for(reader, 30)

    async with server_of("bridge", tenants=tenants, ping_interval=None) as srv:
        workloads = {tenant: Workload(seed) for seed, tenant in enumerate(tenants, 1)}
        bot, reader = await start_bot(srv.url)
        try:
            for step in range(40):  # 250 events per tenant a step, through Baileys' ev.emit
                for tenant, workload in workloads.items():
                    srv.publish_many(tenant, islice(workload, 250))
                if step in (5, 15, 30):
                    for tenant in tenants:  # TCP drops of the bot's connections
                        srv.inject(tenant, "drop")
                if step == 20:  # the bot restarts while events keep coming
                    await stop_bot(bot, reader)
                    bot, reader = await start_bot(srv.url)
                await asyncio.sleep(0.05)
            async with asyncio.timeout(60):
                while any(len(seqs[t]) < per_tenant for t in tenants):
                    await asyncio.sleep(0.05)
        finally:
            await stop_bot(bot, reader)
        stats = srv.stats()
    for tenant in tenants:
        assert seqs[tenant] == list(range(1, per_tenant + 1)), tenant  # once each, in order
        assert stats[tenant]["last_seq"] == per_tenant
        assert stats[tenant]["max_concurrent"] == 1
        assert stats[tenant]["connections_total"] >= 3  # the drops and the restart reconnected


# -- real payloads: Baileys' own protobuf classes, real sizes ------------------------------


@pytest.mark.parametrize("subprotocol", ["rsocket.v1.msgpack", "rsocket.v1.json"])
async def test_real_payloads_reach_a_pool_bot_whole_once_and_without_a_reconnect(bridge, subprotocol):
    """A first login's history sync (5 MB), 100 offline images with 15 KB thumbnails and
    Baileys 7 LID keys, built with WAProto and decoded as Baileys hands them out (keys with
    fromMe only on the prototype, Long timestamps, Buffers), reach a TenantPool bot whole,
    exactly once, with no reconnect."""
    config = SocketConfig(subprotocol=subprotocol, max_frame=1 << 20)  # a small frame limit
    seen: dict[str, int] = defaultdict(int)
    keys: list[dict[str, Any]] = []
    thumbnails: list[Any] = []

    def on_batch(tenant: str, batch: dict[str, Any]) -> None:
        messages = [*batch.get("messaging-history.set", {}).get("messages", []),
                    *batch.get("messages.upsert", {}).get("messages", [])]
        for message in messages:
            seen[message["key"]["id"]] += 1
            keys.append(message["key"])
            image = (message.get("message") or {}).get("imageMessage")
            if image:
                thumbnails.append(image["jpegThumbnail"])

    async with TenantPool(socket_config=config) as pool:
        pool.process(on_batch)
        await pool.add("t1", bridge.url, TENANTS["t1"])
        await until(lambda: pool.status()["t1"]["connected"], WAIT)
        expected: list[str] = []
        last = 0
        for kind in ("history", "images", "lid"):
            seqs, ids = bridge.whatsapp("t1", kind)
            expected += ids
            last = seqs[-1]
        await until(lambda: (pool.status()["t1"]["last_seq"] or 0) >= last, 60, "every part processed")
        assert pool.status()["t1"]["reconnects"] == 0
    assert len(expected) == 11_200 and set(seen) == set(expected)
    assert all(count == 1 for count in seen.values())
    assert all(isinstance(key["fromMe"], bool) and key["fromMe"] is False for key in keys)
    lid = [key for key in keys if key["remoteJid"].endswith("@lid")]
    assert len(lid) == 100 and all(key["remoteJidAlt"].endswith("@s.whatsapp.net") for key in lid)
    assert len(thumbnails) == 100
    if subprotocol == "rsocket.v1.msgpack":
        assert all(isinstance(t, bytes) and len(t) == 15_000 for t in thumbnails)
    stats = bridge.stats()["t1"]
    assert stats["connections_total"] == 1 and stats["max_concurrent"] == 1


async def test_a_bridge_killed_under_traffic_and_restarted_loses_nothing(tmp_path):
    """SIGKILL of the bridge mid-traffic, then a new bridge on the same log folder and
    port: the bot resumes (resumed: true), and every seq arrives, none twice."""
    got: dict[int, int] = defaultdict(int)
    opens: list[dict[str, Any]] = []

    def on_batch(tenant: str, batch: dict[str, Any], seqs: range) -> None:
        for seq in seqs:
            got[seq] += 1
        update = batch.get("connection.update")
        if update and update.get("connection") == "open" and "upstream" not in update:
            opens.append(update)

    first = server_of("bridge", tenants=TENANTS, ping_interval=None, log_dir=tmp_path)
    await first.start()
    async with TenantPool(**FAST) as pool:
        pool.process(on_batch, with_seqs=True)
        await pool.add("t1", first.url, TENANTS["t1"])
        workload = Workload(3)
        published = first.publish_many("t1", islice(workload, 2000))
        await until(lambda: len(got) >= 500, WAIT, "some events processed")
        assert first._process is not None
        first._process.send_signal(signal.SIGKILL)  # under traffic: nothing flushed on purpose
        first._kill()
        second = server_of("bridge", tenants=TENANTS, ping_interval=None, log_dir=tmp_path,
                           port=first.port)
        async with second:
            assert second.stats()["t1"]["last_seq"] == published[-1]  # the log survived
            more = second.publish_many("t1", islice(workload, 1000))
            await until(lambda: len(got) == more[-1], 30, "every seq processed")
    assert sorted(got) == list(range(1, more[-1] + 1))
    assert set(got.values()) == {1}  # none twice
    assert len(opens) == 2 and opens[1]["resumed"] is True and opens[1]["gap"] is False
