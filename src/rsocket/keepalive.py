"""One keepalive clock per event loop, shared by every socket on it.

Each socket asks to be called back at a time (its next ping or its silence
deadline); the clock keeps those requests in one heap and arms one timer for
the earliest. An idle socket then owns no task, no coroutine and no timer of
its own: 10,000 idle tenants cost one timer, not 10,000 sleeping tasks.

The clock also measures how late its timer fires: time the event loop itself
was blocked (:attr:`Clock.blocked`), which a socket does not count against
its peer's silence.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import weakref
from typing import Protocol

__all__ = ["Clock", "Due"]


class Due(Protocol):
    """What the clock calls back: a socket."""

    def keepalive_due(self, now: float) -> None: ...


class Clock:
    """The keepalive clock of one event loop (get it with :meth:`of`)."""

    __slots__ = ("__weakref__", "_armed", "_heap", "_order", "_stale", "_timer", "blocked",
                 "loop")

    # id(loop) -> its clock, held weakly: the clock holds its loop, so a mapping keyed by
    # the loop (a WeakKeyDictionary) would keep every loop that ever had a socket alive.
    # A clock lives as long as a socket (or its armed timer) holds it.
    _clocks: weakref.WeakValueDictionary[int, Clock] = weakref.WeakValueDictionary()

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        # (when, order, socket); a socket's stale entries are skipped (see call_at)
        self._heap: list[tuple[float, int, Due]] = []
        self._order = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._armed = float("inf")
        self._stale = 0  # entries superseded or cancelled, still in the heap
        #: seconds the loop ran late on this clock's timer, in total
        self.blocked = 0.0

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> Clock:
        clock = cls._clocks.get(id(loop))
        if clock is None or clock.loop is not loop:  # none yet, or a dead loop's id reused
            clock = cls._clocks[id(loop)] = cls(loop)
        return clock

    def __len__(self) -> int:
        return len(self._heap)

    def call_at(self, when: float, target: Due, *, replacing: bool = False) -> None:
        """Call ``target.keepalive_due(now)`` at loop time ``when``. The target
        keeps the time it asked for (``target.keepalive_at``): an entry with
        another time is stale and skipped. ``replacing``: the target had an
        entry pending, now stale."""
        if replacing:
            self.forget()
        heapq.heappush(self._heap, (when, next(self._order), target))
        if when < self._armed:
            self._arm(when)

    def forget(self) -> None:
        """One entry went stale (its target closed or asked for another time). The
        heap is rebuilt without stale entries once they are most of it, so a
        closed socket is not kept alive until its old time comes."""
        self._stale += 1
        heap = self._heap
        if self._stale >= len(heap):  # nothing left to wait for: no timer either
            heap.clear()
            self._stale = 0
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._armed = float("inf")
        elif self._stale > 64 and self._stale * 2 > len(heap):
            heap[:] = [e for e in heap if getattr(e[2], "keepalive_at", None) == e[0]]
            heapq.heapify(heap)
            self._stale = 0

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._armed = when
        self._timer = self.loop.call_at(when, self._fire)

    def _fire(self) -> None:
        loop = self.loop
        now = loop.time()
        self.blocked += max(0.0, now - self._armed)
        self._timer = None
        self._armed = float("inf")
        heap = self._heap
        while heap and heap[0][0] <= now:
            when, _, target = heapq.heappop(heap)
            if getattr(target, "keepalive_at", None) == when:
                target.keepalive_due(now)
            elif self._stale:
                self._stale -= 1
        if heap:
            self._arm(heap[0][0])
