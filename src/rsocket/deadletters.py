"""Where dead letters go: a JSON-lines file, or a Redis stream.

A store is an ``on_dead_letter`` hook (``pool.on_dead_letter(FileDeadLetters(
"dead.jsonl"))``): an async callable that returns once the record is durable,
so the cursor moves past a dead-lettered batch only after it is stored.
Every record is one JSON object::

    {"time": "2026-12-02T08:00:00+00:00", "tenant": "t1", "epoch": "...",
     "first": 10, "last": 12, "handler": "on_batch", "attempts": 5,
     "error": {"type": "ValueError", "message": "...", "traceback": "..."},
     "batch": {"messages.upsert": {...}}}

``bytes`` in a batch are base64 strings; values JSON cannot hold are their ``repr``.
"""

from __future__ import annotations

import asyncio
import os
import traceback
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from .retry import DeadLetter

__all__ = ["FileDeadLetters", "RedisDeadLetters", "record"]

_encoder = msgspec.json.Encoder(enc_hook=repr, decimal_format="number")


def record(letter: DeadLetter) -> dict[str, Any]:
    """A dead letter as the JSON object the stores write."""
    error = letter.error
    return {
        "time": datetime.now(UTC).isoformat(),
        "tenant": letter.tenant,
        "epoch": letter.epoch,
        "first": letter.seqs.start if letter.seqs else None,
        "last": letter.seqs.stop - 1 if letter.seqs else None,
        "handler": letter.handler,
        "attempts": letter.attempts,
        "error": {
            "type": type(error).__name__,
            "message": str(error),
            "traceback": "".join(traceback.format_exception(error)),
        },
        "batch": letter.batch,
    }


class FileDeadLetters:
    """Dead letters appended to a JSON-lines file, one ``write`` per record.

    Each record is one ``O_APPEND`` write followed by ``fsync``, so records
    from many sockets (or processes) never interleave, and a crash can at most
    leave a last line without its newline, which :meth:`read` skips. The file
    is created ``0600``: batches hold private messages.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    async def __call__(self, letter: DeadLetter) -> None:
        line = _encoder.encode(record(letter)) + b"\n"
        await asyncio.to_thread(self._append, line)

    def _append(self, line: bytes) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            written = os.write(fd, line)
            if written != len(line):  # pragma: no cover - a full disk
                raise OSError(f"short write to {self.path}: {written} of {len(line)} bytes")
            os.fsync(fd)
        finally:
            os.close(fd)

    def read(self) -> Iterator[dict[str, Any]]:
        """The records written so far (a torn last line is skipped)."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return
        for line in data.split(b"\n")[:-1]:  # the part after the last newline is torn
            if line:
                yield msgspec.json.decode(line)

    def __repr__(self) -> str:
        return f"FileDeadLetters({str(self.path)!r})"


class RedisDeadLetters:
    """Dead letters appended to a Redis stream (``XADD``), field ``record`` = JSON.

    Args:
        url: the Redis URL (loopback in tests).
        stream: the stream's key; ``{tenant}`` in it is replaced by the tenant.
        maxlen: the stream is trimmed (approximately) to this many entries.
        timeout: seconds one Redis call may take.
    """

    def __init__(self, url: str, stream: str = "rsocket:dead-letters",
                 maxlen: int | None = 100_000, *, timeout: float = 5.0) -> None:
        from ._redis import client  # redis is optional: imported when used

        self.stream = stream
        self.maxlen = maxlen
        self.client = client(url, timeout)

    def stream_for(self, tenant: str) -> str:
        return self.stream.replace("{tenant}", tenant)

    async def __call__(self, letter: DeadLetter) -> None:
        await self.client.xadd(self.stream_for(letter.tenant),
                               {"record": _encoder.encode(record(letter))},
                               maxlen=self.maxlen, approximate=True)

    async def read(self, tenant: str = "", count: int = 100) -> list[dict[str, Any]]:
        """The oldest ``count`` records of the stream."""
        entries = await self.client.xrange(self.stream_for(tenant), count=count)
        return [msgspec.json.decode(fields[b"record"]) for _, fields in entries]

    async def close(self) -> None:
        from ._redis import aclose

        await aclose(self.client)
