"""What the retry machinery costs a healthy handler: this tree vs an older checkout.

    python benchmarks/handler_overhead.py --baseline /tmp/old   # a checkout, built in place
    python benchmarks/handler_overhead.py --baseline /tmp/old --events 200000 --rounds 5

Each round runs, in a fresh process per checkout and interleaved (old, new, old, new...),
the standard event mix through ``EventBuffer.ingest`` in frames of 100 (what a socket
does per ``batch`` frame) with one sync batch handler, one ``with_seqs`` handler and a
settlement listener, GC frozen after setup. Reported: events/s per checkout and round,
and the ratio new/old of the medians (1.0: no cost; the target is >= 0.95).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]

RUN = r"""
import gc, json, sys, time
import msgspec
from rsocket.buffer import BufferConfig, EventBuffer, IMPLEMENTATION
from rsocket.testing import Workload

class Item(msgspec.Struct):
    name: str
    data: object

events = int(sys.argv[1])
items = [Item(n, d) for n, d in Workload(1).take(events)]
ev = EventBuffer(config=BufferConfig(auto_flush=False, max_buffer_items=10**6))
seen = [0]
settled = [0]
ev.process(lambda batch: seen.__setitem__(0, seen[0] + len(batch)))
ev.process(lambda batch, seqs: None, with_seqs=True)
ev.on_settled = lambda seqs: settled.__setitem__(0, seqs.stop - 1)
gc.collect(); gc.freeze()
started = time.perf_counter()
received = 0
for first in range(0, events, 100):
    received = ev.ingest(first + 1, items[first:first + 100], True, received)[0]
elapsed = time.perf_counter() - started
assert settled[0] == events, settled
print(json.dumps({"rate": events / elapsed, "core": IMPLEMENTATION}))
"""


def _run(tree: Path, events: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    out = subprocess.run([sys.executable, "-c", RUN, str(events)], env=env, check=True,
                         capture_output=True, text=True, cwd=tree)
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, required=True,
                        help="an older checkout whose compiled core is built in place")
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    rates: dict[str, list[float]] = {"old": [], "new": []}
    for round_ in range(args.rounds):
        for name, tree in (("old", args.baseline), ("new", HERE)):
            result = _run(tree, args.events)
            rates[name].append(result["rate"])
            print(f"round {round_ + 1} {name}: {result['rate']:,.0f} events/s ({result['core']})")
    old, new = statistics.median(rates["old"]), statistics.median(rates["new"])
    print(f"median new/old: {new / old:.3f}  (per round: "
          + ", ".join(f"{n / o:.3f}" for n, o in zip(rates["new"], rates["old"], strict=True))
          + ")")


if __name__ == "__main__":
    main()
