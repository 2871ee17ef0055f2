"""The rsocket.v1 wire protocol, sans I/O.

One WebSocket message is one frame. Frames are msgspec tagged structs (tag
field ``op``) encoded with msgpack (subprotocol ``rsocket.v1.msgpack``, binary,
the default) or JSON (``rsocket.v1.json``, text). This module turns messages
into frames and frames into messages; it never touches a socket, so the I/O
layers (``rsocket.socket``, ``rsocket.testing.reference``) only move messages.

API:

* Frames: client ops :class:`Hello`, :class:`Ack`, :class:`Ping`,
  :class:`Query`; server ops :class:`Ready`, :class:`Event`, :class:`Batch`
  (of :class:`BatchItem`), :class:`Oversize`, :class:`Offline`, :class:`Pong`,
  :class:`Result`, :class:`StreamError`, :class:`Failure`.
* :func:`codec_for` returns the :class:`Codec` of a subprotocol (created once):
  ``encode(frame)``, ``decode_client(message)``, ``decode_server(message)``.
* :func:`validate_event` says why an event payload is invalid, or None.
* :class:`ClientSession` and :class:`ServerSession`: state machines. Feed a
  received message to ``receive(message)``, which returns what it means; call
  ``hello()``/``ack()``/... (client) or ``ready()``/``event()``/... (server) to
  get the message to send. Violations raise :class:`~rsocket.errors.ProtocolError`
  carrying the WebSocket close code to end the connection with.
* A client session counts its stream in a :class:`~rsocket.seqs.SeqAccount`
  (``session.seqs``): the one seq tracker of a connection, which the socket
  settles and acknowledges through.

Frame size: the client says in ``hello`` the largest message it accepts
(``max_frame``); a server never sends a larger one. ``ServerSession.events``
cuts a run of events into frames by encoded bytes, and an event that cannot
fit on its own goes out as ``oversize{seq, name, size}`` in its place (the
client counts it and treats its seq as processed). Events too large for one
frame are split into parts when they are appended (``rsocket.split``).

A client receives ``event``/``batch`` frames as they are decoded, their seqs
checked; the events' payloads are checked once, where the buffer's core
takes them (``EventBuffer.ingest``). An event whose payload is invalid (or
whose name is unknown) inside an otherwise valid frame is not a connection
error: it is dropped, counted and still acknowledged, and the valid events of
the same frame are delivered.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Sequence
from typing import Annotated, Any, TypeAlias

import msgspec

from ._core import validate as _check_payload
from .errors import ProtocolError
from .seqs import SeqAccount

__all__ = [
    "DEFAULT_MAX_FRAME",
    "DEFAULT_MAX_SIZE",
    "JSON",
    "LEGACY_MAX_FRAME",
    "MAX_SEQ",
    "MSGPACK",
    "SUBPROTOCOLS",
    "Ack",
    "Batch",
    "BatchItem",
    "ClientFrame",
    "ClientSession",
    "Codec",
    "Event",
    "Failure",
    "Frame",
    "Hello",
    "Message",
    "Offline",
    "Oversize",
    "Ping",
    "Pong",
    "ProtocolError",
    "Query",
    "Ready",
    "Result",
    "ServerFrame",
    "ServerSession",
    "State",
    "StreamError",
    "close_reason",
    "codec_for",
    "validate_event",
]

MSGPACK = "rsocket.v1.msgpack"
JSON = "rsocket.v1.json"
SUBPROTOCOLS = (MSGPACK, JSON)
#: Largest message a server accepts from a client, in bytes (1009 above).
DEFAULT_MAX_SIZE = 1 << 20
#: Largest message a client accepts by default (``hello``'s ``max_frame``).
DEFAULT_MAX_FRAME = 16 << 20
#: What a server assumes of a client whose ``hello`` has no ``max_frame``.
LEGACY_MAX_FRAME = 1 << 20

#: What goes over the wire: ``bytes`` for msgpack (binary), ``str`` for JSON (text).
Message: TypeAlias = bytes | str

# WebSocket close codes.
_PROTOCOL_VIOLATION = 1002
_UNSUPPORTED_DATA = 1003
_INVALID_PAYLOAD = 1007
_TOO_BIG = 1009

#: Seqs fit a signed 64-bit integer (the compiled buffer core keeps them in one).
MAX_SEQ = (1 << 63) - 1
_Seq = Annotated[int, msgspec.Meta(ge=1, le=MAX_SEQ)]
_Count = Annotated[int, msgspec.Meta(ge=0, le=MAX_SEQ)]


# -- frames ------------------------------------------------------------------


class _Frame(msgspec.Struct, tag_field="op", gc=False):
    pass


class Hello(_Frame, tag="hello"):
    """First client frame: authenticate and say where to resume.

    Attributes:
        tenant: account name.
        token: its secret.
        resume: last seq the client processed, 0 for none.
        epoch: ``session`` of the log ``resume`` belongs to, "" for none.
        max_frame: the largest message the client accepts, in bytes (0: not
            said, :data:`LEGACY_MAX_FRAME`).
    """

    tenant: str
    token: str
    resume: _Count = 0
    epoch: str = ""
    max_frame: _Count = 0


class Ack(_Frame, tag="ack"):
    """Cumulative acknowledgement: every seq up to ``seq`` is processed."""

    seq: _Count


class Ping(_Frame, tag="ping"):
    """Keepalive; the server answers ``pong`` with the same ``id``."""

    id: int


class Query(_Frame, tag="query"):
    """Call a server method; the server answers ``result`` with the same ``id``."""

    id: int
    method: str
    params: Any = None


class Ready(_Frame, tag="ready"):
    """Authenticated.

    Attributes:
        session: epoch of the tenant's log (new whenever the log starts afresh).
        resumed: False when the replay could not start right after ``resume``.
        pending: events in the backlog about to be replayed.
    """

    session: str
    resumed: bool
    pending: _Count


class Event(_Frame, tag="event"):
    """One event of the tenant's log."""

    seq: _Seq
    name: str
    data: Any


class BatchItem(msgspec.Struct, gc=False):
    """One event of a :class:`Batch`; its seq is implied by its position."""

    name: str
    data: Any


class Batch(_Frame, tag="batch"):
    """Events with seqs ``first`` .. ``first + len(events) - 1``."""

    first: _Seq
    events: Annotated[list[BatchItem], msgspec.Meta(min_length=1)]


class Oversize(_Frame, tag="oversize"):
    """Event ``seq`` (``name``) is ``size`` bytes encoded, more than the client's
    ``max_frame``: it is not sent, and its seq counts as processed."""

    seq: _Seq
    name: str
    size: _Count


class Offline(_Frame, tag="offline"):
    """The backlog (``count`` events) is delivered; live frames follow."""

    count: _Count


class Pong(_Frame, tag="pong"):
    """Answer to :class:`Ping`."""

    id: int


class Result(_Frame, tag="result", omit_defaults=True):
    """Answer to :class:`Query`: ``data`` when ``ok``, else ``error``."""

    id: int
    ok: bool
    data: Any = None
    error: str | None = None


class StreamError(_Frame, tag="stream_error"):
    """The server ends the stream; ``code`` is a ``DisconnectReason`` value."""

    code: int
    reason: str = ""


class Failure(_Frame, tag="failure"):
    """The server refuses or aborts the connection (e.g. 401 bad token)."""

    code: int
    reason: str = ""


ClientFrame: TypeAlias = Hello | Ack | Ping | Query
ServerFrame: TypeAlias = (
    Ready | Event | Batch | Oversize | Offline | Pong | Result | StreamError | Failure
)
Frame: TypeAlias = ClientFrame | ServerFrame

_CLIENT_OPS = frozenset({"hello", "ack", "ping", "query"})
_SERVER_OPS = frozenset(
    {"ready", "event", "batch", "oversize", "offline", "pong", "result", "stream_error",
     "failure"}
)


def _op(frame: Frame) -> str:
    return type(frame).__struct_config__.tag  # type: ignore[return-value]


# -- codecs ------------------------------------------------------------------


class _Probe(msgspec.Struct):
    # Decodes just the op of a frame that failed validation, to pick the close code.
    op: Any = None


class Codec:
    """Encoder and decoders of one subprotocol; get it from :func:`codec_for`.

    Attributes:
        subprotocol: :data:`MSGPACK` or :data:`JSON`.
        binary: True when messages are bytes (binary frames).
    """

    def __init__(self, subprotocol: str) -> None:
        if subprotocol == MSGPACK:
            mod: Any = msgspec.msgpack
        elif subprotocol == JSON:
            mod = msgspec.json
        else:
            raise ValueError(f"unknown subprotocol {subprotocol!r}; expected one of {SUBPROTOCOLS}")
        self.subprotocol = subprotocol
        self.binary = subprotocol == MSGPACK
        self._encode = mod.Encoder().encode
        self._client = mod.Decoder(ClientFrame).decode
        self._server = mod.Decoder(ServerFrame).decode
        self._probe = mod.Decoder(_Probe).decode

    def __repr__(self) -> str:
        return f"Codec({self.subprotocol!r})"

    def encode(self, frame: Frame) -> Message:
        """Encode a frame: bytes for msgpack, str for JSON."""
        data: bytes = self._encode(frame)
        return data if self.binary else data.decode()

    def encode_sized(self, frame: Frame) -> tuple[Message, int]:
        """Encode a frame; also its size on the wire, in bytes."""
        data: bytes = self._encode(frame)
        return (data if self.binary else data.decode()), len(data)

    def decode_client(self, message: Message, max_size: int = DEFAULT_MAX_SIZE) -> ClientFrame:
        """Decode a frame sent by a client (what a server receives).

        Raises:
            ProtocolError: 1009 too big, 1003 unknown op, server op or wrong
                message type, 1007 undecodable or mistyped frame.
        """
        frame: ClientFrame = self._decode(self._client, message, max_size, _CLIENT_OPS, "client")
        return frame

    def decode_server(self, message: Message, max_size: int = DEFAULT_MAX_SIZE) -> ServerFrame:
        """Decode a frame sent by a server (what a client receives).

        Raises:
            ProtocolError: as :meth:`decode_client`, with the sides swapped.
        """
        frame: ServerFrame = self._decode(self._server, message, max_size, _SERVER_OPS, "server")
        return frame

    def _decode(
        self,
        decode: Callable[[Message], Any],
        message: Message,
        max_size: int,
        ops: frozenset[str],
        side: str,
    ) -> Any:
        if isinstance(message, str):
            if self.binary:
                raise ProtocolError(
                    f"text message on {self.subprotocol}, which uses binary messages",
                    _UNSUPPORTED_DATA,
                )
            # Cheap bound first: a str is at least len() and at most 4 * len() UTF-8 bytes.
            size = len(message)
            if size * 4 > max_size:
                size = len(message.encode(errors="surrogatepass"))
        elif isinstance(message, bytes | bytearray | memoryview):
            size = len(message)
        else:
            raise ProtocolError(
                f"message must be bytes or str, got {type(message).__name__}", _UNSUPPORTED_DATA
            )
        if size > max_size:
            raise ProtocolError(
                f"message of {size} bytes exceeds the limit of {max_size} bytes", _TOO_BIG
            )
        if not self.binary and not isinstance(message, str):
            # msgspec skips unknown fields without checking them: check UTF-8 here.
            try:
                message = str(message, "utf-8")
            except UnicodeDecodeError as exc:
                raise ProtocolError(
                    f"invalid UTF-8 in JSON frame: {exc}", _INVALID_PAYLOAD
                ) from None
        try:
            return decode(message)
        except msgspec.ValidationError as exc:
            raise self._invalid(message, exc, ops, side) from exc
        except (msgspec.DecodeError, UnicodeError, RecursionError) as exc:
            raise ProtocolError(
                f"undecodable {self.subprotocol} frame: {exc}", _INVALID_PAYLOAD
            ) from exc

    def _invalid(
        self, message: Message, exc: Exception, ops: frozenset[str], side: str
    ) -> ProtocolError:
        try:
            op = self._probe(message).op
        except (msgspec.DecodeError, UnicodeError, RecursionError):
            return ProtocolError(f"frame is not a map: {exc}", _INVALID_PAYLOAD)
        if op is None:
            return ProtocolError("frame has no `op` field", _INVALID_PAYLOAD)
        if not isinstance(op, str):
            return ProtocolError(
                f"frame field `op` must be a str, got {type(op).__name__}", _INVALID_PAYLOAD
            )
        if op not in ops:
            known = op in _CLIENT_OPS or op in _SERVER_OPS
            what = f"not a {side} op" if known else "unknown"
            return ProtocolError(f"op {op!r} is {what}", _UNSUPPORTED_DATA)
        return ProtocolError(f"invalid `{op}` frame: {exc}", _INVALID_PAYLOAD)


_CODECS = {name: Codec(name) for name in SUBPROTOCOLS}


def codec_for(subprotocol: str | None) -> Codec:
    """The shared :class:`Codec` of ``subprotocol`` (None means :data:`MSGPACK`).

    Raises:
        ValueError: unknown subprotocol.
    """
    try:
        return _CODECS[subprotocol or MSGPACK]
    except KeyError:
        raise ValueError(
            f"unknown subprotocol {subprotocol!r}; expected one of {SUBPROTOCOLS}"
        ) from None


# -- event payloads ----------------------------------------------------------


def validate_event(name: str, data: Any) -> str | None:
    """Why an event received over the wire is invalid, or None when it is valid.

    The check the buffer's core runs on every received event (``ingest``),
    for exactly the fields the merge rules read: bufferable events and
    ``connection.update`` by their shape, Baileys' other events as they are,
    any other name as unknown. The reason names the event, the field path
    and the expectation.
    """
    return _check_payload(name, data)


def close_reason(text: str) -> str:
    """``text`` cut to fit a WebSocket close frame (at most 123 bytes of UTF-8)."""
    data = text.encode()
    return text if len(data) <= 123 else data[:120].decode(errors="ignore") + "..."


# -- sessions ----------------------------------------------------------------


class State(enum.StrEnum):
    """Connection state of a session."""

    CONNECTING = "connecting"
    AWAITING_READY = "awaiting_ready"
    OPEN = "open"
    CLOSED = "closed"


class ClientSession:
    """Client side of one connection: connecting -> awaiting_ready -> open -> closed.

    Args:
        tenant: account name.
        token: its secret.
        resume: last seq processed, 0 for none.
        epoch: session of the log ``resume`` belongs to, "" for none.
        subprotocol: negotiated subprotocol.
        max_size: largest message accepted, in bytes (``hello``'s ``max_frame``).
    """

    def __init__(
        self,
        tenant: str,
        token: str,
        *,
        resume: int = 0,
        epoch: str = "",
        subprotocol: str = MSGPACK,
        max_size: int = DEFAULT_MAX_FRAME,
    ) -> None:
        if resume < 0:
            raise ValueError(f"resume must be >= 0, got {resume}")
        self.tenant = tenant
        self.token = token
        self.resume = resume
        self.epoch = epoch
        self.codec = codec_for(subprotocol)
        self.max_size = max_size
        self.state = State.CONNECTING
        #: From ``ready``: the log's epoch, whether the replay is gapless, backlog size.
        self.session: str | None = None
        self.resumed: bool | None = None
        self.pending: int | None = None
        #: True once ``offline`` arrived (frames after it are live).
        self.offline = False
        #: The stream's seq tracker: continuity here, settlement in the socket.
        self.seqs = SeqAccount(resume)

    @property
    def last_seq(self) -> int:
        """The last seq received on this connection (``resume`` until one arrives)."""
        return self.resume if self.seqs.next is None else self.seqs.next - 1

    def hello(self) -> Message:
        """The ``hello`` message; moves to awaiting_ready."""
        if self.state is not State.CONNECTING:
            raise RuntimeError(f"hello already sent (state {self.state})")
        self.state = State.AWAITING_READY
        return self.codec.encode(
            Hello(self.tenant, self.token, self.resume, self.epoch, self.max_size))

    def ack(self, seq: int) -> Message:
        """An ``ack`` message: every seq up to ``seq`` is processed."""
        self._check_sending("ack")
        return self.codec.encode(Ack(seq))

    def ping(self, id: int) -> Message:
        """A ``ping`` message; the server answers :class:`Pong` with ``id``."""
        self._check_sending("ping")
        return self.codec.encode(Ping(id))

    def query(self, id: int, method: str, params: Any = None) -> Message:
        """A ``query`` message; the server answers :class:`Result` with ``id``."""
        self._check_sending("query")
        return self.codec.encode(Query(id, method, params))

    def close(self) -> None:
        """The connection ended: later messages are ignored."""
        self.state = State.CLOSED

    def receive(self, message: Message) -> list[ServerFrame]:
        """Process a received message.

        Returns:
            The frame (:class:`Event`, :class:`Batch`, :class:`Oversize`,
            :class:`Ready`, :class:`Offline`, :class:`Pong`, :class:`Result`,
            :class:`StreamError`, :class:`Failure`); nothing once closed.

        Raises:
            ProtocolError: the message breaks the protocol; close with its code.
        """
        if self.state is State.CLOSED:
            return []
        frame = self.codec.decode_server(message, self.max_size)
        if self.state is State.CONNECTING:
            raise ProtocolError(f"`{_op(frame)}` frame before `hello` was sent")
        if isinstance(frame, Event):
            self._check_open("event")
            self._advance(frame.seq, 1, "event")
        elif isinstance(frame, Batch):
            self._check_open("batch")
            self._advance(frame.first, len(frame.events), "batch")
        elif isinstance(frame, Oversize):
            self._check_open("oversize")
            self._advance(frame.seq, 1, "oversize")
        elif isinstance(frame, Ready):
            if self.state is not State.AWAITING_READY:
                raise ProtocolError("second `ready` frame")
            self.state = State.OPEN
            self.session, self.resumed, self.pending = frame.session, frame.resumed, frame.pending
            # A gapless resume continues right after `resume`; otherwise the
            # replay starts at the oldest retained seq, which only the server knows.
            if frame.resumed and self.resume > 0:
                self.seqs.next = self.resume + 1
        elif isinstance(frame, Offline):
            self._check_open("offline")
            if self.offline:
                raise ProtocolError("second `offline` frame")
            if frame.count != self.seqs.backlog:
                raise ProtocolError(
                    f"`offline` field `count` is {frame.count} "
                    f"but {self.seqs.backlog} backlog events were received"
                )
            self.offline = True
        elif isinstance(frame, StreamError | Failure):
            self.state = State.CLOSED
        else:  # Pong, Result
            self._check_open(_op(frame))
        return [frame]

    def _check_open(self, op: str) -> None:
        if self.state is not State.OPEN:
            raise ProtocolError(f"`{op}` frame before `ready`")

    def _check_sending(self, op: str) -> None:
        if self.state is State.CONNECTING:
            raise RuntimeError(f"cannot send `{op}` before `hello`")

    def _advance(self, first: int, n: int, op: str) -> None:
        if first + n - 1 > MAX_SEQ:
            raise ProtocolError(
                f"`batch` of {n} events from seq {first} goes past the largest seq {MAX_SEQ}",
                _INVALID_PAYLOAD,
            )
        seqs = self.seqs
        if seqs.next is not None and first != seqs.next:
            field = "first" if op == "batch" else "seq"  # event, oversize
            raise ProtocolError(
                f"`{op}` field `{field}` is {first}, expected {seqs.next} (previous seq + 1)"
            )
        seqs.next = first + n
        if not self.offline:
            seqs.backlog += n


class ServerSession:
    """Server side of one connection: connecting -> awaiting_ready -> open -> closed.

    ``connecting`` waits for ``hello``; ``awaiting_ready`` holds the hello
    (:attr:`hello`) until the server calls :meth:`ready` (or refuses it with
    :meth:`failure`).

    Args:
        subprotocol: negotiated subprotocol (None means msgpack).
        max_size: largest message accepted, in bytes.
    """

    def __init__(self, *, subprotocol: str | None = MSGPACK, max_size: int = DEFAULT_MAX_SIZE):
        self.codec = codec_for(subprotocol)
        self.max_size = max_size
        self.state = State.CONNECTING
        #: The client's hello, once received.
        self.hello: Hello | None = None
        #: Last seq sent (acks above it are violations).
        self.last_sent = 0
        #: Highest seq acked on this connection.
        self.acked = 0

    def receive(self, message: Message) -> list[ClientFrame]:
        """Process a received message.

        Returns:
            The frame (:class:`Hello`, :class:`Ack`, :class:`Ping`,
            :class:`Query`); nothing once closed.

        Raises:
            ProtocolError: the message breaks the protocol; close with its code.
        """
        if self.state is State.CLOSED:
            return []
        frame = self.codec.decode_client(message, self.max_size)
        if isinstance(frame, Hello):
            if self.state is not State.CONNECTING:
                raise ProtocolError("second `hello` frame")
            self.hello = frame
            self.state = State.AWAITING_READY
        elif self.state is State.CONNECTING:
            raise ProtocolError(f"first frame must be `hello`, got `{_op(frame)}`")
        elif isinstance(frame, Ack):
            if frame.seq > self.last_sent:
                raise ProtocolError(
                    f"`ack` field `seq` is {frame.seq}, above the last sent seq {self.last_sent}"
                )
            self.acked = max(self.acked, frame.seq)
        return [frame]

    def ready(self, session: str, resumed: bool, pending: int, *, base_seq: int = 0) -> Message:
        """The ``ready`` message; moves to open.

        Args:
            session: the log's epoch.
            resumed: False when the replay has a gap.
            pending: events in the backlog.
            base_seq: seq just before the first event this connection sends;
                the client may ack up to it.
        """
        if self.state is not State.AWAITING_READY:
            raise RuntimeError(f"cannot send `ready` in state {self.state}")
        self.state = State.OPEN
        self.last_sent = base_seq
        return self.codec.encode(Ready(session, resumed, pending))

    def event(self, seq: int, name: str, data: Any) -> Message:
        """An ``event`` message; ``seq`` must follow the last one sent."""
        self._check_seq(seq)
        self.last_sent = seq
        return self.codec.encode(Event(seq, name, data))

    @property
    def max_frame(self) -> int:
        """The largest message the client accepts (from its ``hello``)."""
        hello = self.hello
        return hello.max_frame if hello is not None and hello.max_frame else LEGACY_MAX_FRAME

    def events(self, first: int, events: Sequence[tuple[str, Any]]) -> list[Message]:
        """The ``event``/``batch`` messages carrying ``(name, data)`` pairs from seq
        ``first``, none larger than the client's :attr:`max_frame`: a run that does
        not fit is cut in halves, and an event that cannot fit alone becomes an
        ``oversize`` message in its place."""
        self._check_seq(first)
        if not events:
            raise ValueError("events() needs at least one event")
        out: list[Message] = []
        self._fit(first, events, out)
        self.last_sent = first + len(events) - 1
        return out

    def _fit(self, first: int, events: Sequence[tuple[str, Any]], out: list[Message]) -> None:
        if len(events) == 1:
            name, data = events[0]
            message, size = self.codec.encode_sized(Event(first, name, data))
        else:
            message, size = self.codec.encode_sized(
                Batch(first, [BatchItem(name, data) for name, data in events]))
        if size <= self.max_frame:
            out.append(message)
        elif len(events) == 1:
            out.append(self.codec.encode(Oversize(first, name, size)))
        else:
            half = len(events) // 2
            self._fit(first, events[:half], out)
            self._fit(first + half, events[half:], out)

    def batch(self, first: int, events: Iterable[tuple[str, Any]]) -> Message:
        """A ``batch`` message of ``(name, data)`` pairs starting at seq ``first``."""
        self._check_seq(first)
        items = [BatchItem(name, data) for name, data in events]
        if not items:
            raise ValueError("a batch holds at least one event")
        self.last_sent = first + len(items) - 1
        return self.codec.encode(Batch(first, items))

    def offline(self, count: int) -> Message:
        """The ``offline`` message closing the backlog of ``count`` events."""
        self._check_open("offline")
        return self.codec.encode(Offline(count))

    def pong(self, id: int) -> Message:
        """A ``pong`` message answering ``ping{id}``."""
        self._check_open("pong")
        return self.codec.encode(Pong(id))

    def result(
        self, id: int, ok: bool = True, data: Any = None, error: str | None = None
    ) -> Message:
        """A ``result`` message answering ``query{id}``; one larger than the
        client's :attr:`max_frame` becomes an error result saying so."""
        self._check_open("result")
        message, size = self.codec.encode_sized(Result(id, ok, data, error))
        if size <= self.max_frame:
            return message
        return self.codec.encode(Result(
            id, False, error=f"result of {size} bytes exceeds the client's max_frame {self.max_frame}"))

    def stream_error(self, code: int, reason: str = "") -> Message:
        """A ``stream_error`` message; moves to closed."""
        self.state = State.CLOSED
        return self.codec.encode(StreamError(code, reason))

    def failure(self, code: int, reason: str = "") -> Message:
        """A ``failure`` message; moves to closed."""
        self.state = State.CLOSED
        return self.codec.encode(Failure(code, reason))

    def close(self) -> None:
        """The connection ended: later messages are ignored."""
        self.state = State.CLOSED

    def _check_open(self, op: str) -> None:
        if self.state is not State.OPEN:
            raise RuntimeError(f"cannot send `{op}` in state {self.state}")

    def _check_seq(self, seq: int) -> None:
        self._check_open("event")
        if seq != self.last_sent + 1:
            raise ValueError(f"seq {seq} does not follow the last sent seq {self.last_sent}")
