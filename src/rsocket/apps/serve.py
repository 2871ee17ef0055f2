"""``rsocket serve``: the reference server until SIGINT or SIGTERM."""

from __future__ import annotations

import asyncio

from ..signals import stop_on_signals
from ..testing import ReferenceServer

__all__ = ["serve"]


async def serve(host: str, port: int, tenants: dict[str, str], rate: float = 0.0,
                replay_window: int = 100_000) -> None:
    """Serve ``tenants`` (name -> token) on host:port, printing the URL and tokens."""
    stop = asyncio.Event()
    with stop_on_signals(stop):
        async with ReferenceServer(tenants, host, port, replay_window=replay_window) as srv:
            print(f"rsocket reference server listening on {srv.url}", flush=True)
            for name, token in tenants.items():
                print(f"  tenant {name} token {token}", flush=True)
            if rate > 0:
                srv.start_traffic(rate)
                print(f"  traffic {rate:g} events/s per tenant", flush=True)
            await stop.wait()
            print("stopping", flush=True)
