"""``rsocket bench``: quick benchmarks, ratios measured in one run (works from a wheel).

- the buffer cores: the standard event mix through ``EventBuffer.emit`` on the
  compiled and the pure core, one scope over everything (a), scopes of 100 (b)
  and unbuffered (c), ns/event and compiled/pure;
- the socket: the mix from the reference server through one ``Socket`` to a
  counting batch handler over loopback, on asyncio and on uvloop;
- memory per idle connected socket.

The full gate (thresholds, the Node anchor, the history cache's linearity)
needs a source checkout: ``python benchmarks/gate.py``, which times the
cores with the functions here.
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import os
import pickle
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable
from types import ModuleType
from typing import Any

import msgspec

from .._compat import NO_EXTENSIONS
from ..buffer import Batch, BufferConfig, event_buffer_class
from ..seqs import Seqs
from ..socket import Socket, SocketConfig
from ..testing import ReferenceServer, Workload
from .runtime import loop_name, run

__all__ = [
    "CORES",
    "Copies",
    "count_items",
    "run_bench",
    "run_mode",
    "socket_throughput",
    "timed_round",
]

#: tag -> merge core module
CORES = {"c": "rsocket._buffer", "py": "rsocket._buffer_py"}
#: events per scope in mode (b)
SCOPE = 100


# -- buffer cores -----------------------------------------------------------------------


class Copies:
    """Fresh deep copies of one payload list (merging mutates payloads, so every
    round needs its own).

    ``decode="pickle"``: ``pickle.loads``, the fastest copy. ``decode="msgspec"``:
    msgpack decoded by msgspec, what a socket hands the buffer: the field names
    are then msgspec's own str objects, and every string is a fresh object
    (tuples come back as lists).
    """

    DECODES = ("pickle", "msgspec")

    def __init__(self, payloads: Any, decode: str = "pickle") -> None:
        if decode not in self.DECODES:
            raise ValueError(f"decode must be one of {self.DECODES}, not {decode!r}")
        self.decode = decode
        if decode == "pickle":
            self._blob = pickle.dumps(payloads, protocol=pickle.HIGHEST_PROTOCOL)
        else:
            self._blob = msgspec.msgpack.encode(payloads)

    def __call__(self) -> Any:
        if self.decode == "pickle":
            return pickle.loads(self._blob)
        return msgspec.msgpack.decode(self._blob)


def count_items(counts: Counter[str], batch: Batch) -> None:
    """Add a released batch's items per event type to ``counts``."""
    for name, payload in batch.items():
        if name == "messaging-history.set":
            for field in ("chats", "contacts", "messages"):
                counts[f"history {field}"] += len(payload[field])
        elif name == "messages.upsert":
            counts[name] += len(payload["messages"])
        elif name == "messages.delete":
            counts[name] += len(payload.get("keys") or ()) or 1
        else:
            counts[name] += len(payload)


def run_mode(core: ModuleType, mode: str, events: list[tuple[str, Any]],
             max_history_cache: int = 10_000) -> tuple[float, Counter[str]]:
    """Run mode ``a``, ``b`` or ``c`` over ``events``; (seconds, consolidated counts)."""
    counts: Counter[str] = Counter()
    config = BufferConfig(auto_flush=False, max_history_cache=max_history_cache,
                          max_buffer_items=max(len(events) + 1, 1000) if mode == "a" else 1000)
    ev = event_buffer_class(core)(config=config)
    ev.process(lambda batch: count_items(counts, batch))
    emit = ev.emit
    start = time.perf_counter()
    if mode == "a":
        ev.buffer()
        for name, data in events:
            emit(name, data)
        ev.flush()
    elif mode == "b":
        for first in range(0, len(events), SCOPE):
            ev.buffer()
            for name, data in events[first : first + SCOPE]:
                emit(name, data)
            ev.flush()
    else:
        for name, data in events:
            emit(name, data)
    elapsed = time.perf_counter() - start
    ev.destroy()
    return elapsed, counts


def timed_round(fn: Callable[..., Any], *args: Any, freeze: bool = True) -> Any:
    """``fn(*args)`` after a full collection; with ``freeze``, the survivors are
    frozen out of the collector (a bot's process does not do that: report both)."""
    gc.collect()
    if freeze:
        gc.freeze()
    try:
        return fn(*args)
    finally:
        if freeze:
            gc.unfreeze()


def buffer_ratios(events: int, rounds: int) -> list[dict[str, Any]]:
    """Modes a-c on every available core: best ns/event per (mode, core)."""
    workload = Copies(list(Workload(1).take(events)))
    cores = {"py": importlib.import_module(CORES["py"])}
    if not NO_EXTENSIONS:
        try:
            cores["c"] = importlib.import_module(CORES["c"])
        except ImportError:
            pass
    best: dict[tuple[str, str], float] = {}
    for _ in range(rounds):
        for mode in "abc":
            for tag, core in cores.items():
                seconds, _ = timed_round(run_mode, core, mode, workload())
                key = (mode, tag)
                best[key] = min(best.get(key, float("inf")), seconds / events * 1e9)
    rows = []
    for mode in "abc":
        row: dict[str, Any] = {"mode": mode, "py_ns": round(best[(mode, "py")])}
        if "c" in cores:
            row["c_ns"] = round(best[(mode, "c")])
            row["ratio"] = round(best[(mode, "py")] / best[(mode, "c")], 2)
        rows.append(row)
    return rows


# -- socket ---------------------------------------------------------------------------


async def socket_throughput(events: int, *, subprotocol: str = "rsocket.v1.msgpack") -> dict[str, Any]:
    """Events/s from the server through one socket to a counting ``process()`` handler."""
    payloads = list(Workload(1).take(events))
    async with ReferenceServer(tenants={"bench": "token"}, ping_interval=None,
                               compression=None, max_outbound=events + 1) as server:
        sock = Socket(server.url, "bench", "token", config=SocketConfig(subprotocol=subprotocol))
        count = 0

        def counter(batch: Batch, seqs: Seqs) -> None:
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


async def idle_socket_memory(sockets: int = 200) -> dict[str, Any]:
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


def run_bench(events: int = 20_000, rounds: int = 3) -> int:
    """Run the quick benchmarks and print their tables; returns an exit code."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    labels = {"a": "(a) one scope", "b": f"(b) scopes of {SCOPE}", "c": "(c) unbuffered"}
    table = Table(title=f"buffer cores: standard mix, {events:,} events, best of {rounds} "
                        "(frozen GC)")
    for column in ("mode", "compiled ns/event", "pure ns/event", "compiled/pure"):
        table.add_column(column, justify="right")
    for row in buffer_ratios(events, rounds):
        table.add_row(labels[row["mode"]], str(row.get("c_ns", "-")), str(row["py_ns"]),
                      f"{row['ratio']:.2f}x" if "ratio" in row else "-")
    console.print(table)
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
    console.print("the full gate (thresholds, Baileys on Node): python benchmarks/gate.py "
                  "in a source checkout")
    return 0
