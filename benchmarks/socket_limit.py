"""One socket against the loopback limit: how close does rsocket get to "decode only"?

    python benchmarks/socket_limit.py                  # asyncio and uvloop, 100k events, 3 rounds
    python benchmarks/socket_limit.py --events 20000 --rounds 1 --json

Per loop, in one client process, with the server in its own process (same
loop type, driven over a pipe), interleaved rounds of:

- **limit**: a bare ``websockets`` server sends pre-encoded ``batch`` frames
  (100 events each) as fast as it can to a bare ``websockets`` client that
  only decodes each frame with ``msgspec.msgpack`` and counts the events;
- **rsocket**: the reference server (``scale.py``'s) publishes the same events
  to a ``Socket`` (protocol, buffer, acks, keepalive) with a counting batch
  handler (``ev.process(handler, with_seqs=True)``).

The events are the standard mix (history sets included), live ``batch``
frames of 100 published after the client connected. The figure is events/s,
and the ratio rsocket / limit measured in the same run. The reference server
encodes as it sends, and on two cores it can be the slower side; the "client
CPU ratio" (the limit client's CPU per event over the socket's, best rounds)
is the socket's own cost, whatever the server's speed. Each
round runs after ``gc.collect()`` with the default GC settings, as a bot's
process does; ``--freeze`` adds rounds after ``gc.freeze()``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import sys
import time
from itertools import count
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from scale import ServerProcess

_tenants = count()


# -- the limit: pre-encoded frames, decode and count ---------------------------------------


def limit_server_main(loop: str, events: int) -> None:
    """Child process: serves pre-encoded batch frames to each connection, then closes it."""
    from rsocket.apps.runtime import run

    run(_limit_serve(events), use_uvloop=loop == "uvloop")


async def _limit_serve(events: int) -> None:
    from websockets.asyncio.server import serve

    from rsocket.protocol import ServerSession
    from rsocket.testing import Workload

    stream = list(Workload(1).take(events))
    session = ServerSession()
    session.state = session.state.OPEN  # only its encoder is used
    frames = [session.batch(first + 1, stream[first:first + 100])
              for first in range(0, events, 100)]

    async def handler(ws: Any) -> None:
        await ws.recv()  # "go"
        for frame in frames:
            await ws.send(frame)
        await ws.wait_closed()

    async with serve(handler, "127.0.0.1", 0, compression=None, max_size=1 << 24,
                     ping_interval=None) as srv:
        print(srv.sockets[0].getsockname()[1], flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


async def limit_round(port: int, events: int) -> tuple[float, float]:
    """Events/s of a client that only decodes frames and counts events, and its
    CPU seconds per event."""
    import msgspec
    from websockets.asyncio.client import connect

    decode = msgspec.msgpack.Decoder().decode
    async with connect(f"ws://127.0.0.1:{port}", max_size=1 << 24, compression=None,
                       ping_interval=None) as ws:
        gc.collect()
        started, cpu = time.perf_counter(), time.process_time()
        await ws.send("go")
        seen = 0
        async with asyncio.timeout(300):
            while seen < events:
                frame = decode(await ws.recv())
                seen += len(frame["events"])
        return (events / (time.perf_counter() - started),
                (time.process_time() - cpu) / events)


# -- rsocket: the reference server through Socket ---------------------------------------


async def rsocket_round(server: ServerProcess, url: str, events: int) -> tuple[float, float]:
    """Events/s through Socket, buffer and a counting batch handler, and the
    client's CPU seconds per event."""
    from rsocket.socket import Socket, SocketConfig

    tenant = f"b{next(_tenants)}"
    sock = Socket(url, tenant, f"token-{tenant}", config=SocketConfig(max_frame=1 << 24))
    seen = 0
    done = asyncio.Event()

    def count_events(batch: dict[str, Any], seqs: range) -> None:
        nonlocal seen
        seen += len(seqs)
        if seen >= events:
            done.set()

    sock.ev.process(count_events, with_seqs=True)
    await sock.connect()
    try:
        await server.call("prepare", tenants=[tenant], per_tenant=events)
        gc.collect()
        started, cpu = time.perf_counter(), time.process_time()
        await server.call("fire")
        async with asyncio.timeout(300):
            await done.wait()
        return (events / (time.perf_counter() - started),
                (time.process_time() - cpu) / events)
    finally:
        await sock.end()


async def client_main(events: int, rounds: int, freeze: bool) -> dict[str, Any]:
    from rsocket.apps.runtime import loop_name

    loop = loop_name()
    server = ServerProcess(loop)
    await server.start()
    limiter = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--limit-server", "--loop", loop, "--events", str(events),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    assert limiter.stdout is not None and limiter.stdin is not None
    tenants = [f"b{i}" for i in range(4 * rounds + 4)]
    try:
        port = int(await limiter.stdout.readline())
        url = (await server.call("init", tenants=tenants))["url"]
        await rsocket_round(server, url, 2000)  # warm-up: imports, codecs, caches
        result: dict[str, Any] = {"loop": loop, "events": events}
        modes = ["default", "frozen"] if freeze else ["default"]
        for mode in modes:
            limits, ours, limit_cpu, our_cpu = [], [], [], []
            if mode == "frozen":
                gc.freeze()
            for _ in range(rounds):
                rate, cpu = await limit_round(port, events)
                limits.append(rate)
                limit_cpu.append(cpu)
                rate, cpu = await rsocket_round(server, url, events)
                ours.append(rate)
                our_cpu.append(cpu)
            if mode == "frozen":
                gc.unfreeze()
            ratios = [o / lim for o, lim in zip(ours, limits, strict=True)]
            result[mode] = {
                "limit_events_per_s": round(max(limits)),
                "rsocket_events_per_s": round(max(ours)),
                "ratio_best": round(max(ours) / max(limits), 3),
                "ratio_median": round(statistics.median(ratios), 3),
                # the client's own cost, whatever the server's speed: CPU per event
                "cpu_ratio": round(min(limit_cpu) / min(our_cpu), 3),
            }
        return result
    finally:
        limiter.stdin.close()
        await limiter.wait()
        await server.stop()


def run_loop(loop: str, args: argparse.Namespace) -> dict[str, Any]:
    import subprocess

    cmd = [sys.executable, __file__, "--client", "--loop", loop, "--events", str(args.events),
           "--rounds", str(args.rounds)] + (["--freeze"] if args.freeze else [])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=1800).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--loop", choices=("asyncio", "uvloop", "both"), default="both")
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--freeze", action="store_true", help="also rounds after gc.freeze()")
    p.add_argument("--json", action="store_true")
    p.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--limit-server", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.limit_server:
        limit_server_main(args.loop, args.events)
        return 0
    if args.client:
        from rsocket.apps.runtime import run

        result = run(client_main(args.events, args.rounds, args.freeze),
                     use_uvloop=args.loop == "uvloop")
        print(json.dumps(result))
        return 0
    loops = ["asyncio", "uvloop"] if args.loop == "both" else [args.loop]
    results = [run_loop(loop, args) for loop in loops]
    if args.json:
        print(json.dumps(results))
        return 0
    print(f"one socket vs the loopback limit: {args.events:,} events of the standard mix, "
          f"batch frames of 100, server in its own process; best of {args.rounds}")
    print(f"{'loop':<9}{'gc':<9}{'limit ev/s':>12}{'rsocket ev/s':>14}{'ratio':>8}{'median':>8}"
          f"{'client CPU ratio':>18}")
    for r in results:
        for mode in ("default", "frozen"):
            if mode in r:
                m = r[mode]
                print(f"{r['loop']:<9}{mode:<9}{m['limit_events_per_s']:>12,}"
                      f"{m['rsocket_events_per_s']:>14,}{m['ratio_best']:>8.2f}"
                      f"{m['ratio_median']:>8.2f}{m['cpu_ratio']:>18.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
