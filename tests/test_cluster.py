"""Workers sharing tenants through a real Redis (docs/SCALING.md).

Leases, fenced cursors and stream sinks run against a real ``redis-server``
(the session fixture ``redis_server``); the failover, pause and partition
tests run real worker processes (``rsocket worker``) against one reference
server in the test's loop. Short ttls keep the file well under 90 s.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from rsocket import BufferConfig
from rsocket.cursor import Cursor, MemorySeqStore
from rsocket.manager import ConnectionManager
from rsocket.socket import SocketConfig
from rsocket.testing import ReferenceServer

from .helpers import until

FAST_SOCKET = SocketConfig(keepalive_interval=1.0, keepalive_grace=1.0, connect_timeout=2,
                           close_timeout=0.25, drain_timeout=0.5,
                           buffer=BufferConfig(auto_flush_timeout=0.2))
BACKOFF = (0.5, 1.0, 2.0)  # the first step bounds a takeover: ttl + 0.5 s


# -- helpers -----------------------------------------------------------------------


@pytest.fixture
def prefix() -> str:
    """Keys of one test never meet another's (one Redis for the session)."""
    return f"test-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def redis_client(redis_server) -> AsyncIterator[Any]:
    import redis.asyncio as aioredis

    client = aioredis.from_url(redis_server.url, socket_timeout=5)
    yield client
    await client.aclose()


@pytest.fixture
async def closing() -> AsyncIterator[list[Any]]:
    """Objects with ``close()`` to close at teardown, in reverse order."""
    objects: list[Any] = []
    yield objects
    for obj in reversed(objects):
        await obj.close()


class Workers:
    """``rsocket worker`` subprocesses; every one is killed at teardown."""

    def __init__(self, tmp: Path, redis_url: str, prefix: str, tenants_file: Path) -> None:
        self.tmp = tmp
        self.redis_url = redis_url
        self.prefix = prefix
        self.tenants_file = tenants_file
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, ttl: float, *extra: str) -> subprocess.Popen[bytes]:
        log = open(self.tmp / f"{name}.log", "wb")  # noqa: SIM115 - the child keeps it
        proc = subprocess.Popen(
            [sys.executable, "-m", "rsocket", "worker", "--redis", self.redis_url,
             "--tenants", str(self.tenants_file), "--ttl", str(ttl), "--worker-id", name,
             "--prefix", self.prefix, "--stream", f"{self.prefix}:{{tenant}}",
             "--backoff", ",".join(map(str, BACKOFF)), "--keepalive", "2",
             "--log-level", "INFO", *extra],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log,
        )
        log.close()
        self.procs[name] = proc
        return proc

    def stop(self, name: str, timeout: float = 10.0) -> dict[str, Any]:
        """SIGTERM, wait (bounded), return the worker's JSON counters."""
        proc = self.procs[name]
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=timeout)
        assert proc.returncode == 0, (name, proc.returncode, self.log(name)[-2000:])
        return json.loads(out.decode().strip().splitlines()[-1])

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")

    def cleanup(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
                proc.kill()
            proc.wait(timeout=10)
            if proc.stdout is not None:
                proc.stdout.close()


@pytest.fixture
def make_workers(tmp_path, redis_server, prefix) -> Iterator[Callable[..., Workers]]:
    made: list[Workers] = []

    def make(server: ReferenceServer, tenants: dict[str, str]) -> Workers:
        path = tmp_path / "tenants.json"
        path.write_text(json.dumps({"url": server.url, "tenants": tenants}))
        workers = Workers(tmp_path, redis_server.url, prefix, path)
        made.append(workers)
        return workers

    yield make
    for workers in made:
        workers.cleanup()


async def lease_owners(client: Any, prefix: str, tenants: list[str]) -> dict[str, tuple[str, int]]:
    values = await client.mget([f"{prefix}:{{{t}}}:lease" for t in tenants])
    owners = {}
    for tenant, value in zip(tenants, values, strict=True):
        if value is not None:
            worker, _, token = value.decode().rpartition("|")
            owners[tenant] = (worker, int(token))
    return owners


async def stream_coverage(client: Any, prefix: str, tenants: list[str]) -> dict[str, list[range]]:
    from rsocket.cluster import decode_entry

    ranges: dict[str, list[range]] = {}
    for tenant in tenants:
        entries = await client.xrange(f"{prefix}:{tenant}")
        ranges[tenant] = []
        for _, fields in entries:
            entry = decode_entry(fields)
            assert entry["tenant"] == tenant
            ranges[tenant].append(range(entry["first"], entry["last"] + 1))
    return ranges


async def assert_streams_hold_exactly_the_published(client, prefix, server, timeout=10.0):
    """Deduplicated by seq, every tenant's stream holds exactly seqs 1..last_seq."""
    last = {t: s["last_seq"] for t, s in server.stats().items()}
    covered: dict[str, set[int]] = {}

    async def complete() -> bool:
        ranges = await stream_coverage(client, prefix, list(last))
        covered.clear()
        for tenant, rs in ranges.items():
            covered[tenant] = {s for r in rs for s in r}
        return all(len(covered[t]) >= n for t, n in last.items())

    await until(complete, timeout, "every published event in the streams")
    for tenant, n in last.items():
        assert covered[tenant] == set(range(1, n + 1)), tenant
    return sum(last.values())


class Sampler:
    """Samples the server's connections per tenant every 10 ms."""

    def __init__(self, server: ReferenceServer) -> None:
        self.server = server
        self.max_connections = 0
        self.samples = 0
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            stats = self.server.stats().values()
            self.max_connections = max(self.max_connections, *(s["connections"] for s in stats))
            self.samples += 1
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


async def more_traffic(server: ReferenceServer, events: int = 20) -> None:
    """Wait until every tenant has ``events`` more published (the traffic goes on past
    what the test just did), so the streams are checked on events that followed it."""
    start = {t: s["last_seq"] for t, s in server.stats().items()}
    await until(lambda: all(s["last_seq"] >= start[t] + events
                            for t, s in server.stats().items()), 10.0, "more traffic")


def connected(server: ReferenceServer, tenants: list[str] | None = None) -> bool:
    stats = server.stats()
    return all(stats[t]["connections"] == 1 for t in (tenants or stats))


# -- the optional dependency ---------------------------------------------------------------


def test_without_the_redis_package_the_error_names_the_extra(monkeypatch):
    from rsocket import cluster

    monkeypatch.setitem(sys.modules, "redis", None)
    monkeypatch.setitem(sys.modules, "redis.asyncio", None)
    with pytest.raises(ImportError, match=r"rsocket-events\[redis\]"):
        cluster.RedisLeases("redis://127.0.0.1:1/0", "w1")
    with pytest.raises(ImportError, match=r"rsocket-events\[redis\]"):
        cluster.RedisStreamSink("redis://127.0.0.1:1/0")


def test_demo_without_any_redis_is_a_clear_error(tmp_path):
    env = {**os.environ, "PATH": str(tmp_path)}  # no redis-server on it
    proc = subprocess.run(
        [sys.executable, "-m", "rsocket", "demo", "--workers", "3", "--json"],
        capture_output=True, env=env, timeout=60,
    )
    assert proc.returncode == 2
    assert b"--redis URL" in proc.stderr and b"redis-server" in proc.stderr
    assert proc.stdout == b""


# -- leases --------------------------------------------------------------------------------


async def test_leases_take_renew_release_and_expire(redis_server, prefix, redis_client, closing):
    from rsocket.cluster import RedisLeases

    a = RedisLeases(redis_server.url, "A", ttl=1.0, prefix=prefix)
    b = RedisLeases(redis_server.url, "B", ttl=1.0, prefix=prefix)
    closing += [a, b]
    lost: list[tuple[str, int]] = []
    a.on_lost(lambda tenant, token: lost.append((tenant, token)))

    assert await a.take("t1") == 1
    assert await b.take("t1") is None  # held: SET NX fails
    assert await a.owner("t1") == ("A", 1)
    assert await redis_client.exists(f"{prefix}:{{t1}}:lease")  # one hash tag per tenant

    # three renewals (every ttl/3) carry it past its ttl: only they keep it
    await until(lambda: a.counters["renewals"] >= 4, 5.0, "renewals")
    assert a.held == {"t1": 1} and not lost
    assert 0 < await redis_client.pttl(f"{prefix}:{{t1}}:lease") <= 1000
    assert await a.workers() == 2

    assert await a.release("t1")
    assert a.token("t1") is None
    assert await b.take("t1") == 2  # a new fencing token on every take
    assert await a.release("t1", 2) is False  # compare-and-delete: not ours

    # B dies without releasing: its lease expires after the ttl, then A takes over
    await b.close(release=False)
    assert await a.take("t1") is None
    waited = time.monotonic()
    while (token := await a.take("t1")) is None:
        assert time.monotonic() - waited < 1.5, "the dead worker's lease never expired"
        await asyncio.sleep(0.02)
    assert token == 3 and await a.fence("t1") == 3

    # a renewal refused (someone else holds it now) gives the lease up at once
    await redis_client.set(f"{prefix}:{{t1}}:lease", "C|4", px=5000)
    await until(lambda: lost, 1.0, "lease lost")
    assert lost == [("t1", 3)] and a.token("t1") is None


async def test_a_lease_not_confirmed_for_half_the_ttl_is_given_up_locally(
    redis_server, prefix, closing
):
    from rsocket.cluster import RedisLeases

    leases = RedisLeases(redis_server.url, "A", ttl=1.0, prefix=prefix)
    closing.append(leases)
    lost: list[float] = []
    assert await leases.take("t1")
    taken = asyncio.get_running_loop().time()
    leases.on_lost(lambda tenant, token: lost.append(asyncio.get_running_loop().time()))
    redis_server.process.send_signal(signal.SIGSTOP)  # Redis unreachable (no answer)
    try:
        await until(lambda: lost, 1.5, "lease given up")
    finally:
        redis_server.process.send_signal(signal.SIGCONT)
    assert lost[0] - taken < 1.0 - 0.2  # well before the ttl could expire in Redis
    assert leases.token("t1") is None


# -- fenced cursors ------------------------------------------------------------------------


async def test_concurrent_cursor_saves_only_the_current_owners_forward_moves_land(
    redis_server, prefix, redis_client, closing
):
    from rsocket.cluster import RedisLeases, RedisSeqStore

    a = RedisLeases(redis_server.url, "A", ttl=5.0, prefix=prefix)
    b = RedisLeases(redis_server.url, "B", ttl=5.0, prefix=prefix)
    store_a, store_b = RedisSeqStore(redis_server.url, a), RedisSeqStore(redis_server.url, b)
    closing += [a, b, store_a, store_b]
    assert await store_a.load("t1") == Cursor()
    token_a = await a.take("t1")
    await store_a.save("t1", Cursor("e1", 10))
    assert await store_a.load("t1") == Cursor("e1", 10)
    await store_b.save("t1", Cursor("e1", 99))  # B holds no lease: nothing written
    assert store_b.counters["refused_not_held"] == 1
    assert await store_a.load("t1") == Cursor("e1", 10)

    # A's lease goes (expired), B takes it: A keeps saving with its stale token
    await redis_client.delete(f"{prefix}:{{t1}}:lease")
    token_b = await b.take("t1")
    assert token_b == token_a + 1

    async def owner_b_in_order() -> list[int]:
        return [await store_b.save_fenced("t1", Cursor("e1", s), token_b)
                for s in [20, 15, 40, 30, 60, 59]]

    results_a, results_b = await asyncio.gather(  # A's flood races B's saves
        asyncio.gather(*(store_a.save_fenced("t1", Cursor("e1", s), token_a)
                         for s in range(11, 200, 3))),
        owner_b_in_order(),
    )
    assert set(results_a) == {-1}  # every stale save refused
    assert results_b == [1, 0, 1, 0, 1, 0]  # forward moves land, backward ones do not
    assert await store_b.load("t1") == Cursor("e1", 60)
    assert await store_b.writer_token("t1") == token_b
    # a new epoch replaces the cursor (the server's log started afresh)
    assert await store_b.save_fenced("t1", Cursor("e2", 5), token_b) == 1
    assert await store_a.save_fenced("t1", Cursor("e3", 500), token_a) == -1
    assert await store_b.load("t1") == Cursor("e2", 5)


# -- periodic cursor saves -------------------------------------------------------------------


class RecordingStore(MemorySeqStore):
    def __init__(self) -> None:
        super().__init__()
        self.saves: list[tuple[float, Cursor]] = []

    async def save(self, tenant: str, cursor: Cursor) -> None:
        self.saves.append((time.monotonic(), cursor))
        await super().save(tenant, cursor)


@pytest.mark.parametrize("save_interval", [1.0, 0.0])
async def test_cursor_saves_while_open_at_most_once_per_save_interval(save_interval):
    store = RecordingStore()
    async with ReferenceServer(tenants={"t1": "token1"}, ping_interval=None) as server:
        m = ConnectionManager("t1", server.url, "token1", socket_config=FAST_SOCKET,
                              seq_store=store, backoff=BACKOFF, save_interval=save_interval)
        await m.start()
        started = time.monotonic()
        while time.monotonic() - started < 2.6:
            server.publish_many("t1", [("chats.update", [{"id": "c1"}])] * 20)
            await asyncio.sleep(0.05)
        await until(lambda: m.socket.last_seq == server.stats()["t1"]["last_seq"], 2.0)
        saves_while_open = list(store.saves)
        await m.destroy()
    last = server.stats()["t1"]["last_seq"]
    assert store.saves[-1][1].seq == last  # the final save on destroy
    if not save_interval:
        assert saves_while_open == []  # saves only between sockets
        return
    assert 2 <= len(saves_while_open) <= 4
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(saves_while_open)]
    assert all(gap >= 0.95 for gap in gaps), gaps
    seqs = [c.seq for _, c in saves_while_open]
    assert seqs == sorted(seqs) and seqs[0] > 0


# -- the stream sink -----------------------------------------------------------------------


async def test_stream_sink_appends_batches_in_order_and_close_flushes(
    redis_server, prefix, redis_client
):
    from rsocket.cluster import RedisStreamSink, decode_entry

    sink = RedisStreamSink(redis_server.url, stream=f"{prefix}:{{tenant}}", maxlen=1000)
    calls = []
    for i in range(50):
        for tenant in ("a", "b"):
            batch = {"messages.upsert": {"messages": [{"n": i}], "type": "notify"}}
            calls.append(sink(tenant, batch, range(2 * i + 1, 2 * i + 3)))
    await asyncio.gather(*calls)
    await sink("a", {"connection.update": {"connection": "open"}}, range(0))  # not an event
    assert sink.counters["batches"] == 100 and sink.counters["events"] == 200
    assert sink.counters["round_trips"] < 100  # several batches share a round trip
    pending = asyncio.ensure_future(sink("a", {"chats.update": [{"id": "x"}]}, range(101, 102)))
    await asyncio.sleep(0)
    await sink.close()  # flushes what is queued
    await pending
    with pytest.raises(RuntimeError):
        await sink("a", {"chats.update": []}, range(102, 103))
    entries = [decode_entry(f) for _, f in await redis_client.xrange(f"{prefix}:a")]
    assert [(e["first"], e["last"]) for e in entries] == [
        *((2 * i + 1, 2 * i + 2) for i in range(50)), (101, 101)]
    assert entries[3]["tenant"] == "a"
    assert entries[3]["batch"] == {"messages.upsert": {"messages": [{"n": 3}], "type": "notify"}}
    assert await redis_client.xlen(f"{prefix}:b") == 50


# -- pools sharing tenants (in one process) ---------------------------------------------------


async def test_two_pools_share_the_tenants_and_hand_over_on_shutdown(
    redis_server, prefix, redis_client, no_leaks
):
    from rsocket.cluster import LeasedPool, RedisLeases, RedisStreamSink

    tenants = {f"p{i}": f"token{i}" for i in range(6)}
    async with ReferenceServer(tenants=tenants, ping_interval=None) as server:
        pools, leases = [], []
        sink = RedisStreamSink(redis_server.url, stream=f"{prefix}:{{tenant}}")
        for name in ("A", "B"):
            lease = RedisLeases(redis_server.url, name, ttl=1.0, prefix=prefix)
            pool = LeasedPool(lease, capacity=6, watchdog=False,
                              socket_config=FAST_SOCKET, backoff=BACKOFF)
            pool.process(sink, with_seqs=True)
            pools.append(pool)
            leases.append(lease)
        for pool in pools:
            for tenant, token in tenants.items():
                assert await pool.add(tenant, server.url, token) in (None, pool.get(tenant))
        server.start_traffic(100)
        await until(lambda: connected(server), 5.0, "every tenant connected")
        await until(lambda: len(pools[0]) == len(pools[1]) == 3, 5.0, "balanced 3/3")
        assert not set(pools[0].managers) & set(pools[1].managers)
        await pools[0].close()  # graceful: cursors saved, leases released
        await leases[0].close()  # and the worker leaves the registry: B's share is all 6
        await until(lambda: len(pools[1]) == 6 and connected(server), 3.0, "handover")
        await more_traffic(server)
        server.stop_traffic()
        await assert_streams_hold_exactly_the_published(redis_client, prefix, server)
        await pools[1].close()
        stats = server.stats().values()
        assert all(s["replaced"] == 0 and s["max_concurrent"] == 1 for s in stats)
        await sink.close()
        await leases[1].close()
    assert await redis_client.zcard(f"{prefix}:workers") == 0
    assert not await lease_owners(redis_client, prefix, list(tenants))


async def test_a_release_is_delivered_only_while_the_lease_is_proven(
    redis_server, prefix, caplog
):
    """A process frozen past its lease wakes with reads before timers: the deadline is
    checked at delivery, so nothing reaches the handlers once it passed (here the
    deadline is moved into the past, as a freeze would, with no timer run)."""
    from rsocket.cluster import LeasedPool, RedisLeases

    async with ReferenceServer(tenants={"f1": "token1"}, ping_interval=None) as server:
        leases = RedisLeases(redis_server.url, "A", ttl=6.0, prefix=prefix)
        pool = LeasedPool(leases, capacity=1, watchdog=False, socket_config=FAST_SOCKET,
                          backoff=BACKOFF)
        got: list[Any] = []
        pool.process(lambda tenant, batch, seqs: got.append(seqs) if seqs else None,
                     with_seqs=True)
        try:
            await pool.add("f1", server.url, "token1")
            await until(lambda: pool.get("f1") is not None and pool.get("f1").connected, 10.0,
                        "the lease taken and f1 connected")
            server.publish("f1", "chats.upsert", [{"id": "before"}])
            await until(lambda: got, 5.0, "the first event")
            token = leases.token("f1")
            assert got[0].token == token is not None  # releases carry the fencing token
            sock = pool.get("f1").socket
            leases._held["f1"].deadline = asyncio.get_running_loop().time() - 0.001
            server.publish("f1", "chats.upsert", [{"id": "after"}])
            await until(lambda: sock.received == 2, 5.0, "the event read")
            await until(lambda: pool.fenced >= 1, 5.0, "its release refused")
            assert [s.start for s in got] == [1]  # not delivered...
            assert sock.last_seq == 1  # ...nor processed: the next owner delivers it
            assert pool.fenced >= 1
            assert any(getattr(r, "event", "") == "fenced" for r in caplog.records)
        finally:
            await pool.close()
            await leases.close()


async def test_with_leases_a_foreign_connection_does_not_leave_the_tenant_dark(
    redis_server, prefix, no_leaks
):
    """A debug client connecting without the lease replaces the worker's socket (440):
    the lease is the authority, so the worker reconnects after backoff."""
    from rsocket.cluster import LeasedPool, RedisLeases
    from rsocket.socket import Socket

    async with ReferenceServer(tenants={"t1": "token1"}, ping_interval=None) as server:
        lease = RedisLeases(redis_server.url, "A", ttl=2.0, prefix=prefix)
        pool = LeasedPool(lease, watchdog=False, socket_config=FAST_SOCKET,
                          backoff=(0.3, 0.5))
        seen: list[int] = []
        pool.process(lambda tenant, batch, seqs: seen.extend(seqs), with_seqs=True)
        await pool.add("t1", server.url, "token1")
        await until(lambda: pool.get("t1") is not None and pool.get("t1").connected, 5.0,
                    "the worker runs t1")
        manager = pool.get("t1")
        foreign = Socket(server.url, "t1", "token1", config=FAST_SOCKET)
        await foreign.connect()
        await until(lambda: manager.last_disconnect is not None, 5.0, "the worker sees 440")
        assert manager.last_disconnect.status_code == 440
        await foreign.end()
        published = server.publish_many("t1", [("chats.upsert", [{"id": f"c{i}"}])
                                               for i in range(300)])
        await until(lambda: seen[-1:] == [published[-1]], 5.0, "the worker processes them")
        assert sorted(set(seen)) == list(published)
        assert pool.get("t1") is manager and manager.connected and lease.token("t1")
        assert await pool.query("t1", "echo", {"a": 1}) == {"a": 1}  # replies from a worker
        await pool.close()
        await lease.close()


async def test_with_leases_a_tenant_whose_first_start_fails_still_runs(
    redis_server, prefix, no_leaks
):
    from rsocket.cluster import LeasedPool, RedisLeases

    class FlakyStore(MemorySeqStore):
        loads = 0

        async def load(self, tenant: str) -> Cursor:
            self.loads += 1
            if self.loads == 1:
                raise ConnectionError("Redis restarting")
            return await super().load(tenant)

    store = FlakyStore()
    async with ReferenceServer(tenants={"t1": "token1"}, ping_interval=None) as server:
        lease = RedisLeases(redis_server.url, "A", ttl=1.0, prefix=prefix)
        pool = LeasedPool(lease, watchdog=False, socket_config=FAST_SOCKET,
                          backoff=(0.1,), seq_store=store)
        await pool.add("t1", server.url, "token1")
        await until(lambda: connected(server), 5.0, "t1 connected after a failed first start")
        assert store.loads == 2
        await pool.close()
        await lease.close()


# -- real worker processes -------------------------------------------------------------------


async def test_failover_kill_9_one_of_three_workers(make_workers, prefix, redis_client):
    """3 worker processes x 30 tenants; SIGKILL one: its tenants run elsewhere, never
    two connections at once, nothing lost (outcomes only: how long the takeover
    takes on a busy machine is docs/SCALING.md's figure, not a test's)."""
    ttl = 1.5
    tenants = {f"f{i:02d}": f"token{i}" for i in range(30)}
    async with ReferenceServer(tenants=tenants, ping_interval=None, compression=None) as server:
        workers = make_workers(server, tenants)
        for name in ("w1", "w2", "w3"):
            workers.start(name, ttl)
        server.start_traffic(40)
        sampler = Sampler(server)
        await until(lambda: connected(server), 20.0, "all 30 tenants running")
        owners = await lease_owners(redis_client, prefix, list(tenants))
        by_worker: dict[str, list[str]] = {}
        for tenant, (worker, _) in owners.items():
            by_worker.setdefault(worker, []).append(tenant)
        victim = max(by_worker, key=lambda w: len(by_worker[w]))
        held = by_worker[victim]
        assert held
        before = {t: server.stats()[t]["connections_total"] for t in held}
        workers.procs[victim].kill()  # kill -9
        await until(
            lambda: all(server.stats()[t]["connections"] == 1
                        and server.stats()[t]["connections_total"] > before[t] for t in held),
            30.0, "takeover",
        )
        owners = await lease_owners(redis_client, prefix, held)
        assert {w for w, _ in owners.values()} <= set(by_worker) - {victim}
        await more_traffic(server)
        server.stop_traffic()
        published = await assert_streams_hold_exactly_the_published(redis_client, prefix, server)
        await sampler.stop()
        assert published > 1000 and sampler.samples > 100
        assert sampler.max_connections == 1
        stats = server.stats().values()
        assert sum(s["replaced"] for s in stats) == 0
        assert max(s["max_concurrent"] for s in stats) == 1
        for name in by_worker.keys() - {victim}:
            workers.stop(name)
        assert not await lease_owners(redis_client, prefix, list(tenants))  # all released


async def test_a_paused_worker_finds_its_leases_gone_and_never_writes_a_stale_cursor(
    make_workers, prefix, redis_client, redis_server, closing
):
    from rsocket.cluster import RedisLeases, RedisSeqStore

    ttl = 1.0
    tenants = {f"s{i}": f"token{i}" for i in range(3)}
    observer = RedisLeases(redis_server.url, "observer", ttl=ttl, prefix=prefix)
    store = RedisSeqStore(redis_server.url, observer)
    closing += [observer, store]
    names = list(tenants)
    async with ReferenceServer(tenants=tenants, ping_interval=None, compression=None) as server:
        workers = make_workers(server, tenants)
        w1 = workers.start("w1", ttl)
        server.start_traffic(50)
        await until(lambda: connected(server), 10.0, "w1 runs every tenant")
        stale = {t: tok for t, (w, tok) in (await lease_owners(redis_client, prefix, names)).items()
                 if w == "w1"}
        assert set(stale) == set(names)

        async def w1_saved() -> bool:
            return all([await store.writer_token(t) == stale[t] for t in names])

        await until(w1_saved, 5.0, "w1's periodic cursor saves")
        os.kill(w1.pid, signal.SIGSTOP)
        paused = time.monotonic()
        workers.start("w2", ttl)

        async def w2_owns_and_saved() -> bool:
            owners = await lease_owners(redis_client, prefix, names)
            if any(owners.get(t, ("",))[0] != "w2" for t in names):
                return False
            return all([(await store.writer_token(t) or 0) > stale[t] for t in names])

        await until(w2_owns_and_saved, 8.0, "w2 took over and saved")
        await asyncio.sleep(max(0.0, paused + ttl + 0.5 - time.monotonic()))
        os.kill(w1.pid, signal.SIGCONT)  # w1 wakes up long after its leases expired
        resumed = time.monotonic()
        while time.monotonic() - resumed < 2.0:
            for t in names:
                assert await store.writer_token(t) != stale[t], "a stale token wrote a cursor"
            await asyncio.sleep(0.02)
        server.stop_traffic()
        counters = workers.stop("w1")
        assert counters["leases"]["lost"] >= len(names)  # it found its leases gone
        assert "lease lost" in workers.log("w1")
        await assert_streams_hold_exactly_the_published(redis_client, prefix, server)
        workers.stop("w2")


async def test_partition_redis_unreachable_every_worker_stops_then_resumes(
    make_workers, prefix, redis_client, redis_server
):
    ttl = 1.0
    tenants = {f"r{i}": f"token{i}" for i in range(10)}
    async with ReferenceServer(tenants=tenants, ping_interval=None, compression=None) as server:
        workers = make_workers(server, tenants)
        workers.start("w1", ttl)
        workers.start("w2", ttl)
        server.start_traffic(40)
        await until(lambda: connected(server), 10.0, "every tenant running")
        sampler = Sampler(server)
        redis_server.process.send_signal(signal.SIGSTOP)  # Redis gone: no answers at all
        stopped = time.monotonic()
        try:
            await until(lambda: all(s["connections"] == 0 for s in server.stats().values()),
                        ttl, "every worker to stop its tenants")
            assert time.monotonic() - stopped < ttl  # before any lease could expire
            await asyncio.sleep(max(0.0, stopped + 2 * ttl - time.monotonic()))
            assert all(s["connections"] == 0 for s in server.stats().values())
        finally:
            redis_server.process.send_signal(signal.SIGCONT)
        await until(lambda: connected(server), 10.0, "every tenant running again")
        await more_traffic(server)
        server.stop_traffic()
        await assert_streams_hold_exactly_the_published(redis_client, prefix, server)
        await sampler.stop()
        assert sampler.max_connections == 1
        stats = server.stats().values()
        assert sum(s["replaced"] for s in stats) == 0
        assert max(s["max_concurrent"] for s in stats) == 1
        workers.stop("w1")
        workers.stop("w2")


def test_cli_demo_with_workers_json(redis_server):
    proc = subprocess.run(
        [sys.executable, "-m", "rsocket", "demo", "--workers", "3", "--tenants", "9",
         "--duration", "6", "--ttl", "1", "--rate", "40", "--redis", redis_server.url, "--json"],
        capture_output=True, timeout=120,
    )
    summary = json.loads(proc.stdout)
    assert proc.returncode == 0, (summary, proc.stderr[-3000:])
    for key in ("tenants", "workers", "published", "processed", "lost", "duplicated",
                "reconnects", "takeover_seconds", "replaced", "max_concurrent", "passed"):
        assert key in summary, key
    assert summary["passed"] is True
    assert summary["tenants"] == 9 and summary["workers"] == 3
    assert summary["lost"] == summary["duplicated"] == summary["replaced"] == 0
    assert summary["max_concurrent"] == 1
    assert summary["published"] == summary["processed"] > 0
    assert summary["takeover_seconds"] > 0
