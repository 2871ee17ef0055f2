"""Many tenants in one process: the shared keepalive clock, idle sockets that
own no task or timer, and running out of file descriptors."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import sys
import textwrap
import time
import weakref
from typing import Any

import pytest

from rsocket.keepalive import Clock
from rsocket.pool import TenantPool
from rsocket.socket import SocketConfig
from rsocket.testing import ReferenceServer

from ..helpers import until

# -- the keepalive clock --------------------------------------------------------------------


class Target:
    """What the clock calls back (a socket, in real use)."""

    def __init__(self, name: str, calls: list[str]) -> None:
        self.name = name
        self.calls = calls
        self.keepalive_at: float | None = None

    def due_in(self, clock: Clock, delay: float) -> None:
        replacing = self.keepalive_at is not None
        self.keepalive_at = clock.loop.time() + delay
        clock.call_at(self.keepalive_at, self, replacing=replacing)

    def keepalive_due(self, now: float) -> None:
        self.keepalive_at = None
        self.calls.append(self.name)


async def test_the_clock_calls_targets_in_time_order_and_skips_stale_entries():
    clock = Clock.of(asyncio.get_running_loop())
    calls: list[str] = []
    a, b, c = Target("a", calls), Target("b", calls), Target("c", calls)
    c.due_in(clock, 0.03)
    a.due_in(clock, 0.01)
    b.due_in(clock, 0.02)
    a.due_in(clock, 0.04)  # a moved: its first entry is stale
    await until(lambda: len(calls) == 3, 5.0)
    assert calls == ["b", "c", "a"]
    assert len(clock) == 0


async def test_the_clock_is_one_per_loop_with_one_timer():
    loop = asyncio.get_running_loop()
    clock = Clock.of(loop)
    assert Clock.of(loop) is clock
    calls: list[str] = []
    targets = [Target(str(i), calls) for i in range(100)]
    for i, target in enumerate(targets):
        target.due_in(clock, 10 + i)
    timers = [h for h in getattr(loop, "_scheduled", []) if not h.cancelled()
              and getattr(h._callback, "__self__", None) is clock]
    assert len(timers) <= 1  # one armed timer for 100 entries (asyncio's own loop)
    for target in targets:  # all closed
        target.keepalive_at = None
        clock.forget()


async def test_closed_targets_are_not_kept_alive_by_the_clock():
    clock = Clock.of(asyncio.get_running_loop())
    calls: list[str] = []
    targets = [Target(str(i), calls) for i in range(200)]
    for target in targets:
        target.due_in(clock, 60)
    refs = [weakref.ref(t) for t in targets]
    for target in targets:  # closed long before their time
        target.keepalive_at = None
        clock.forget()
    del targets, target
    gc.collect()
    assert sum(r() is not None for r in refs) <= 64  # compaction dropped most of them
    assert len(clock) <= 64


async def test_no_entry_nor_timer_is_left_once_every_target_is_closed():
    loop = asyncio.get_running_loop()
    clock = Clock.of(loop)
    calls: list[str] = []
    targets = [Target(str(i), calls) for i in range(3)]
    for target in targets:
        target.due_in(clock, 60)
    for target in targets:
        target.keepalive_at = None
        clock.forget()
    assert len(clock) == 0
    timers = [h for h in getattr(loop, "_scheduled", []) if not h.cancelled()
              and getattr(h._callback, "__self__", None) is clock]
    assert not timers  # the last socket closed: nothing armed until one asks again
    targets[0].due_in(clock, 0.01)
    await until(lambda: calls == ["0"], 5.0)


async def test_the_clock_measures_how_long_the_loop_was_blocked():
    clock = Clock.of(asyncio.get_running_loop())
    calls: list[str] = []
    before = clock.blocked
    Target("a", calls).due_in(clock, 0.001)
    time.sleep(0.1)  # the loop is blocked past the entry's time
    await until(lambda: calls == ["a"], 5.0)
    assert clock.blocked - before >= 0.09


# -- idle tenants ---------------------------------------------------------------------------

N = 100
TENANTS = {f"t{i}": f"token{i}" for i in range(N)}


async def test_idle_tenants_own_no_task_and_keepalive_runs_on_the_shared_clock():
    async with ReferenceServer(tenants=TENANTS) as server:
        config = SocketConfig(keepalive_interval=0.2, keepalive_grace=2.0)
        pool = TenantPool(watchdog=False, socket_config=config)
        for tenant, token in TENANTS.items():
            await pool.add(tenant, server.url, token)
        managers = list(pool.managers.values())
        await until(lambda: all(m.connected for m in managers), 10.0, "all open")
        own = [t for t in asyncio.all_tasks() if t.get_name().startswith("rsocket-")]
        assert not own, own  # no reader, keepalive or ack task per socket
        # every socket pinged and got its pong: the shared clock drives them all
        await until(lambda: all(m.socket.latency is not None for m in managers), 10.0,
                    "a keepalive round trip on every socket")
        clock = Clock.of(asyncio.get_running_loop())
        assert all(m.socket.keepalive_at is not None for m in managers)
        await pool.destroy_all()
        assert all(m.socket.keepalive_at is None for m in managers)
        await until(lambda: len(clock) == 0, 5.0, "the closed sockets' entries gone")


# -- out of file descriptors ------------------------------------------------------------------

CLIENT = textwrap.dedent("""
    import asyncio, json, logging, os, resource, sys
    from rsocket.pool import TenantPool
    from rsocket.socket import SocketConfig

    lines = []

    class Keep(logging.Handler):
        def emit(self, record):
            lines.append([record.levelname, record.getMessage()])

    async def until(predicate, timeout=20.0):
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            if loop.time() > deadline:
                raise TimeoutError
            await asyncio.sleep(0.02)

    async def main(url, n):
        logging.getLogger("rsocket").addHandler(Keep())
        logging.getLogger("rsocket").setLevel(logging.INFO)
        pool = TenantPool(watchdog=False, backoff=(0.05,), jitter=0,
                          socket_config=SocketConfig(connect_timeout=5))
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        # room for 5 more sockets: the other tenants find no descriptor
        resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 5, hard))
        for i in range(n):
            await pool.add(f"t{i}", url, f"token{i}")
        managers = list(pool.managers.values())
        # retried past the breaker's threshold (5 failures)
        await until(lambda: all(m.connected or m.reconnects >= 6 for m in managers))
        short = {"open": sum(m.connected for m in managers),
                 "breakers": sorted({str(m.breaker.state) for m in managers}),
                 "errors": [l for l in lines if l[0] == "ERROR"]}
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))  # the operator raises it
        await until(lambda: all(m.connected for m in managers))
        result = {"short": short, "after": {"open": sum(m.connected for m in managers)},
                  "recovered": [l for l in lines if "available again" in l[1]]}
        await pool.destroy_all()
        print(json.dumps(result))

    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
""")


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd (Linux)")
async def test_out_of_file_descriptors_is_one_clear_error_not_a_breaker_failure():
    n = 20
    async with ReferenceServer(tenants={f"t{i}": f"token{i}" for i in range(n)}) as server:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", CLIENT, server.url, str(n),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()[-3000:]
    result: dict[str, Any] = json.loads(out)
    short = result["short"]
    assert 0 < short["open"] < n  # some tenants got a descriptor, the others wait
    assert short["breakers"] == ["closed"]  # a local limit is not the server failing
    assert len(short["errors"]) == 1, short["errors"]  # one line, not one per attempt
    message = short["errors"][0][1]
    assert "out of file descriptors" in message and "ulimit -n" in message
    assert "tenant(s) waiting" in message
    assert result["after"]["open"] == n  # once the limit is raised, every tenant connects
    assert len(result["recovered"]) == 1


def test_finished_event_loops_are_not_kept_alive_by_their_clocks():
    """Each asyncio.run() (or thread) that ran sockets had a clock; once the loop is
    closed and dropped, neither the loop nor its clock may stay alive."""
    loops, clocks = [], []
    for _ in range(20):
        loop = asyncio.new_event_loop()
        clock = Clock.of(loop)
        target = Target("t", [])

        async def use(clock: Clock = clock, target: Target = target) -> None:
            target.due_in(clock, 60)  # a timer armed on the loop
            target.keepalive_at = None
            clock.forget()

        loop.run_until_complete(use())
        loop.close()
        loops.append(weakref.ref(loop))
        clocks.append(weakref.ref(clock))
        del loop, clock, target, use
    gc.collect()
    assert [r for r in loops if r() is not None] == []
    assert [r for r in clocks if r() is not None] == []
