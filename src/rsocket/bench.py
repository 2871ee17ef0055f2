"""Quick end-to-end benchmarks behind ``rsocket bench`` (ratios measured in one run).

The socket benchmark pushes the standard event mix from the reference server
through one ``Socket`` to a counting batch handler over loopback, on plain
asyncio and on uvloop when installed. The buffer-core gate lives in
``benchmarks/gate.py`` (a source checkout); ``rsocket bench`` runs it when
it is there.
"""

from __future__ import annotations

import asyncio
import gc
import importlib.util
import os
import sys
import time
import tracemalloc
from pathlib import Path

from ._compat import loop_name, run
from .server import ReferenceServer
from .socket import Socket, SocketConfig
from .workload import Workload

__all__ = ["run_bench", "socket_throughput"]


async def socket_throughput(events: int, *, subprotocol: str = "rsocket.v1.msgpack") -> dict:
    """Events/s from the server through one socket to a counting ``process()`` handler."""
    payloads = list(Workload(1).take(events))
    async with ReferenceServer(tenants={"bench": "token"}, ping_interval=None,
                               compression=None, max_outbound=events + 1) as server:
        sock = Socket(server.url, "bench", "token", config=SocketConfig(subprotocol=subprotocol))
        count = 0

        def counter(batch: dict, seqs: range) -> None:
            nonlocal count
            count += len(seqs)

        sock.ev.process(counter, with_seqs=True)
        await sock.connect()
        gc.collect()
        started = time.perf_counter()
        server.publish_many("bench", payloads)
        async with asyncio.timeout(120):
            while sock.last_seq < events:
                await asyncio.sleep(0.002)
        elapsed = time.perf_counter() - started
        await sock.end()
    return {"loop": loop_name(), "subprotocol": subprotocol.rsplit(".", 1)[-1],
            "events": count, "events_per_s": round(count / elapsed)}


def _rss() -> int:
    """Resident set size of this process, bytes (Linux), else 0."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


async def idle_socket_memory(sockets: int = 200) -> dict:
    """Memory per idle connected socket: tracemalloc and RSS deltas over ``sockets``.

    The server runs in this process too; its per-connection state is counted.
    """
    tenants = {f"t{i}": "token" for i in range(sockets)}
    async with ReferenceServer(tenants=tenants, ping_interval=None, compression=None) as server:
        warm = Socket(server.url, "t0", "token")
        await warm.connect()  # imports, codecs and first-connection caches before measuring
        await warm.end()
        gc.collect()
        tracemalloc.start()
        base_traced, base_rss = tracemalloc.get_traced_memory()[0], _rss()
        opened = [Socket(server.url, t, "token") for t in tenants]
        for sock in opened:
            await sock.connect()
        gc.collect()
        traced, rss = tracemalloc.get_traced_memory()[0] - base_traced, _rss() - base_rss
        tracemalloc.stop()
        for sock in opened:
            await sock.end()
    return {"sockets": sockets, "traced_per_socket": traced // sockets,
            "rss_per_socket": rss // sockets}


def _gate_module() -> object | None:
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "gate.py"
    if not path.exists():
        return None
    spec = importlib.util.spec_from_file_location("rsocket_gate", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_bench(events: int = 20_000, rounds: int = 3) -> int:
    """Run the quick benchmarks and print their tables; returns an exit code."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    status = 0
    gate = _gate_module()
    if gate is not None:
        status = gate.main(["--events", str(events), "--rounds", str(rounds), "--report-only"])
    else:
        console.print("buffer gate: benchmarks/gate.py not found (run from a source checkout)")
    rows = []
    for use_uvloop in (False, True):
        rows.append(run(socket_throughput(events), use_uvloop=use_uvloop))
    table = Table(title=f"socket throughput over loopback ({events} events, msgpack batches of 100)")
    for column in ("loop", "events", "events/s", "vs asyncio"):
        table.add_column(column, justify="right")
    base = rows[0]["events_per_s"]
    for row in rows:
        table.add_row(row["loop"], str(row["events"]), f"{row['events_per_s']:,}",
                      f"{row['events_per_s'] / base:.2f}x")
    console.print(table)
    memory = run(idle_socket_memory(200))
    console.print(
        f"idle connected sockets (client + in-process server): {memory['sockets']}, "
        f"tracemalloc {memory['traced_per_socket'] / 1024:.1f} KiB/socket, "
        f"RSS {memory['rss_per_socket'] / 1024:.1f} KiB/socket"
    )
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run_bench())
