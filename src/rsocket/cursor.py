"""Resume cursors: where each tenant's next socket resumes from.

A ``Cursor`` is the last processed seq and the log session (epoch) it belongs
to. A ``SeqStore`` keeps one per tenant; the manager saves the old socket's
cursor before the next socket sends ``hello``, so nothing is lost or
delivered twice across reconnects. ``FileSeqStore`` survives a restart of the
process.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from pathlib import Path
from typing import NamedTuple, Protocol, runtime_checkable

__all__ = ["Cursor", "FileSeqStore", "MemorySeqStore", "SeqStore"]


class Cursor(NamedTuple):
    """The last processed seq of a tenant and the epoch of its log."""

    epoch: str = ""
    seq: int = 0


@runtime_checkable
class SeqStore(Protocol):
    """Where resume cursors live (coroutines, so a networked store fits)."""

    async def load(self, tenant: str) -> Cursor:
        """The tenant's cursor; ``Cursor("", 0)`` when nothing is stored."""
        ...

    async def save(self, tenant: str, cursor: Cursor) -> None:
        """Store the tenant's cursor."""
        ...


class MemorySeqStore:
    """In-process cursors (the default): they last as long as the process."""

    def __init__(self) -> None:
        self._cursors: dict[str, Cursor] = {}

    async def load(self, tenant: str) -> Cursor:
        return self._cursors.get(tenant, Cursor())

    async def save(self, tenant: str, cursor: Cursor) -> None:
        self._cursors[tenant] = Cursor(cursor.epoch, cursor.seq)


class FileSeqStore:
    """Cursors in one JSON file, written atomically (temp file, fsync, rename).

    A restarted process resumes where the last one stopped instead of
    replaying or losing events. Writes are coalesced: one at a time, and the
    saves that arrive while one runs share the next, so saving every tenant
    about once a second costs a few writes per second, not one per tenant.

    Args:
        path: the JSON file (created on the first save).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._cursors: dict[str, Cursor] | None = None
        self._lock = asyncio.Lock()
        self._dirty = False
        #: files written so far
        self.writes = 0

    async def load(self, tenant: str) -> Cursor:
        return self._read().get(tenant, Cursor())

    async def save(self, tenant: str, cursor: Cursor) -> None:
        self._read()[tenant] = Cursor(cursor.epoch, cursor.seq)
        self._dirty = True
        async with self._lock:  # one write at a time...
            if not self._dirty:
                return  # ...and a write that started after our change carried it
            self._dirty = False
            assert self._cursors is not None
            data = {t: {"epoch": c.epoch, "seq": c.seq} for t, c in self._cursors.items()}
            await asyncio.to_thread(self._write, json.dumps(data, sort_keys=True))
            self.writes += 1

    def _read(self) -> dict[str, Cursor]:
        if self._cursors is None:
            try:
                raw = json.loads(self.path.read_text(encoding="utf-8"))
                cursors = {
                    str(tenant): Cursor(str(c.get("epoch", "")), int(c.get("seq", 0)))
                    for tenant, c in raw.items()
                }
            except FileNotFoundError:
                cursors = {}
            except (OSError, ValueError, TypeError, AttributeError) as exc:
                raise ValueError(f"cannot read cursors from {self.path}: {exc}") from exc
            self._cursors = cursors
        return self._cursors

    def _write(self, text: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            os.unlink(tmp)
            raise
