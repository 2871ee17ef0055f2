"""One WebSocket client connection, driven by asyncio callbacks: no task, no queue.

``Wire`` is an ``asyncio.Protocol`` over websockets' sans-I/O
``ClientProtocol``: bytes from the transport go into it, the frames it parses
come out as whole messages to a receiver (the ``Socket``), and what it has to
send (handshake, pongs, close frames) goes straight to the transport. A
connection is then a transport, this object and the websockets protocol: a
reader task, an assembler queue and a future per message would cost every
idle tenant dozens of objects and every message a few microseconds.

The receiver gets ``message(data)`` (``bytes`` for binary messages, ``str``
for text), ``refused(exc)`` when the WebSocket layer fails the connection
over what the peer sent (a message above ``max_size``, invalid UTF-8: the
closing handshake has started), and, once, ``lost(exc)`` when the peer sent
its close frame or the TCP connection is gone, whichever comes first (a peer
that closes and then keeps the TCP connection open cannot leave the receiver
waiting).
"""

from __future__ import annotations

import asyncio
import ssl as _ssl
from collections.abc import Mapping
from typing import Any, Protocol

from websockets.client import ClientProtocol
from websockets.exceptions import InvalidURI
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

__all__ = ["Receiver", "Wire", "check_url", "open_wire"]


class Receiver(Protocol):
    def message(self, data: bytes | str) -> None: ...
    def refused(self, exc: Exception, code: int) -> None: ...
    def lost(self, exc: BaseException | None) -> None: ...


def check_url(url: str) -> None:
    """Raise ``ValueError`` unless ``url`` is a ``ws://`` or ``wss://`` URL (what
    a socket can connect to), so a typo fails at once instead of reconnecting
    forever."""
    try:
        parse_uri(url)
    except InvalidURI as exc:
        raise ValueError(f"not a WebSocket URL: {url!r} ({exc}); expected ws://host:port "
                         "or wss://host:port") from None


class Wire(asyncio.Protocol):
    """The connection; see the module docstring."""

    __slots__ = ("_ended", "_fragments", "_gone", "_headers", "_held", "_lost", "_opened", "_paused",
                 "_text", "_unhold", "protocol", "receiver", "transport")

    def __init__(self, protocol: ClientProtocol, receiver: Receiver,
                 headers: Mapping[str, str] | None = None) -> None:
        self.protocol = protocol
        self.receiver = receiver
        self._headers = headers
        self.transport: asyncio.Transport | None = None
        # the HTTP upgrade, awaited by open_wire() (then dropped)
        self._opened: asyncio.Future[None] | None = asyncio.get_running_loop().create_future()
        self._gone = False  # the TCP connection is lost
        self._ended = False  # the receiver was told (lost): a closing handshake or the TCP end
        self._lost: asyncio.Future[None] | None = None  # awaited by close()
        self._fragments: list[bytes] | None = None  # a message split over frames
        self._text = False
        self._paused = False
        # frames read before a pause: one read can hold many messages, and a paused
        # receiver gets none of them until it resumes
        self._held: list[Frame] | None = None
        self._unhold: asyncio.Handle | None = None

    # -- asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        request = self.protocol.connect()
        for name, value in (self._headers or {}).items():
            request.headers[name] = value
        self.protocol.send_request(request)
        self._flush()

    def data_received(self, data: bytes) -> None:
        protocol = self.protocol
        failed = protocol.parser_exc
        protocol.receive_data(data)
        events: list[Any] = protocol.events_received()
        self._flush()  # pongs, close frames, the protocol's own failures
        if protocol.parser_exc is not failed and protocol.close_sent is not None:
            # websockets failed the connection (e.g. a message above max_size): the
            # messages before it still count, then the receiver ends (bounded close)
            events.append(protocol.parser_exc)
        for i, event in enumerate(events):
            if self._paused or self._held:
                self._hold(events[i:])
                break
            self._event(event)
        if protocol.close_rcvd is not None and not self._ended:
            # the peer closed: end now, not when (if ever) it closes the TCP connection
            self._ended = True
            self.receiver.lost(None)

    def eof_received(self) -> bool:
        self.protocol.receive_eof()
        self._flush()
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.protocol.receive_eof()  # idempotent: the state is CLOSED from here
        self._gone = True
        if self._opened is not None and not self._opened.done():
            self._opened.set_exception(exc or ConnectionResetError("connection closed"))
            self._opened.exception()  # retrieved: connect() may be gone
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)
        if self._unhold is not None:
            self._unhold.cancel()
        self._held = self._unhold = None
        if not self._ended:
            self._ended = True
            self.receiver.lost(exc)

    # -- what the socket calls ---------------------------------------------------------

    @property
    def open(self) -> bool:
        return self.protocol.state is State.OPEN

    @property
    def close_received(self) -> bool:
        """The server sent a close frame (the connection did not just drop)."""
        return self.protocol.close_rcvd is not None

    @property
    def server_close_code(self) -> int | None:
        """The close code of a closing handshake the server started, if any."""
        protocol = self.protocol
        if protocol.close_rcvd is None or not protocol.close_rcvd_then_sent:
            return None
        return protocol.close_rcvd.code

    def send(self, message: bytes | str) -> None:
        """Send one message (binary for bytes, text for str).

        Raises:
            ConnectionError: the connection is not open.
        """
        if self.protocol.state is not State.OPEN:
            raise ConnectionError("the WebSocket connection is not open")
        if isinstance(message, str):
            self.protocol.send_text(message.encode())
        else:
            self.protocol.send_binary(message)
        self._flush()

    def pause_reading(self) -> None:
        """Deliver no message until :meth:`resume_reading` (and read no more)."""
        self._paused = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        """Deliver the messages held since the pause (on the next loop iteration:
        the receiver may be inside a callback), then read again."""
        self._paused = False
        if self._held:
            if self._unhold is None:
                self._unhold = asyncio.get_running_loop().call_soon(self._deliver_held)
        elif self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    async def close(self, code: int, reason: str, timeout: float) -> None:
        """The closing handshake, bounded by ``timeout``; then the TCP connection
        is gone (aborted if the peer did not close it)."""
        if self.protocol.state is State.OPEN:
            self.protocol.send_close(code, reason)
            self._flush()
        if self._gone:
            return
        if self._lost is None:
            self._lost = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(self._lost)
        except TimeoutError:
            self.abort()
            await asyncio.shield(self._lost)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    # -- internals ----------------------------------------------------------------------

    def _hold(self, events: list[Any]) -> None:
        if self._held is None:
            self._held = []
        self._held.extend(events)

    def _deliver_held(self) -> None:
        self._unhold = None
        held, self._held = self._held or [], None
        for i, event in enumerate(held):
            if self._paused:
                self._hold(held[i:])
                return
            self._event(event)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def _response(self, response: Response) -> None:
        protocol, opened = self.protocol, self._opened
        if opened is None or opened.done():
            return  # open_wire() gave up waiting (timeout or cancellation)
        if protocol.handshake_exc is not None:
            opened.set_exception(protocol.handshake_exc)
            opened.exception()
            self.abort()
            return
        # websockets' parser holds the upgrade's response for the connection's life;
        # its headers are read (subprotocol, extensions): at 10,000 idle sockets their
        # lists and strs are memory and collector work for nothing
        response.headers.clear()
        opened.set_result(None)

    def _event(self, event: Frame | Response | Exception) -> None:
        if isinstance(event, Frame):
            self._frame(event)
        elif isinstance(event, Response):
            self._response(event)
        else:  # the protocol's own failure, after the frames that came before it
            close = self.protocol.close_sent
            self.receiver.refused(event, close.code if close is not None else 1002)

    def _frame(self, frame: Frame) -> None:
        opcode = frame.opcode
        if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
            if frame.fin:
                self._deliver(frame.data, opcode is Opcode.TEXT)
            else:
                self._fragments, self._text = [bytes(frame.data)], opcode is Opcode.TEXT
        elif opcode is Opcode.CONT and self._fragments is not None:
            if frame.data:  # websockets bounds the bytes (max_size); empty ones cost a list slot
                self._fragments.append(bytes(frame.data))
            if frame.fin:
                data, self._fragments = b"".join(self._fragments), None
                self._deliver(data, self._text)
        # close, ping and pong frames: the protocol answers them itself

    def _deliver(self, data: bytes | bytearray | memoryview, text: bool) -> None:
        # delivered even if a close frame follows in the same read: the messages
        # sent before it (e.g. the stream error that explains the close) count
        if text:
            try:
                message: bytes | str = bytes(data).decode()
            except UnicodeDecodeError as exc:
                self.protocol.fail(1007, "invalid UTF-8 in a text message")
                self._flush()
                self.receiver.refused(exc, 1007)
                return
        else:
            message = bytes(data) if not isinstance(data, bytes) else data
        self.receiver.message(message)

    def _flush(self) -> None:
        transport = self.transport
        if transport is None:
            return
        for data in self.protocol.data_to_send():
            if data:
                transport.write(data)
            elif transport.can_write_eof():  # the protocol half-closes: EOF
                try:
                    transport.write_eof()
                except Exception:  # uvloop raises RuntimeError when closing
                    pass
            else:
                transport.close()


async def open_wire(
    url: str,
    receiver: Receiver,
    *,
    subprotocol: str,
    max_size: int,
    ssl: _ssl.SSLContext | None = None,
    headers: Mapping[str, str] | None = None,
) -> Wire:
    """Connect to ``url`` and complete the WebSocket handshake.

    Raises:
        ValueError: ``url`` is not a ``ws://``/``wss://`` URL.
        OSError: the TCP (or TLS) connection failed (a ``ConnectionError``
            saying so for a failed TLS handshake).
        websockets.exceptions.InvalidHandshake: the upgrade was refused.
    """
    try:
        uri = parse_uri(url)
    except InvalidURI as exc:
        raise ValueError(f"not a WebSocket URL: {url!r} ({exc})") from None
    protocol = ClientProtocol(uri, subprotocols=[Subprotocol(subprotocol)], max_size=max_size)
    wire = Wire(protocol, receiver, headers)
    context: Any = None
    if uri.secure:
        context = ssl if ssl is not None else _ssl.create_default_context()
    loop = asyncio.get_running_loop()
    try:
        await loop.create_connection(lambda: wire, uri.host, uri.port, ssl=context,
                                     server_hostname=uri.host if context is not None else None)
    except (_ssl.SSLError, ConnectionResetError, EOFError) as exc:
        if context is None:
            raise
        hint = ("" if isinstance(exc, _ssl.SSLCertVerificationError)
                else " (is it a plain ws:// server?)")
        raise ConnectionError(f"TLS handshake with {uri.host}:{uri.port} failed: "
                              f"{str(exc) or type(exc).__name__}{hint}") from exc
    try:
        assert wire._opened is not None
        await wire._opened
    except BaseException:
        wire.abort()
        raise
    finally:
        wire._opened = None
    return wire
