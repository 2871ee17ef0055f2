"""What happens when an event handler raises: ``Retry`` policies and ``DeadLetter``s.

A handler that raises is handed the same batch (the same seqs) again after
an exponential backoff with jitter, in order: its later batches wait, and
the socket's cursor does not pass the batch until the handler returns. A
batch that still fails after the last attempt becomes a :class:`DeadLetter`
(given to ``on_dead_letter`` hooks, logged, counted) and only then counts
as processed, so a poison event never loops and a transient failure (a
database outage) loses nothing.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

from .seqs import Seqs

__all__ = ["DEFAULT_RETRY", "DeadLetter", "Retry"]


@dataclass(frozen=True, slots=True)
class Retry:
    """How often, and how patiently, a failing handler is called again.

    Attributes:
        attempts: calls in all, the first one included (1: no retry).
        backoff: ``(first, most)`` seconds to wait before a retry; each wait
            doubles the last, up to ``most``, with jitter (a random part of up
            to half of it, so tenants failing together do not retry together).
    """

    attempts: int = 5
    backoff: tuple[float, float] = (0.5, 30.0)

    def __post_init__(self) -> None:
        if type(self.attempts) is not int or self.attempts < 1:
            raise ValueError(f"Retry.attempts={self.attempts!r}: expected an integer >= 1")
        try:
            first, most = (float(x) for x in self.backoff)
        except (TypeError, ValueError):
            first = most = math.nan
        if not (math.isfinite(first) and math.isfinite(most) and 0 <= first <= most):
            raise ValueError(f"Retry.backoff={self.backoff!r}: expected (first, most) "
                             "seconds with 0 <= first <= most")

    def delay(self, failures: int) -> float:
        """Seconds to wait after the ``failures``-th failed call (1 = the first)."""
        first, most = self.backoff
        base = min(most, first * 2.0 ** (failures - 1))
        return base / 2 + random.random() * base / 2


#: Every handler's policy unless ``process(..., retry=...)`` says otherwise.
DEFAULT_RETRY = Retry()
#: ``retry=None``: one call, then the batch is dead-lettered.
NO_RETRY = Retry(attempts=1, backoff=(0.0, 0.0))


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A batch a handler could not process after its last attempt.

    Attributes:
        tenant: the account the events came from ("" for a standalone buffer).
        seqs: the seqs of the batch, with their log's ``epoch``.
        epoch: the log those seqs belong to (``seqs.epoch``).
        batch: what the handler was given: ``{event name: payload}``.
        error: the exception of the last attempt.
        attempts: how many times the handler was called with it.
        handler: the handler's qualified name.
    """

    tenant: str
    seqs: Seqs
    epoch: str
    batch: dict[str, Any]
    error: BaseException
    attempts: int
    handler: str = ""
