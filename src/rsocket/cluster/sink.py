"""Released batches appended to a Redis Stream (:class:`RedisStreamSink`)."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from itertools import islice
from typing import Any

import msgspec

from .._redis import aclose, cancelling, client
from ..logs import RateLimitedLog
from ..seqs import Seqs

__all__ = ["RedisStreamSink", "decode_entry"]

_log = logging.getLogger("rsocket.cluster")

def _enc_hook(obj: Any) -> Any:
    return str(obj)


_encoder = msgspec.msgpack.Encoder(enc_hook=_enc_hook)


def decode_entry(fields: dict[Any, Any]) -> dict[str, Any]:
    """A stream entry as written by :class:`RedisStreamSink`: tenant, first, last,
    batch, and token (the writer's fencing token; None without leases)."""
    get = {k.decode() if isinstance(k, bytes) else k: v for k, v in fields.items()}
    tenant = get["tenant"]
    return {
        "tenant": tenant.decode() if isinstance(tenant, bytes) else tenant,
        "first": int(get["first"]),
        "last": int(get["last"]),
        "batch": msgspec.msgpack.decode(get["batch"]),
        "token": int(get["token"]) if "token" in get else None,
    }


class RedisStreamSink:
    """Appends each released batch to a Redis Stream, for consumer groups downstream.

    Use ``pool.process(sink, with_seqs=True)``. Each entry has the fields
    ``tenant``, ``first`` and ``last`` (the seq range of the release) and
    ``batch`` (msgpack; ``connection.update`` items are left out), and
    ``token`` under a ``LeasedPool`` (the writer's lease fencing token). After a
    takeover, a consumer drops what it already has by seq range; entries never
    carry a token older than one already written for the tenant, since a
    release is delivered only while its lease is proven.

    The sink is an async handler: the buffer holds ``last_seq`` (and so the
    acks and the saved cursor) until the entry is in Redis, so a worker killed
    at any moment loses nothing. The XADDs themselves are queued to one
    background writer task owned by the sink, in order, pipelined (several
    tenants' batches share a round trip); while Redis is unreachable the
    writer retries and handlers wait (backpressure). ``await close()``
    flushes the queue (bounded) and closes the connections.

    Args:
        url: the Redis URL.
        stream: the stream's name, ``{tenant}`` replaced by the tenant.
        maxlen: approximate cap of each stream (``MAXLEN ~``); None: unbounded.
        max_pipeline: most entries per round trip.
    """

    def __init__(
        self,
        url: str,
        stream: str = "rsocket:{tenant}",
        maxlen: int | None = 100_000,
        *,
        max_pipeline: int = 256,
        timeout: float = 5.0,
        logger: logging.Logger | logging.LoggerAdapter[Any] | None = None,
    ) -> None:
        if "{tenant}" not in stream:
            raise ValueError(f"stream must contain '{{tenant}}', got {stream!r}")
        self.url = url
        self.stream = stream
        self.maxlen = maxlen
        self.max_pipeline = max_pipeline
        self.logger = logger if logger is not None else _log
        self.client = client(url, timeout)
        self._queue: deque[tuple[str, dict[str, Any], asyncio.Future[None]]] = deque()
        self._wakeup: asyncio.Event | None = None
        self._writer: asyncio.Task[None] | None = None
        self._progress: asyncio.Condition | None = None
        self._enqueued = 0  # entries queued so far
        self._settled = 0  # entries written (or failed for good) so far
        self._closing = False
        self._closed = False
        self._failures = RateLimitedLog(self.logger)
        self.counters = {"batches": 0, "events": 0, "round_trips": 0, "errors": 0}

    def stream_for(self, tenant: str) -> str:
        return self.stream.replace("{tenant}", tenant)

    async def __call__(self, tenant: str, batch: dict[str, Any], seqs: Seqs) -> None:
        if self._closing:
            raise RuntimeError("RedisStreamSink is closed")
        if not seqs:
            return  # connection updates: not events
        if "connection.update" in batch:
            batch = {k: v for k, v in batch.items() if k != "connection.update"}
        fields = {"tenant": tenant, "first": seqs.start, "last": seqs.stop - 1,
                  "batch": _encoder.encode(batch)}
        token = getattr(seqs, "token", None)
        if token is not None:  # the writer's fencing token: a consumer can refuse a stale one
            fields["token"] = token
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._queue.append((self.stream_for(tenant), fields, future))
        self._enqueued += 1
        self._ensure_writer(loop)
        await future  # cancelled: the entry stays queued and is still written

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything queued so far is in Redis; False on timeout."""
        target = self._enqueued
        if self._settled >= target:
            return True
        if self._progress is None:
            self._progress = asyncio.Condition()
        try:
            async with asyncio.timeout(timeout), self._progress:
                await self._progress.wait_for(lambda: self._settled >= target)
        except TimeoutError:
            return False
        return True

    async def close(self, timeout: float = 5.0) -> None:
        """Flush what is queued (bounded by ``timeout``), stop the writer, close the connections."""
        if self._closed:
            return
        self._closing = True
        if self._wakeup is not None:
            self._wakeup.set()
        writer = self._writer
        if writer is not None:
            done, _ = await asyncio.wait([writer], timeout=timeout)
            if not done:
                writer.cancel()
                await asyncio.gather(writer, return_exceptions=True)
        self._writer = None
        if self._queue:
            self.logger.warning("sink closed with %d unwritten batch(es)", len(self._queue))
        while self._queue:
            _, _, future = self._queue.popleft()
            if not future.done():
                future.set_exception(ConnectionError("sink closed before the batch was written"))
                future.exception()  # retrieved: nobody may be awaiting it
        self._closed = True
        await aclose(self.client)

    def _ensure_writer(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._wakeup is None:
            self._wakeup = asyncio.Event()
        self._wakeup.set()
        if self._writer is None or self._writer.done():
            self._writer = loop.create_task(self._write_loop(), name="rsocket-stream-sink")

    async def _write_loop(self) -> None:
        assert self._wakeup is not None
        delay = 0.05
        while True:
            while not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
            items = list(islice(self._queue, self.max_pipeline))
            try:
                async with self.client.pipeline(transaction=False) as pipe:
                    for stream, fields, _ in items:
                        pipe.xadd(stream, fields, maxlen=self.maxlen, approximate=True)
                    results = await pipe.execute(raise_on_error=False)
            except Exception as exc:  # connection trouble: retry the same entries, in order
                self.counters["errors"] += 1
                self._failures.failed("stream append failed, retrying", exc)
                if cancelling():
                    raise asyncio.CancelledError from None
                await asyncio.sleep(delay)  # close() bounds this while closing
                delay = min(delay * 2, 1.0)
                continue
            self._failures.recovered("stream appends work again")
            delay = 0.05
            self.counters["round_trips"] += 1
            for (_, fields, future), result in zip(items, results, strict=True):
                self._queue.popleft()
                if future.done():
                    pass
                elif isinstance(result, Exception):  # e.g. WRONGTYPE: the handler reports it
                    future.set_exception(result)
                else:
                    self.counters["batches"] += 1
                    self.counters["events"] += fields["last"] - fields["first"] + 1
                    future.set_result(None)
            self._settled += len(items)
            if self._progress is not None:
                async with self._progress:
                    self._progress.notify_all()




# -- the lease-driven pool ------------------------------------------------------------------
