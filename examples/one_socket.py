"""One account, one socket: print what arrives, send a message, stop.

    rsocket serve --token secret --rate 5 &      # a reference server on 127.0.0.1:8765
    python examples/one_socket.py --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from rsocket import Socket


def show(batch: dict[str, Any]) -> None:
    """One consolidated batch: event name -> payload."""
    update = batch.get("connection.update")
    if update is not None:
        print("connection.update", update, flush=True)
    others = sorted(name for name in batch if name != "connection.update")
    if others:
        print("batch:", ", ".join(others), flush=True)


async def main(url: str, tenant: str, token: str, seconds: float) -> None:
    sock = Socket(url, tenant, token)
    sock.ev.process(show)  # before connecting: the `connecting` and `open` updates come too
    async with sock:  # connect(); end() on the way out: final batch delivered, buffer gone
        result = await sock.query("send_message", {"jid": "123@s.whatsapp.net", "text": "hi"})
        print("sent message", result["key"]["id"], flush=True)
        try:
            await asyncio.wait_for(sock.wait_closed(), seconds)
        except TimeoutError:
            pass  # --seconds elapsed with the socket still open
    print(f"stopped at seq {sock.last_seq}: {sock.error}", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="ws://127.0.0.1:8765")
    parser.add_argument("--tenant", default="t1")
    parser.add_argument("--token", default="secret")
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    asyncio.run(main(args.url, args.tenant, args.token, args.seconds))
