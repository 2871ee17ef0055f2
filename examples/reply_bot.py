"""Reply to every incoming text message, through the account that received it.

    rsocket serve --token secret &
    python examples/reply_bot.py --tenants t1,t2
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from rsocket import QueryError, TenantPool
from rsocket.whatsapp import WhatsApp, incoming_texts


class ReplyBot:
    def __init__(self, pool: TenantPool, remember: int = 10_000) -> None:
        self.pool = pool
        self.replied: dict[tuple[str, str, str], None] = {}  # oldest first, at most `remember`
        self.remember = remember
        pool.process(self.on_batch)

    async def on_batch(self, tenant: str, batch: dict[str, Any]) -> None:
        wa = WhatsApp.of(self.pool, tenant)
        for message, text in incoming_texts(batch):  # live and offline texts; never our own
            key = message["key"]
            done = (tenant, key["remoteJid"], key["id"])
            if done in self.replied:
                continue  # a batch delivered again (a replay after a reconnect): replied already
            self.replied[done] = None
            if len(self.replied) > self.remember:
                del self.replied[next(iter(self.replied))]
            try:
                sent = await wa.send_text(key["remoteJid"], f"you said: {text}")
            except QueryError as exc:
                self.replied.pop(done, None)  # not sent: a redelivery tries again
                print(f"{tenant}: reply refused: {exc}", flush=True)
            else:
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
