"""``rsocket demo --workers N``: several worker processes share the tenants through Redis.

The demo process runs the reference server on 127.0.0.1 (the standard event
mix for every tenant) and, unless ``--redis URL`` is given, a local
``redis-server`` on a free loopback port with persistence off. It starts N
``rsocket worker`` subprocesses, waits until every tenant runs, kills the
worker holding the most tenants with SIGKILL, and measures how long its
tenants take to run again elsewhere. At the end it reads every tenant's
Redis Stream, drops duplicates by seq, and checks that the events are exactly
the published ones, that no connection was ever replaced (440) and that no
tenant ever had two connections at once.

``rsocket demo --bridge --workers N --bridges M`` serves the tenants from M
bridge processes (test mode, no account) sharing them through the same Redis
(``bridge/lib/fleet.js``): their events come from the Redis test upstream
(``rsocket.testing.fleet``), the workers find each tenant's bridge with a
``BridgeResolver``. It kills one bridge, then one worker, and reports both
takeovers, the upstream messages lost (every one sent must be in a log), and
the most bridges ever connected upstream for one account (1).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._redis import redis_asyncio
from ..cluster import decode_entry
from ..testing import ReferenceServer
from .demo import render_summary
from .redis_local import LocalRedis

__all__ = [
    "ClusterDemoConfig",
    "ClusterDemoSummary",
    "DemoError",
    "print_summary",
    "run_cluster_demo",
]


class DemoError(RuntimeError):
    """The demo cannot run (Redis unreachable, a worker failed to start...)."""


# -- the demo ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClusterDemoConfig:
    """What the multi-worker demo runs (the CLI flags)."""

    workers: int = 3
    tenants: int = 30
    duration: float = 20.0
    rate: float = 50.0
    ttl: float = 5.0
    redis: str | None = None
    seed: int = 1
    backoff: tuple[float, ...] = (1.0, 2.0, 5.0)
    drain_timeout: float = 20.0
    log_level: str = "WARNING"
    bridges: int = 0  # > 0: served by this many bridges sharing the accounts


@dataclass(slots=True)
class ClusterDemoSummary:
    """The figures the demo prints (``--json``: this object)."""

    tenants: int
    workers: int
    published: int = 0
    processed: int = 0
    lost: int = 0
    duplicated: int = 0
    reconnects: int = 0
    takeover_seconds: float | None = None
    replaced: int = 0
    max_concurrent: int = 0
    passed: bool = False
    ttl: float = 0.0
    takeover_bound: float = 0.0
    killed_worker: str = ""
    killed_tenants: int = 0
    duplicates_before_dedup: int = 0
    partial_overlaps: int = 0
    stream_entries: int = 0
    bridges: int = 0
    killed_bridge: str = ""
    bridge_takeover_seconds: float | None = None
    messages_sent: int = 0
    upstream_max_concurrent: int = 0
    failures: list[str] = field(default_factory=list)


def _say(progress: Any, text: str) -> None:
    if progress is not None:
        print(f"[demo] {text}", file=progress, flush=True)


async def run_cluster_demo(config: ClusterDemoConfig, *, progress: Any = None) -> ClusterDemoSummary:
    """Run the demo; ``progress`` (a text stream) gets one line per step."""
    aioredis = redis_asyncio()  # ImportError naming the extra without it

    if config.workers < 2:
        raise DemoError("--workers must be >= 2 (one of them is killed)")
    local: LocalRedis | None = None
    url = config.redis
    if url is None:
        local = LocalRedis()
        url = local.url
        _say(progress, f"redis-server started on {url}")
    client = aioredis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
    prefix = f"rsdemo-{uuid.uuid4().hex[:8]}"
    try:
        try:
            await client.ping()
        except Exception as exc:
            raise DemoError(f"cannot reach Redis at {url}: {exc}") from exc
        if config.bridges:
            return await _run_fleet(config, url, prefix, client, progress)
        return await _run(config, url, prefix, client, progress)
    finally:
        if config.redis is not None:
            with contextlib.suppress(Exception):  # leave a shared Redis as we found it
                async for key in client.scan_iter(match=f"{prefix}*", count=1000):
                    await client.delete(key)
        await client.aclose()
        if local is not None:
            local.stop()


async def _run(config: ClusterDemoConfig, url: str, prefix: str, client: Any,
               progress: Any) -> ClusterDemoSummary:
    names = {f"tenant{i:03d}": f"token-{i}-{uuid.uuid4().hex[:8]}"
             for i in range(1, config.tenants + 1)}
    summary = ClusterDemoSummary(tenants=config.tenants, workers=config.workers, ttl=config.ttl)
    # a dead worker's leases expire after ttl; the taker's round and first backoff step
    # follow (ttl/3 each at most); the rest is slack for a busy machine
    summary.takeover_bound = round(2 * config.ttl + config.backoff[0] + 3.0, 3)
    stream = f"{prefix}:{{tenant}}"
    with tempfile.TemporaryDirectory(prefix="rsocket-demo-") as tmp:
        async with ReferenceServer(tenants=names, host="127.0.0.1", ping_interval=None,
                                   compression=None) as server:
            tenants_file = Path(tmp, "tenants.json")
            tenants_file.write_text(json.dumps({"url": server.url, "tenants": names}))
            workers: list[_Worker] = []
            try:
                for i in range(1, config.workers + 1):
                    workers.append(await _spawn_worker(f"w{i}", url, tenants_file, prefix,
                                                       stream, config, tmp))
                server.start_traffic(config.rate, seed=config.seed)
                started = time.monotonic()
                _say(progress, f"{config.workers} workers started, {config.tenants} tenants, "
                               f"ttl {config.ttl:g}s")
                await _until(lambda: all(s["connections"] == 1
                                         for s in server.stats().values()),
                             3 * config.ttl + 20, "every tenant running")
                _say(progress, f"all tenants running after {time.monotonic() - started:.1f}s")
                await asyncio.sleep(max(0.0, started + config.duration / 3 - time.monotonic()))
                victim, held = await _busiest(client, prefix, names, workers)
                before = {t: server.stats()[t]["connections_total"] for t in held}
                victim.process.kill()  # SIGKILL: no goodbye, its leases must expire
                killed_at = time.monotonic()
                summary.killed_worker = victim.name
                summary.killed_tenants = len(held)
                _say(progress, f"killed {victim.name} (SIGKILL) holding {len(held)} tenants")
                await _until(
                    lambda: all(server.stats()[t]["connections"] == 1
                                and server.stats()[t]["connections_total"] > before[t]
                                for t in held),
                    3 * config.ttl + 20, "takeover",
                )
                summary.takeover_seconds = round(time.monotonic() - killed_at, 3)
                _say(progress, f"its tenants run again elsewhere after "
                               f"{summary.takeover_seconds:.2f}s")
                await asyncio.sleep(max(0.0, started + config.duration - time.monotonic()))
            except BaseException:
                for w in workers:
                    if w.process.returncode is None:
                        w.process.kill()
                    await w.process.wait()
                    w.close()
                raise
            finally:
                server.stop_traffic()
            last = {t: s["last_seq"] for t, s in server.stats().items()}
            _say(progress, f"traffic stopped: {sum(last.values())} events published; draining")
            coverage = _Coverage(names)
            deadline = time.monotonic() + config.drain_timeout
            while True:
                await coverage.read(client, stream)
                if coverage.complete(last) or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
            await _stop_workers([w for w in workers if w is not victim], progress)
            await victim.process.wait()
            victim.close()
            stats = server.stats()
    summary.published = sum(last.values())
    coverage.count(last, summary)
    summary.replaced = sum(s["replaced"] for s in stats.values())
    summary.max_concurrent = max(s["max_concurrent"] for s in stats.values())
    summary.reconnects = sum(s["connections_total"] for s in stats.values()) - len(stats)
    _judge(summary)
    return summary


class _Worker:
    def __init__(self, name: str, process: asyncio.subprocess.Process, log: Any) -> None:
        self.name = name
        self.process = process
        self.log = log

    def close(self) -> None:
        self.log.close()


async def _spawn_worker(name: str, url: str, tenants_file: Path, prefix: str, stream: str,
                        config: ClusterDemoConfig, tmp: str, *extra: str) -> _Worker:
    log = open(Path(tmp, f"{name}.log"), "wb")  # noqa: SIM115 - closed by _Worker.close
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "rsocket", "worker", "--redis", url,
        "--tenants", str(tenants_file), "--ttl", str(config.ttl), "--worker-id", name,
        "--prefix", prefix, "--stream", stream,
        "--backoff", ",".join(str(d) for d in config.backoff),
        "--log-level", config.log_level, *extra,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=log,
    )
    return _Worker(name, process, log)


async def _stop_workers(workers: list[_Worker], progress: Any) -> None:
    for w in workers:
        if w.process.returncode is None:
            w.process.send_signal(signal.SIGTERM)
    for w in workers:
        try:
            async with asyncio.timeout(15):
                out, _ = await w.process.communicate()
        except TimeoutError:
            w.process.kill()
            await w.process.wait()
            _say(progress, f"{w.name} did not stop within 15 s: killed")
        else:
            if w.process.returncode != 0:
                _say(progress, f"{w.name} exited with {w.process.returncode}")
            elif out.strip():
                counters = json.loads(out.decode().strip().splitlines()[-1])
                _say(progress, f"{w.name} stopped: ran {len(counters['tenants_run'])} tenants")
        w.close()


async def _run_fleet(config: ClusterDemoConfig, url: str, prefix: str, client: Any,
                     progress: Any) -> ClusterDemoSummary:
    """The demo served by a fleet of bridges: one bridge killed, then one worker."""
    from ..testing.bridge import BridgeServer
    from ..testing.fleet import Upstream

    names = {f"tenant{i:03d}": f"token-{i}-{uuid.uuid4().hex[:8]}"
             for i in range(1, config.tenants + 1)}
    summary = ClusterDemoSummary(tenants=config.tenants, workers=config.workers, ttl=config.ttl,
                                 bridges=config.bridges)
    summary.takeover_bound = round(2 * config.ttl + config.backoff[-1] + 3.0, 3)
    stream = f"{prefix}:{{tenant}}"
    bridge_prefix = f"{prefix}:bridge"
    bridges = {f"b{i}": BridgeServer(names, redis=url, prefix=bridge_prefix, lease_ttl=config.ttl,
                                     bridge_id=f"b{i}", ping_interval=None)
               for i in range(1, config.bridges + 1)}
    upstream = Upstream(url, prefix=bridge_prefix)
    sent: dict[str, list[str]] = {t: [] for t in names}
    live = dict(bridges)

    def connections(tenant: str) -> tuple[int, int]:  # (open now, ever) over the live bridges
        stats = [b.stats()[tenant] for b in live.values()]
        return sum(s["connections"] for s in stats), sum(s["connections_total"] for s in stats)

    async def holders(tenants: list[str]) -> list[str | None]:
        return [await upstream.holder(t) for t in tenants]

    workers: list[_Worker] = []
    producer: asyncio.Task[None] | None = None
    try:
        with tempfile.TemporaryDirectory(prefix="rsocket-demo-") as tmp:
            await asyncio.gather(*(b.start() for b in bridges.values()))
            first = next(iter(bridges.values()))
            tenants_file = Path(tmp, "tenants.json")
            tenants_file.write_text(json.dumps({"url": first.url, "tenants": names}))
            for i in range(1, config.workers + 1):
                workers.append(await _spawn_worker(f"w{i}", url, tenants_file, prefix, stream,
                                                   config, tmp, "--bridges", bridge_prefix))
            producer = asyncio.create_task(_produce(upstream, sent, config.rate))
            started = time.monotonic()
            _say(progress, f"{config.bridges} bridges and {config.workers} workers started, "
                           f"{config.tenants} accounts, ttl {config.ttl:g}s")
            await _until(lambda: all(connections(t)[0] == 1 for t in names),
                         3 * config.ttl + 20, "every account's bot connected")
            _say(progress, f"all accounts running after {time.monotonic() - started:.1f}s")
            await asyncio.sleep(max(0.0, started + config.duration / 3 - time.monotonic()))

            owners = await holders(list(names))
            victim_id = max(bridges, key=owners.count)
            held = [t for t, o in zip(names, owners, strict=True) if o == victim_id]
            live.pop(victim_id).kill()
            killed_at = time.monotonic()
            summary.killed_bridge = f"{victim_id} holding {len(held)} accounts"
            _say(progress, f"killed bridge {victim_id} (SIGKILL) holding {len(held)} accounts")
            while not all(o in live for o in await holders(held)) or \
                    not all(connections(t)[0] == 1 for t in held):
                if time.monotonic() - killed_at > 3 * config.ttl + 20:
                    raise DemoError("timed out waiting for the bridge takeover")
                await asyncio.sleep(0.05)
            summary.bridge_takeover_seconds = round(time.monotonic() - killed_at, 3)
            _say(progress, f"its accounts served again after "
                           f"{summary.bridge_takeover_seconds:.2f}s")

            await asyncio.sleep(max(0.0, started + 2 * config.duration / 3 - time.monotonic()))
            victim, tenants_held = await _busiest(client, prefix, names, workers)
            before = {t: connections(t)[1] for t in tenants_held}
            victim.process.kill()
            killed_at = time.monotonic()
            summary.killed_worker = victim.name
            summary.killed_tenants = len(tenants_held)
            _say(progress, f"killed worker {victim.name} (SIGKILL) holding "
                           f"{len(tenants_held)} tenants")
            await _until(lambda: all(connections(t)[0] == 1 and connections(t)[1] > before[t]
                                     for t in tenants_held),
                         3 * config.ttl + 20, "worker takeover")
            summary.takeover_seconds = round(time.monotonic() - killed_at, 3)
            _say(progress, f"its tenants run again elsewhere after {summary.takeover_seconds:.2f}s")
            await asyncio.sleep(max(0.0, started + config.duration - time.monotonic()))
            producer.cancel()
            await asyncio.gather(producer, return_exceptions=True)

            async def consumed() -> bool:
                return all([await upstream.pending(t) == 0 for t in names])

            deadline = time.monotonic() + config.drain_timeout
            while not await consumed() and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            last = {t: int(await client.hget(f"{bridge_prefix}:{{{t}}}:logmeta", "last") or 0)
                    for t in names}
            _say(progress, f"traffic stopped: {sum(map(len, sent.values()))} messages sent, "
                           f"{sum(last.values())} events logged; draining")
            coverage = _Coverage(names)
            while True:
                await coverage.read(client, stream)
                if coverage.complete(last) or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.2)
            logged = await _logged_ids(client, bridge_prefix, names)
            summary.messages_sent = sum(map(len, sent.values()))
            missing = sum(len(set(ids) - logged[t]) for t, ids in sent.items())
            summary.upstream_max_concurrent = max((await upstream.max_concurrent()).values(),
                                                  default=0)
            stats = [b.stats() for b in live.values()]
            await _stop_workers([w for w in workers if w is not victim], progress)
            await victim.process.wait()
            victim.close()
            workers = []
    finally:
        if producer is not None:
            producer.cancel()
            await asyncio.gather(producer, return_exceptions=True)
        for w in workers:
            if w.process.returncode is None:
                w.process.kill()
            await w.process.wait()
            w.close()
        await asyncio.gather(*(b.close() for b in live.values()), return_exceptions=True)
        await upstream.close()
    summary.published = sum(last.values())
    coverage.count(last, summary)
    summary.lost += missing
    summary.replaced = sum(s["replaced"] for st in stats for s in st.values())
    summary.max_concurrent = max(s["max_concurrent"] for st in stats for s in st.values())
    summary.reconnects = sum(s["connections_total"] for st in stats for s in st.values())
    _judge(summary)
    return summary


async def _produce(upstream: Any, sent: dict[str, list[str]], rate: float) -> None:
    """Incoming text messages for every account, ``rate`` per second per account."""
    from ..testing.fleet import text_message

    step = 0.1
    n = 0
    while True:
        n += 1
        for tenant, ids in sent.items():
            due = round(n * step * rate) - len(ids)
            new = [f"{tenant}-{len(ids) + i}" for i in range(due)]
            if new:
                await upstream.send(tenant, [text_message(m, f"message {m}") for m in new])
                ids.extend(new)
        await asyncio.sleep(step)


async def _logged_ids(client: Any, prefix: str, names: dict[str, str]) -> dict[str, set[str]]:
    """The message ids in every account's Redis event log."""
    import msgspec

    out: dict[str, set[str]] = {}
    for tenant in names:
        ids: set[str] = set()
        for _, fields in await client.xrange(f"{prefix}:{{{tenant}}}:log"):
            name, data = msgspec.msgpack.decode(fields[b"e"])
            if name == "messages.upsert":
                ids.update(m["key"]["id"] for m in data["messages"])
        out[tenant] = ids
    return out


async def _busiest(client: Any, prefix: str, names: dict[str, str],
                   workers: list[_Worker]) -> tuple[_Worker, list[str]]:
    """The worker holding the most leases, and its tenants."""
    keys = [f"{prefix}:{{{t}}}:lease" for t in names]
    values = await client.mget(keys)
    held: dict[str, list[str]] = {w.name: [] for w in workers}
    for tenant, value in zip(names, values, strict=True):
        if value is not None:
            held.setdefault(value.decode().rpartition("|")[0], []).append(tenant)
    victim = max(workers, key=lambda w: len(held[w.name]))
    return victim, held[victim.name]


async def _until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise DemoError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(0.02)


class _Coverage:
    """Every tenant's stream read so far: seq ranges, deduplicated by seq."""

    def __init__(self, names: dict[str, str]) -> None:
        self.after = dict.fromkeys(names, "-")
        self.seen: dict[str, set[int]] = {t: set() for t in names}
        self.raw: dict[str, int] = dict.fromkeys(names, 0)
        self.entries = 0
        self.partial = 0

    async def read(self, client: Any, stream: str) -> None:
        for tenant in self.after:
            while True:
                start = self.after[tenant]
                entries = await client.xrange(stream.replace("{tenant}", tenant),
                                              min=start if start == "-" else f"({start}",
                                              count=1000)
                if not entries:
                    break
                for entry_id, fields in entries:
                    self.add(tenant, decode_entry(fields))
                    self.after[tenant] = entry_id.decode()

    def add(self, tenant: str, entry: dict[str, Any]) -> None:
        seqs = range(entry["first"], entry["last"] + 1)
        seen = self.seen[tenant]
        new = sum(s not in seen for s in seqs)
        if 0 < new < len(seqs):
            self.partial += 1
        seen.update(seqs)
        self.raw[tenant] += len(seqs)
        self.entries += 1

    def complete(self, last: dict[str, int]) -> bool:
        return all(len(self.seen[t]) >= n for t, n in last.items())

    def count(self, last: dict[str, int], summary: ClusterDemoSummary) -> None:
        expected = {t: set(range(1, n + 1)) for t, n in last.items()}
        summary.processed = sum(len(s) for s in self.seen.values())
        summary.lost = sum(len(expected[t] - self.seen[t]) for t in last)
        extra = sum(len(self.seen[t] - expected[t]) for t in last)  # never published: a bug
        summary.duplicated = extra  # after dedup by seq, any seq counts once
        summary.duplicates_before_dedup = sum(self.raw.values()) - summary.processed
        summary.partial_overlaps = self.partial
        summary.stream_entries = self.entries


def _judge(summary: ClusterDemoSummary) -> None:
    failures = []
    if summary.bridges:
        if summary.bridge_takeover_seconds is None:
            failures.append("no bridge takeover measured")
        elif summary.bridge_takeover_seconds > summary.takeover_bound:
            failures.append(f"bridge takeover took {summary.bridge_takeover_seconds}s "
                            f"(bound {summary.takeover_bound}s)")
        if summary.upstream_max_concurrent > 1:
            failures.append(f"an account had {summary.upstream_max_concurrent} bridges "
                            "connected upstream at once")
    if summary.lost:
        failures.append(f"{summary.lost} event(s) lost")
    if summary.duplicated:
        failures.append(f"{summary.duplicated} event(s) in the streams were never published")
    if summary.replaced:
        failures.append(f"{summary.replaced} connection(s) replaced (two owners)")
    if summary.max_concurrent > 1:
        failures.append(f"a tenant had {summary.max_concurrent} connections at once")
    if summary.takeover_seconds is None:
        failures.append("no takeover measured")
    elif summary.takeover_seconds > summary.takeover_bound:
        failures.append(f"takeover took {summary.takeover_seconds}s "
                        f"(bound {summary.takeover_bound}s)")
    summary.failures = failures
    summary.passed = not failures


def print_summary(summary: ClusterDemoSummary, *, as_json: bool, out: Any = None) -> None:
    """The summary as a rich table, or one JSON object on stdout."""
    rows: list[tuple[str, object]] = [
        ("tenants / workers", f"{summary.tenants} / {summary.workers}"),
        ("lease ttl (s)", summary.ttl),
        ("killed (SIGKILL)", f"{summary.killed_worker} holding {summary.killed_tenants} tenants"),
        ("takeover (s)", f"{summary.takeover_seconds} (bound {summary.takeover_bound})"),
        ("events published", summary.published),
        ("events processed (dedup by seq)", summary.processed),
        ("events lost", summary.lost),
        ("events duplicated after dedup", summary.duplicated),
        ("duplicates before dedup", summary.duplicates_before_dedup),
        ("stream entries (partial overlaps)",
         f"{summary.stream_entries} ({summary.partial_overlaps})"),
        ("reconnects (server side)", summary.reconnects),
        ("connections replaced (440)", summary.replaced),
        ("most connections of one tenant", summary.max_concurrent),
    ]
    if summary.bridges:
        rows[1:1] = [
            ("bridges", summary.bridges),
            ("bridge killed (SIGKILL)", summary.killed_bridge),
            ("bridge takeover (s)", summary.bridge_takeover_seconds),
            ("messages sent upstream", summary.messages_sent),
            ("most bridges upstream for one account", summary.upstream_max_concurrent),
        ]
    render_summary(summary, "rsocket demo --workers: summary", rows,
                   "takeover without double owners, nothing lost", as_json=as_json, out=out)
