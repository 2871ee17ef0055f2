"""``rsocket demo``: the production incident, replayed, with figures.

A reference server on loopback streams the standard event mix to a pool of
tenants while 503 stream errors and TCP drops hit them, hundreds of
reconnects' worth at full speed. Every 0.1 s the demo samples live buffers
against open sockets; at the end it counts every seq each tenant processed.
It passes when no event was lost or processed twice, live buffers never
exceeded the sockets that own them, and the auto-flush timer firings and
batch releases stayed flat: what the orphaned-buffer bug broke (every dead
socket's buffer kept its timer, and the firings went from 60 to 2,000+ a
minute).

``--handler-faults RATE`` makes the application's handler fail transiently
(a database that drops calls): each batch's first call raises with that
probability, and the default retry policy (at a demo's pace) hands it again;
the demo still passes only with no event lost or processed twice and no
dead letter.

With a terminal, a live table shows each tenant; otherwise (piped, CI) a
progress line goes to stderr every 5 seconds.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import sys
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

from .. import lifecycle, live_buffers
from ..breaker import CircuitBreaker
from ..buffer import IMPLEMENTATION, BufferConfig
from ..manager import counts_as_failure
from ..pool import TenantPool
from ..retry import DeadLetter, Retry
from ..seqs import Seqs
from ..socket import SocketConfig
from ..testing import BridgeServer, ReferenceServer
from .runtime import loop_name

__all__ = ["DemoConfig", "DemoSummary", "run_demo"]


@dataclass(frozen=True, slots=True)
class DemoConfig:
    """What the demo runs (the CLI flags)."""

    duration: float = 50.0
    tenants: int = 5
    rate: float = 200.0
    faults_per_min: float = 60.0
    drop_share: float = 0.3  # of the faults: TCP drops; the rest are 503 stream errors
    seed: int = 1
    drain_timeout: float = 20.0
    live: bool = True  # the live table (a terminal)
    progress: bool = True  # without the live table: a line on stderr every 5 s
    bridge: bool = False  # the Baileys bridge (Node) as the server, not the reference server
    handler_faults: float = 0.0  # share of batches whose first handler call raises


#: the default policy's attempts, at a pace that fits a demo of seconds
DEMO_RETRY = Retry(attempts=5, backoff=(0.05, 1.0))


@dataclass(slots=True)
class DemoSummary:
    """The figures the demo prints (``--json``: this object)."""

    tenants: int
    duration: float
    loop: str
    server: str = "reference"  # "reference" or "baileys-bridge"
    core: str = IMPLEMENTATION  # the merge core in use: "cython" or "python"
    published: int = 0
    processed: int = 0
    lost: int = 0
    duplicated: int = 0
    reconnects: int = 0
    faults_injected: int = 0
    flushes: int = 0
    flushes_per_min_per_tenant: float = 0.0
    flush_rate_first_half: float = 0.0
    flush_rate_second_half: float = 0.0
    flush_rate_ratio: float = 0.0
    timer_flushes: int = 0
    timer_flushes_per_min: float = 0.0
    max_live_buffers: int = 0
    max_connected: int = 0
    buffer_socket_mismatches: int = 0
    live_buffers_after: int = 0
    max_concurrent_per_tenant: int = 0
    handler_faults: float = 0.0
    handler_retries: int = 0
    dead_letters: int = 0
    passed: bool = False
    failures: list[str] = field(default_factory=list)


class _Tally(logging.Handler):
    """Per-tenant seqs and releases seen by the application handler, and the
    auto-flush timer firings reported on the lifecycle logger (the incident's signal)."""

    def __init__(self, faults: float = 0.0, seed: int = 1) -> None:
        super().__init__(logging.DEBUG)
        self.faults = faults
        self.rng = random.Random(seed)
        self.failed: set[tuple[str, str, int]] = set()  # (tenant, epoch, first seq) failed once
        self.failures = 0
        self.dead_letters = 0
        self.seqs: dict[str, set[int]] = defaultdict(set)
        self.received: dict[str, int] = defaultdict(int)
        self.flush_times: list[float] = []
        self.flushes: dict[str, int] = defaultdict(int)
        self.timer_flushes = 0

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "event", None) == "buffer_timeout":
            self.timer_flushes += 1

    def on_batch(self, tenant: str, batch: dict[str, Any], seqs: Seqs) -> None:
        if self.faults and seqs:
            key = (tenant, seqs.epoch, seqs.start)
            if key not in self.failed and self.rng.random() < self.faults:
                self.failed.add(key)  # transient: the retry goes through
                self.failures += 1
                raise ConnectionError("demo: the database dropped the call")
        if seqs:
            self.seqs[tenant].update(seqs)
            self.received[tenant] += len(seqs)
        if len(batch) > 1 or "connection.update" not in batch:
            self.flush_times.append(time.monotonic())
            self.flushes[tenant] += 1

    def on_dead_letter(self, letter: DeadLetter) -> None:
        self.dead_letters += 1


async def run_demo(config: DemoConfig, *, out: Any = None) -> DemoSummary:
    """Run the demo and return its summary (the live view goes to ``out``)."""
    rng = random.Random(config.seed)
    names = {f"tenant{i}": f"token-{i}-{rng.getrandbits(32):08x}" for i in range(1, config.tenants + 1)}
    summary = DemoSummary(tenants=config.tenants, duration=config.duration, loop=loop_name(),
                          server=BridgeServer.kind if config.bridge else "reference")
    tally = _Tally(config.handler_faults, config.seed)
    summary.handler_faults = config.handler_faults
    logger = lifecycle.logger
    saved = logger.level, logger.propagate
    logger.addHandler(tally)
    logger.setLevel(logging.DEBUG)  # lifecycle lines are DEBUG
    logger.propagate = False  # counted here, not printed
    try:
        return await _run(config, names, summary, tally, out)
    finally:
        logger.removeHandler(tally)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


async def _run(config: DemoConfig, names: dict[str, str], summary: DemoSummary,
               tally: _Tally, out: Any) -> DemoSummary:
    rng = random.Random(config.seed + 1)
    base = live_buffers()
    socket_config = SocketConfig(
        keepalive_interval=5.0, keepalive_grace=5.0, connect_timeout=5.0,
        buffer=BufferConfig(max_buffer_items=1000, auto_flush_timeout=5.0),
    )
    async with _server(config, names) as server:
        pool = TenantPool(
            socket_config=socket_config, backoff=(0.05, 0.1, 0.25, 0.5, 1.0), jitter=0.25,
            stable_after=2.0,
        )
        pool.process(tally.on_batch, with_seqs=True, retry=DEMO_RETRY)
        pool.on_dead_letter(tally.on_dead_letter)
        for tenant, token in names.items():
            breaker = CircuitBreaker(failure_threshold=20, failure_window=10, open_timeout=1.0,
                                     name=tenant, error_filter=counts_as_failure)
            await pool.add(tenant, server.url, token, breaker=breaker)
        started = time.monotonic()
        server.start_traffic(config.rate, seed=config.seed)
        faults = asyncio.create_task(_inject_faults(server, list(names), config, rng, summary))
        view = _LiveView(pool, tally, out) if config.live else None
        progress = started
        try:
            while (elapsed := time.monotonic() - started) < config.duration:
                _sample(pool, base, summary)
                if view is not None:
                    view.update(elapsed, config.duration)
                elif config.progress and time.monotonic() - progress >= 5.0:
                    progress = time.monotonic()
                    _progress(pool, tally, summary, elapsed, config.duration)
                await asyncio.sleep(0.1)
        finally:
            server.stop_traffic()
            faults.cancel()
            await asyncio.gather(faults, return_exceptions=True)
        ended = time.monotonic()
        # drain: every tenant connected and caught up with its log (bounded)
        last = {t: s["last_seq"] for t, s in server.stats().items()}
        deadline = time.monotonic() + config.drain_timeout
        while time.monotonic() < deadline:
            _sample(pool, base, summary)
            done = all(
                (m := pool.get(t)) is not None and m.socket is not None and m.connected
                and m.socket.last_seq >= last[t]
                for t in names
            )
            if done:
                break
            await asyncio.sleep(0.05)
        if view is not None:
            view.stop()
        summary.reconnects = sum(s["reconnects"] for s in pool.status().values())
        stats = server.stats()
        summary.max_concurrent_per_tenant = max(s["max_concurrent"] for s in stats.values())
        await pool.destroy_all()
    summary.live_buffers_after = live_buffers() - base
    _count(summary, tally, last, started, ended)
    return summary


def _server(config: DemoConfig, names: dict[str, str]) -> ReferenceServer | BridgeServer:
    """The reference server, or the Baileys bridge (events through Baileys' own emitter;
    npm fetches what it lacks)."""
    if config.bridge:
        return BridgeServer(tenants=names, ping_interval=None, install=True)
    return ReferenceServer(tenants=names, ping_interval=None, compression=None)


async def _inject_faults(server: ReferenceServer | BridgeServer, tenants: list[str], config: DemoConfig,
                         rng: random.Random, summary: DemoSummary) -> None:
    if config.faults_per_min <= 0:
        return
    interval = 60.0 / config.faults_per_min
    await asyncio.sleep(min(1.0, interval))  # the first fault comes within 3 s
    while True:
        tenant = rng.choice(tenants)
        if rng.random() >= config.drop_share:
            server.inject(tenant, "stream_error", code=503, reason="service unavailable")
        else:
            server.inject(tenant, "drop")
        summary.faults_injected += 1
        await asyncio.sleep(interval * rng.uniform(0.5, 1.5))


def _progress(pool: TenantPool, tally: _Tally, summary: DemoSummary, elapsed: float,
              duration: float) -> None:
    status = pool.status().values()
    print(f"demo {elapsed:4.0f}/{duration:.0f}s: {sum(len(s) for s in tally.seqs.values()):,} "
          f"events processed, {summary.faults_injected} faults, "
          f"{sum(s['reconnects'] for s in status)} reconnects, "
          f"{sum(s['connected'] for s in status)}/{summary.tenants} connected, "
          f"live buffers {live_buffers()}, auto-flush timer firings {tally.timer_flushes}",
          file=sys.stderr, flush=True)


def _sample(pool: TenantPool, base: int, summary: DemoSummary) -> None:
    live = live_buffers() - base
    # a manager's current socket owns a buffer until its end() completes; any other live
    # buffer would be an orphan (the incident's bug)
    sockets = sum(m.socket is not None and not m.socket.ev.destroyed for m in pool.managers.values())
    connected = sum(m.connected for m in pool.managers.values())
    summary.max_live_buffers = max(summary.max_live_buffers, live)
    summary.max_connected = max(summary.max_connected, connected)
    if live != sockets:
        summary.buffer_socket_mismatches += 1


def _count(summary: DemoSummary, tally: _Tally, last: dict[str, int], started: float,
           ended: float) -> None:
    summary.published = sum(last.values())
    summary.processed = sum(len(s) for s in tally.seqs.values())
    summary.lost = sum(len(set(range(1, last[t] + 1)) - tally.seqs[t]) for t in last)
    summary.duplicated = sum(tally.received.values()) - summary.processed
    summary.handler_retries = tally.failures
    summary.dead_letters = tally.dead_letters
    minutes = max(ended - started, 1e-9) / 60
    flushes = [t for t in tally.flush_times if t <= ended]
    summary.flushes = len(flushes)
    summary.timer_flushes = tally.timer_flushes
    summary.timer_flushes_per_min = round(tally.timer_flushes / minutes, 1)
    summary.flushes_per_min_per_tenant = round(len(flushes) / minutes / summary.tenants, 1)
    middle = (started + ended) / 2
    first = sum(t < middle for t in flushes)
    summary.flush_rate_first_half = round(first / (minutes / 2) / summary.tenants, 1)
    summary.flush_rate_second_half = round((len(flushes) - first) / (minutes / 2) / summary.tenants, 1)
    if summary.flush_rate_first_half:
        summary.flush_rate_ratio = round(
            summary.flush_rate_second_half / summary.flush_rate_first_half, 2
        )
    failures = []
    if summary.flush_rate_ratio > 1.5:
        failures.append(f"flush rate grew {summary.flush_rate_ratio}x (orphaned timers?)")
    if summary.lost:
        failures.append(f"{summary.lost} event(s) lost")
    if summary.duplicated:
        failures.append(f"{summary.duplicated} event(s) processed twice")
    if summary.max_live_buffers > summary.tenants:
        failures.append(f"{summary.max_live_buffers} live buffers for {summary.tenants} tenants")
    if summary.buffer_socket_mismatches:
        failures.append(f"live buffers != live sockets in {summary.buffer_socket_mismatches} sample(s)")
    if summary.live_buffers_after:
        failures.append(f"{summary.live_buffers_after} buffer(s) alive after shutdown")
    if summary.max_concurrent_per_tenant > 1:
        failures.append("a tenant had two connections at once")
    if summary.dead_letters:
        failures.append(f"{summary.dead_letters} batch(es) dead-lettered")
    if summary.handler_faults and not summary.handler_retries:
        failures.append("handler faults were asked for but none happened")
    if summary.faults_injected and not summary.reconnects:
        failures.append("faults were injected but no reconnect happened")
    summary.failures = failures
    summary.passed = not failures


class _LiveView:
    """A rich table per tenant, refreshed in place (skipped when not a terminal)."""

    def __init__(self, pool: TenantPool, tally: _Tally, out: Any) -> None:
        from rich.console import Console
        from rich.live import Live

        self.pool = pool
        self.tally = tally
        self.console = Console(file=out or sys.stderr)
        self.started = time.monotonic()
        self.live = Live(console=self.console, refresh_per_second=4, transient=False)
        self.live.start()

    def update(self, elapsed: float, duration: float) -> None:
        from rich.table import Table

        minutes = max(time.monotonic() - self.started, 1e-9) / 60
        table = Table(title=f"rsocket demo  {elapsed:5.1f}/{duration:.0f}s  "
                            f"live buffers {live_buffers()}  "
                            f"auto-flush timer firings {self.tally.timer_flushes}")
        columns = ("tenant", "state", "circuit", "reconnects", "events", "batches/min",
                   "live buffers")
        for column in columns:
            table.add_column(column, justify="left" if column in ("tenant", "state") else "right")
        for tenant, s in self.pool.status().items():
            manager = self.pool.get(tenant)
            live = int(manager is not None and manager.socket is not None
                       and not manager.socket.ev.destroyed)
            table.add_row(tenant, s["state"], s["circuit"], str(s["reconnects"]),
                          str(len(self.tally.seqs[tenant])),
                          f"{self.tally.flushes[tenant] / minutes:.0f}", str(live))
        self.live.update(table)

    def stop(self) -> None:
        self.live.stop()


def render_summary(summary: Any, title: str, rows: list[tuple[str, object]], passed_text: str,
                   *, as_json: bool, out: Any = None) -> None:
    """A demo summary as a rich table with a PASS/FAIL line, or one JSON object on stdout."""
    if as_json:
        print(json.dumps(asdict(summary)), file=out or sys.stdout)
        return
    from rich.console import Console
    from rich.table import Table

    console = Console(file=out or sys.stdout)
    table = Table(title=title)
    table.add_column("figure")
    table.add_column("value", justify="right")
    for name, value in rows:
        table.add_row(name, str(value))
    console.print(table)
    verdict = "PASS" if summary.passed else "FAIL"
    detail = passed_text if summary.passed else "; ".join(summary.failures)
    console.print(f"[bold]{verdict}[/bold]: {detail}")


def print_summary(summary: DemoSummary, *, as_json: bool, out: Any = None) -> None:
    """The summary as a rich table, or one JSON object on stdout."""
    rows: list[tuple[str, object]] = [
        ("tenants", summary.tenants), ("server", summary.server),
        ("event loop / merge core", f"{summary.loop} / {summary.core}"),
        ("events published", summary.published), ("events processed", summary.processed),
        ("events lost", summary.lost), ("events duplicated", summary.duplicated),
        ("faults injected (503s, TCP drops)", summary.faults_injected),
        ("reconnects", summary.reconnects),
        ("handler calls failed, then retried / dead letters",
         f"{summary.handler_retries} / {summary.dead_letters}"),
        ("auto-flush timer firings/min (incident: 2,000+)", summary.timer_flushes_per_min),
        ("most live buffers at once / tenants", f"{summary.max_live_buffers} / {summary.tenants}"),
        ("samples: live buffers != sockets", summary.buffer_socket_mismatches),
        ("live buffers after shutdown", summary.live_buffers_after),
        ("batches/min per tenant (follows traffic)", summary.flushes_per_min_per_tenant),
        ("  1st / 2nd half (ratio; flat < 1.5)",
         f"{summary.flush_rate_first_half} / {summary.flush_rate_second_half} "
         f"({summary.flush_rate_ratio})"),
    ]
    render_summary(summary, "rsocket demo: summary", rows,
                   "no orphaned buffer or timer, no event lost or processed twice",
                   as_json=as_json, out=out)
