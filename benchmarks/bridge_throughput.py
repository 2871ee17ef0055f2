"""One socket fed by the Baileys bridge vs by the reference server, in the same run.

    python benchmarks/bridge_throughput.py                 # 50k events, 3 rounds
    python benchmarks/bridge_throughput.py --events 20000 --rounds 1
    python benchmarks/bridge_throughput.py --baseline /tmp/old/bridge   # vs an older bridge/

Both servers run in their own process (the reference server as ``scale.py``'s server
process, the bridge as its Node child), so the client process is the same. Per round:

- **replay**: N events of the standard mix are in the tenant's log before the socket
  connects; the time from ``connect()`` to ``last_seq == N`` (the backlog: ``batch``
  frames of 100, acks, the buffer);
- **live**: the socket is connected; the events are published (the bridge: one
  ``ev.emit`` each through Baileys' event emitter, fed over its stdin pipe in chunks of
  1,000) and the time runs until the last one is processed.

Also measured every round: the bridge with its durable log (a file per account,
``--log-dir``), and with ``--baseline DIR`` an older checkout's ``bridge/`` (its
``npm ci`` done), so a change to the bridge is compared in the same run.

Reported: events/s per server and the ratio to the reference server of the same round.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from rsocket import Socket
from rsocket.testing import Workload
from rsocket.testing.bridge import BridgeServer
from scale import ServerProcess


async def _drain(sock: Socket, events: int, started: float) -> float:
    while sock.last_seq < events:
        await asyncio.sleep(0.001)
    return events / (time.perf_counter() - started)


async def _reference(events: int, round_: int) -> tuple[float, float]:
    server = ServerProcess("asyncio", tenants=1)
    await server.start()
    try:
        url = (await server.call("init", tenants=["r0", "r1"]))["url"]
        await server.call("prepare", tenants=["r0"], per_tenant=events, seed=round_)
        await server.call("fire")
        started = time.perf_counter()
        async with Socket(url, "r0", "token-r0") as sock:
            replay = await _drain(sock, events, started)
        async with Socket(url, "r1", "token-r1") as sock:
            await server.call("prepare", tenants=["r1"], per_tenant=events, seed=round_)
            started = time.perf_counter()
            await server.call("fire")
            live = await _drain(sock, events, started)
        return replay, live
    finally:
        await server.stop()


async def _bridge(events: int, round_: int, **options: Any) -> tuple[float, float]:
    async with BridgeServer({"b0": "t", "b1": "t"}, ping_interval=None, **options) as server:
        server.publish_many("b0", Workload(round_).take(events))
        started = time.perf_counter()
        async with Socket(server.url, "b0", "t") as sock:
            replay = await _drain(sock, events, started)
        async with Socket(server.url, "b1", "t") as sock:
            batch = list(Workload(round_).take(events))
            started = time.perf_counter()
            server.publish_many("b1", batch)
            live = await _drain(sock, events, started)
        return replay, live


async def main(events: int, rounds: int, baseline: str | None) -> None:
    servers = ["ref", "bridge", "bridge+file"] + (["baseline"] if baseline else [])
    rows: dict[str, list[float]] = {f"{s} {k}": [] for k in ("replay", "live") for s in servers}
    for round_ in range(1, rounds + 1):  # interleaved: every server every round
        results = {"ref": await _reference(events, round_),
                   "bridge": await _bridge(events, round_)}
        with tempfile.TemporaryDirectory() as logs:
            results["bridge+file"] = await _bridge(events, round_, log_dir=logs)
        if baseline:
            results["baseline"] = await _bridge(events, round_, bridge_dir=baseline)
        for server, (replay, live) in results.items():
            rows[f"{server} replay"].append(replay)
            rows[f"{server} live"].append(live)
        print(f"round {round_}: " + ", ".join(
            f"{s}/ref replay {results[s][0] / results['ref'][0]:.2f} live "
            f"{results[s][1] / results['ref'][1]:.2f}" for s in servers[1:]), flush=True)
    print(f"\n{events:,} events, {rounds} rounds, median events/s:")
    for key, values in rows.items():
        print(f"  {key:<20} {statistics.median(values):>10,.0f}")
    for server in servers[1:]:
        for kind in ("replay", "live"):
            ratios = [b / r for b, r in zip(rows[f"{server} {kind}"], rows[f"ref {kind}"], strict=True)]
            print(f"  {kind} {server}/reference: {', '.join(f'{x:.2f}' for x in ratios)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline", help="an older checkout's bridge/ directory (npm ci done)")
    args = parser.parse_args()
    asyncio.run(main(args.events, args.rounds, args.baseline))
