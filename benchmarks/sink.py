"""The stream sink's cost (docs/SCALING.md): one leased pool with the sink on vs off.

    python benchmarks/sink.py [--redis URL] [--tenants 10] [--events 20000] [--rounds 3]

Without ``--redis`` a throwaway ``redis-server`` is started on loopback. Prints
one JSON object: events/s with the sink off and on (same run, alternating),
and Redis round trips per released batch with the sink on.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from typing import Any

from rsocket._redis import redis_asyncio
from rsocket.apps.redis_local import LocalRedis
from rsocket.apps.runtime import run
from rsocket.cluster import LeasedPool, RedisLeases, RedisStreamSink
from rsocket.testing import ReferenceServer, Workload


async def until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(0.02)
async def bench_sink(redis_url: str, *, tenants: int = 10, events: int = 20_000,
                     rounds: int = 3, chunk: int = 50) -> dict[str, Any]:
    """Throughput of one leased pool with the stream sink on vs off (same run,
    alternating), and Redis round trips per released batch with the sink on."""
    names = {f"b{i:02d}": f"token{i}" for i in range(tenants)}
    results: dict[str, list[float]] = {"off": [], "on": []}
    trips: dict[str, float] = {}
    async with ReferenceServer(tenants=names, ping_interval=None, compression=None) as server:
        for _ in range(rounds):
            for mode in ("off", "on"):
                prefix = f"rsbench-{uuid.uuid4().hex[:8]}"
                leases = RedisLeases(redis_url, f"bench-{mode}", ttl=15.0, prefix=prefix)
                sink = (RedisStreamSink(redis_url, stream=f"{prefix}:{{tenant}}")
                        if mode == "on" else None)
                pool = LeasedPool(leases, watchdog=False)
                released = {"batches": 0}

                def count(tenant: str, batch: Any, seqs: range, released=released) -> None:
                    released["batches"] += bool(seqs)

                pool.process(count, with_seqs=True)
                if sink is not None:
                    pool.process(sink, with_seqs=True)
                for name, token in names.items():
                    await pool.add(name, server.url, token)
                await until(lambda pool=pool: len(pool) == tenants and all(
                    m.connected for m in pool.managers.values()), 30, "bench tenants")
                target = {t: s["last_seq"] + events for t, s in server.stats().items()}
                workloads = {t: Workload(i) for i, t in enumerate(names)}
                started = time.perf_counter()
                for _ in range(events // chunk):
                    for t in names:
                        server.publish_many(t, [next(workloads[t]) for _ in range(chunk)])
                    await asyncio.sleep(0)
                await until(lambda pool=pool, target=target: all(
                    m.socket is not None and m.socket.last_seq >= target[t]
                    for t, m in pool.managers.items()), 120, "bench drain")
                elapsed = time.perf_counter() - started
                results[mode].append(tenants * events / elapsed)
                store = pool.seq_store
                if sink is not None:
                    trips = {
                        "batches": released["batches"],
                        "sink_round_trips": sink.counters["round_trips"],
                        "cursor_saves": store.counters["saves"],
                        "lease_round_trips": leases.counters["renew_round_trips"],
                    }
                await pool.close()
                if sink is not None:
                    await sink.close()
                await leases.close()
                async with redis_asyncio().from_url(redis_url) as client:
                    async for key in client.scan_iter(match=f"{prefix}*", count=1000):
                        await client.delete(key)
    off = sorted(results["off"])[len(results["off"]) // 2]
    on = sorted(results["on"])[len(results["on"]) // 2]
    batches = max(trips.get("batches", 0), 1)
    return {
        "tenants": tenants, "events_per_tenant": events, "rounds": rounds,
        "events_per_s_sink_off": round(off), "events_per_s_sink_on": round(on),
        "ratio_on_off": round(on / off, 3),
        **trips,
        "sink_round_trips_per_batch": round(trips.get("sink_round_trips", 0) / batches, 3),
        "redis_round_trips_per_batch": round(
            sum(trips.get(k, 0) for k in ("sink_round_trips", "cursor_saves",
                                          "lease_round_trips")) / batches, 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="stream sink on vs off (docs/SCALING.md)")
    parser.add_argument("--redis", default=None, help="default: a local redis-server")
    parser.add_argument("--tenants", type=int, default=10)
    parser.add_argument("--events", type=int, default=20_000, help="per tenant and round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    local = LocalRedis() if args.redis is None else None
    try:
        url = args.redis or local.url
        figures = run(bench_sink(url, tenants=args.tenants, events=args.events,
                                 rounds=args.rounds))
    finally:
        if local is not None:
            local.stop()
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
