"""The socket: one tenant's connection, whose every close destroys its buffer.

``Socket`` moves messages between a ``websockets`` client connection and the
sans-I/O ``ClientSession`` of ``rsocket.protocol``, feeds events into its own
``EventBuffer`` and owns every task it starts (reader, keepalive, acks).
``end()`` stops all of them, delivers what the buffer still holds (final
flush) and destroys the buffer, so nothing survives a close: the bug behind
this project (an old buffer and its timer left alive by every reconnect)
cannot happen here.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidURI,
    WebSocketException,
)

from . import lifecycle, metrics
from .buffer import BufferConfig, EventBuffer
from .enums import DisconnectReason
from .errors import DisconnectError, ProtocolError, QueryError
from .logs import bind
from .protocol import (
    DEFAULT_MAX_SIZE,
    MSGPACK,
    SUBPROTOCOLS,
    Batch,
    ClientSession,
    Event,
    Failure,
    Offline,
    Pong,
    Ready,
    Result,
    SeqAccount,
    StreamError,
    close_reason,
)

__all__ = ["Socket", "SocketConfig", "StateListener"]

#: ``listener(state, error)``: ``"open"`` (error None) or ``"closed"`` with the
#: DisconnectError that ended the socket.
StateListener = Callable[[str, "DisconnectError | None"], None]

#: close codes of the WebSocket layer
_NORMAL_CLOSURE = 1000


@dataclass(frozen=True, slots=True)
class SocketConfig:
    """Timeouts, limits and the buffer's config of one ``Socket``.

    Attributes:
        keepalive_interval: seconds between pings.
        keepalive_grace: a peer silent for ``keepalive_interval`` plus this
            many seconds is taken for lost (408).
        connect_timeout: bound on TCP connect + WebSocket handshake + ``ready``.
        close_timeout: bound on the WebSocket closing handshake.
        drain_timeout: how long ``end()`` waits for async handlers to finish
            the final batches before cancelling them.
        high_water: stop reading while more events than this are unprocessed.
        low_water: resume reading once fewer than this are unprocessed.
        subprotocol: ``rsocket.v1.msgpack`` (default) or ``rsocket.v1.json``.
        max_size: largest message accepted, in bytes.
        buffer: the ``EventBuffer``'s config (None: ``BufferConfig.from_env()``).
    """

    keepalive_interval: float = 30.0
    keepalive_grace: float = 5.0
    connect_timeout: float = 10.0
    close_timeout: float = 2.0
    drain_timeout: float = 5.0
    high_water: int = 10_000
    low_water: int = 5_000
    subprotocol: str = MSGPACK
    max_size: int = DEFAULT_MAX_SIZE
    buffer: BufferConfig | None = field(default=None)

    def __post_init__(self) -> None:
        for name in ("keepalive_interval", "keepalive_grace", "connect_timeout",
                     "close_timeout", "drain_timeout"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or value <= 0:
                raise ValueError(f"SocketConfig.{name}={value!r}: expected a positive number")
        if not 0 < self.low_water < self.high_water:
            raise ValueError(
                f"SocketConfig: expected 0 < low_water ({self.low_water}) "
                f"< high_water ({self.high_water})"
            )
        if self.subprotocol not in SUBPROTOCOLS:
            raise ValueError(f"SocketConfig.subprotocol={self.subprotocol!r}: not one of {SUBPROTOCOLS}")


class Socket:
    """One tenant's event socket.

    Args:
        url: the server, e.g. ``"ws://127.0.0.1:8765"``.
        tenant: account name sent in ``hello``.
        token: its secret.
        resume: last processed seq of a previous socket (0: none).
        epoch: the log session ``resume`` belongs to ("" none).
        config: timeouts and limits.
        logger: a ``Logger`` or ``LoggerAdapter`` (e.g. carrying the tenant).

    The socket owns ``ev``, its own ``EventBuffer``: register handlers there
    (``sock.ev.process(handler)``). ``connection.update`` events go through it
    too: ``connecting``, ``open`` (with ``resumed`` and ``gap``),
    ``receivedPendingNotifications`` once the backlog is delivered, and
    ``close`` with ``lastDisconnect {error, date}``.
    """

    def __init__(
        self,
        url: str,
        tenant: str,
        token: str,
        *,
        resume: int = 0,
        epoch: str = "",
        config: SocketConfig | None = None,
        logger: logging.Logger | logging.LoggerAdapter[Any] | None = None,
    ) -> None:
        self.url = url
        self.tenant = tenant
        self.config = config if config is not None else SocketConfig()
        self.logger = bind(logger, "rsocket.socket", tenant=tenant)
        self.ev = EventBuffer(logger=bind(logger, "rsocket.buffer", tenant=tenant),
                              config=self.config.buffer)
        # Destroying the buffer under a live socket would leave a zombie (the socket
        # open, every later event dropped, no close seen): the application's
        # ev.destroy() ends the socket instead, close update first, final flush after.
        self.ev.set_owner(self._destroy_requested)
        self.ev.on_settled = self._settled
        self._seqs = SeqAccount(resume)
        #: the log session ``last_seq`` belongs to
        self.epoch = epoch
        #: last keepalive round trip, seconds
        self.latency: float | None = None
        #: connecting -> open -> closed ("new" before connect())
        self.state = "new"
        #: the DisconnectError that ended the socket
        self.error: DisconnectError | None = None
        self._session = ClientSession(
            tenant, token, resume=resume, epoch=epoch,
            subprotocol=self.config.subprotocol, max_size=self.config.max_size,
        )
        self._ws: ClientConnection | None = None
        self._queries: dict[int, asyncio.Future[Result]] = {}
        self._ids = itertools.count(1)
        self._ping_sent: dict[int, float] = {}
        self._last_frame = 0.0
        self._reading = asyncio.Event()
        self._reading.set()
        self._reader: asyncio.Task[None] | None = None
        self._keepalive: asyncio.Task[None] | None = None
        self._acker: asyncio.Task[None] | None = None
        self._end_task: asyncio.Task[None] | None = None
        self._connect_task: asyncio.Task[Any] | None = None
        self._connect_cancelled = False
        self._end_callers: set[asyncio.Task[Any]] = set()
        self._closed = asyncio.Event()
        self._metric_state: str | None = None
        self._state_listeners: list[StateListener] = []
        self._progress_listeners: list[Callable[[int], None]] = []
        self._set_state("new")

    # -- public API -----------------------------------------------------------------

    async def connect(self) -> None:
        """Open the connection and wait for ``ready``.

        Raises:
            DisconnectError: 428 refused or reset, 408 handshake or ``ready``
                timeout, the code of a ``failure`` frame, 500 on a protocol
                error (its ``__cause__``). The socket is then ended exactly as
                by ``end(error)``.
            RuntimeError: ``connect()`` was already called.
        """
        if self.state != "new":
            raise RuntimeError(f"connect() called on a socket in state {self.state!r}")
        self._set_state("connecting")
        self._update({"connection": "connecting"})
        self._connect_task = asyncio.current_task()
        try:
            async with asyncio.timeout(self.config.connect_timeout):
                self._ws = await connect(
                    self.url,
                    subprotocols=[self.config.subprotocol],  # type: ignore[list-item]
                    max_size=self.config.max_size,
                    compression=None,
                    proxy=None,
                    open_timeout=None,
                    ping_interval=None,  # rsocket's own keepalive (ping/pong frames)
                    close_timeout=self.config.close_timeout,
                )
                self.ev.buffer()  # the backlog, from hello until offline, is one scope
                await self._ws.send(self._session.hello())
                ready = await self._await_ready()
        except BaseException as exc:
            self._connect_task = None
            if self._connect_cancelled and isinstance(exc, asyncio.CancelledError):
                raise self._ended_error() from None
            error = _disconnect_error(exc, "connect")
            if error is None:  # cancelled from outside: still leave nothing behind
                await self.end(DisconnectError(DisconnectReason.connectionClosed, "connect cancelled"))
                raise
            try:
                await self.end(error)
            except asyncio.CancelledError:
                if not self._connect_cancelled:
                    raise
                raise self._ended_error() from None  # another end() won the race
            raise error from error.__cause__
        self._connect_task = None
        self._opened(ready)

    def _ended_error(self) -> DisconnectError:
        """connect() interrupted by end(): drop our cancellation, report the socket's error."""
        current = asyncio.current_task()
        if current is not None:
            current.uncancel()
        assert self.error is not None
        return self.error

    async def query(self, method: str, params: Any = None, timeout: float = 10.0) -> Any:
        """Call a server method and return its result data.

        Raises:
            DisconnectError: the socket is not open, or ended before the answer (428).
            TimeoutError: no answer within ``timeout`` seconds.
            QueryError: the server answered ``ok: false``.
        """
        if self.state != "open" or self._ws is None:
            raise DisconnectError(DisconnectReason.connectionClosed, f"socket is {self.state}")
        qid = next(self._ids)
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._queries[qid] = future
        try:
            async with asyncio.timeout(timeout):
                await self._ws.send(self._session.query(qid, method, params))
                result = await future
        except TimeoutError:
            raise TimeoutError(f"query {method!r} (id {qid}) got no result within {timeout}s") from None
        except ConnectionClosed:
            raise DisconnectError(DisconnectReason.connectionClosed, "connection closed") from None
        finally:
            self._queries.pop(qid, None)
        if not result.ok:
            raise QueryError(method, result.error or "unknown error")
        return result.data

    async def end(self, error: DisconnectError | None = None) -> None:
        """Close the socket and destroy its buffer. Idempotent, safe from any task.

        Stops the keepalive and the reader, closes the WebSocket (bounded),
        fails pending queries with 428, emits the ``close`` update, destroys
        the buffer (final flush: nothing received is lost) and waits, bounded,
        for async handlers. Afterwards the socket owns no task or timer.
        """
        if self._end_task is None:
            self._end_task = asyncio.get_running_loop().create_task(
                self._end(error), name=f"rsocket-end-{self.tenant}"
            )
        caller = asyncio.current_task()
        if caller is not None:
            self._end_callers.add(caller)  # a handler awaiting end() is not drained
        try:
            await asyncio.shield(self._end_task)
        finally:
            self._end_callers.discard(caller)

    def on_state(self, listener: StateListener) -> Callable[[], None]:
        """Call ``listener(state, error)`` when the socket opens and when it closes.

        This is how an owner (the ``ConnectionManager``) learns the socket's
        state: from the socket itself, never from ``connection.update`` events,
        which a server may relay from upstream. Returns an unsubscribe function.
        """
        return _subscribe(self._state_listeners, listener)

    def on_progress(self, listener: Callable[[int], None]) -> Callable[[], None]:
        """Call ``listener(last_seq)`` whenever ``last_seq`` advances (e.g. to save a
        cursor). Returns an unsubscribe function."""
        return _subscribe(self._progress_listeners, listener)

    @property
    def reading_paused(self) -> bool:
        """True while reading is paused by backpressure (handlers behind)."""
        return not self._reading.is_set()

    @property
    def last_seq(self) -> int:
        """The last processed seq: every event up to it has been handled (what the
        next socket resumes from, with :attr:`epoch`)."""
        return self._seqs.processed

    @property
    def received(self) -> int:
        """The highest seq received and handed to the buffer."""
        return self._seqs.received

    @property
    def events_processed(self) -> int:
        """Events processed on this socket (their handlers finished)."""
        return self._seqs.count

    @property
    def unprocessed(self) -> int:
        """Events received and not yet processed by the handlers."""
        return self._seqs.unprocessed

    async def wait_closed(self) -> None:
        """Wait until the socket has ended (for any reason)."""
        await self._closed.wait()

    async def __aenter__(self) -> Socket:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.end()

    def __repr__(self) -> str:
        return f"<Socket {self.tenant} {self.state} last_seq={self.last_seq}>"

    # -- connection ---------------------------------------------------------------------

    async def _await_ready(self) -> Ready:
        assert self._ws is not None
        while True:
            for frame in self._session.receive(await self._ws.recv()):
                if isinstance(frame, Ready):
                    return frame
                if isinstance(frame, StreamError | Failure):
                    raise DisconnectError(frame.code, frame.reason)

    def _opened(self, ready: Ready) -> None:
        gap = self._session.resume > 0 and not ready.resumed
        if ready.session != self.epoch:
            if self.epoch:  # the server's log started afresh: its seqs restart
                self._seqs.restart()
            self.epoch = ready.session
        m = metrics.get()
        if gap:
            m.tenant(m.resume_gaps_total, self.tenant).inc()
        self._set_state("open")
        loop = asyncio.get_running_loop()
        self._last_frame = loop.time()
        self._reader = loop.create_task(self._read_loop(), name=f"rsocket-reader-{self.tenant}")
        self._keepalive = loop.create_task(self._keepalive_loop(), name=f"rsocket-keepalive-{self.tenant}")
        self.logger.info(
            "socket open (resumed=%s, gap=%s, pending=%d)", ready.resumed, gap, ready.pending,
            extra={"tenant": self.tenant, "resumed": ready.resumed, "gap": gap, "pending": ready.pending},
        )
        if lifecycle.enabled():
            lifecycle.record("connection_open", tenant=self.tenant, resumed=ready.resumed, gap=gap)
        self._notify_state("open", None)
        self._update({"connection": "open", "resumed": ready.resumed, "gap": gap})

    async def _read_loop(self) -> None:
        assert self._ws is not None
        error: DisconnectError | None = None
        try:
            async for message in self._ws:
                self._last_frame = asyncio.get_running_loop().time()
                for frame in self._session.receive(message):
                    if isinstance(frame, Batch):
                        self._on_events(frame.first, frame.events, self._session.offline)
                    elif isinstance(frame, Event):
                        self._on_events(frame.seq, [frame], False)
                    elif isinstance(frame, Offline):
                        self._on_offline()
                    elif isinstance(frame, Pong):
                        self._on_pong(frame.id)
                    elif isinstance(frame, Result):
                        future = self._queries.get(frame.id)
                        if future is not None and not future.done():
                            future.set_result(frame)
                    elif isinstance(frame, StreamError | Failure):
                        error = DisconnectError(frame.code, frame.reason)
                        break
                if error is not None:
                    break
                if self._seqs.unprocessed > self.config.high_water:
                    await self._pause()
            if error is None:
                error = DisconnectError(DisconnectReason.connectionClosed, "connection closed by server")
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            error = _disconnect_error(exc, "read")
            if error is None:
                raise
        await self.end(error)

    def _on_events(self, first: int, frame_events: list[Any], live_batch: bool) -> None:
        """One frame's events into the buffer (one core call; a live batch is one
        release), then per-frame accounting: duplicates, invalid events, errors."""
        seqs = self._seqs
        seqs.first(first)
        received, duplicates, invalid, errors = self.ev.ingest(
            first, frame_events, live_batch, seqs.received)
        seqs.received = received
        if duplicates:
            m = metrics.get()
            m.tenant(m.events_duplicate_total, self.tenant).inc(duplicates)
        if invalid:
            self._invalid(invalid)
        if errors:
            self._handler_error(errors[0] if len(errors) == 1 else
                                ExceptionGroup(f"{len(errors)} event handlers raised", errors))

    def _on_offline(self) -> None:
        try:
            self.ev.flush()
        except Exception as exc:
            self._handler_error(exc)
        self._update({"receivedPendingNotifications": True})

    def _invalid(self, invalid: list[tuple[int, str, str]]) -> None:
        m = metrics.get()
        m.tenant(m.events_invalid_total, self.tenant).inc(len(invalid))
        for seq, name, reason in invalid:  # each already processed: dropped and acked
            self.logger.warning(
                "dropped invalid event seq %d (%s): %s", seq, name, reason,
                extra={"tenant": self.tenant, "seq": seq, "event": name},
            )

    def _handler_error(self, exc: BaseException) -> None:
        m = metrics.get()
        errors = exc.exceptions if isinstance(exc, BaseExceptionGroup) else (exc,)
        m.tenant(m.handler_errors_total, self.tenant).inc(len(errors))
        self.logger.error(
            "event handler raised; the batch counts as processed", exc_info=exc,
            extra={"tenant": self.tenant},
        )

    # -- delivery accounting -----------------------------------------------------------

    def _settled(self, seqs: range) -> None:
        """A release's handlers are done with ``seqs``: advance ``last_seq`` contiguously."""
        if not self._seqs.settle(seqs):
            return
        last = self._seqs.processed
        for listener in self._progress_listeners:
            listener(last)
        if not self._reading.is_set() and self._seqs.unprocessed < self.config.low_water:
            self._reading.set()
        if self.state == "open" and self._acker is None:
            self._acker = asyncio.get_running_loop().create_task(
                self._send_acks(), name=f"rsocket-acks-{self.tenant}"
            )

    async def _send_acks(self) -> None:
        try:
            seqs = self._seqs
            while self.state == "open" and self._ws is not None and seqs.acked < seqs.processed:
                seq = seqs.processed
                await self._ws.send(self._session.ack(seq))
                seqs.acked = seq
        except ConnectionClosed:
            pass  # the reader reports the close
        finally:
            self._acker = None

    async def _pause(self) -> None:
        """Backpressure: stop reading until the handlers catch up to the low-water mark."""
        if self.ev.is_buffering() and self.ev.stats().items_buffered:
            try:  # a backlog scope holding the unprocessed events: release it
                self.ev.flush(force=True)
            except Exception as exc:
                self._handler_error(exc)
            self.ev.buffer()
        if self._seqs.unprocessed <= self.config.low_water:
            return
        self._reading.clear()
        self.logger.debug(
            "reading paused: %d unprocessed events", self._seqs.unprocessed,
            extra={"tenant": self.tenant},
        )
        await self._wait_resumed()
        self._last_frame = asyncio.get_running_loop().time()

    async def _wait_resumed(self) -> None:
        """Wait for the low-water mark, or for the transport to close meanwhile.

        Paused, we read nothing, so a close frame or a TCP close would go
        unnoticed; websockets still learns of a dead transport (the keepalive
        keeps writing pings), and then the wait ends with that close.
        """
        assert self._ws is not None
        loop = asyncio.get_running_loop()
        waiters = (loop.create_task(self._reading.wait()), loop.create_task(self._ws.wait_closed()))
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)
        if not self._reading.is_set():
            self._reading.set()
            raise self._ws.protocol.close_exc

    # -- keepalive ---------------------------------------------------------------------------

    async def _keepalive_loop(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.config.keepalive_interval
        silent_limit = interval + self.config.keepalive_grace
        next_ping = loop.time() + interval
        while True:
            wake = max(min(next_ping, self._last_frame + silent_limit), loop.time())
            await asyncio.sleep(wake - loop.time())
            now = loop.time()
            # Time the loop itself was blocked (we woke late) is not the peer's silence.
            self._last_frame = min(now, self._last_frame + (now - wake))
            paused = not self._reading.is_set()
            if paused:  # a slow handler is not a dead peer: no deadline...
                self._last_frame = now
            elif now - self._last_frame >= silent_limit:
                await self.end(DisconnectError(
                    DisconnectReason.connectionLost, f"no frame for {silent_limit:.3g}s"
                ))
                return
            if now < next_ping:
                continue
            # ...but still a ping: writing to a dead transport is how a paused socket
            # notices it (the pong is read once reading resumes, so it is not timed)
            next_ping = now + interval
            pid = next(self._ids)
            self._ping_sent = {} if paused else {pid: now}  # only the newest ping is timed
            try:
                assert self._ws is not None
                async with asyncio.timeout(max(self._last_frame + silent_limit - now, 0.01)):
                    await self._ws.send(self._session.ping(pid))
            except ConnectionClosed:
                return  # the reader reports the close
            except TimeoutError:  # the peer stopped reading too: same deadline
                await self.end(DisconnectError(
                    DisconnectReason.connectionLost, f"no frame for {silent_limit:.3g}s"
                ))
                return

    def _on_pong(self, pid: int) -> None:
        sent = self._ping_sent.pop(pid, None)
        if sent is not None:
            self.latency = asyncio.get_running_loop().time() - sent
            m = metrics.get()
            m.tenant(m.keepalive_rtt_seconds, self.tenant).observe(self.latency)

    # -- end ----------------------------------------------------------------------------------

    async def _end(self, error: DisconnectError | None) -> None:
        try:
            await self._close(error)
        finally:
            self._closed.set()

    async def _close(self, error: DisconnectError | None) -> None:
        if error is None:
            error = DisconnectError(DisconnectReason.connectionClosed, "closed by client")
        self.error = error
        was_open = self.state == "open"
        self._set_state("closed")
        try:
            await self._stop_io(error)
        finally:  # whatever happened above, the close is reported and the buffer destroyed
            if error.close_code is None:
                error.close_code = self._server_close_code()
            self._report_close(error, was_open)
            self.ev.set_owner(None)
            self.ev.destroy()  # final flush: what was received is delivered
            await self._drain()
            self.ev.on_settled = None

    async def _stop_io(self, error: DisconnectError) -> None:
        """Cancel connect, reader, keepalive and acks; close the WebSocket (bounded)."""
        connecting = self._connect_task
        if connecting is not None and not connecting.done():
            self._connect_cancelled = True  # connect() raises this socket's error
            connecting.cancel()
            await asyncio.wait([connecting])
        tasks = [t for t in (self._keepalive, self._reader, self._acker) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._keepalive = self._reader = self._acker = None
        self._reading.set()
        self._session.close()
        if self._ws is not None:
            cause = error.__cause__
            code = cause.close_code if isinstance(cause, ProtocolError) else _NORMAL_CLOSURE
            try:
                async with asyncio.timeout(self.config.close_timeout):
                    await self._ws.close(code, close_reason(error.reason))
            except (TimeoutError, OSError, WebSocketException):
                self._ws.transport.abort()
        for future in self._queries.values():
            if not future.done():
                future.set_exception(DisconnectError(DisconnectReason.connectionClosed, str(error)))
        self._queries.clear()

    def _server_close_code(self) -> int | None:
        """The close code of a closing handshake the server started, if any."""
        protocol = self._ws.protocol if self._ws is not None else None
        if protocol is None or protocol.close_rcvd is None or not protocol.close_rcvd_then_sent:
            return None
        return protocol.close_rcvd.code

    def _report_close(self, error: DisconnectError, was_open: bool) -> None:
        level = logging.INFO if error.status_code == DisconnectReason.connectionClosed else logging.WARNING
        self.logger.log(
            level, "socket closed: %s", error,
            extra={"tenant": self.tenant, "status_code": error.status_code, "was_open": was_open,
                   "last_seq": self.last_seq},
        )
        if lifecycle.enabled():
            lifecycle.record("connection_close", tenant=self.tenant, code=error.status_code,
                             reason=error.reason)
        self._notify_state("closed", error)
        self._update({
            "connection": "close",
            "lastDisconnect": {"error": error, "date": datetime.now(UTC)},
        })

    def _destroy_requested(self) -> None:
        """``sock.ev.destroy()`` called by the application: end the socket like ``end()``."""
        if self._end_task is not None:
            return  # already ending: end() destroys the buffer
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None or self.state == "new":
            self.ev.destroy()  # nothing to close yet: never connect
            self.error = DisconnectError(DisconnectReason.connectionClosed, "event buffer destroyed")
            self._set_state("closed")
            self._closed.set()
            return
        self._end_task = loop.create_task(
            self._end(DisconnectError(DisconnectReason.connectionClosed,
                                      "event buffer destroyed by the application")),
            name=f"rsocket-end-{self.tenant}",
        )

    async def _drain(self) -> None:
        """Wait (bounded) for async handlers, then cancel what is left."""
        callers = self._end_callers  # handlers awaiting end() are not waited for
        if await self.ev.drain(self.config.drain_timeout, exclude=callers):
            return
        # Work cut short is not processed: last_seq must not move past it, so the
        # next socket (resuming from last_seq) delivers it again.
        self.ev.on_settled = None
        cancelled = await self.ev.cancel_handlers(exclude=callers)
        self.logger.warning(
            "%d async handler(s) still running after %.3gs: cancelled",
            cancelled, self.config.drain_timeout, extra={"tenant": self.tenant},
        )

    # -- helpers --------------------------------------------------------------------------------

    def _notify_state(self, state: str, error: DisconnectError | None) -> None:
        for listener in self._state_listeners[:]:
            try:
                listener(state, error)
            except Exception:  # an owner's bug must not stop the close
                self.logger.exception("state listener failed", extra={"tenant": self.tenant})

    def _update(self, update: dict[str, Any]) -> None:
        try:
            self.ev.emit("connection.update", update)
        except Exception as exc:
            self._handler_error(exc)

    def _set_state(self, state: str) -> None:
        self.state = state
        m = metrics.get()
        if self._metric_state is not None:
            m.tenant(m.connection_state, self.tenant, state=self._metric_state).dec()
        if state == "closed":
            self._metric_state = None
        else:
            m.tenant(m.connection_state, self.tenant, state=state).inc()
            self._metric_state = state


def _subscribe(listeners: list[Any], listener: Any) -> Callable[[], None]:
    listeners.append(listener)

    def unsubscribe() -> None:
        if listener in listeners:
            listeners.remove(listener)

    return unsubscribe


def _disconnect_error(exc: BaseException, stage: str) -> DisconnectError | None:
    """Map an exception from connecting or reading to the DisconnectError that ends the socket."""
    if isinstance(exc, DisconnectError):
        return exc
    if isinstance(exc, asyncio.CancelledError):
        return None
    if isinstance(exc, TimeoutError):
        error = DisconnectError(DisconnectReason.timedOut, f"{stage} timed out")
    elif isinstance(exc, ProtocolError):
        error = DisconnectError(DisconnectReason.badSession, f"protocol error: {exc}")
    elif isinstance(exc, ConnectionClosed | OSError | InvalidHandshake | InvalidURI | EOFError):
        error = DisconnectError(DisconnectReason.connectionClosed, f"{stage}: {exc or type(exc).__name__}")
    elif isinstance(exc, Exception):
        error = DisconnectError(DisconnectReason.badSession, f"{stage}: {type(exc).__name__}: {exc}")
    else:
        return None
    error.__cause__ = exc
    return error
