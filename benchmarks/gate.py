"""Ratio gate: the compiled merge core against the pure one, in one process.

    python benchmarks/gate.py                          # mixed-100k, 5 rounds
    python benchmarks/gate.py --events 20000 --rounds 3  # quick (CI)
    python benchmarks/gate.py --report-only            # print, never fail

Modes, through the public API (``EventBuffer.emit``) with one counting
``process()`` handler: (a) one buffering scope over every event then one
flush, (b) scopes of 100 events, (c) unbuffered; (d) inserts into a
10,000-entry ``HistoryCache``. Each round runs on a fresh copy of the
workload (merging mutates payloads) after ``gc.collect(); gc.freeze()``.
Figures are the best round. Fails (exit 1) when the compiled core is less
than 4x faster in (a) or 3x in (b), when the two cores disagree on the
consolidated counts of (a), or when 1,000,000 cache inserts take more than
12x the time of 100,000.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pickle
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from types import ModuleType
from typing import Any

from rsocket.apps.bench import CORES, SCOPE, run_mode, timed_round

ROOT = Path(__file__).resolve().parents[1]
GEN_WORKLOAD = ROOT.parent / "shared" / "bench" / "gen_workload.py"
MODES = ("a", "b", "c")
CACHE_SIZE = 10_000
CACHE_INSERTS = 1_000_000
GATES = {"a": 4.0, "b": 3.0}
LINEARITY = 12.0

Events = list[tuple[str, Any]]


# -- workload -----------------------------------------------------------------------


def workload_path(events: int = 100_000, seed: int = 1) -> Path:
    """The standard workload file, generated on first use into the cache folder."""
    folder = Path(os.environ.get("RSOCKET_WORKLOAD_DIR") or ROOT / ".cache" / "workload")
    name = f"mixed-{events // 1000}k" if events % 1000 == 0 else f"mixed-{events}"
    path = folder / (name if seed == 1 else f"{name}-s{seed}")
    path = path.with_suffix(".jsonl")
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        if GEN_WORKLOAD.exists():
            cmd = [sys.executable, str(GEN_WORKLOAD), "--events", str(events), "--seed", str(seed)]
            subprocess.run([*cmd, "--out", str(tmp)], check=True)
        else:  # no shared/ beside the checkout: the package's mirror gives the same file
            from rsocket.workload import Workload

            with tmp.open("w", encoding="utf-8") as f:
                for name, data in Workload(seed).take(events):
                    f.write(json.dumps({"event": name, "data": data}, ensure_ascii=False) + "\n")
        tmp.replace(path)
    return path


def load_blob(events: int = 100_000, seed: int = 1) -> bytes:
    """The workload as a pickle; ``pickle.loads`` is the fastest deep copy."""
    with workload_path(events, seed).open(encoding="utf-8") as f:
        pairs = [(e["event"], e["data"]) for e in map(json.loads, f)]
    return pickle.dumps(pairs, protocol=pickle.HIGHEST_PROTOCOL)


def cache_keys_blob(n: int) -> bytes:
    """``n`` distinct message-key strings (fresh objects, no cached hash, after loads)."""
    keys = [f"{5511900000000 + i % 2000}@s.whatsapp.net,3EB0{i:016X},{i & 1}" for i in range(n)]
    return pickle.dumps(keys, protocol=pickle.HIGHEST_PROTOCOL)


# -- modes --------------------------------------------------------------------------


def run_cache(core: ModuleType, keys: list[str]) -> float:
    add = core.HistoryCache(CACHE_SIZE).add
    start = time.perf_counter()
    for key in keys:
        add(key)
    return time.perf_counter() - start


# -- gate ---------------------------------------------------------------------------


def measure(n_events: int, rounds: int, cache_inserts: int) -> dict[str, Any]:
    blob = load_blob(n_events)
    n = len(pickle.loads(blob))
    small_keys, big_keys = cache_keys_blob(cache_inserts // 10), cache_keys_blob(cache_inserts)
    cores = {tag: importlib.import_module(mod) for tag, mod in CORES.items()}
    times: dict[tuple[str, str], list[float]] = {}
    counts: dict[str, Counter[str]] = {}
    for _ in range(rounds):
        for mode in MODES:
            for tag, core in cores.items():
                t, c = timed_round(run_mode, core, mode, pickle.loads(blob))
                times.setdefault((mode, tag), []).append(t / n)
                if mode == "a":
                    counts[tag] = c
        for tag, core in cores.items():
            for label, keys_blob in (("d100k", small_keys), ("d", big_keys)):
                t = timed_round(run_cache, core, pickle.loads(keys_blob))
                times.setdefault((label, tag), []).append(t)
    return {"n": n, "times": times, "counts": counts, "cache_inserts": cache_inserts}


def report(res: dict[str, Any]) -> list[str]:
    """Print the table; return the failures."""
    times, n, inserts = res["times"], res["n"], res["cache_inserts"]
    failures = []
    print(f"workload: {n} events (gen_workload.py --events {n} --seed 1); best of rounds")
    print(f"{'mode':<34}{'c ns/ev':>10}{'py ns/ev':>10}{'c/py':>8}{'median':>9}  gate")
    labels = {
        "a": "(a) one scope, one flush",
        "b": f"(b) scopes of {SCOPE}",
        "c": "(c) unbuffered",
        "d": f"(d) {inserts:,} cache inserts",
    }
    for mode in (*MODES, "d"):
        c, py = times[(mode, "c")], times[(mode, "py")]
        scale = 1e9 / inserts if mode == "d" else 1e9
        ratio = min(py) / min(c)
        median = statistics.median(p / q for p, q in zip(py, c, strict=True))
        gate = GATES.get(mode)
        verdict = ""
        if gate is not None:
            verdict = f">= {gate:g}x " + ("ok" if ratio >= gate else "FAIL")
            if ratio < gate:
                failures.append(f"mode ({mode}): compiled/pure {ratio:.2f}x < {gate:g}x")
        print(
            f"{labels[mode]:<34}{min(c) * scale:>10.1f}{min(py) * scale:>10.1f}"
            f"{ratio:>7.2f}x{median:>8.2f}x  {verdict}"
        )
    for tag in CORES:
        growth = min(times[("d", tag)]) / min(times[("d100k", tag)])
        ok = growth <= LINEARITY
        print(
            f"(d) linearity {tag}: {inserts:,} / {inserts // 10:,} inserts = {growth:.2f}x "
            f"(<= {LINEARITY:g}x {'ok' if ok else 'FAIL'})"
        )
        if not ok:
            failures.append(f"(d) {tag}: {growth:.2f}x > {LINEARITY:g}x")
    ca, pa = res["counts"]["c"], res["counts"]["py"]
    print("mode (a) consolidated counts:", json.dumps(dict(sorted(ca.items()))))
    if ca != pa:
        diff = {k: (ca.get(k), pa.get(k)) for k in ca.keys() | pa.keys() if ca.get(k) != pa.get(k)}
        failures.append(f"mode (a) counts differ (c, py): {diff}")
    return failures


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="compiled/pure merge-core ratio gate")
    ap.add_argument("--events", type=int, default=100_000, help="workload size (default 100000)")
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds per mode and core")
    ap.add_argument("--cache-inserts", type=int, default=CACHE_INSERTS, help="mode (d) inserts")
    ap.add_argument("--report-only", action="store_true", help="print the table, never fail")
    args = ap.parse_args(argv)
    failures = report(measure(args.events, args.rounds, args.cache_inserts))
    for failure in failures:
        print("GATE FAILED:", failure)
    if failures and not args.report_only:
        return 1
    print("gate: report only" if failures else "gate: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
