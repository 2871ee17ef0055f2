"""Workers sharing tenants through Redis: start it several times, kill one, watch.

    redis-server --port 6379 --save '' &
    rsocket serve --token secret --tenants 6 --rate 20 &
    python examples/redis_workers.py --worker A &
    python examples/redis_workers.py --worker B

Each tenant runs on exactly one worker (the holder of its lease); the workers
split the tenants between them, and a dead worker's tenants are taken over
from the shared cursor within a lease's time to live. Every batch is appended
to the Redis stream ``rsocket:{tenant}``, for consumers downstream.
"""

from __future__ import annotations

import argparse
import asyncio

from rsocket.cluster import LeasedPool, RedisLeases, RedisStreamSink


async def main(redis: str, url: str, tenants: list[str], token: str, worker: str, ttl: float,
               seconds: float) -> None:
    leases = RedisLeases(redis, worker_id=worker, ttl=ttl)
    pool = LeasedPool(leases, capacity=400)  # cursors shared in Redis, fenced by the leases
    sink = RedisStreamSink(redis)
    pool.process(sink, with_seqs=True)
    for tenant in tenants:
        await pool.add(tenant, url, token)
    loop = asyncio.get_running_loop()
    deadline, shown = loop.time() + seconds, None
    try:
        while loop.time() < deadline:
            running = sorted(pool.managers)
            if running != shown:
                print(f"worker {worker} runs {running}", flush=True)
                shown = running
            await asyncio.sleep(0.5)
    finally:
        await pool.close()  # tenants stopped, cursors saved, leases released
        await sink.close()
        await leases.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--url", default="ws://127.0.0.1:8765")
    parser.add_argument("--tenants", default="t1,t2,t3,t4,t5,t6")
    parser.add_argument("--token", default="secret")
    parser.add_argument("--worker", default=None, help="this worker's name")
    parser.add_argument("--ttl", type=float, default=15.0, help="lease time to live, seconds")
    parser.add_argument("--seconds", type=float, default=3600.0)
    args = parser.parse_args()
    asyncio.run(main(args.redis, args.url, args.tenants.split(","), args.token,
                     args.worker, args.ttl, args.seconds))
