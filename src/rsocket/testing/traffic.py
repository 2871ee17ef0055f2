"""Paced traffic: the standard event mix published at a steady rate over many tenants.

The servers' ``start_traffic``/``stop_traffic`` (:class:`rsocket.server.ReferenceServer`,
the bridge harness in :mod:`rsocket.apps.bridge`) both publish through it.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Collection, Coroutine, Iterable
from itertools import islice
from typing import Any

from .workload import Workload

__all__ = ["Traffic"]

PublishMany = Callable[[str, Iterable[tuple[str, Any]]], object]
Spawn = Callable[[Coroutine[Any, Any, None]], "asyncio.Task[None]"]


class Traffic:
    """Generators publishing :class:`~rsocket.workload.Workload` events through
    ``publish_many(tenant, events)``; their tasks are made with ``spawn`` (so the
    owner awaits them when it closes).

    ``tenants`` are the names it may publish to; ``tasks`` maps each tenant to the
    generator publishing for it.
    """

    __slots__ = ("publish_many", "spawn", "tasks", "tenants")

    def __init__(self, publish_many: PublishMany, spawn: Spawn, tenants: Collection[str]) -> None:
        self.publish_many = publish_many
        self.spawn = spawn
        self.tenants = tenants
        self.tasks: dict[str, asyncio.Task[None]] = {}

    def start(self, rate: float, tenants: Iterable[str] | None, seed: int) -> None:
        """Publish ``rate`` events/s to each of ``tenants`` (default: all; one task for
        all of them); a tenant that had a generator moves to this one.

        Raises:
            KeyError: unknown tenant (nothing started).
            ValueError: ``rate`` is not positive.
        """
        if not rate > 0:
            raise ValueError(f"rate must be > 0 events/s, got {rate}")
        names = list(self.tenants if tenants is None else tenants)
        for name in names:
            if name not in self.tenants:
                raise KeyError(name)
        replaced = {self.tasks[name] for name in names if name in self.tasks}
        task = self.spawn(self._generate(names, rate, seed))
        self.tasks.update(dict.fromkeys(names, task))
        for old in replaced:  # a generator left with no tenant of its own stops
            if old not in self.tasks.values():
                old.cancel()

    def stop(self) -> None:
        """Stop every generator."""
        for task in set(self.tasks.values()):
            task.cancel()
        self.tasks.clear()

    async def _generate(self, names: list[str], rate: float, seed: int) -> None:
        """One task for every tenant of a ``start`` call: each tick publishes what is
        due over all of them, round-robin, so its cost follows the events published,
        not the number of tenants (10,000 tenants are one task, not 10,000 waking 50
        times a second)."""
        me = asyncio.current_task()
        workloads = [Workload(seed + i) for i in range(len(names))]  # one stream per tenant
        loop = asyncio.get_running_loop()
        total = rate * len(names)  # events/s over the group
        start, done, turn = loop.time(), 0, 0
        while True:
            await asyncio.sleep(0.02)
            now = loop.time()
            due = int((now - start) * total) - done
            if due > total:  # the loop was blocked: skip ahead rather than burst
                start, done, due = now, 0, 0
            if due <= 0:
                continue
            done += due
            # the next ``due`` turns, as events per tenant: one frame each this tick
            counts = Counter((turn + k) % len(names) for k in range(due))
            turn = (turn + due) % len(names)
            for i, count in counts.items():
                if self.tasks.get(names[i]) is me:  # not since given to another generator
                    self.publish_many(names[i], islice(workloads[i], count))
