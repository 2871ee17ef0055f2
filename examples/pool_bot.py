"""A bot with several accounts: a pool, resume cursors in a file, an async handler.

    rsocket serve --token secret --rate 20 &
    python examples/pool_bot.py --tenants t1,t2,t3 --cursors cursors.json

Ctrl-C (or --seconds) stops it gracefully: the last batches are delivered and
the cursors saved. Started again, it resumes where it stopped. Delivery is
at-least-once: after a crash (kill -9), up to about a second of events (the
cursor's save interval) comes again, with the same seqs.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from rsocket import DisconnectError, FileSeqStore, TenantPool


async def store(tenant: str, batch: dict[str, Any], seqs: range) -> None:
    """Where a real bot writes to its database. An async handler gets one batch at a
    time, in order; a seq counts as processed once the handler has returned."""
    if not seqs:
        return  # only connection.update: this tenant's connection state, seen by on_state
    messages = batch.get("messages.upsert", {}).get("messages", [])
    print(f"{tenant}: seqs {seqs.start}..{seqs.stop - 1}, {len(messages)} new message(s)",
          flush=True)
    await asyncio.sleep(0)  # await db.insert(...)


def on_error(tenant: str, exc: BaseException) -> None:
    """Errors the pool would log: a handler that raised, a socket that failed."""
    what = "connection" if isinstance(exc, DisconnectError) else "handler"
    print(f"{tenant}: {what} error: {exc}", flush=True)


def on_state(tenant: str, state: str, code: int | None) -> None:
    print(f"{tenant}: {state}" + (f" ({code})" if code else ""), flush=True)


async def stop_after(pool: TenantPool, seconds: float) -> None:
    await asyncio.sleep(seconds)
    await pool.close()  # run_forever() returns


async def main(url: str, tenants: list[str], token: str, cursors: str, seconds: float) -> None:
    pool = TenantPool(seq_store=FileSeqStore(cursors))
    pool.process(store, with_seqs=True)
    pool.on_error(on_error)
    pool.on_state(on_state)
    for tenant in tenants:
        await pool.add(tenant, url, token)
    stopper = asyncio.create_task(stop_after(pool, seconds))
    await pool.run_forever()  # until Ctrl-C, SIGTERM or pool.close()
    stopper.cancel()
    for tenant, status in pool.status().items():
        print(f"{tenant}: {status['events_processed']} events processed, "
              f"last seq {status['last_seq']}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="ws://127.0.0.1:8765")
    parser.add_argument("--tenants", default="t1,t2,t3")
    parser.add_argument("--token", default="secret")
    parser.add_argument("--cursors", default="cursors.json")
    parser.add_argument("--seconds", type=float, default=3600.0)
    args = parser.parse_args()
    asyncio.run(main(args.url, args.tenants.split(","), args.token, args.cursors, args.seconds))
