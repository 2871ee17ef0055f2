"""Prometheus metrics of a pool, served on 127.0.0.1 for a scraper.

    pip install 'rsocket-events[metrics]'
    rsocket serve --token secret --rate 20 &
    python examples/prometheus_metrics.py --port 9100    # curl 127.0.0.1:9100/metrics
"""

from __future__ import annotations

import argparse
import asyncio
import urllib.request

from prometheus_client import start_http_server

from rsocket import TenantPool, metrics


def scrape(url: str) -> str:
    with urllib.request.urlopen(url) as response:
        return str(response.read().decode())


async def main(url: str, tenants: list[str], token: str, port: int, seconds: float) -> None:
    metrics.configure(tenant_label=True)  # per-tenant series (fine for a few tenants)
    server, _ = start_http_server(port, addr="127.0.0.1")
    port = server.server_port
    print(f"metrics on http://127.0.0.1:{port}/metrics", flush=True)
    async with TenantPool() as pool:
        pool.process(lambda tenant, batch: None)
        for tenant in tenants:
            await pool.add(tenant, url, token)
        await asyncio.sleep(seconds)
        text = await asyncio.to_thread(scrape, f"http://127.0.0.1:{port}/metrics")
    for line in text.splitlines():  # what a scrape sees, e.g.
        if line.startswith(("rsocket_connection_state", "rsocket_buffer_flush_total",
                            "rsocket_buffers_live")):
            print(line, flush=True)
    server.shutdown()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="ws://127.0.0.1:8765")
    parser.add_argument("--tenants", default="t1,t2")
    parser.add_argument("--token", default="secret")
    parser.add_argument("--port", type=int, default=9100, help="0: any free port")
    parser.add_argument("--seconds", type=float, default=3600.0)
    args = parser.parse_args()
    asyncio.run(main(args.url, args.tenants.split(","), args.token, args.port, args.seconds))
