"""Soak: thousands of reconnect cycles with mixed faults (issue #8).

A ``TenantPool`` keeps every tenant connected to the in-process reference
server while each live connection gets one fault (503/515/428 stream errors,
500 failures, TCP drops, stalls -> 408) after a random delay, and traffic of
the standard mix keeps flowing. Checked throughout and at the end:

- live buffers == live sockets <= tenants at every sample (every 10 ms);
- every event seq reaches the application handler exactly once, in order;
- tracemalloc growth between two quiescent points (after warm-up, at the end)
  <= 1 MiB;
- asyncio tasks and live loop timers (``loop._scheduled`` entries not
  cancelled) back to their baseline once the pool is destroyed, and at both
  quiescent points within what the tenants own by construction (per tenant:
  reader, keepalive, server handler and writer tasks; keepalive, cursor-save
  and stable-connection timers), whatever the load: a leak grows with cycles.

The short version runs in CI; ``-m soak`` runs the long configuration
(10,000 cycles over 50 tenants)::

    python -m pytest -p no:cacheprovider -m soak tests/scenarios/test_soak.py -s

Payloads come from one pre-generated pool of standard-mix events reused in
rotation, and each tenant's replay log is filled to its window before the
warm-up, so the server's memory is flat and any growth is the client's.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import logging
import random
import time
import tracemalloc
from collections.abc import Iterator
from typing import Any

import pytest

import rsocket
from rsocket import BufferConfig
from rsocket.breaker import CircuitBreaker
from rsocket.manager import counts_as_failure
from rsocket.pool import TenantPool
from rsocket.socket import SocketConfig
from rsocket.testing import ReferenceServer, Workload

from ..helpers import until

HARNESS_TASKS, HARNESS_TIMERS = 2, 1  # the soak's own pump and sampler
SOCKET = SocketConfig(keepalive_interval=0.2, keepalive_grace=0.3, connect_timeout=5,
                      close_timeout=1, drain_timeout=1,
                      buffer=BufferConfig(auto_flush_timeout=0.5))
# (fault, kwargs, weight)
FAULTS = [
    ("stream_error", {"code": 503}, 30),
    ("drop", {}, 30),
    ("stream_error", {"code": 515}, 12),
    ("failure", {"code": 500}, 12),
    ("stream_error", {"code": 428}, 10),
    ("stall", {}, 6),
]
MIB = 1024 * 1024


class Ledger:
    """Per-tenant seq accounting of what the application handler got."""

    def __init__(self) -> None:
        self.last: dict[str, int] = collections.defaultdict(int)
        self.lost = self.duplicated = self.processed = 0

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


def live_timers(loop: asyncio.AbstractEventLoop) -> int:
    return sum(not h.cancelled() for h in loop._scheduled)  # type: ignore[attr-defined]


def live_tasks() -> int:
    return sum(not t.done() for t in asyncio.all_tasks()) - 1  # minus the test itself


def traced() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


@pytest.fixture
def quiet_logs() -> Iterator[None]:
    """The soak logs thousands of WARNINGs (reconnect loops, closes): pytest would keep
    every record in memory, which is harness growth, not ours. Silence the package."""
    logger = logging.getLogger("rsocket")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    yield
    logger.setLevel(level)


async def soak(cycles: int, tenants: int, *, warmup: int, window: int, rate: float,
               seed: int = 8) -> dict[str, Any]:
    """Run the soak; returns the measurements (the test asserts on them)."""
    rnd = random.Random(seed)
    names = [f"s{i}" for i in range(tenants)]
    pool_events = list(Workload(seed).take(512))  # reused in rotation
    loop = asyncio.get_running_loop()
    faults = [f for f in FAULTS for _ in range(f[2])]
    report: dict[str, Any] = {"cycles_target": cycles, "tenants": tenants}
    tracemalloc.start(1)
    try:
        async with ReferenceServer(tenants={n: f"k-{n}" for n in names}, ping_interval=None,
                                   compression=None, replay_window=window,
                                   close_timeout=1) as server:
            cursor = 0

            def publish(per_tenant: int) -> None:
                nonlocal cursor
                for name in names:
                    chunk = [pool_events[(cursor + i) % len(pool_events)]
                             for i in range(per_tenant)]
                    cursor = (cursor + per_tenant) % len(pool_events)
                    server.publish_many(name, chunk)

            publish(window)  # the log is full from the start: flat server memory
            base_live = rsocket.live_buffers()
            base_tasks, base_timers = live_tasks(), live_timers(loop)

            ledger = Ledger()
            injected = 0
            inject_budget = 0
            pending_injects: set[asyncio.TimerHandle] = set()
            last_close = time.monotonic()
            fault_counts: collections.Counter[str] = collections.Counter()

            def fire(handle_box: list[asyncio.TimerHandle], name: str) -> None:
                nonlocal injected
                pending_injects.discard(handle_box[0])
                fault, kw, _ = rnd.choice(faults)
                fault_counts[f"{fault}{kw.get('code', '')}"] += 1
                injected += 1
                server.inject(name, fault, **kw)

            def on_batch(tenant: str, batch: dict[str, Any], seqs: range) -> None:
                nonlocal last_close
                ledger(tenant, batch, seqs)
                update = batch.get("connection.update")
                if not update:
                    return
                if update.get("connection") == "close":
                    last_close = time.monotonic()
                if update.get("receivedPendingNotifications") and \
                        injected + len(pending_injects) < inject_budget:
                    box: list[asyncio.TimerHandle] = []
                    box.append(loop.call_later(rnd.uniform(0, 0.08), fire, box, tenant))
                    pending_injects.add(box[0])

            pool = TenantPool(watchdog=False, socket_config=SOCKET,
                              backoff=(0.005, 0.01, 0.02, 0.05), jitter=0.25, stable_after=0.05)
            pool.process(on_batch, with_seqs=True)

            samples = violations = 0
            stop_sampling = asyncio.Event()

            def sample() -> None:
                nonlocal samples, violations
                live = rsocket.live_buffers() - base_live
                sockets = sum(m.socket is not None and not m.socket.ev.destroyed
                              for m in pool.managers.values())
                samples += 1
                if not live == sockets <= tenants:
                    violations += 1

            async def sampler() -> None:
                while not stop_sampling.is_set():
                    sample()
                    await asyncio.sleep(0.01)

            traffic_on = asyncio.Event()

            async def traffic() -> None:
                per_tick = max(1, round(rate * 0.1))
                while True:
                    await traffic_on.wait()
                    publish(per_tick)
                    await asyncio.sleep(0.1)

            async def run_until(budget: int) -> None:
                """Inject up to ``budget`` faults in all, then quiesce and drain."""
                nonlocal inject_budget
                inject_budget = budget
                traffic_on.set()
                for m in pool.managers.values():  # kick connections already live
                    if m.connected and injected + len(pending_injects) < budget:
                        on_batch(m.tenant, {"connection.update":
                                            {"receivedPendingNotifications": True}}, range(0))
                await until(lambda: injected >= budget, timeout=max(60, budget * 0.2))
                traffic_on.clear()
                # quiet: no close for 1 s (> stall detection), all open, everything processed
                await until(lambda: time.monotonic() - last_close > 1.0
                            and all(m.connected for m in pool.managers.values()),
                            timeout=60, step=0.05)
                last = {n: s["last_seq"] for n, s in server.stats().items()}
                await until(lambda: all(ledger.last[n] >= last[n] for n in names), timeout=60)
                await asyncio.sleep(0.3)  # acks sent, keepalive settled

            sampling = asyncio.create_task(sampler())
            pumping = asyncio.create_task(traffic())
            for name in names:
                breaker = CircuitBreaker(name=name, failure_threshold=5, failure_window=60,
                                         open_timeout=0.05, success_threshold=2,
                                         error_filter=counts_as_failure)
                await pool.add(name, server.url, f"k-{name}", breaker=breaker)

            started = time.perf_counter()
            await run_until(warmup)
            mem_warm = traced()
            tasks_warm, timers_warm = live_tasks(), live_timers(loop)
            await run_until(cycles)
            # a fault can land on a connection that was ending anyway: top up until
            # the pool has really reconnected `cycles` times
            for _ in range(5):
                done = sum(m.reconnects for m in pool.managers.values())
                if done >= cycles:
                    break
                await run_until(injected + cycles - done)
            report["seconds"] = round(time.perf_counter() - started, 1)
            mem_end = traced()
            tasks_end, timers_end = live_tasks(), live_timers(loop)
            report["tracemalloc_growth_kib"] = round((mem_end - mem_warm) / 1024, 1)
            report["tracemalloc_peak_mib"] = round(tracemalloc.get_traced_memory()[1] / MIB, 1)
            stats = server.stats()
            report["connections_total"] = sum(s["connections_total"] for s in stats.values())
            report["reconnects"] = sum(m.reconnects for m in pool.managers.values())
            report["breaker_transitions"] = sum(m.breaker.stats().transitions
                                                for m in pool.managers.values())
            report["max_concurrent"] = max(s["max_concurrent"] for s in stats.values())
            report["faults"] = dict(fault_counts)
            report["injected"] = injected
            report["events_published"] = sum(s["last_seq"] for s in stats.values())
            report["events_processed"] = ledger.processed
            report["lost"] = ledger.lost + sum(max(0, stats[n]["last_seq"] - ledger.last[n])
                                               for n in names)
            report["duplicated"] = ledger.duplicated
            report["tasks"] = {"baseline": base_tasks, "warm": tasks_warm, "end": tasks_end}
            report["timers"] = {"baseline": base_timers, "warm": timers_warm, "end": timers_end}

            pumping.cancel()
            stop_sampling.set()
            await asyncio.gather(pumping, sampling, return_exceptions=True)
            await pool.destroy_all()
            # the server's handlers of the closed connections finish on their own
            try:
                await until(lambda: live_tasks() <= base_tasks
                            and live_timers(loop) <= base_timers, timeout=5)
            except TimeoutError:
                pass
            report["tasks"]["after_destroy"] = live_tasks()
            report["timers"]["after_destroy"] = live_timers(loop)
            report["live_buffers_after_destroy"] = rsocket.live_buffers() - base_live
            report["samples"] = samples
            report["sample_violations"] = violations
    finally:
        tracemalloc.stop()
    return report


def check(report: dict[str, Any]) -> None:
    print("\nsoak report:", report)
    assert report["reconnects"] >= report["cycles_target"]
    assert report["connections_total"] - report["tenants"] >= report["cycles_target"]
    assert report["sample_violations"] == 0 and report["samples"] > 100
    assert report["lost"] == 0 and report["duplicated"] == 0
    assert report["events_processed"] == report["events_published"]
    assert report["max_concurrent"] == 1
    assert report["tracemalloc_growth_kib"] <= 1024
    tasks, timers, tenants = report["tasks"], report["timers"], report["tenants"]
    for point in ("warm", "end"):
        assert tasks[point] <= 4 * tenants + HARNESS_TASKS, (point, tasks)
        assert timers[point] <= 3 * tenants + HARNESS_TIMERS, (point, timers)
    assert tasks["after_destroy"] == tasks["baseline"]
    assert timers["after_destroy"] <= timers["baseline"]
    assert report["live_buffers_after_destroy"] == 0


async def test_soak_short(quiet_logs):
    """CI: a few hundred reconnect cycles over 10 tenants (a few seconds)."""
    check(await soak(300, 10, warmup=60, window=500, rate=20))


@pytest.mark.soak
async def test_soak_10k_cycles_50_tenants(quiet_logs):
    """The long configuration: 10,000 reconnect cycles with mixed faults over 50 tenants."""
    check(await soak(10_000, 50, warmup=1_000, window=2_000, rate=20))
