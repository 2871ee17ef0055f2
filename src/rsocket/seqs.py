"""Seqs: ``Seqs``, the range a release covers, with the epoch of the log it belongs
to; ``SeqAccount``, where a connection's stream stands."""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Sequence
from typing import Any, overload

__all__ = ["SeqAccount", "Seqs"]


class Seqs(Sequence[int]):
    """The seqs of one release (``range(start, stop)``), their log's ``epoch`` and,
    on a worker sharing tenants through leases, the lease's fencing ``token``.

    It behaves as the ``range`` it stands for (iteration, ``len``, indexing,
    ``in``, and ``seqs == range(...)``), so ``(seqs.epoch, seq)`` is a key
    that stays stable across reconnects, restarts and takeovers: what a
    handler that must not act twice (a reply) remembers. An empty range
    means the release carried no seqs (events emitted by the application).
    A downstream store can refuse what carries a ``token`` older than the newest
    it has seen for the tenant: a deposed owner (``rsocket.cluster``).
    """

    __slots__ = ("epoch", "start", "stop", "token")

    def __init__(self, start: int, stop: int, epoch: str = "", token: int | None = None) -> None:
        self.start = start
        self.stop = stop
        self.epoch = epoch
        self.token = token

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.stop))

    def __contains__(self, seq: object) -> bool:
        return seq in range(self.start, self.stop)

    @overload
    def __getitem__(self, index: int) -> int: ...
    @overload
    def __getitem__(self, index: slice) -> range: ...

    def __getitem__(self, index: int | slice) -> int | range:
        return range(self.start, self.stop)[index]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Seqs):
            return ((self.start, self.stop, self.epoch, self.token)
                    == (other.start, other.stop, other.epoch, other.token))
        if isinstance(other, range):
            return range(self.start, self.stop) == other
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self.start, self.stop, self.epoch))

    def __repr__(self) -> str:
        token = "" if self.token is None else f", token={self.token}"
        return f"Seqs({self.start}, {self.stop}, epoch={self.epoch!r}{token})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (Seqs, (self.start, self.stop, self.epoch, self.token))


class SeqAccount:
    """Where one connection's stream of events stands, from the wire to the
    handlers: its one seq tracker, pure accounting, no I/O.

    A :class:`~rsocket.protocol.ClientSession` checks each frame's seqs against
    ``next`` and counts the backlog; its socket hands events to the buffer
    from ``received`` on, settles released seqs into ``processed`` and acks.

    Attributes:
        next: the seq the next frame must start at (None: not known yet, the
            replay of a gapped or new log starts where the server says).
        backlog: events received before ``offline``.
        received: the highest seq handed to the buffer.
        processed: every seq up to it is processed (its handlers are done):
            what a next connection resumes from.
        acked: the highest seq acknowledged to the server.
        count: events processed since this account was made.
    """

    __slots__ = ("_fresh", "_settled", "acked", "backlog", "count", "next", "processed",
                 "received")

    def __init__(self, resume: int = 0) -> None:
        self.next: int | None = None
        self.backlog = 0
        self.received = self.processed = self.acked = resume
        self.count = 0
        self._fresh = True  # no event received yet on this connection
        # (start, stop) settled ahead of processed, a heap (None: nothing ahead)
        self._settled: list[tuple[int, int]] | None = None

    @property
    def unprocessed(self) -> int:
        """Events received and not yet processed."""
        return max(0, self.received - self.processed)

    def restart(self) -> None:
        """The server's log started afresh (a new epoch): its seqs count from 1 again."""
        self.received = self.processed = self.acked = 0
        self._settled = None

    def first(self, seq: int) -> None:
        """The first seq of a frame. A connection's first event beyond
        ``received + 1`` (the replay starts past it: a trimmed log, a gap) moves
        every count to just before it: nothing earlier can arrive any more."""
        if self._fresh:
            self._fresh = False
            if seq > self.received + 1:
                self.received = self.processed = self.acked = seq - 1

    def settle(self, seqs: range) -> bool:
        """``seqs`` are processed; advance ``processed`` over every contiguous
        settled seq. True when it moved."""
        heap = self._settled
        last = self.processed
        if heap is None and seqs.start <= last + 1:  # in order: the common case
            last = max(last, seqs.stop - 1)
        else:
            if heap is None:
                heap = self._settled = []
            heapq.heappush(heap, (seqs.start, seqs.stop))
            while heap and heap[0][0] <= last + 1:
                _, stop = heapq.heappop(heap)
                if stop - 1 > last:
                    last = stop - 1
            if not heap:
                self._settled = None
        if last == self.processed:
            return False
        self.count += last - self.processed
        self.processed = last
        return True
