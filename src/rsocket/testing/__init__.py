"""Test servers: the reference server and the Baileys bridge, behind one ``Server`` protocol.

Not imported by ``import rsocket`` (a client never pays for a server). Both servers
speak the wire protocol of ``docs/PROTOCOL.md`` on loopback and offer the same
controls, so a suite written against :class:`Server` runs against both:

- :class:`ReferenceServer` (``rsocket.testing.reference``): pure Python, in process;
- :class:`BridgeServer` (``rsocket.testing.bridge``): the Node bridge in ``bridge/`` as
  a child process, its events through Baileys' own event emitter;
- :class:`Traffic` and :class:`Workload`: the standard event mix, paced or in bulk.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol, runtime_checkable

from .bridge import BridgeServer, BridgeUnavailable
from .reference import FAULTS, ReferenceServer
from .traffic import Traffic
from .workload import Workload

__all__ = ["FAULTS", "BridgeServer", "BridgeUnavailable", "ReferenceServer", "Server",
           "Traffic", "Workload"]


@runtime_checkable
class Server(Protocol):
    """What the suites, the demo and the benchmarks use of a test server."""

    @property
    def url(self) -> str:
        """``ws://host:port`` once started."""
        ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def __aenter__(self) -> Any: ...

    async def __aexit__(self, *exc_info: object) -> None: ...

    def publish(self, tenant: str, name: str, data: Any) -> int:
        """Append one event to ``tenant``'s log; its (last) seq."""
        ...

    def publish_many(self, tenant: str, events: Iterable[tuple[str, Any]]) -> range:
        """Append events; the seqs they got."""
        ...

    def inject(self, tenant: str, fault: str, **kw: Any) -> None:
        """A fault of :data:`FAULTS` on ``tenant``'s connection (now, or its next)."""
        ...

    def reset(self, tenant: str) -> None:
        """Start ``tenant``'s log afresh (a new epoch), as after a server restart."""
        ...

    def retained(self, tenant: str) -> list[tuple[str, Any]]:
        """The events ``tenant``'s log still holds, oldest first."""
        ...

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per tenant: connections, acks, last seq, session..."""
        ...

    def start_traffic(self, rate: float, tenants: Iterable[str] | None = None, *,
                      seed: int = 1) -> None: ...

    def stop_traffic(self) -> None: ...
