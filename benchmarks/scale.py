"""Scale benchmark: 1,000 tenants in one process against the reference server.

    python benchmarks/scale.py                       # 1,000 tenants, asyncio then uvloop
    python benchmarks/scale.py --loop asyncio        # one loop only
    python benchmarks/scale.py --tenants 200 --json  # smaller, machine-readable
    python benchmarks/scale.py --tracemalloc         # + Python-heap bytes per idle tenant
    python benchmarks/scale.py --tenants 10000 --per-tenant 10 --rate 0.5   # 10,000 tenants

Each loop runs in a fresh client process (so RSS baselines are clean); the
reference server runs in its own child process (so the client's RSS and CPU
are the library's alone), driven over a pipe, on the same loop type. Only
127.0.0.1 is used and every phase is bounded by a timeout.

Phases, per loop:

1. baseline: one warm-up socket connected and ended (imports, codecs), then
   ``gc.collect()`` and the process RSS (``VmRSS``).
2. connect: ``TenantPool.add`` for every tenant at once (admission 32):
   time until all are open; RSS and GC-tracked objects per idle connected
   tenant ((after - baseline) / tenants); then ``--idle`` seconds of nothing
   but keepalives (default settings: a ping every 30 s): client CPU per idle
   tenant per minute.
3. throughput: the server publishes ``--per-tenant`` events of the standard
   mix (``Workload(1)``, split across tenants) to every tenant at once; time
   until every event is processed by a counting ``pool.process()`` handler;
   client CPU per 10k events (``time.process_time``).
4. storm: traffic at ``--rate`` events/s per tenant, then a TCP drop of
   every connection at once; time until all are open again, peak concurrent
   handshakes (``Socket.connect`` calls in flight), breaker states during and
   after, live buffers vs live sockets sampled every 5 ms, then traffic stops
   and every tenant drains: events lost and duplicated from per-tenant seq
   accounting.
5. single: the same path (pool, server process, counting handler) with one
   tenant and ``--single-events`` events: the single-socket figure measured in
   the same harness; the in-process ``rsocket.apps.bench.socket_throughput`` figure
   (issue #5's benchmark) is reported beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import cProfile
import gc
import io
import json
import pstats
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def raise_nofile(needed: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    if soft < needed:
        raise SystemExit(f"open-file limit {soft} < {needed} needed (hard limit {hard})")
    return soft


# -- the server process ------------------------------------------------------------------


def serve_main(loop: str, tenants: int) -> None:
    """Child process: a ReferenceServer driven by JSON lines on stdin/stdout."""
    from rsocket.apps.runtime import run

    raise_nofile(tenants + 256)  # one socket per tenant, in this process
    run(_serve(), use_uvloop=loop == "uvloop")


async def _serve() -> None:
    from rsocket.testing import ReferenceServer, Workload

    loop = asyncio.get_running_loop()
    commands: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    def pump() -> None:  # stdin is read by a thread: works on asyncio and uvloop alike
        for line in sys.stdin:
            loop.call_soon_threadsafe(commands.put_nowait, json.loads(line))
        loop.call_soon_threadsafe(commands.put_nowait, {"op": "quit"})

    threading.Thread(target=pump, daemon=True).start()
    server: ReferenceServer | None = None
    prepared: dict[str, list[tuple[str, Any]]] = {}

    def reply(**kw: Any) -> None:
        sys.stdout.write(json.dumps(kw) + "\n")
        sys.stdout.flush()

    while True:
        cmd = await commands.get()
        op = cmd["op"]
        if op == "init":
            tenants = {name: f"token-{name}" for name in cmd["tenants"]}
            server = ReferenceServer(tenants=tenants, ping_interval=None, compression=None,
                                     max_outbound=1_000_000, close_timeout=2.0)
            await server.start()
            reply(url=server.url)
        elif op == "prepare":  # per tenant: a slice of one standard-mix stream
            names, per = cmd["tenants"], cmd["per_tenant"]
            events = list(Workload(cmd.get("seed", 1)).take(per * len(names)))
            prepared = {n: events[i * per:(i + 1) * per] for i, n in enumerate(names)}
            reply(events=len(events))
        elif op == "fire":
            assert server is not None
            total = sum(len(server.publish_many(n, evs)) for n, evs in prepared.items())
            prepared = {}
            reply(published=total)
        elif op == "traffic":
            assert server is not None
            server.start_traffic(cmd["rate"], cmd["tenants"], seed=cmd.get("seed", 1))
            reply(ok=True)
        elif op == "stop_traffic":
            assert server is not None
            server.stop_traffic()
            reply(ok=True)
        elif op == "inject":
            assert server is not None
            for name in cmd["tenants"]:
                server.inject(name, cmd["fault"], **cmd.get("kw", {}))
            reply(ok=True)
        elif op == "stats":
            assert server is not None
            stats = server.stats()
            reply(last_seq={n: s["last_seq"] for n, s in stats.items()},
                  max_concurrent=max(s["max_concurrent"] for s in stats.values()),
                  replaced=sum(s["replaced"] for s in stats.values()),
                  cpu=time.process_time(), rss_kib=rss_kib())
        elif op == "quit":
            if server is not None:
                await server.close()
            reply(ok=True)
            return


class ServerProcess:
    """The client side of the server process's pipe."""

    def __init__(self, loop_name: str, tenants: int = 1000) -> None:
        self.loop_name = loop_name
        self.tenants = tenants
        self.proc: asyncio.subprocess.Process | None = None
        self.lock = asyncio.Lock()

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--serve", "--loop", self.loop_name,
            "--tenants", str(self.tenants),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            limit=1 << 30,  # a reply is one line, of any size (stats of 10,000 tenants)
        )

    async def call(self, op: str, timeout: float = 60.0, **kw: Any) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdin and self.proc.stdout
        async with self.lock, asyncio.timeout(timeout):
            self.proc.stdin.write((json.dumps({"op": op, **kw}) + "\n").encode())
            await self.proc.stdin.drain()
            line = await self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"server process died during {op!r}")
        return json.loads(line)

    async def stop(self) -> None:
        if self.proc is None:
            return
        try:
            await self.call("quit", timeout=30)
        finally:
            try:
                async with asyncio.timeout(10):
                    await self.proc.wait()
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


# -- the client process -------------------------------------------------------------------


class Ledger:
    """Per-tenant seq accounting of what the application handler got."""

    def __init__(self) -> None:
        self.last: dict[str, int] = collections.defaultdict(int)
        self.processed = 0
        self.lost = 0  # seqs skipped (a gap in what the handler saw)
        self.duplicated = 0
        self.target = 0
        self.reached = asyncio.Event()

    def __call__(self, tenant: str, batch: dict[str, Any], seqs: range) -> None:
        if not seqs:
            return
        last = self.last[tenant]
        if seqs.start > last + 1:
            self.lost += seqs.start - last - 1
        if seqs.start <= last:
            self.duplicated += min(last, seqs.stop - 1) - seqs.start + 1
        if seqs.stop - 1 > last:
            self.processed += seqs.stop - 1 - max(last, seqs.start - 1)
            self.last[tenant] = seqs.stop - 1
        if self.target and self.processed >= self.target:
            self.reached.set()

    def expect(self, total: int) -> asyncio.Event:
        self.target = total
        self.reached = asyncio.Event()
        if self.processed >= total:
            self.reached.set()
        return self.reached


class HandshakeCounter:
    """Counts ``Socket.connect`` calls in flight (wraps the method for this process)."""

    def __init__(self) -> None:
        import rsocket.socket

        self.now = self.peak = self.calls = 0
        self.starts: list[float] = []
        original = rsocket.socket.Socket.connect
        counter = self

        async def connect(sock: Any) -> None:
            counter.now += 1
            counter.calls += 1
            counter.peak = max(counter.peak, counter.now)
            counter.starts.append(time.perf_counter())
            try:
                await original(sock)
            finally:
                counter.now -= 1

        rsocket.socket.Socket.connect = connect  # type: ignore[method-assign]

    def reset(self) -> None:
        self.peak = self.now
        self.calls = 0
        self.starts = []


class GcTimer:
    """Wall time spent in the cyclic GC, per generation (``gc.callbacks``)."""

    def __init__(self) -> None:
        self.seconds = [0.0, 0.0, 0.0]
        self.count = [0, 0, 0]
        self._t0 = 0.0
        gc.callbacks.append(self._callback)

    census: list[str] | None = None  # set to [] to record the types in gen2 at its next collection

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            if self.census == [] and info["generation"] == 2:
                objs = gc.get_objects(2)
                top = collections.Counter(type(o).__qualname__ for o in objs).most_common(8)
                self.census = [f"{len(objs)} objects in gen2"] + [f"{n} {c}" for n, c in top]
            self._t0 = time.perf_counter()
        else:
            self.seconds[info["generation"]] += time.perf_counter() - self._t0
            self.count[info["generation"]] += 1

    def reset(self) -> None:
        self.seconds = [0.0, 0.0, 0.0]
        self.count = [0, 0, 0]

    def report(self, events: int) -> dict[str, Any]:
        return {"gc_ms_per_10k": round(sum(self.seconds) / events * 1e7, 1),
                "gc_collections": list(self.count),
                "gc_ms_by_generation": [round(s * 1000, 1) for s in self.seconds]}


async def until(predicate: Callable[[], bool], timeout: float, step: float = 0.005) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(step)


def config_socket() -> Any:
    from rsocket import BufferConfig
    from rsocket.socket import SocketConfig

    # defaults, except a connect timeout that leaves room for 1,000 queued handshakes
    return SocketConfig(connect_timeout=30.0, buffer=BufferConfig(auto_flush_timeout=5.0))


async def client_main(args: argparse.Namespace) -> dict[str, Any]:
    import rsocket
    from rsocket.apps.bench import socket_throughput
    from rsocket.apps.runtime import loop_name
    from rsocket.pool import TenantPool
    from rsocket.socket import Socket

    loop = loop_name()
    handshakes = HandshakeCounter()
    gc_timer = GcTimer()
    n = args.tenants
    names = [f"t{i}" for i in range(n)]
    result: dict[str, Any] = {"loop": loop, "tenants": n}
    server = ServerProcess(loop, n + 2)
    await server.start()
    try:
        url = (await server.call("init", tenants=[*names, "warm", "solo"]))["url"]

        # 1. baseline
        warm = Socket(url, "warm", "token-warm", config=config_socket())
        await warm.connect()
        await server.call("prepare", tenants=["warm"], per_tenant=200)
        await server.call("fire")
        await until(lambda: warm.last_seq >= 200, 30)
        await warm.end()
        warm = None
        ledger = Ledger()
        pool = TenantPool(max_concurrent_connects=32, socket_config=config_socket())
        pool.process(ledger, with_seqs=True)
        base_live = rsocket.live_buffers()
        gc.collect()
        await asyncio.sleep(0.5)
        gc.collect()
        base_objects = len(gc.get_objects())
        base_rss = rss_kib()
        if args.tracemalloc:
            import tracemalloc

            tracemalloc.start(1)
            gc.collect()
            snap0 = tracemalloc.take_snapshot()
            traced0 = tracemalloc.get_traced_memory()[0]

        # 2. connect all
        handshakes.reset()
        started = time.perf_counter()
        adds = [asyncio.create_task(pool.add(name, url, f"token-{name}")) for name in names]
        async with asyncio.timeout(300):
            await asyncio.gather(*adds)
        del adds  # 10,000 finished tasks are the harness's objects, not the tenants'
        await until(lambda: all(m.connected for m in pool.managers.values()), 60)
        result["connect_all_s"] = round(time.perf_counter() - started, 3)
        result["connected"] = sum(m.connected for m in pool.managers.values())
        result["connect_peak_handshakes"] = handshakes.peak
        await asyncio.sleep(6.0)  # idle: connect-time timers (auto-flush, 5 s) gone
        gc.collect()
        await asyncio.sleep(0.2)
        gc.collect()
        result["gc_objects_per_tenant"] = round((len(gc.get_objects()) - base_objects) / n, 1)
        rss = rss_kib()
        if args.idle:  # nothing but keepalives: their cost per idle tenant
            cpu0 = time.process_time()
            await asyncio.sleep(args.idle)
            cpu = time.process_time() - cpu0
            result["idle_s"] = args.idle
            result["keepalive_cpu_us_per_tenant_min"] = round(cpu / n / (args.idle / 60) * 1e6, 1)
            result["idle_connected"] = sum(m.connected for m in pool.managers.values())
        result["rss_baseline_mib"] = round(base_rss / 1024, 1)
        result["rss_connected_mib"] = round(rss / 1024, 1)
        result["rss_per_tenant_kib"] = round((rss - base_rss) / n, 1)
        result["live_buffers"] = rsocket.live_buffers() - base_live
        if args.tracemalloc:
            traced = tracemalloc.get_traced_memory()[0]
            result["traced_per_tenant_kib"] = round((traced - traced0) / n / 1024, 1)
            top = tracemalloc.take_snapshot().compare_to(snap0, "lineno")[:12]
            result["traced_top"] = [f"{s.size_diff / n:8.0f} B/tenant  {s.traceback}" for s in top]
            tracemalloc.stop()

        if args.gc == "freeze":  # application-side tuning: long-lived objects out of the GC's scans
            gc.freeze()
        elif args.gc == "tuned":  # application-side tuning: freeze, and fewer young collections
            gc.freeze()
            gc.set_threshold(50_000, 20, 100)
        elif args.gc == "off":  # diagnosis only: how much of the aggregate phase is the GC
            gc.disable()
        # 3. throughput, all tenants at once
        per = args.per_tenant
        await server.call("prepare", tenants=names, per_tenant=per, seed=2, timeout=300)
        total = per * n
        ledger.processed = 0
        reached = ledger.expect(total)
        gc.collect()
        gc_timer.reset()
        if args.gc_census:
            gc_timer.census = []
        if args.profile:
            profiler = cProfile.Profile()
            profiler.enable()
        cpu0, srv0 = time.process_time(), (await server.call("stats"))["cpu"]
        started = time.perf_counter()
        await server.call("fire", timeout=300)
        async with asyncio.timeout(600):
            await reached.wait()
        elapsed = time.perf_counter() - started
        if args.profile:
            profiler.disable()
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(25)
            result["profile"] = out.getvalue().splitlines()
        result.update({f"agg_{k}": v for k, v in gc_timer.report(total).items()})
        if args.gc_census:
            result["gc_census"] = gc_timer.census
            gc_timer.census = None
        cpu = time.process_time() - cpu0
        srv_cpu = (await server.call("stats"))["cpu"] - srv0
        result["agg_events"] = total
        result["agg_events_per_s"] = round(total / elapsed)
        result["agg_client_cpu_ms_per_10k"] = round(cpu / total * 10_000 * 1000, 1)
        result["agg_server_cpu_ms_per_10k"] = round(srv_cpu / total * 10_000 * 1000, 1)

        # 4. reconnect storm under traffic
        if not args.no_storm:
            await storm(args, result, server, pool, ledger, handshakes, names, base_live)
        await pool.destroy_all()
        result["live_buffers_after_destroy"] = rsocket.live_buffers() - base_live

        # 5. single socket, same harness
        solo = Ledger()
        pool = TenantPool(socket_config=config_socket())
        pool.process(solo, with_seqs=True)
        await pool.add("solo", url, "token-solo")
        await server.call("prepare", tenants=["solo"], per_tenant=args.single_events, seed=2)
        reached = solo.expect(args.single_events)
        gc.collect()
        gc_timer.reset()
        if args.gc_census:
            gc_timer.census = []
        if args.profile:
            profiler = cProfile.Profile()
            profiler.enable()
        cpu0 = time.process_time()
        started = time.perf_counter()
        await server.call("fire")
        async with asyncio.timeout(300):
            await reached.wait()
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu0
        if args.profile:
            profiler.disable()
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(25)
            result["profile"] += ["--- single ---", *out.getvalue().splitlines()]
        result.update({f"single_{k}": v for k, v in gc_timer.report(args.single_events).items()})
        await pool.destroy_all()
        result["single_events_per_s"] = round(args.single_events / elapsed)
        result["single_client_cpu_ms_per_10k"] = round(cpu / args.single_events * 1e7, 1)
        result["agg_vs_single"] = round(result["agg_events_per_s"] / result["single_events_per_s"], 3)
    finally:
        await server.stop()
    inproc = await socket_throughput(args.bench_events)
    result["single_inprocess_events_per_s"] = inproc["events_per_s"]
    result["agg_vs_single_inprocess"] = round(
        result["agg_events_per_s"] / inproc["events_per_s"], 3)
    return result


async def storm(args: argparse.Namespace, result: dict[str, Any], server: ServerProcess,
                pool: Any, ledger: Ledger, handshakes: HandshakeCounter, names: list[str],
                base_live: int) -> None:
    """Phase 4: drop every connection at once under traffic."""
    import rsocket

    n = len(names)
    await server.call("traffic", rate=args.rate, tenants=names, seed=3)
    await asyncio.sleep(2.0)
    samples = 0
    violations: list[tuple[int, int]] = []
    breaker_peak: collections.Counter[str] = collections.Counter()
    connected_min = n
    waiting_peak = 0
    stop_sampling = asyncio.Event()

    sample_cost = 0.0

    def sample() -> None:
        # one pass, no await: a consistent snapshot of the loop's state
        nonlocal samples, connected_min, waiting_peak, sample_cost
        t0 = time.perf_counter()
        live = rsocket.live_buffers() - base_live
        sockets = connected = waiting = 0
        states: collections.Counter[str] = collections.Counter()
        for m in pool._managers.values():
            sock = m.socket
            if sock is not None and not sock.ev.destroyed:
                sockets += 1
                connected += sock.state == "open"
            waiting += m.waiting_admission
            states[m.breaker.state] += 1
        if live != sockets or live > n:
            violations.append((live, sockets))
        for state, count in states.items():
            breaker_peak[str(state)] = max(breaker_peak[str(state)], count)
        connected_min = min(connected_min, connected)
        waiting_peak = max(waiting_peak, waiting)
        samples += 1
        sample_cost += time.perf_counter() - t0

    async def sampler() -> None:
        while not stop_sampling.is_set():
            sample()
            await asyncio.sleep(args.sample_every)

    sampling = asyncio.create_task(sampler())
    handshakes.reset()
    reconnects0 = sum(m.reconnects for m in pool.managers.values())
    started = time.perf_counter()
    await server.call("inject", tenants=names, fault="drop")
    await until(lambda: sum(m.connected for m in pool.managers.values()) < n, 10, 0.001)
    try:
        await until(lambda: all(m.connected for m in pool.managers.values()), args.storm_timeout)
    except TimeoutError:  # report who is still down, and why, instead of a bare timeout
        down = collections.Counter(
            f"{m.state}/{m.breaker.state}/{m.last_disconnect.status_code if m.last_disconnect else '-'}"
            for m in pool.managers.values() if not m.connected)
        result["storm_still_down"] = dict(down.most_common(10))
        where = collections.Counter(_where(m) for m in pool.managers.values() if not m.connected)
        result["storm_still_down_where"] = dict(where.most_common(10))
        print(f"storm: where they are: {dict(where.most_common(10))}; admission free "
              f"{pool._admission._value}", file=sys.stderr, flush=True)
        print(f"storm: {sum(down.values())} tenant(s) not open after {args.storm_timeout}s: "
              f"{dict(down.most_common(10))}", file=sys.stderr, flush=True)
        raise
    result["storm_all_open_s"] = round(time.perf_counter() - started, 3)
    result["storm_reconnects"] = sum(m.reconnects for m in pool.managers.values()) - reconnects0
    result["storm_peak_handshakes"] = handshakes.peak
    result["storm_handshakes"] = handshakes.calls
    spread = [t - started for t in handshakes.starts]
    result["storm_first_last_handshake_s"] = (
        [round(min(spread), 3), round(max(spread), 3)] if spread else None)
    await asyncio.sleep(1.0)
    await server.call("stop_traffic")
    last = (await server.call("stats"))["last_seq"]
    await until(lambda: all(ledger.last[t] >= last[t] for t in names), 120, 0.02)
    stop_sampling.set()
    await sampling
    sample()
    srv = await server.call("stats")
    result["storm_connected_min"] = connected_min
    result["storm_waiting_admission_peak"] = waiting_peak
    result["storm_breakers_peak"] = dict(breaker_peak)
    result["storm_breakers_after"] = dict(collections.Counter(
        str(m.breaker.state) for m in pool.managers.values()))
    result["storm_samples"] = samples
    result["storm_sampling_cpu_s"] = round(sample_cost, 3)
    result["storm_live_vs_sockets_violations"] = len(violations)
    result["events_published_total"] = sum(last[t] for t in names)
    result["events_lost"] = ledger.lost + sum(max(0, last[t] - ledger.last[t]) for t in names)
    result["events_duplicated"] = ledger.duplicated
    result["server_max_concurrent_per_tenant"] = srv["max_concurrent"]
    result["server_rss_mib"] = round(srv["rss_kib"] / 1024, 1)


def _where(m: Any) -> str:
    """Where a manager that is not open is: admission, the socket's phase, the wire."""
    if m.waiting_admission:
        return "waiting admission"
    sock = m.socket
    if sock is None:
        return f"no socket ({m.state})"
    wire = sock._wire
    phase = "ending" if sock._end_task is not None and not sock._end_task.done() else sock.state
    if wire is None:
        return f"socket {phase}, no wire"
    return (f"socket {phase}, wire {wire.protocol.state.name}, gone={wire._gone}, "
            f"ready_waited={sock._ready is not None}")


def run_one(args: argparse.Namespace) -> dict[str, Any]:
    from rsocket.apps.runtime import run

    raise_nofile(args.tenants + 256)  # one socket per tenant (the server has its own process)
    return run(client_main(args), use_uvloop=args.loop == "uvloop")


ROWS = [
    ("tenants connected", "connected", ""),
    ("time to connect all (s)", "connect_all_s", ""),
    ("peak concurrent handshakes (connect)", "connect_peak_handshakes", ""),
    ("RSS baseline (MiB)", "rss_baseline_mib", ""),
    ("RSS, all connected and idle (MiB)", "rss_connected_mib", ""),
    ("RSS per idle connected tenant (KiB)", "rss_per_tenant_kib", "<= 24"),
    ("GC-tracked objects per idle tenant", "gc_objects_per_tenant", "<= 60"),
    ("keepalive CPU per idle tenant per minute (us)", "keepalive_cpu_us_per_tenant_min", ""),
    ("tenants still open after the idle period", "idle_connected", ""),
    ("Python heap per idle tenant (KiB, tracemalloc)", "traced_per_tenant_kib", ""),
    ("aggregate events/s (all tenants, standard mix)", "agg_events_per_s", ""),
    ("single-socket events/s (same harness)", "single_events_per_s", ""),
    ("aggregate / single (same harness)", "agg_vs_single", ">= 0.80"),
    ("single-socket events/s (in-process bench #5, 20k events)", "single_inprocess_events_per_s", ""),
    ("aggregate / single (in-process bench)", "agg_vs_single_inprocess", ""),
    ("client CPU ms per 10k events (aggregate)", "agg_client_cpu_ms_per_10k", ""),
    ("client CPU ms per 10k events (single)", "single_client_cpu_ms_per_10k", ""),
    ("cyclic GC ms per 10k events (aggregate)", "agg_gc_ms_per_10k", ""),
    ("cyclic GC ms per 10k events (single)", "single_gc_ms_per_10k", ""),
    ("server CPU ms per 10k events (aggregate)", "agg_server_cpu_ms_per_10k", ""),
    ("storm: time until all open again (s)", "storm_all_open_s", ""),
    ("storm: reconnects", "storm_reconnects", ""),
    ("storm: first/last handshake after drop (s)", "storm_first_last_handshake_s", ""),
    ("storm: peak concurrent handshakes", "storm_peak_handshakes", "<= 32"),
    ("storm: peak waiting for admission", "storm_waiting_admission_peak", ""),
    ("storm: fewest connected", "storm_connected_min", ""),
    ("storm: breaker states, peak count", "storm_breakers_peak", ""),
    ("storm: breaker states after", "storm_breakers_after", ""),
    ("storm: live buffers != sockets (samples)", "storm_live_vs_sockets_violations", "0"),
    ("storm: samples taken", "storm_samples", ""),
    ("storm: CPU spent sampling (s)", "storm_sampling_cpu_s", ""),
    ("events published (all phases)", "events_published_total", ""),
    ("events lost", "events_lost", "0"),
    ("events duplicated", "events_duplicated", "0"),
    ("server max connections per tenant", "server_max_concurrent_per_tenant", "1"),
    ("live buffers after destroy_all", "live_buffers_after_destroy", "0"),
]


def print_table(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    loops = [r["loop"] for r in results]
    print(f"scale: {args.tenants} tenants, {args.per_tenant} events/tenant burst, "
          f"storm traffic {args.rate:g} ev/s/tenant, single {args.single_events} events\n")
    header = "| metric | " + " | ".join(loops) + " | target |"
    print(header)
    print("|" + "---|" * (len(loops) + 2))
    for label, key, target in ROWS:
        if all(key not in r for r in results):
            continue
        cells = []
        for r in results:
            v = r.get(key, "")
            if isinstance(v, dict):
                v = ", ".join(f"{k} {c}" for k, c in sorted(v.items()))
            elif isinstance(v, int) and v >= 10_000:
                v = f"{v:,}"
            cells.append(str(v))
        print(f"| {label} | " + " | ".join(cells) + f" | {target} |")
    if len(results) == 2 and all(r.get("agg_events_per_s") for r in results):
        a, b = results
        storm = (f", storm time {b['storm_all_open_s'] / a['storm_all_open_s']:.2f}x"
                 if a.get("storm_all_open_s") and b.get("storm_all_open_s") else "")
        print(f"\n{b['loop']} / {a['loop']}: aggregate "
              f"{b['agg_events_per_s'] / a['agg_events_per_s']:.2f}x, single "
              f"{b['single_events_per_s'] / a['single_events_per_s']:.2f}x{storm}")
    for r in results:
        for line in r.get("traced_top", []):
            print(f"  [{r['loop']}] {line}")
        for phase in ("agg", "single"):
            if f"{phase}_gc_collections" in r:
                print(f"  [{r['loop']}] {phase}: gc collections (gen0, gen1, gen2) "
                      f"{r[f'{phase}_gc_collections']}, ms {r[f'{phase}_gc_ms_by_generation']}")
        for line in r.get("gc_census") or []:
            print(f"  [{r['loop']}] gen2 census: {line}")
        for line in r.get("profile", []):
            print(f"  [{r['loop']}] {line}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--loop", choices=("asyncio", "uvloop", "both"), default="both")
    p.add_argument("--tenants", type=int, default=1000)
    p.add_argument("--per-tenant", type=int, default=100, help="burst events per tenant")
    p.add_argument("--single-events", type=int, default=0,
                   help="events for the single-socket run (default: tenants x per-tenant)")
    p.add_argument("--bench-events", type=int, default=20_000,
                   help="events for the in-process socket_throughput run (issue #5's figure)")
    p.add_argument("--rate", type=float, default=5.0, help="storm traffic, events/s per tenant")
    p.add_argument("--storm-timeout", type=float, default=300.0,
                   help="seconds the storm phase waits for every tenant to be open again")
    p.add_argument("--idle", type=float, default=60.0,
                   help="seconds idle after connecting, for the keepalive CPU (0: skip)")
    p.add_argument("--tracemalloc", action="store_true")
    p.add_argument("--no-storm", action="store_true", help="skip the reconnect storm")
    p.add_argument("--gc", choices=("default", "freeze", "tuned", "off"), default="default",
                   help="freeze: gc.freeze() once all tenants are connected; tuned: freeze and "
                        "gc.set_threshold(50_000, 20, 100); off: gc.disable() (diagnosis)")
    p.add_argument("--sample-every", type=float, default=0.01, help="storm sampling interval, s")
    p.add_argument("--gc-census", action="store_true",
                   help="types of the objects in gen2 at the first full collection of the burst")
    p.add_argument("--profile", action="store_true", help="cProfile the aggregate phase")
    p.add_argument("--json", action="store_true", help="print the results as JSON lines")
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.single_events = args.single_events or args.tenants * args.per_tenant
    if args.serve:
        serve_main(args.loop, args.tenants)
        return 0
    if args.one:
        print(json.dumps(run_one(args)), flush=True)
        return 0
    loops = ["asyncio", "uvloop"] if args.loop == "both" else [args.loop]
    results = []
    for loop in loops:
        cmd = [sys.executable, __file__, "--one", "--loop", loop, "--tenants", str(args.tenants),
               "--per-tenant", str(args.per_tenant), "--single-events", str(args.single_events),
               "--bench-events", str(args.bench_events),
               "--rate", str(args.rate)] + (["--tracemalloc"] if args.tracemalloc else [])
        cmd += ["--profile"] if args.profile else []
        cmd += ["--no-storm"] if args.no_storm else []
        cmd += ["--gc-census"] if args.gc_census else []
        cmd += ["--gc", args.gc, "--sample-every", str(args.sample_every),
                "--idle", str(args.idle), "--storm-timeout", str(args.storm_timeout)]
        out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, timeout=3600)
        if out.returncode != 0:
            print(f"{loop}: the client process failed (exit {out.returncode}); see stderr",
                  file=sys.stderr)
            results.append({"loop": loop, "tenants": args.tenants, "connected": 0, "failed": True})
            continue
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    if args.json:
        for r in results:
            print(json.dumps(r))
    else:
        print_table(results, args)
    ok = all(r["connected"] == r["tenants"] and r.get("events_lost", 0) == 0
             and r.get("storm_live_vs_sockets_violations", 0) == 0 for r in results)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
