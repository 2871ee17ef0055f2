"""What a server allows before a client has proven its token (sans-I/O).

Two attacks, one guard. **Token guessing**: failed ``hello``s are counted per
address and per tenant in a sliding window; an address over the limit is
refused outright for ``lockout`` seconds, and every hello for a tenant over
the limit waits ``slow_down`` seconds before its token is checked (its real
owner still gets in, a guesser gets far fewer tries). Each failed hello is
also answered only after ``failure_delay``. **Connection floods**:
connections that have not passed ``hello`` are capped per address and in
total, so idle sockets cannot use up the descriptors authenticated tenants
need. The reference server uses it; the bridge has the same rules
(``bridge/lib/guard.js``), and ``docs/PROTOCOL.md`` states them.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["GuardConfig", "HelloGuard", "raise_open_files_limit"]

_MAX_KEYS = 10_000  # addresses and tenants remembered before stale ones are swept


@dataclass(frozen=True, slots=True)
class GuardConfig:
    """Limits of a :class:`HelloGuard`.

    Attributes:
        max_failures: failed hellos within ``window`` seconds, per address or
            per tenant, before the address is locked out / the tenant slowed down.
        window: seconds failures are remembered.
        lockout: seconds an address over the limit is refused.
        slow_down: seconds every hello for a tenant over the limit waits.
        failure_delay: seconds before a failed hello is answered.
        per_address: unauthenticated connections one address may hold.
        total: unauthenticated connections in all.
    """

    max_failures: int = 10
    window: float = 60.0
    lockout: float = 60.0
    slow_down: float = 2.0
    failure_delay: float = 0.5
    per_address: int = 32
    total: int = 512


class HelloGuard:
    """Counts failed hellos and unauthenticated connections (no I/O, no timers)."""

    def __init__(self, config: GuardConfig | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config if config is not None else GuardConfig()
        self.clock = clock
        self._failures: dict[str, deque[float]] = {}  # "a:addr" / "t:tenant" -> times
        self._locked: dict[str, float] = {}  # address -> until
        self._pending: dict[str, int] = {}  # address -> unauthenticated connections
        self.pending = 0
        #: what was refused, for stats() and metrics
        self.counters = {"failed_hellos": 0, "locked_out": 0, "slowed": 0,
                         "flood_refused": 0}

    # -- connections before hello ------------------------------------------------------

    def admit(self, address: str) -> str | None:
        """A connection from ``address`` opens: None to serve it (it counts as
        unauthenticated until :meth:`settled`), else why it is refused."""
        held = self._pending.get(address, 0)
        if held >= self.config.per_address:
            self.counters["flood_refused"] += 1
            return f"too many unauthenticated connections from {address}"
        if self.pending >= self.config.total:
            self.counters["flood_refused"] += 1
            return "too many unauthenticated connections"
        self._pending[address] = held + 1
        self.pending += 1
        return None

    def settled(self, address: str) -> None:
        """An admitted connection passed ``hello``, or ended before."""
        held = self._pending.get(address, 0) - 1
        if held <= 0:
            self._pending.pop(address, None)
        else:
            self._pending[address] = held
        self.pending = max(0, self.pending - 1)

    # -- hellos -------------------------------------------------------------------------

    def locked(self, address: str) -> float:
        """Seconds ``address`` is still refused (0.0: not locked out)."""
        until = self._locked.get(address)
        if until is None:
            return 0.0
        left = until - self.clock()
        if left <= 0:
            del self._locked[address]
            return 0.0
        self.counters["locked_out"] += 1
        return left

    def delay(self, tenant: str) -> float:
        """Seconds a hello for ``tenant`` waits before its token is checked."""
        if self._recent(f"t:{tenant}") >= self.config.max_failures:
            self.counters["slowed"] += 1
            return self.config.slow_down
        return 0.0

    def failed(self, address: str, tenant: str) -> float:
        """A hello from ``address`` for ``tenant`` had a wrong token: count it, lock
        the address out when over the limit; returns the seconds to wait before
        answering. Pass ``tenant`` "" for a name the server does not have (so
        made-up names cannot grow the table)."""
        self.counters["failed_hellos"] += 1
        now = self.clock()
        if len(self._failures) > _MAX_KEYS:  # many addresses: forget the quiet ones
            horizon = now - self.config.window
            for key in [k for k, t in self._failures.items() if not t or t[-1] < horizon]:
                del self._failures[key]
        for key in (f"a:{address}", f"t:{tenant}") if tenant else (f"a:{address}",):
            times = self._failures.setdefault(key, deque())
            times.append(now)
        if self._recent(f"a:{address}") >= self.config.max_failures:
            self._locked[address] = now + self.config.lockout
        return self.config.failure_delay

    def _recent(self, key: str) -> int:
        times = self._failures.get(key)
        if not times:
            return 0
        horizon = self.clock() - self.config.window
        while times and times[0] < horizon:
            times.popleft()
        if not times:
            del self._failures[key]
            return 0
        return len(times)


def raise_open_files_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit (a server
    holding thousands of sockets); returns the limit now in force (0: unknown)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not a Unix
        return 0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft
