"""Event buffer throughput over the standard workload, compiled core next to pure core.

    pytest benchmarks/test_bench_buffer.py --benchmark-only
    RSOCKET_BENCH_EVENTS=20000 pytest benchmarks/test_bench_buffer.py --benchmark-only  # quick

Workload: ``benchmarks/workload/gen_workload.py --events 100000 --seed 1`` (mixed-100k),
generated into ``RSOCKET_WORKLOAD_DIR`` (default ``.cache/workload``) on first use.
Every round gets a fresh copy of the events (merging mutates payloads) and starts
after ``gc.collect(); gc.freeze()``; building the copy and the buffer is not timed.
Through ``EventBuffer.emit`` with one counting ``process()`` handler:
(a) one scope over every event, then one flush; (b) scopes of 100 events;
(c) unbuffered. (d) times 1,000,000 inserts into a 10,000-entry ``HistoryCache``.
``extra_info["ns_per_event"]`` is the best round per event (per insert for d).
For the compiled/pure ratios and the gate, run ``python benchmarks/gate.py``.
"""

from __future__ import annotations

import gc
import os
import pickle
from collections import Counter
from types import ModuleType
from typing import Any

import pytest

from gate import CACHE_SIZE, SCOPE, make_buffer
from rsocket.apps.bench import Copies

ROUNDS = int(os.environ.get("RSOCKET_BENCH_ROUNDS", "5"))


def fresh(make: Any) -> Any:
    """A pytest-benchmark ``setup``: build the round's input, then collect and freeze."""

    def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
        gc.unfreeze()
        args = make()
        gc.collect()
        gc.freeze()
        return args, {}

    return setup


def per_item(benchmark: Any, n: int) -> None:
    gc.unfreeze()
    benchmark.extra_info["items"] = n
    benchmark.extra_info["ns_per_event"] = round(benchmark.stats.stats.min / n * 1e9, 1)


def run_buffer(core: ModuleType, workload: Copies, benchmark: Any, mode: str) -> Counter[str]:
    counts: Counter[str] = Counter()
    n = len(workload())
    max_items = n + 1 if mode == "a" else 1000

    def make() -> tuple[Any, ...]:
        counts.clear()
        return make_buffer(core, counts, max_buffer_items=max_items), workload()

    def one_scope(ev: Any, events: list[tuple[str, Any]]) -> None:
        emit = ev.emit
        ev.buffer()
        for name, data in events:
            emit(name, data)
        ev.flush()

    def scopes(ev: Any, events: list[tuple[str, Any]]) -> None:
        emit = ev.emit
        for first in range(0, len(events), SCOPE):
            ev.buffer()
            for name, data in events[first : first + SCOPE]:
                emit(name, data)
            ev.flush()

    def unbuffered(ev: Any, events: list[tuple[str, Any]]) -> None:
        emit = ev.emit
        for name, data in events:
            emit(name, data)

    run = {"a": one_scope, "b": scopes, "c": unbuffered}[mode]
    benchmark.pedantic(run, setup=fresh(make), rounds=ROUNDS, iterations=1)
    per_item(benchmark, n)
    return counts


@pytest.mark.benchmark(group="buffer (a) one scope, one flush")
def test_one_scope(benchmark: Any, core: ModuleType, workload: Copies) -> None:
    counts = run_buffer(core, workload, benchmark, "a")
    assert counts["history messages"] > 0


@pytest.mark.benchmark(group="buffer (b) scopes of 100")
def test_scopes_of_100(benchmark: Any, core: ModuleType, workload: Copies) -> None:
    run_buffer(core, workload, benchmark, "b")


@pytest.mark.benchmark(group="buffer (c) unbuffered")
def test_unbuffered(benchmark: Any, core: ModuleType, workload: Copies) -> None:
    counts = run_buffer(core, workload, benchmark, "c")
    assert counts


@pytest.mark.benchmark(group="buffer (d) 1M history-cache inserts")
def test_history_cache_inserts(benchmark: Any, core: ModuleType, cache_keys: bytes) -> None:
    def make() -> tuple[Any, ...]:
        return core.HistoryCache(CACHE_SIZE).add, pickle.loads(cache_keys)

    def run(add: Any, keys: list[str]) -> None:
        for key in keys:
            add(key)

    benchmark.pedantic(run, setup=fresh(make), rounds=ROUNDS, iterations=1)
    per_item(benchmark, 1_000_000)
