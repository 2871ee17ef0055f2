"""Reply to every incoming text message, through the account that received it.

    rsocket serve --token secret &
    python examples/reply_bot.py --tenants t1,t2

A reply must not go out twice, yet a batch can come again: a handler that
raised is retried, and after a crash the events since the last saved cursor
are delivered again. So each reply carries an id derived from the message it
answers (``reply_id``): sent again, it is the same message, delivered once.
The in-memory set only saves the round trip for what this process already did.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from rsocket import QueryError, TenantPool
from rsocket.whatsapp import WhatsApp, incoming_texts, reply_id


class ReplyBot:
    def __init__(self, pool: TenantPool, remember: int = 10_000) -> None:
        self.pool = pool
        self.replied: dict[str, None] = {}  # reply ids, oldest first, at most `remember`
        self.remember = remember
        pool.process(self.on_batch)

    async def on_batch(self, tenant: str, batch: dict[str, Any]) -> None:
        wa = WhatsApp.of(self.pool, tenant)
        for message, text in incoming_texts(batch):  # live and offline texts; never our own
            key = message["key"]
            reply = reply_id(tenant, key)
            if reply in self.replied:
                continue  # this batch came again and this process sent it already
            try:
                sent = await wa.send_text(key["remoteJid"], f"you said: {text}", message_id=reply)
            except QueryError as exc:  # refused for good (a bad chat): raising would retry it
                print(f"{tenant}: reply refused: {exc}", flush=True)
                continue
            # (a DisconnectError or TimeoutError raises: the batch is retried, same ids)
            self.replied[reply] = None
            if len(self.replied) > self.remember:
                del self.replied[next(iter(self.replied))]
            print(f"{tenant}: replied to {key['remoteJid']} ({sent['key']['id']})", flush=True)


async def main(url: str, tenants: list[str], token: str, seconds: float) -> None:
    async with TenantPool() as pool:  # closed on the way out
        ReplyBot(pool)
        for tenant in tenants:
            await pool.add(tenant, url, token)
        await asyncio.sleep(seconds)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="ws://127.0.0.1:8765")
    parser.add_argument("--tenants", default="t1")
    parser.add_argument("--token", default="secret")
    parser.add_argument("--seconds", type=float, default=3600.0)
    args = parser.parse_args()
    asyncio.run(main(args.url, args.tenants.split(","), args.token, args.seconds))
