"""``Seqs``: the seq range a release covers, with the epoch of the log it belongs to."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, overload

__all__ = ["Seqs"]


class Seqs(Sequence[int]):
    """The seqs of one release (``range(start, stop)``) and their log's ``epoch``.

    It behaves as the ``range`` it stands for (iteration, ``len``, indexing,
    ``in``, and ``seqs == range(...)``), so ``(seqs.epoch, seq)`` is a key
    that stays stable across reconnects, restarts and takeovers: what a
    handler that must not act twice (a reply) remembers. An empty range
    means the release carried no seqs (events emitted by the application).
    """

    __slots__ = ("epoch", "start", "stop")

    def __init__(self, start: int, stop: int, epoch: str = "") -> None:
        self.start = start
        self.stop = stop
        self.epoch = epoch

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
            return (self.start, self.stop, self.epoch) == (other.start, other.stop, other.epoch)
        if isinstance(other, range):
            return range(self.start, self.stop) == other
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self.start, self.stop, self.epoch))

    def __repr__(self) -> str:
        return f"Seqs({self.start}, {self.stop}, epoch={self.epoch!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (Seqs, (self.start, self.stop, self.epoch))
