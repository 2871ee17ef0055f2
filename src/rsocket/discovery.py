"""Where a tenant is served now: a fleet of bridges publishes it in Redis.

Bridges that share accounts through Redis (``bridge/lib/fleet.js``, docs/FLEET.md)
hold one lease per account (``prefix:{account}:lease`` = ``bridge id|token``) and
publish their URL in the hash ``prefix:urls`` (bridge id -> ``ws://...``). A
:class:`BridgeResolver` reads both in one script, and is what
``ConnectionManager(resolve=...)`` asks before every connect, so a bot follows
its account to whichever bridge took it over::

    resolver = BridgeResolver("redis://127.0.0.1:6379/0")
    await pool.add("alice", "ws://127.0.0.1:8765", token, resolve=resolver)
"""

from __future__ import annotations

from typing import Any

from ._redis import aclose, client, tenant_key

__all__ = ["DEFAULT_BRIDGE_PREFIX", "BridgeResolver"]

#: the key prefix bridges use unless configured otherwise (``redis.prefix``)
DEFAULT_BRIDGE_PREFIX = "rsocket:bridge"

# KEYS: lease, urls. The URL of the bridge holding the lease, or nil.
_RESOLVE = """
local holder = redis.call('GET', KEYS[1])
if not holder then return false end
local id = string.match(holder, '^(.*)|[0-9]+$')
if not id then return false end
return redis.call('HGET', KEYS[2], id)
"""


class BridgeResolver:
    """``await resolver(tenant)``: the URL of the bridge serving ``tenant``, or None.

    Args:
        url: the fleet's Redis (``redis://host:port/db``).
        prefix: the bridges' key prefix.
        timeout: bound of one Redis call, seconds.

    ``await close()`` closes its connections.
    """

    def __init__(self, url: str, *, prefix: str = DEFAULT_BRIDGE_PREFIX,
                 timeout: float = 2.0) -> None:
        self.prefix = prefix
        self.client: Any = client(url, timeout)
        self._script = self.client.register_script(_RESOLVE)

    async def __call__(self, tenant: str) -> str | None:
        url = await self._script(keys=[tenant_key(self.prefix, tenant, "lease"),
                                       f"{self.prefix}:urls"])
        return url.decode() if isinstance(url, bytes) else url

    async def close(self) -> None:
        await aclose(self.client)
