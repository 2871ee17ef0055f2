"""Compiled vs pure core, one event type at a time (docs/PERFORMANCE.md's rows).

    python benchmarks/per_type.py                    # 20,000 events per type, best of 3
    python benchmarks/per_type.py --events 5000 --rounds 2

For each bufferable event of the standard mix, the workload's own payloads of that
type alone (``Workload.event(name)``, deterministic) go through the public
``EventBuffer.emit`` in one buffering scope, then one flush, with one counting
handler, GC frozen; the cores are interleaved per round and the best round is
kept. Reported: ns/event per core and the ratio pure/compiled.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import time
from types import ModuleType
from typing import Any

from rsocket.apps.bench import CORES, Copies
from rsocket.buffer import BufferConfig, event_buffer_class
from rsocket.testing import Workload
from rsocket.testing.workload import MIX


def payloads(name: str, events: int, decode: str) -> Copies:
    workload = Workload(1)
    return Copies([workload.event(name) for _ in range(events)], decode)


def run(core: ModuleType, name: str, copies: Copies) -> float:
    """Seconds to emit fresh payloads of ``name`` in one scope, then flush."""
    datas: list[Any] = copies()
    ev = event_buffer_class(core)(config=BufferConfig(
        auto_flush=False, max_buffer_items=len(datas) + 1, max_history_cache=10_000))
    seen = [0]
    ev.process(lambda batch: seen.__setitem__(0, seen[0] + len(batch)))
    emit = ev.emit
    gc.collect()
    gc.freeze()
    try:
        start = time.perf_counter()
        ev.buffer()
        for data in datas:
            emit(name, data)
        ev.flush()
        return time.perf_counter() - start
    finally:
        gc.unfreeze()
        ev.destroy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--decode", choices=Copies.DECODES, default="pickle",
                        help="fresh payloads by pickle (default) or msgspec (as a socket)")
    args = parser.parse_args()
    print(f"payloads: fresh copies by {args.decode}")
    cores = {tag: importlib.import_module(mod) for tag, mod in CORES.items()}
    print(f"{'event':<24} {'c ns/ev':>9} {'py ns/ev':>9} {'py/c':>6}")
    for name, _ in MIX:
        copies = payloads(name, args.events, args.decode)
        best = {tag: float("inf") for tag in cores}
        for _ in range(args.rounds):
            for tag, core in cores.items():
                best[tag] = min(best[tag], run(core, name, copies))
        c, py = (best[t] / args.events * 1e9 for t in ("c", "py"))
        print(f"{name:<24} {c:>9.0f} {py:>9.0f} {py / c:>5.2f}x")


if __name__ == "__main__":
    main()
