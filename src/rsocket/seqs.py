"""``Seqs``: the seq range a release covers, with the epoch of the log it belongs to."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, overload

__all__ = ["Seqs"]


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
