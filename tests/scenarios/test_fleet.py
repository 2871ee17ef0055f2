"""Bridges that share accounts through Redis, against a real redis-server and real bridges.

Each bridge is the Node bridge in test mode as a child process (``BridgeServer(redis=...)``):
accounts by lease, event logs and auth in Redis, the accounts' events from the Redis test
upstream (``rsocket.testing.fleet.Upstream``). Bots are a ``TenantPool`` that finds each
account's bridge with a ``BridgeResolver``. Every scenario ends the same way: every message
the upstream sent reached the bot (0 lost), no seq was delivered twice, the log's session
(epoch) never changed, and never two bridges were connected upstream for one account.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from rsocket import TenantPool
from rsocket.discovery import BridgeResolver
from rsocket.testing.bridge import BridgeServer
from rsocket.testing.fleet import Upstream, text_message

from ..helpers import bridge_or_skip, until

pytestmark = pytest.mark.usefixtures("baileys_or_skip")

TTL = 3.0  # lease ttl of the test fleets, seconds
TENANTS = {f"acct{i}": f"token-{i}" for i in range(4)}


@pytest.fixture
def baileys_or_skip() -> None:
    bridge_or_skip()


@pytest.fixture
def redis_local() -> Any:
    """A redis-server of this test alone, its data kept across restart()."""
    from rsocket.apps.redis_local import LocalRedis, RedisUnavailable

    try:
        server = LocalRedis(persist=True)
    except RedisUnavailable as exc:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(str(exc))
        pytest.skip(str(exc))
    yield server
    server.stop()


class Bots:
    """A TenantPool over the fleet: what each account's bot received."""

    def __init__(self, redis_url: str) -> None:
        self.resolver = BridgeResolver(redis_url)
        self.pool = TenantPool(backoff=(0.5, 1, 2), jitter=0.1)
        self.ids: dict[str, list[str]] = defaultdict(list)
        self.seqs: dict[str, list[int]] = defaultdict(list)
        self.epochs: dict[str, set[str]] = defaultdict(set)
        self.pool.process(self._handle, with_seqs=True)

    def _handle(self, tenant: str, batch: dict[str, Any], seqs: Any) -> None:
        self.seqs[tenant].extend(seqs)
        if seqs:
            self.epochs[tenant].add(seqs.epoch)
        for name in ("messages.upsert", "messaging-history.set"):
            if name in batch:
                self.ids[tenant].extend(m["key"]["id"] for m in batch[name]["messages"])

    async def start(self, first_url: str) -> None:
        for tenant, token in TENANTS.items():
            await self.pool.add(tenant, first_url, token, resolve=self.resolver)

    def has_all(self, sent: dict[str, list[str]]) -> bool:
        return all(set(ids) <= set(self.ids[t]) for t, ids in sent.items())

    def check(self, sent: dict[str, list[str]]) -> None:
        for tenant, ids in sent.items():
            assert set(self.ids[tenant]) == set(ids), f"{tenant}: lost or foreign messages"
            seqs = self.seqs[tenant]
            assert len(seqs) == len(set(seqs)), f"{tenant}: a seq delivered twice"
            assert len(self.epochs[tenant]) == 1, f"{tenant}: the log started afresh"

    async def close(self) -> None:
        await self.pool.close()
        await self.resolver.close()


@contextlib.asynccontextmanager
async def fleet(redis_url: str, count: int, ttl: float = TTL
                ) -> AsyncIterator[tuple[list[BridgeServer], Bots, Upstream]]:
    bridges = [BridgeServer(TENANTS, redis=redis_url, lease_ttl=ttl, bridge_id=f"b{i}")
               for i in range(count)]
    upstream = Upstream(redis_url)
    bots = Bots(redis_url)
    try:
        await asyncio.gather(*(b.start() for b in bridges))
        # balanced, so no account moves unless a test makes it move
        await until(lambda: all_served(bridges, balanced=True), 20, "every account served")
        await bots.start(bridges[0].url)
        yield bridges, bots, upstream
    finally:
        await bots.close()
        await asyncio.gather(*(b.close() for b in bridges))
        await upstream.close()


def all_served(bridges: list[BridgeServer], *, balanced: bool = False) -> bool:
    """Every account served once; ``balanced``: no bridge above its share."""
    served: list[str] = []
    live = [b for b in bridges if b.pid is not None]
    share = -(-len(TENANTS) // max(1, len(live)))
    for bridge in live:
        mine = [t for t, s in bridge.stats().items() if s["served"]]
        if balanced and len(mine) > share:
            return False
        served += mine
    return sorted(served) == sorted(TENANTS)


async def send_round(upstream: Upstream, sent: dict[str, list[str]], n: int) -> None:
    for tenant in TENANTS:
        ids = [f"{tenant}-{len(sent[tenant]) + i}" for i in range(n)]
        await upstream.send(tenant, [text_message(i, f"hello {i}") for i in ids])
        sent[tenant] += ids


async def warm_up(upstream: Upstream, bots: Bots) -> dict[str, list[str]]:
    """A first round of messages, delivered: the fleet runs end to end."""
    sent: dict[str, list[str]] = defaultdict(list)
    await send_round(upstream, sent, 5)
    await until(lambda: bots.has_all(sent), 20, "first messages delivered")
    return sent


def serving(bridges: list[BridgeServer]) -> BridgeServer:
    """A bridge that serves at least one account."""
    return next(b for b in bridges if any(s["served"] for s in b.stats().values()))


async def traffic_around(upstream: Upstream, sent: dict[str, list[str]],
                         action: Callable[[], Any], rounds: int = 10) -> None:
    """Rounds of messages to every account, with ``action`` in the middle."""
    for i in range(rounds):
        await send_round(upstream, sent, 20)
        if i == rounds // 2:
            result = action()
            if asyncio.iscoroutine(result):
                await result
        await asyncio.sleep(0.05)  # paces the traffic; no outcome waits on it


async def test_kill_9_of_a_bridge_under_traffic_loses_nothing(redis_local: Any) -> None:
    async with fleet(redis_local.url, 2) as (bridges, bots, upstream):
        sent = await warm_up(upstream, bots)
        victim = serving(bridges)
        await traffic_around(upstream, sent, victim.kill)
        # the survivor takes the dead bridge's accounts once their leases expire
        survivor = next(b for b in bridges if b is not victim)
        await until(lambda: all_served([survivor]), TTL * 4, "accounts taken over")
        await until(lambda: bots.has_all(sent), TTL * 4, "every message delivered")
        bots.check(sent)
        assert all(n == 1 for n in (await upstream.max_concurrent()).values())


async def test_real_payloads_replayed_from_redis_after_a_takeover(redis_local: Any) -> None:
    """A first login's ~5 MB history sync, 100 images with thumbnails and LID keys, built
    with Baileys' own protobuf classes, are in Redis when their bridge is killed: the bot
    gets every message once, from the bridge that took over where it missed them."""
    # Building ~5 MB of protobuf blocks the bridge's loop as Baileys' own decoding does:
    # a lease long enough that a slow machine's stall does not give the account up
    ttl = TTL * 2
    async with fleet(redis_local.url, 2, ttl) as (bridges, bots, upstream):
        sent = await warm_up(upstream, bots)
        victim = serving(bridges)
        tenant = next(t for t, s in victim.stats().items() if s["served"])
        last = 0
        for kind in ("history", "images", "lid"):
            seqs, ids = victim.whatsapp(tenant, kind)
            assert seqs, f"{kind}: nothing appended; served: {victim.stats()[tenant]['served']}"
            sent[tenant] += ids
            last = seqs[-1]

        async def in_redis() -> bool:
            stored = await upstream.client.hget(f"rsocket:bridge:{{{tenant}}}:logmeta", "last")
            return int(stored or 0) >= last

        await until(in_redis, 30, "the payloads in Redis")
        victim.kill()
        await until(lambda: bots.has_all(sent), ttl * 4 + 30, "every message delivered")
        bots.check(sent)
        assert len(set(bots.ids[tenant])) == len(sent[tenant]) > 11_200


async def test_a_paused_bridge_stops_its_accounts_before_another_takes_them(redis_local: Any) -> None:
    async with fleet(redis_local.url, 2) as (bridges, bots, upstream):
        sent = await warm_up(upstream, bots)
        paused = serving(bridges)
        other = next(b for b in bridges if b is not paused)
        held = [t for t, s in paused.stats().items() if s["served"]]
        assert paused.pid is not None
        os.kill(paused.pid, signal.SIGSTOP)
        try:
            await send_round(upstream, sent, 20)

            async def taken() -> bool:
                holders = [await upstream.holder(t) for t in held]
                return holders == [other.bridge_id] * len(held)

            await until(taken, TTL * 4, "the paused bridge's accounts taken over")
        finally:
            os.kill(paused.pid, signal.SIGCONT)
        await send_round(upstream, sent, 20)
        await until(lambda: bots.has_all(sent), TTL * 4, "every message delivered")
        # woken up, the paused bridge found its leases gone and stopped serving them
        await until(lambda: not any(paused.stats()[t]["served"] for t in held), TTL * 2,
                    "the woken bridge gave its accounts up")
        bots.check(sent)
        assert all(n == 1 for n in (await upstream.max_concurrent()).values())


async def test_a_redis_restart_mid_traffic_loses_nothing(redis_local: Any) -> None:
    async with fleet(redis_local.url, 2) as (_bridges, bots, upstream):
        sent: dict[str, list[str]] = defaultdict(list)
        await traffic_around(upstream, sent, redis_local.restart)
        await until(lambda: bots.has_all(sent), TTL * 6, "every message delivered")
        bots.check(sent)
        assert all(n == 1 for n in (await upstream.max_concurrent()).values())


async def test_bridges_racing_for_one_account_take_it_once(redis_local: Any) -> None:
    tenants = {"solo": "token-solo"}
    bridges = [BridgeServer(tenants, redis=redis_local.url, lease_ttl=TTL, bridge_id=f"r{i}")
               for i in range(3)]
    upstream = Upstream(redis_local.url)
    try:
        await asyncio.gather(*(b.start() for b in bridges))
        await until(lambda: any(b.stats()["solo"]["served"] for b in bridges), 20, "served")
        serving = [b.bridge_id for b in bridges if b.stats()["solo"]["served"]]
        assert len(serving) == 1
        assert await upstream.holder("solo") == serving[0]
        assert int(await upstream.client.get("rsocket:bridge:{solo}:fence")) == 1  # one take won
    finally:
        await asyncio.gather(*(b.close() for b in bridges))
        await upstream.close()


def test_cli_demo_with_bridges_and_workers_json(redis_server: Any) -> None:
    import json
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "rsocket", "demo", "--bridge", "--workers", "2", "--bridges", "2",
         "--tenants", "4", "--duration", "9", "--ttl", "2", "--rate", "20",
         "--redis", redis_server.url, "--json"],
        capture_output=True, timeout=180,
    )
    summary = json.loads(proc.stdout)
    assert proc.returncode == 0, (summary, proc.stderr[-3000:])
    assert summary["passed"] is True
    assert summary["bridges"] == 2 and summary["workers"] == 2
    assert summary["lost"] == summary["duplicated"] == summary["replaced"] == 0
    assert summary["upstream_max_concurrent"] == 1 and summary["max_concurrent"] == 1
    assert summary["messages_sent"] > 0 and summary["published"] == summary["processed"] > 0
    assert summary["bridge_takeover_seconds"] > 0 and summary["takeover_seconds"] > 0
