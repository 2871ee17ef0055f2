"""What a lease backend offers the lease-driven pool (``rsocket.cluster.LeasedPool``).

One lease per tenant, held by one worker at a time, with a fencing token that
grows on every take. ``rsocket.cluster.RedisLeases`` implements it; the pool
and the fenced cursor store are written against this protocol only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

__all__ = ["LeaseLost", "Leases"]

#: ``callback(tenant, token)``: the lease of ``tenant`` taken with ``token`` is gone.
LeaseLost = Callable[[str, int], None]


class Leases(Protocol):
    """Per-tenant leases shared by workers."""

    #: seconds a lease lives without renewal
    ttl: float
    #: bound of one call to the backend, seconds
    timeout: float

    def start(self) -> None:
        """Start renewing (idempotent; needs a running loop)."""

    async def take(self, tenant: str) -> int | None:
        """Take ``tenant``'s lease if it is free: its new fencing token, or None."""

    async def release(self, tenant: str, token: int | None = None) -> bool:
        """Give ``tenant``'s lease back (``token``: an earlier one, after a loss)."""

    async def peek(self, tenants: Iterable[str]) -> dict[str, float | None]:
        """Seconds until each tenant's lease expires; None when it is free."""

    async def workers(self) -> int:
        """Live workers sharing the tenants (this one included)."""

    def token(self, tenant: str) -> int | None:
        """The fencing token of ``tenant`` if this worker holds its lease now."""

    def on_lost(self, callback: LeaseLost) -> Callable[[], None]:
        """Call ``callback(tenant, token)`` when a lease is given up; returns an unsubscribe."""

    async def close(self) -> None:
        """Stop renewing, release what is held, free the backend's resources."""
