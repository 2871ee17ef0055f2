"""WhatsApp's side of a fleet of bridges, played through Redis (test mode).

A fleet's bridges in test mode (``BridgeServer(redis=...)``) read each account's
events from the Redis stream ``prefix:{account}:upstream`` and acknowledge them once
their own log holds them, as a device acknowledges to WhatsApp: a takeover delivers
again what was not acknowledged (bots dedupe by message id). :class:`Upstream`
is the producer, and reads the fleet's own measure of overlap
(``max_concurrent``: upstream connections of one account at once, which must stay 1).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from typing import Any

from .._redis import aclose, client, tenant_key
from ..discovery import DEFAULT_BRIDGE_PREFIX

__all__ = ["Upstream", "text_message"]


def text_message(message_id: str, text: str, jid: str = "5511999990000@s.whatsapp.net",
                 timestamp: int = 1_700_000_000) -> tuple[str, dict[str, Any]]:
    """A ``messages.upsert`` of one incoming text, as Baileys emits it (``notify``)."""
    return ("messages.upsert", {"type": "notify", "messages": [{
        "key": {"remoteJid": jid, "fromMe": False, "id": message_id},
        "message": {"conversation": text},
        "messageTimestamp": timestamp,
        "pushName": "rsocket test",
    }]})


class Upstream:
    """Appends events to the accounts' upstream streams of a fleet in test mode.

    Args:
        url: the fleet's Redis.
        prefix: the bridges' key prefix.
    """

    def __init__(self, url: str, *, prefix: str = DEFAULT_BRIDGE_PREFIX,
                 timeout: float = 5.0) -> None:
        self.prefix = prefix
        self.client: Any = client(url, timeout)

    async def send(self, tenant: str, events: Iterable[tuple[str, Any]]) -> None:
        """Append ``events`` ([name, data] pairs) to ``tenant``'s upstream, in order."""
        from redis.exceptions import ConnectionError as RedisConnectionError

        key = tenant_key(self.prefix, tenant, "upstream")
        entries = [{"e": json.dumps(event)} for event in events]
        for attempt in range(3):  # a Redis that restarted: the next connection works
            try:
                async with self.client.pipeline(transaction=True) as pipe:
                    for fields in entries:
                        pipe.xadd(key, fields)
                    await pipe.execute()
                return
            except RedisConnectionError:
                if attempt == 2:
                    raise
                await asyncio.sleep(0.1)

    async def pending(self, tenant: str) -> int:
        """Events of ``tenant`` no bridge has acknowledged yet."""
        ack = await self.client.get(tenant_key(self.prefix, tenant, "upstream-ack"))
        return int(await self.client.xlen(tenant_key(self.prefix, tenant, "upstream"))) if ack is None \
            else len(await self.client.xrange(tenant_key(self.prefix, tenant, "upstream"),
                                              b"(" + ack, "+"))

    async def max_concurrent(self) -> dict[str, int]:
        """Account -> the most bridges ever connected upstream for it at once."""
        raw = await self.client.hgetall(f"{self.prefix}:upstream-max")
        return {k.decode(): int(v) for k, v in raw.items()}

    async def holder(self, tenant: str) -> str | None:
        """The id of the bridge holding ``tenant``'s lease, or None."""
        value = await self.client.get(tenant_key(self.prefix, tenant, "lease"))
        return None if value is None else value.decode().rpartition("|")[0]

    async def close(self) -> None:
        await aclose(self.client)
