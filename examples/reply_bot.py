"""Reply to every incoming text message, through the account that received it.

    rsocket serve --token secret &
    python examples/reply_bot.py --tenants t1,t2
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from rsocket import QueryError, TenantPool


class ReplyBot:
    def __init__(self, pool: TenantPool) -> None:
        self.pool = pool
        pool.process(self.on_batch)

    async def on_batch(self, tenant: str, batch: dict[str, Any]) -> None:
        upsert = batch.get("messages.upsert")
        if upsert is None or upsert.get("type") != "notify":  # new messages, not history
            return
        for message in upsert["messages"]:
            key, text = message["key"], (message.get("message") or {}).get("conversation")
            if key.get("fromMe") or not text:
                continue  # our own messages (our replies come back too) and non-text
            try:
                result = await self.pool.query(
                    tenant, "send_message", {"jid": key["remoteJid"], "text": f"you said: {text}"})
            except QueryError as exc:
                print(f"{tenant}: reply refused: {exc}", flush=True)
            else:
                print(f"{tenant}: replied to {key['remoteJid']} ({result['key']['id']})", flush=True)


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
