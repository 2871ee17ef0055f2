"""Reference rsocket.v1 server, for tests, benchmarks and demos.

A real WebSocket server (``websockets.asyncio.server``) speaking the protocol of
:mod:`rsocket.protocol`: token auth, one ordered event log per tenant with a
bounded replay window, resume, a traffic generator with the standard event mix
(:mod:`rsocket.workload`) and fault injection::

    async with ReferenceServer(tenants={"t1": "token1"}) as srv:
        srv.url                                      # "ws://127.0.0.1:<port>"
        seq = srv.publish("t1", "messages.upsert", payload)
        srv.inject("t1", "stream_error", code=503)   # "failure", "drop", "stall"
        srv.stats()["t1"]["last_seq"]

Command line: ``rsocket serve --port 8765 --tenants 3 --rate 50``.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import re
import secrets
import socket
import time
import uuid
from collections import deque
from collections.abc import Coroutine, Iterable, Mapping, Sequence
from itertools import islice
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed, NegotiationError
from websockets.typing import Subprotocol

from ..errors import ProtocolError
from ..guard import GuardConfig, HelloGuard, raise_open_files_limit
from ..logs import RateLimitedLog
from ..protocol import (
    DEFAULT_MAX_SIZE,
    SUBPROTOCOLS,
    Ack,
    Hello,
    Message,
    Ping,
    Query,
    ServerSession,
    close_reason,
)
from ..split import DEFAULT_MAX_EVENT, split_events
from .traffic import Traffic

__all__ = ["FAULTS", "ReferenceServer"]

_log = logging.getLogger("rsocket.server")

#: Faults :meth:`ReferenceServer.inject` knows.
FAULTS = ("stream_error", "failure", "drop", "stall")

_CLOSE_NORMAL = 1000
_CLOSE_TRY_AGAIN = 1013
_MESSAGE_ID = re.compile(r"[0-9A-Za-z]{1,64}")  # a send_message's own message id
_SENT_IDS_KEPT = 10_000
_CLOSE_POLICY = 1008


class _Tenant:
    """One account: its token, event log and counters."""

    def __init__(self, name: str, token: str, window: int) -> None:
        self.name = name
        self.token = token.encode()
        self.window = window
        self.conn: _Connection | None = None
        self.faults: deque[tuple[str, dict[str, Any]]] = deque()
        self.open = self.connections_total = self.replaced = self.max_concurrent = 0
        self.sent = self.slow = 0
        #: (jid, message_id) -> send_message result: the last _SENT_IDS_KEPT sent with an id
        self.sent_ids: dict[tuple[str, str], dict[str, Any]] = {}
        self.reset()

    def remember_sent(self, sent: tuple[str, str], result: dict[str, Any]) -> None:
        self.sent_ids[sent] = result
        if len(self.sent_ids) > _SENT_IDS_KEPT:
            del self.sent_ids[next(iter(self.sent_ids))]

    def reset(self) -> None:
        """Start a fresh log: new session (epoch), seqs from 1 again."""
        self.session = uuid.uuid4().hex
        # Seqs are implied: the log holds last_seq - len(log) + 1 .. last_seq.
        self.log: deque[tuple[str, Any]] = deque(maxlen=self.window)
        self.last_seq = 0
        self.acked = 0

    def append(self, events: list[tuple[str, Any]]) -> range:
        first = self.last_seq + 1
        self.log.extend(events)
        self.last_seq += len(events)
        return range(first, self.last_seq + 1)

    def backlog(self, hello: Hello) -> tuple[bool, int, list[tuple[str, Any]]]:
        """Where a connection starts: (resumed, base seq, events to replay)."""
        resume = hello.resume
        if hello.epoch and hello.epoch != self.session:
            resume, resumed = 0, False  # the log started afresh: the client has a gap
        elif resume > self.last_seq:
            raise ProtocolError(
                f"`hello` field `resume` is {resume}, above the last seq {self.last_seq} "
                f"of session {self.session}"
            )
        else:
            resumed = True
        oldest = self.last_seq - len(self.log) + 1
        if resume < oldest - 1:
            # resume 0 means "replay everything retained", never a gap.
            resumed = resumed and resume == 0
            resume = oldest - 1
        return resumed, resume, list(islice(self.log, resume - oldest + 1, None))

    def stats(self) -> dict[str, Any]:
        return {
            "connections": self.open,
            "connections_total": self.connections_total,
            "replaced": self.replaced,
            "max_concurrent": self.max_concurrent,
            "sent": self.sent,
            "acked": self.acked,
            "last_seq": self.last_seq,
            "session": self.session,
            "slow_consumers": self.slow,
        }


class _Connection:
    """One authenticated connection: a writer task fed by an outbound queue."""

    def __init__(
        self, server: ReferenceServer, tenant: _Tenant, ws: ServerConnection, session: ServerSession
    ) -> None:
        self.server = server
        self.tenant = tenant
        self.ws = ws
        self.session = session
        self.queue: deque[tuple[Any, ...]] = deque()
        self.queued = 0  # live events in the queue
        self.wakeup = asyncio.Event()
        self.writer: asyncio.Task[None] | None = None
        self.blocked = False  # the writer waits for the client to read
        self.offline_sent = False
        self.halted = False  # nothing more is written (stall, drop or ending)
        self.stalled = False
        self.ending = False

    @property
    def live(self) -> bool:
        """Past its offline and not going away: faults apply at once."""
        return self.offline_sent and not self.ending and not self.ws.transport.is_closing()

    def push(self, item: tuple[Any, ...], events: int = 0) -> None:
        if self.halted:
            return
        self.queue.append(item)
        self.queued += events
        self.wakeup.set()
        # Only a queue that grows while the client is not reading is a slow
        # consumer: a burst of publish() calls alone is not.
        if self.blocked and self.queued > self.server.max_outbound:
            self.server._slow_consumer(self)

    def halt(self) -> None:
        self.halted = True
        self.queue.clear()
        self.queued = 0

    async def write(self, resumed: bool, base: int, backlog: list[tuple[str, Any]]) -> None:
        """Send ready, the backlog, offline, then whatever is queued."""
        session, tenant = self.session, self.tenant
        try:
            await self._send(session.ready(tenant.session, resumed, len(backlog), base_seq=base))
            size = self.server.batch_size
            for i in range(0, len(backlog), size):
                if self.halted:
                    return
                for message in self._events(base + 1 + i, backlog[i : i + size]):
                    await self._send(message)
            count = len(backlog)
            del backlog  # let the log trim what it no longer retains
            if self.halted:
                return
            await self._send(session.offline(count))
            self.offline_sent = True
            if tenant.faults:
                self.server._apply_fault(self, *tenant.faults.popleft())
            while True:
                while not self.queue:
                    if self.halted:
                        return
                    self.wakeup.clear()
                    await self.wakeup.wait()
                if self.halted:
                    return
                kind, *args = self.queue.popleft()
                if kind == "events":
                    self.queued -= len(args[1])
                    for message in self._events(*args):
                        await self._send(message)
                elif kind == "pong":
                    await self._send(session.pong(*args))
                else:
                    await self._send(session.result(*args))
        except ConnectionClosed:
            pass

    def _events(self, first: int, events: list[tuple[str, Any]]) -> list[Message]:
        """The frames of ``events``, each within the client's ``max_frame``."""
        self.tenant.sent += len(events)
        return self.session.events(first, events)

    async def _send(self, message: Message) -> None:
        self.blocked = True
        try:
            await self.ws.send(message)
        finally:
            self.blocked = False

    async def end(self, message: Message | None, code: int, reason: str) -> None:
        """Send a last frame (unless stalled), then close; bounded by close_timeout."""
        if self.ending:
            return
        self.ending = True
        self.halt()
        if self.writer is not None and self.writer is not asyncio.current_task():
            self.writer.cancel()
        try:
            async with asyncio.timeout(self.server.close_timeout):
                if message is not None and not self.stalled:
                    await self.ws.send(message)
                await self.ws.close(code, close_reason(reason))
        except ConnectionClosed:
            pass
        except TimeoutError:
            self.ws.transport.abort()

    async def stop(self) -> None:
        """Stop the writer (the connection is closed)."""
        self.halt()
        self.session.close()
        writer = self.writer
        if writer is None:
            return
        writer.cancel()
        try:
            await writer
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
        except Exception:  # a writer bug must not skip the connection's bookkeeping
            self.server.logger.exception("connection writer failed",
                                         extra={"tenant": self.tenant.name})


class ReferenceServer:
    """The reference server; an async context manager.

    Every argument has a default; the server binds loopback.

    Args:
        tenants: tenant name -> token (default ``{"t1": "token1"}``).
        host: interface to bind.
        port: TCP port; 0 picks a free one (see :attr:`url`).
        replay_window: events retained per tenant for replay.
        batch_size: most events per ``batch`` frame.
        max_outbound: live events queued for a client that is not reading
            before it is disconnected with ``stream_error{503, "slow consumer"}``.
        max_size: largest message accepted, in bytes (1009 above).
        max_event: payload bytes above which a published event is split into
            parts (:func:`rsocket.split.split_event`), each with its own seq.
        hello_timeout: seconds a new connection has to send ``hello`` (1008 after).
        guard: limits on failed hellos and unauthenticated connections
            (:class:`rsocket.guard.GuardConfig`; its defaults when None).
        close_timeout: seconds to wait for a closing handshake before aborting.
        write_limit: bytes buffered per connection before writing waits for
            the client to read (websockets' write buffer high-water mark).
        ping_interval: WebSocket-level keepalive interval (None disables it).
        compression: ``"deflate"`` (permessage-deflate, when the client offers
            it) or None.
        logger: where to log; default ``logging.getLogger("rsocket.server")``.
    """

    def __init__(
        self,
        tenants: Mapping[str, str] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        replay_window: int = 100_000,
        batch_size: int = 100,
        max_outbound: int = 100_000,
        max_size: int = DEFAULT_MAX_SIZE,
        max_event: int = DEFAULT_MAX_EVENT,
        hello_timeout: float = 10.0,
        guard: GuardConfig | None = None,
        close_timeout: float = 5.0,
        write_limit: int = 64 * 1024,
        ping_interval: float | None = 20.0,
        compression: str | None = "deflate",
        logger: logging.Logger | logging.LoggerAdapter[Any] | None = None,
    ) -> None:
        if tenants is None:
            tenants = {"t1": "token1"}
        if min(replay_window, batch_size, max_outbound, max_event) < 1:
            raise ValueError("replay_window, batch_size, max_outbound and max_event must be >= 1")
        self.host = host
        self.port = port
        self.batch_size = batch_size
        self.max_outbound = max_outbound
        self.max_size = max_size
        self.max_event = max_event
        self.hello_timeout = hello_timeout
        self.guard = HelloGuard(guard)
        self.close_timeout = close_timeout
        self.write_limit = write_limit
        self.ping_interval = ping_interval
        self.compression = compression
        self.logger = logger if logger is not None else _log
        self._refusals = RateLimitedLog(self.logger)  # guessing and floods: a line a minute
        self._tenants = {
            name: _Tenant(name, token, replay_window) for name, token in tenants.items()
        }
        self._server: Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._traffic = Traffic(self.publish_many, self._spawn, self._tenants.keys())

    # -- lifecycle -------------------------------------------------------------

    async def __aenter__(self) -> ReferenceServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Start listening (on :attr:`port`; with 0, a free port is picked)."""
        if self._server is not None:
            raise RuntimeError("server already started")
        raise_open_files_limit()  # a socket per tenant: the default 1,024 is soon reached
        self._server = await serve(
            self._handler,
            self.host,
            self.port,
            select_subprotocol=_select_subprotocol,
            max_size=self.max_size,
            close_timeout=self.close_timeout,
            write_limit=self.write_limit,
            ping_interval=self.ping_interval,
            compression=self.compression,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self.logger.info("server listening", extra={"url": self.url})

    async def close(self) -> None:
        """Stop traffic, close every connection and wait for every task it started."""
        server, self._server = self._server, None
        if server is None:
            return
        self.stop_traffic()
        server.close()  # closes connections (1001); the handlers then return
        await server.wait_closed()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.logger.info("server closed", extra={"url": self.url})

    @property
    def url(self) -> str:
        """``ws://host:port`` of the server."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ws://{host}:{self.port}"

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        """Listening sockets (empty when not started)."""
        return tuple(self._server.sockets) if self._server is not None else ()

    # -- Python API --------------------------------------------------------------

    def publish(self, tenant: str, name: str, data: Any) -> int:
        """Append an event to ``tenant``'s log (sent at once to a live connection).

        Returns:
            Its seq (of its last part, when it was split: see :meth:`publish_many`).

        Raises:
            KeyError: unknown tenant.
        """
        return self.publish_many(tenant, [(name, data)])[-1]

    def publish_many(self, tenant: str, events: Iterable[tuple[str, Any]]) -> range:
        """Append ``(name, data)`` events; a live connection gets them as batch frames.

        An event larger than ``max_event`` is appended as several parts of the
        same kind (a history set's chats, contacts and messages, an upsert's
        messages, a list's items), each with its own seq.

        Returns:
            Their seqs (one per part).

        Raises:
            KeyError: unknown tenant.
        """
        t = self._tenants[tenant]
        limit = self.max_event
        events = split_events([(name, data) for name, data in events], limit)
        seqs = t.append(events)
        conn = t.conn
        if conn is not None and events:
            size = self.batch_size
            for i in range(0, len(events), size):
                chunk = events[i : i + size]
                conn.push(("events", seqs.start + i, chunk), len(chunk))
        return seqs

    def inject(self, tenant: str, fault: str, **kw: Any) -> None:
        """Inject a fault.

        It applies at once to a live connection (past its ``offline``);
        otherwise it is queued, and each connection takes the oldest queued
        fault right after its ``offline``.

        Args:
            tenant: tenant name.
            fault: ``"stream_error"`` (``code`` default 503, ``reason``),
                ``"failure"`` (``code`` default 500, ``reason``), ``"drop"``
                (abort the TCP connection, no close frame) or ``"stall"``
                (send nothing more, events and pongs, until the connection ends).

        Raises:
            KeyError: unknown tenant.
            ValueError: unknown fault.
        """
        t = self._tenants[tenant]
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; expected one of {FAULTS}")
        if t.conn is not None and t.conn.live:
            self._apply_fault(t.conn, fault, kw)
        else:
            t.faults.append((fault, kw))

    def reset(self, tenant: str) -> None:
        """Start ``tenant``'s log afresh (new session), as after a server restart.

        A live connection ends with ``stream_error{515, "log reset"}`` (its seqs
        no longer exist); the client's next ``hello`` gets the new epoch.

        Raises:
            KeyError: unknown tenant.
        """
        t = self._tenants[tenant]
        conn = t.conn
        if conn is not None and not conn.ending:
            message = None if conn.stalled else conn.session.stream_error(515, "log reset")
            conn.halt()
            self._spawn(conn.end(message, _CLOSE_NORMAL, "log reset"))
        t.reset()

    def retained(self, tenant: str) -> list[tuple[str, Any]]:
        """The events ``tenant``'s log still holds (``(name, data)``, oldest first;
        the last one has seq ``stats()[tenant]["last_seq"]``).

        Raises:
            KeyError: unknown tenant.
        """
        return list(self._tenants[tenant].log)

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per tenant: connections (open now), connections_total (accepted),
        replaced, max_concurrent, sent (events), acked (highest acked seq),
        last_seq, session and slow_consumers."""
        return {name: t.stats() for name, t in self._tenants.items()}

    def start_traffic(
        self, rate: float, tenants: Iterable[str] | None = None, *, seed: int = 1
    ) -> None:
        """Publish the standard event mix at ``rate`` events/s per tenant.

        Restarts the generator of a tenant that already has one. Needs a
        running server.

        Raises:
            KeyError: unknown tenant.
            ValueError: ``rate`` is not positive.
        """
        if self._server is None:
            raise RuntimeError("start the server before its traffic")
        self._traffic.start(rate, tenants, seed)

    def stop_traffic(self) -> None:
        """Stop every traffic generator."""
        self._traffic.stop()

    # -- internals -------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _apply_fault(self, conn: _Connection, fault: str, kw: dict[str, Any]) -> None:
        extra = {"tenant": conn.tenant.name, "fault": fault, "params": kw}
        self.logger.info("fault injected", extra=extra)
        if fault == "drop":
            conn.halt()
            conn.ws.transport.abort()
        elif fault == "stall":
            conn.halt()
            conn.stalled = True
        else:
            reason = str(kw.get("reason", "injected"))
            if fault == "stream_error":
                message = conn.session.stream_error(int(kw.get("code", 503)), reason)
            else:
                message = conn.session.failure(int(kw.get("code", 500)), reason)
            conn.halt()
            self._spawn(conn.end(message, _CLOSE_NORMAL, reason))

    def _slow_consumer(self, conn: _Connection) -> None:
        conn.tenant.slow += 1
        self.logger.warning(
            "slow consumer disconnected",
            extra={"tenant": conn.tenant.name, "queued": conn.queued},
        )
        message = conn.session.stream_error(503, "slow consumer")
        conn.halt()
        self._spawn(conn.end(message, _CLOSE_NORMAL, "slow consumer"))

    def _authenticate(self, hello: Hello) -> _Tenant | None:
        tenant = self._tenants.get(hello.tenant)
        # Compare even for an unknown tenant, so timing tells nothing.
        expected = tenant.token if tenant is not None else b"\0" * 32
        ok = hmac.compare_digest(hello.token.encode(errors="surrogateescape"), expected)
        return tenant if ok and tenant is not None else None

    async def _refuse(self, ws: ServerConnection, message: Message, code: int, reason: str) -> None:
        try:
            async with asyncio.timeout(self.close_timeout):
                await ws.send(message)
                await ws.close(code, close_reason(reason))
        except ConnectionClosed:
            pass
        except TimeoutError:
            ws.transport.abort()

    async def _handler(self, ws: ServerConnection) -> None:
        address = str(ws.remote_address[0]) if ws.remote_address else "?"
        refused = self.guard.admit(address)
        if refused is not None:  # a flood of idle connections: keep descriptors for tenants
            self._refusals.failed("connection refused", ConnectionRefusedError(refused),
                                  extra={"remote": address})
            await ws.close(_CLOSE_TRY_AGAIN, refused)
            return
        try:
            accepted = await self._hello(ws, address)
        finally:
            self.guard.settled(address)
        if accepted is not None:
            await self._serve_connection(*accepted)

    async def _hello(self, ws: ServerConnection, address: str) -> tuple[Any, ...] | None:
        """Read and check ``hello`` (bounded, rate-limited); the accepted connection's
        parts, or None once it is refused."""
        session = ServerSession(subprotocol=ws.subprotocol, max_size=self.max_size)
        extra: dict[str, Any] = {"remote": ws.remote_address}
        try:
            async with asyncio.timeout(self.hello_timeout):
                message = await ws.recv()
        except TimeoutError:
            self.logger.info("no hello", extra=extra)
            await ws.close(_CLOSE_POLICY, f"no hello within {self.hello_timeout:g} s")
            return None
        except ConnectionClosed:
            return None
        try:
            (hello,) = session.receive(message)
            assert isinstance(hello, Hello)
            extra["tenant"] = hello.tenant
            if wait := self.guard.locked(address):
                reason = f"too many failed hellos from this address: retry in {math.ceil(wait)} s"
                self._refusals.failed("hello refused", PermissionError(reason), extra=extra)
                await self._refuse(ws, session.failure(429, reason), _CLOSE_POLICY, reason)
                return None
            known = hello.tenant in self._tenants
            if known and (wait := self.guard.delay(hello.tenant)):
                await asyncio.sleep(wait)  # a tenant under guessing: every try waits
            tenant = self._authenticate(hello)
            if tenant is None:
                self._refusals.failed("bad token", PermissionError("bad token"), extra=extra)
                await asyncio.sleep(self.guard.failed(address, hello.tenant if known else ""))
                await self._refuse(
                    ws, session.failure(401, "bad token"), _CLOSE_POLICY, "bad token"
                )
                return None
            resumed, base, backlog = tenant.backlog(hello)
        except ProtocolError as exc:
            self.logger.info("protocol error", extra={**extra, "error": str(exc)})
            await self._refuse(ws, session.failure(500, str(exc)), exc.close_code, str(exc))
            return None
        return ws, session, tenant, hello, resumed, base, backlog, extra

    async def _serve_connection(self, ws: ServerConnection, session: ServerSession,
                                tenant: _Tenant, hello: Hello, resumed: bool, base: int,
                                backlog: list[Any], extra: dict[str, Any]) -> None:
        conn = _Connection(self, tenant, ws, session)
        self._attach(conn)
        self.logger.info(
            "connection open",
            extra={**extra, "resume": hello.resume, "resumed": resumed, "pending": len(backlog)},
        )
        conn.writer = asyncio.get_running_loop().create_task(conn.write(resumed, base, backlog))
        del backlog
        try:
            await self._read(conn)
        finally:
            try:
                await conn.stop()
            finally:  # the counters stats() reports always follow the connections
                self._detach(conn)
                self.logger.info("connection closed", extra={**extra, "code": ws.close_code})

    async def _read(self, conn: _Connection) -> None:
        session, tenant = conn.session, conn.tenant
        try:
            async for message in conn.ws:
                try:
                    frames = session.receive(message)
                except ProtocolError as exc:
                    self.logger.info(
                        "protocol error", extra={"tenant": tenant.name, "error": str(exc)}
                    )
                    await conn.end(session.failure(500, str(exc)), exc.close_code, str(exc))
                    return
                for frame in frames:
                    if isinstance(frame, Ack):
                        tenant.acked = max(tenant.acked, frame.seq)
                    elif isinstance(frame, Ping):
                        conn.push(("pong", frame.id))
                    elif isinstance(frame, Query):
                        conn.push(("result", frame.id, *self._call(tenant, frame)))
        except ConnectionClosed:
            pass

    def _call(self, tenant: _Tenant, query: Query) -> tuple[bool, Any, str | None]:
        """Run a built-in method: (ok, data, error)."""
        params = query.params
        if query.method == "echo":
            return True, params, None
        if query.method == "send_message":
            message_id = params.get("message_id") if isinstance(params, dict) else None
            if not (
                isinstance(params, dict)
                and isinstance(params.get("jid"), str)
                and isinstance(params.get("text"), str)
                and (message_id is None or _MESSAGE_ID.fullmatch(str(message_id)))
            ):
                return False, None, ("send_message expects params {jid: str, text: str, "
                                     "message_id?: 1-64 letters and digits}")
            if message_id is not None and (params["jid"], message_id) in tenant.sent_ids:
                # the same id again (a bot's retry): one message, as WhatsApp delivers it
                return True, tenant.sent_ids[params["jid"], message_id], None
            key = {"remoteJid": params["jid"],
                   "id": message_id or f"3EB0{secrets.token_hex(8).upper()}",
                   "fromMe": True}  # fmt: skip
            message = {
                "key": key,
                "messageTimestamp": int(time.time()),
                "message": {"conversation": params["text"]},
                "status": 1,
            }
            seq = self.publish(tenant.name, "messages.upsert",
                               {"messages": [message], "type": "append"})  # fmt: skip
            if message_id is not None:
                tenant.remember_sent((params["jid"], message_id), {"seq": seq, "key": key})
            return True, {"seq": seq, "key": key}, None
        return False, None, f"unknown method {query.method!r}"

    def _attach(self, conn: _Connection) -> None:
        t = conn.tenant
        old, t.conn = t.conn, conn
        t.open += 1
        t.connections_total += 1
        t.max_concurrent = max(t.max_concurrent, t.open)
        if old is not None and not old.ending:
            t.replaced += 1
            self.logger.info("connection replaced", extra={"tenant": t.name})
            message = None if old.stalled else old.session.stream_error(440, "replaced")
            old.halt()
            self._spawn(old.end(message, _CLOSE_NORMAL, "replaced"))

    def _detach(self, conn: _Connection) -> None:
        t = conn.tenant
        t.open -= 1
        if t.conn is conn:
            t.conn = None


def _select_subprotocol(
    ws: ServerConnection, offered: Sequence[Subprotocol]
) -> Subprotocol | None:
    # The client's first supported choice; none offered means msgpack (the default).
    for subprotocol in offered:
        if subprotocol in SUBPROTOCOLS:
            return subprotocol
    if not offered:
        return None
    raise NegotiationError(
        f"unsupported subprotocols {list(offered)}; expected one of {SUBPROTOCOLS}"
    )
