"""The socket: one tenant's connection, whose every close destroys its buffer.

``Socket`` connects a ``Wire`` (``rsocket.wire``: a WebSocket connection
driven by asyncio callbacks) to the sans-I/O ``ClientSession`` of
``rsocket.protocol``, and feeds each received frame's events into its own
``EventBuffer`` with one call. An open, idle socket owns no task: messages
arrive as callbacks, its keepalive is an entry in the loop's shared clock
(``rsocket.keepalive``), acks go out on the next loop iteration. ``end()``
stops all of it, delivers what the buffer still holds (final flush) and
destroys the buffer, so nothing survives a close: the bug behind this project
(an old buffer and its timer left alive by every reconnect) cannot happen here.
"""

from __future__ import annotations

import asyncio
import logging
import ssl as _ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from websockets.exceptions import (
    InvalidHandshake,
    InvalidURI,
    PayloadTooBig,
    WebSocketException,
)

from . import lifecycle, metrics
from .buffer import BufferConfig, EventBuffer
from .enums import DisconnectReason
from .errors import DisconnectError, ProtocolError, QueryError
from .keepalive import Clock
from .logs import FieldsAdapter, bind
from .protocol import (
    DEFAULT_MAX_FRAME,
    MSGPACK,
    SUBPROTOCOLS,
    Batch,
    ClientSession,
    Event,
    Failure,
    Offline,
    Oversize,
    Pong,
    Ready,
    Result,
    StreamError,
    close_reason,
)
from .wire import Wire, check_url, open_wire

__all__ = ["Socket", "SocketConfig", "StateListener"]

#: ``listener(socket, state, error)``: ``"open"`` (error None) or ``"closed"``
#: with the DisconnectError that ended the socket.
StateListener = Callable[["Socket", str, "DisconnectError | None"], None]

#: close codes of the WebSocket layer
_NORMAL_CLOSURE = 1000
_TOO_BIG = 1009

#: The smallest ``SocketConfig.max_frame``: below it, ordinary events would not fit.
MIN_MAX_FRAME = 64 * 1024


@dataclass(frozen=True, slots=True)
class SocketConfig:
    """Timeouts, limits and the buffer's config of one ``Socket``.

    Attributes:
        keepalive_interval: seconds between pings.
        keepalive_grace: a peer silent for ``keepalive_interval`` plus this
            many seconds is taken for lost (408).
        connect_timeout: bound on TCP connect + WebSocket handshake + ``ready``
            (websockets' ``open_timeout``, and the hello's answer).
        close_timeout: bound on the WebSocket closing handshake.
        drain_timeout: how long ``end()`` waits for async handlers to finish
            the final batches before cancelling them.
        high_water: stop reading while more events than this are unprocessed.
        low_water: resume reading once fewer than this are unprocessed.
        subprotocol: ``rsocket.v1.msgpack`` (default) or ``rsocket.v1.json``.
        max_frame: largest message accepted, in bytes (websockets' ``max_size``);
            sent in ``hello``, so the server never sends a larger one.
        buffer: the ``EventBuffer``'s config (None: ``BufferConfig.from_env()``).
        ssl: the TLS context of ``wss://`` URLs (None: the system's defaults).
        headers: extra HTTP headers of the WebSocket upgrade request.
    """

    keepalive_interval: float = 30.0
    keepalive_grace: float = 5.0
    connect_timeout: float = 10.0
    close_timeout: float = 2.0
    drain_timeout: float = 5.0
    high_water: int = 10_000
    low_water: int = 5_000
    subprotocol: str = MSGPACK
    max_frame: int = DEFAULT_MAX_FRAME
    buffer: BufferConfig | None = field(default=None)
    ssl: _ssl.SSLContext | None = None
    headers: Mapping[str, str] | None = None

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
        if not isinstance(self.max_frame, int) or self.max_frame < MIN_MAX_FRAME:
            raise ValueError(f"SocketConfig.max_frame={self.max_frame!r}: expected an int "
                             f">= {MIN_MAX_FRAME}")
        if self.subprotocol not in SUBPROTOCOLS:
            raise ValueError(f"SocketConfig.subprotocol={self.subprotocol!r}: not one of {SUBPROTOCOLS}")


class Socket:
    """One tenant's event socket.

    Args:
        url: the server, ``ws://host:port`` or ``wss://host:port``.
        tenant: account name sent in ``hello``.
        token: its secret.
        resume: last processed seq of a previous socket (0: none).
        epoch: the log session ``resume`` belongs to ("" none).
        config: timeouts and limits.
        logger: a ``Logger`` or ``LoggerAdapter`` (e.g. carrying the tenant).

    Raises:
        ValueError: ``url`` is not a ``ws://`` or ``wss://`` URL.

    The socket owns ``ev``, its own ``EventBuffer``: register handlers there
    (``sock.ev.process(handler)``). ``connection.update`` events go through it
    too: ``connecting``, ``open`` (with ``resumed`` and ``gap``),
    ``receivedPendingNotifications`` once the backlog is delivered, and
    ``close`` with ``lastDisconnect {error, date}``.
    """

    __slots__ = ("__weakref__", "_ack", "_blocked_at", "_clock", "_connect_cancelled",
                 "_connect_task", "_end_callers", "_end_task", "_finished", "_last_frame",
                 "_logger", "_metric_state", "_next_id", "_next_ping", "_paused", "_ping",
                 "_progress_listeners", "_queries", "_ready", "_seqs", "_session",
                 "_state_listeners", "_wire", "config", "epoch", "error", "ev",
                 "keepalive_at", "latency", "state", "tenant", "url")

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
        check_url(url)
        self.url = url
        self.tenant = tenant
        self.config = config if config is not None else SocketConfig()
        self._logger = logger
        self.ev = EventBuffer(logger=logger, config=self.config.buffer, tenant=tenant)
        # Destroying the buffer under a live socket would leave a zombie (the socket
        # open, every later event dropped, no close seen): the application's
        # ev.destroy() ends the socket instead, close update first, final flush after.
        self.ev.set_owner(self._destroy_requested)
        self.ev.on_settled = self._settled
        #: the log session ``last_seq`` belongs to
        self.epoch = epoch
        self.ev.epoch = epoch
        #: last keepalive round trip, seconds
        self.latency: float | None = None
        #: connecting -> open -> closed ("new" before connect())
        self.state = "new"
        #: the DisconnectError that ended the socket
        self.error: DisconnectError | None = None
        #: loop time of this socket's entry in the keepalive clock (None: none)
        self.keepalive_at: float | None = None
        self._session = ClientSession(
            tenant, token, resume=resume, epoch=epoch,
            subprotocol=self.config.subprotocol, max_size=self.config.max_frame,
        )
        self._seqs = self._session.seqs  # the stream's one tracker
        self._wire: Wire | None = None
        self._clock: Clock | None = None
        self._ready: asyncio.Future[Ready] | None = None  # while connect() waits for it
        self._queries: dict[int, asyncio.Future[Result]] | None = None
        self._next_id = 0
        self._ping: tuple[int, float] | None = None  # the newest ping, timed
        self._next_ping = 0.0
        self._last_frame = 0.0
        self._blocked_at = 0.0  # the clock's blocked time when the last frame came
        self._paused = False
        self._ack: asyncio.Handle | None = None
        self._end_task: asyncio.Task[None] | None = None
        self._connect_task: asyncio.Task[Any] | None = None
        self._connect_cancelled = False
        self._end_callers: set[asyncio.Task[Any]] | None = None
        self._finished: asyncio.Future[None] | None = None
        self._metric_state: str | None = None
        self._state_listeners: list[StateListener] | None = None
        self._progress_listeners: list[Callable[[int], None]] | None = None
        self._set_state("new")

    # -- public API -----------------------------------------------------------------

    @property
    def logger(self) -> FieldsAdapter:
        """The socket's logger, carrying the tenant (built when a line is logged:
        an idle socket holds none)."""
        return bind(self._logger, "rsocket.socket", tenant=self.tenant)

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
        config = self.config
        try:
            async with asyncio.timeout(config.connect_timeout):
                self._wire = await open_wire(
                    self.url, self, subprotocol=config.subprotocol, max_size=config.max_frame,
                    ssl=config.ssl, headers=config.headers,
                )
                self._ready = asyncio.get_running_loop().create_future()
                self.ev.buffer()  # the backlog, from hello until offline, is one scope
                self._wire.send(self._session.hello())
                await self._ready  # set once ready arrived and the socket opened
        except BaseException as exc:
            self._connect_task = self._ready = None
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
        self._connect_task = self._ready = None

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
        wire = self._wire
        if self.state != "open" or wire is None:
            raise DisconnectError(DisconnectReason.connectionClosed, f"socket is {self.state}")
        qid = self._new_id()
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        queries = self._queries
        if queries is None:
            queries = self._queries = {}
        queries[qid] = future
        try:
            wire.send(self._session.query(qid, method, params))
            async with asyncio.timeout(timeout):
                result = await future
        except TimeoutError:
            raise TimeoutError(f"query {method!r} (id {qid}) got no result within {timeout}s") from None
        except ConnectionError:
            raise DisconnectError(DisconnectReason.connectionClosed, "connection closed") from None
        finally:
            queries.pop(qid, None)
        if not result.ok:
            raise QueryError(method, result.error or "unknown error")
        return result.data

    async def end(self, error: DisconnectError | None = None) -> None:
        """Close the socket and destroy its buffer. Idempotent, safe from any task.

        Stops the keepalive and reading, closes the WebSocket (bounded),
        fails pending queries with 428, emits the ``close`` update, destroys
        the buffer (final flush: nothing received is lost) and waits, bounded,
        for async handlers. Afterwards the socket owns no task or timer.
        """
        self._start_end(error)
        assert self._end_task is not None
        caller = asyncio.current_task()
        if caller is not None:  # a handler awaiting end() is not drained
            if self._end_callers is None:
                self._end_callers = set()
            self._end_callers.add(caller)
        try:
            await asyncio.shield(self._end_task)
        finally:
            if self._end_callers is not None:
                self._end_callers.discard(caller)

    def on_state(self, listener: StateListener) -> Callable[[], None]:
        """Call ``listener(socket, state, error)`` when the socket opens and when it closes.

        This is how an owner (the ``ConnectionManager``) learns the socket's
        state: from the socket itself, never from ``connection.update`` events,
        which a server may relay from upstream. Returns an unsubscribe function.
        """
        if self._state_listeners is None:
            self._state_listeners = []
        return _subscribe(self._state_listeners, listener)

    def on_progress(self, listener: Callable[[int], None]) -> Callable[[], None]:
        """Call ``listener(last_seq)`` whenever ``last_seq`` advances (e.g. to save a
        cursor). Returns an unsubscribe function."""
        if self._progress_listeners is None:
            self._progress_listeners = []
        return _subscribe(self._progress_listeners, listener)

    @property
    def reading_paused(self) -> bool:
        """True while reading is paused by backpressure (handlers behind)."""
        return self._paused

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
        if self._finished is None:
            self._finished = asyncio.get_running_loop().create_future()
            if self.state == "closed" and (self._end_task is None or self._end_task.done()):
                self._finished.set_result(None)
        await asyncio.shield(self._finished)

    async def __aenter__(self) -> Socket:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.end()

    def __repr__(self) -> str:
        return f"<Socket {self.tenant} {self.state} last_seq={self.last_seq}>"

    # -- what the wire calls (rsocket.wire.Receiver) ----------------------------------------

    def message(self, data: bytes | str) -> None:
        """A whole WebSocket message arrived."""
        if self._end_task is not None:
            return
        clock = self._clock
        if clock is not None:
            self._last_frame = clock.loop.time()
            self._blocked_at = clock.blocked
        try:
            self._on_message(data)
        except ProtocolError as exc:
            error = DisconnectError(DisconnectReason.badSession, f"protocol error: {exc}")
            error.__cause__ = exc
            self._fail(error)
        except Exception as exc:  # a bug of ours: end the socket, loudly, rather than hang
            self.logger.exception("failed to process a message", extra={"tenant": self.tenant})
            error = DisconnectError(DisconnectReason.badSession, f"read: {type(exc).__name__}: {exc}")
            error.__cause__ = exc
            self._fail(error)

    def refused(self, exc: Exception, code: int) -> None:
        """The WebSocket layer refused what the server sent (a message above
        ``max_frame``: 1009; invalid UTF-8: 1007) and started the closing
        handshake: the socket ends (the close is bounded by ``close_timeout``)."""
        if self._end_task is not None:
            return
        if isinstance(exc, PayloadTooBig) and exc.size is not None:
            text = (f"message of at least {exc.size + (exc.current_size or 0)} bytes exceeds "
                    f"max_frame {self.config.max_frame}")
        else:
            text = str(exc) or type(exc).__name__
        cause = ProtocolError(text, code)
        error = DisconnectError(DisconnectReason.badSession, f"protocol error: {text}")
        error.__cause__ = cause
        self._fail(error)

    def lost(self, exc: BaseException | None) -> None:
        """The server sent its close frame, or the TCP connection is gone."""
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(exc or ConnectionResetError("connection closed by server"))
            return
        if self._end_task is None and self.state == "open":
            assert self._wire is not None
            reason = ("connection closed by server" if self._wire.close_received
                      else f"connection lost: {exc or 'no close frame'}")
            error = DisconnectError(DisconnectReason.connectionClosed, reason)
            if exc is not None:
                error.__cause__ = exc
            self._start_end(error)

    # -- receiving ----------------------------------------------------------------------------

    def _on_message(self, data: bytes | str) -> None:
        for frame in self._session.receive(data):
            if isinstance(frame, Batch):
                self._on_events(frame.first, frame.events, self._session.offline)
            elif isinstance(frame, Event):
                self._on_events(frame.seq, [frame], False)
            elif isinstance(frame, Oversize):
                self._on_oversize(frame)
            elif isinstance(frame, Offline):
                self._on_offline()
            elif isinstance(frame, Pong):
                self._on_pong(frame.id)
            elif isinstance(frame, Result):
                future = self._queries.get(frame.id) if self._queries else None
                if future is not None and not future.done():
                    future.set_result(frame)
            elif isinstance(frame, Ready):
                self._opened(frame)
            elif isinstance(frame, StreamError | Failure):
                self._fail(DisconnectError(frame.code, frame.reason))
                return
            if self._end_task is not None:
                return
        if self._seqs.unprocessed > self.config.high_water and not self._paused:
            self._pause()

    def _fail(self, error: DisconnectError) -> None:
        """The server ended the stream (or broke the protocol): before ``ready``
        connect() raises it, afterwards the socket ends with it."""
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(error)
        else:
            self._start_end(error)

    def _opened(self, ready: Ready) -> None:
        # a first connection (no cursor) resumed nothing, whatever the server says
        resumed = ready.resumed and self._session.resume > 0
        gap = self._session.resume > 0 and not ready.resumed
        restarted = bool(self.epoch) and ready.session != self.epoch
        if ready.session != self.epoch:
            if restarted:  # the server's log started afresh: its seqs restart
                self._seqs.restart()
            self.epoch = ready.session
        self.ev.epoch = ready.session
        m = metrics.get()
        if gap:
            m.tenant(m.resume_gaps_total, self.tenant).inc()
            self.logger.warning(
                "resumed with a gap: the server could not replay from seq %d (its log %s); "
                "events in between may be missing", self._session.resume,
                "started afresh" if restarted else "no longer holds them",
                extra={"tenant": self.tenant, "event": "resume_gap", "resume": self._session.resume})
        self._set_state("open")
        loop = asyncio.get_running_loop()
        self._clock = clock = Clock.of(loop)
        self._last_frame = now = loop.time()
        self._blocked_at = clock.blocked
        self._next_ping = now + self.config.keepalive_interval
        self._keepalive_at(self._next_ping)
        self.logger.debug(
            "socket open (resumed=%s, gap=%s, pending=%d)", resumed, gap, ready.pending,
            extra={"tenant": self.tenant, "resumed": resumed, "gap": gap, "pending": ready.pending},
        )
        if lifecycle.enabled():
            lifecycle.record("connection_open", tenant=self.tenant, resumed=resumed, gap=gap)
        self._notify_state("open", None)
        self._update({"connection": "open", "resumed": resumed, "gap": gap})
        if self._ready is not None and not self._ready.done():
            self._ready.set_result(ready)

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

    def _on_oversize(self, frame: Oversize) -> None:
        """An event larger than ``max_frame`` was left out: like an invalid event,
        counted, logged and processed (so it cannot cause a reconnect loop)."""
        seqs = self._seqs
        seqs.first(frame.seq)
        if frame.seq <= seqs.received:
            return  # replayed: already accounted for
        seqs.received = frame.seq
        m = metrics.get()
        m.tenant(m.events_oversize_total, self.tenant).inc()
        self.logger.warning(
            "event seq %d (%s) of %d bytes exceeds max_frame %d: skipped", frame.seq,
            frame.name, frame.size, self.config.max_frame,
            extra={"tenant": self.tenant, "seq": frame.seq, "event": frame.name,
                   "size": frame.size},
        )
        self._settled(range(frame.seq, frame.seq + 1))

    def _invalid(self, invalid: list[tuple[int, str, str]]) -> None:
        m = metrics.get()
        m.tenant(m.events_invalid_total, self.tenant).inc(len(invalid))
        for seq, name, reason in invalid:  # each already processed: dropped and acked
            self.logger.warning(
                "dropped invalid event seq %d (%s): %s", seq, name, reason,
                extra={"tenant": self.tenant, "seq": seq, "event": name},
            )

    def _handler_error(self, exc: BaseException) -> None:
        """What handlers raised: their retry policies report it (see ``EventBuffer``)."""
        errors = list(exc.exceptions) if isinstance(exc, BaseExceptionGroup) else [exc]
        self.ev.report_unhandled(errors, "event handler raised")

    # -- delivery accounting, acks and backpressure -----------------------------------------

    def _settled(self, seqs: range) -> None:
        """A release's handlers are done with ``seqs``: advance ``last_seq`` contiguously."""
        if not self._seqs.settle(seqs):
            return
        last = self._seqs.processed
        if self._progress_listeners:
            for listener in self._progress_listeners:
                listener(last)
        if self._paused and self._seqs.unprocessed < self.config.low_water:
            self._resume()
        if self.state == "open" and self._ack is None:
            # one ack per loop iteration, for everything settled by then
            self._ack = asyncio.get_running_loop().call_soon(self._send_ack)

    def _send_ack(self) -> None:
        self._ack = None
        seqs = self._seqs
        if self.state == "open" and self._wire is not None and seqs.acked < seqs.processed:
            try:
                self._wire.send(self._session.ack(seqs.processed))
            except ConnectionError:
                return  # the wire reports the close
            seqs.acked = seqs.processed

    def _pause(self) -> None:
        """Backpressure: stop reading until the handlers catch up to the low-water mark."""
        ev = self.ev
        if ev.is_buffering() and ev.stats().items_buffered:
            try:  # a backlog scope holding the unprocessed events: release it
                ev.flush(force=True)
            except Exception as exc:
                self._handler_error(exc)
            ev.buffer()
        if self._seqs.unprocessed <= self.config.low_water or self._wire is None:
            return
        self._paused = True
        self._wire.pause_reading()
        self.logger.debug(
            "reading paused: %d unprocessed events", self._seqs.unprocessed,
            extra={"tenant": self.tenant},
        )

    def _resume(self) -> None:
        self._paused = False
        if self._wire is not None:
            self._wire.resume_reading()
        if self._clock is not None:  # the peer's silence counts from now again
            self._last_frame = self._clock.loop.time()
            self._blocked_at = self._clock.blocked

    # -- keepalive ---------------------------------------------------------------------------

    def _keepalive_at(self, when: float) -> None:
        assert self._clock is not None
        replacing = self.keepalive_at is not None
        self.keepalive_at = when
        self._clock.call_at(when, self, replacing=replacing)

    def keepalive_due(self, now: float) -> None:
        """The loop's keepalive clock: this socket's time came."""
        self.keepalive_at = None
        wire, clock = self._wire, self._clock
        if self.state != "open" or self._end_task is not None or wire is None or clock is None:
            return
        interval = self.config.keepalive_interval
        limit = interval + self.config.keepalive_grace
        if self._paused:  # a slow handler is not a dead peer: no deadline...
            self._last_frame, self._blocked_at = now, clock.blocked
        # time the loop itself was blocked is not the peer's silence
        silent = now - self._last_frame - (clock.blocked - self._blocked_at)
        if silent >= limit:
            self._start_end(DisconnectError(
                DisconnectReason.connectionLost, f"no frame for {limit:.3g}s"
            ))
            return
        if now >= self._next_ping:
            # ...but still a ping: writing to a dead transport is how a paused socket
            # notices it (the pong is read once reading resumes, so it is not timed)
            self._next_ping = now + interval
            pid = self._new_id()
            self._ping = None if self._paused else (pid, now)  # only the newest is timed
            try:
                wire.send(self._session.ping(pid))
            except ConnectionError:
                return  # the wire reports the close
        self._keepalive_at(min(self._next_ping, now + limit - silent))

    def _on_pong(self, pid: int) -> None:
        ping = self._ping
        if ping is not None and ping[0] == pid:
            self._ping = None
            self.latency = asyncio.get_running_loop().time() - ping[1]
            m = metrics.get()
            m.tenant(m.keepalive_rtt_seconds, self.tenant).observe(self.latency)

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    # -- end ----------------------------------------------------------------------------------

    def _start_end(self, error: DisconnectError | None) -> None:
        if self._end_task is None:
            self._end_task = asyncio.get_running_loop().create_task(
                self._end(error), name=f"rsocket-end-{self.tenant}"
            )

    async def _end(self, error: DisconnectError | None) -> None:
        try:
            await self._close(error)
        finally:
            if self._finished is None:
                self._finished = asyncio.get_running_loop().create_future()
            if not self._finished.done():
                self._finished.set_result(None)

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
        """Cancel connect, keepalive and acks; close the WebSocket (bounded)."""
        connecting = self._connect_task
        if connecting is not None and not connecting.done():
            self._connect_cancelled = True  # connect() raises this socket's error
            connecting.cancel()
            await asyncio.wait([connecting])
        if self.keepalive_at is not None and self._clock is not None:
            self.keepalive_at = None
            self._clock.forget()
        if self._ack is not None:
            self._ack.cancel()
            self._ack = None
        self._paused = False
        self._session.close()
        if self._wire is not None:
            cause = error.__cause__
            code = cause.close_code if isinstance(cause, ProtocolError) else _NORMAL_CLOSURE
            await self._wire.close(code, close_reason(error.reason), self.config.close_timeout)
        for future in (self._queries or {}).values():
            if not future.done():
                future.set_exception(DisconnectError(DisconnectReason.connectionClosed, str(error)))
        self._queries = None

    def _server_close_code(self) -> int | None:
        """The close code of a closing handshake the server started, if any."""
        return self._wire.server_close_code if self._wire is not None else None

    def _report_close(self, error: DisconnectError, was_open: bool) -> None:
        # routine: what matters (a tenant that ends, connects that keep failing) is the
        # owner's to say, once (ConnectionManager); a standalone socket has .error
        level = logging.DEBUG if error.status_code == DisconnectReason.connectionClosed else logging.INFO
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
            asyncio.get_running_loop()
        except RuntimeError:
            running = False
        else:
            running = True
        if not running or self.state == "new":
            self.ev.destroy()  # nothing to close yet: never connect
            self.error = DisconnectError(DisconnectReason.connectionClosed, "event buffer destroyed")
            self._set_state("closed")
            return
        self._start_end(DisconnectError(DisconnectReason.connectionClosed,
                                        "event buffer destroyed by the application"))

    async def _drain(self) -> None:
        """Wait (bounded) for async handlers, then cancel what is left."""
        callers = self._end_callers or ()  # handlers awaiting end() are not waited for
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
        for listener in (self._state_listeners or [])[:]:
            try:
                listener(self, state, error)
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
    elif isinstance(exc, OSError | InvalidHandshake | InvalidURI | WebSocketException | EOFError):
        what = str(exc) or type(exc).__name__
        error = DisconnectError(DisconnectReason.connectionClosed, f"{stage}: {what}")
    elif isinstance(exc, Exception):
        error = DisconnectError(DisconnectReason.badSession, f"{stage}: {type(exc).__name__}: {exc}")
    else:
        return None
    error.__cause__ = exc
    return error
