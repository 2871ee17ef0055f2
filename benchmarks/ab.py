"""Two builds of the compiled merge core in one process, rounds paired: is the change faster?

    python benchmarks/ab.py --baseline /tmp/old                 # mode (a), 21 rounds
    python benchmarks/ab.py --baseline /tmp/old --what b
    python benchmarks/ab.py --baseline /tmp/old --what messaging-history.set --events 2000

``--baseline`` is an older checkout whose compiled core is built in place
(``RSOCKET_BUILD_EXTENSION=yes python setup.py build_ext --inplace``). Both
``_buffer`` modules are loaded into this process, next to this tree's
validation module; each round times both on fresh copies of the same payloads
(msgpack decoded by msgspec, as a socket hands them over, or with ``--decode
pickle`` the gate's default copies), in a shuffled
order, with GC frozen. ``--what`` is a mode of ``gate.py`` (``a``: the mix in
one scope, ``b``: scopes of 100, ``c``: unbuffered) or one event type of the
mix, alone in one scope (``per_type.py``'s run).

On these 2-core VMs one core's speed moves by a third between rounds, far more
than most changes. A round pairs the two builds under the same conditions, so
the figure to read is the median of the paired ratios and how many rounds the
change won; the best rounds are printed too.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import random
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

sys.path.insert(0, str(Path(__file__).resolve().parent))

import rsocket.buffer  # noqa: F401  (the package, whose modules an old core imports)
from gate import MODES, load_workload
from per_type import payloads, run
from rsocket.apps.bench import run_mode
from rsocket.testing.workload import MIX


def load_core(tree: Path) -> ModuleType:
    """The compiled ``_buffer`` module built in place in ``tree``, loaded under its
    own name beside the installed one."""
    built = sorted((tree / "src" / "rsocket").glob("_buffer.cpython-*.so"))
    if not built:
        raise SystemExit(f"no compiled core in {tree}/src/rsocket: build it in place first")
    spec = importlib.util.spec_from_file_location("rsocket._buffer", built[0])
    assert spec is not None and spec.loader is not None
    core = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(core)
    return core


def timer(what: str, events: int, decode: str) -> Callable[[ModuleType], float]:
    """Seconds per event of one round of ``what`` on a core."""
    if what in MODES:
        copies = load_workload(events, decode=decode)

        def once(core: ModuleType) -> float:
            data = copies()
            gc.collect()
            gc.freeze()
            try:
                return run_mode(core, what, data)[0] / events
            finally:
                gc.unfreeze()

        return once
    per_type = payloads(what, events, decode)
    return lambda core: run(core, what, per_type) / events


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, required=True,
                        help="an older checkout whose compiled core is built in place")
    parser.add_argument("--what", default="a", help="a, b, c or an event type")
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--decode", choices=("msgspec", "pickle"), default="msgspec")
    args = parser.parse_args()
    kinds = (*MODES, *(name for name, _ in MIX))
    if args.what not in kinds:
        parser.error(f"--what must be one of {', '.join(kinds)}, not {args.what!r}")
    cores = {"old": load_core(args.baseline),
             "new": importlib.import_module("rsocket._buffer")}
    once = timer(args.what, args.events, args.decode)
    times: dict[str, list[float]] = {"old": [], "new": []}
    for _ in range(args.rounds):
        order = list(cores.items())
        random.shuffle(order)
        for name, core in order:
            times[name].append(once(core))
    for name, seconds in times.items():
        q1, median, q3 = statistics.quantiles(seconds, n=4)
        print(f"{name}: best {min(seconds) * 1e9:,.0f}  quartiles {q1 * 1e9:,.0f} / "
              f"{median * 1e9:,.0f} / {q3 * 1e9:,.0f} ns/event")
    paired = [o / n for o, n in zip(times["old"], times["new"], strict=True)]
    best = min(times["old"]) / min(times["new"])
    print(f"old/new ({args.what}, {args.events:,} events, {args.decode}): best {best:.3f}x, "
          f"median paired {statistics.median(paired):.3f}x, "
          f"new faster in {sum(r > 1 for r in paired)}/{len(paired)} rounds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
