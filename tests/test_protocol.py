"""The sans-I/O protocol core: pure data in, data out, no sockets."""

from __future__ import annotations

import ast
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rsocket.errors import ProtocolError
from rsocket.events import BUFFERABLE_EVENTS
from rsocket.protocol import (
    DEFAULT_MAX_FRAME,
    JSON,
    MSGPACK,
    SUBPROTOCOLS,
    Ack,
    Batch,
    BatchItem,
    ClientSession,
    Event,
    Failure,
    Hello,
    Offline,
    Oversize,
    Ping,
    Pong,
    Query,
    Ready,
    Result,
    ServerSession,
    State,
    StreamError,
    codec_for,
    validate_event,
)
from rsocket.seqs import SeqAccount
from rsocket.testing import Workload

KEY = {"remoteJid": "5511900000001@s.whatsapp.net", "id": "3EB0A", "fromMe": False}
CLIENT_FRAMES = [
    Hello("t1", "token1", 7, "epoch-1"),
    Hello("t1", "token1"),
    Hello("t1", "token1", max_frame=1 << 24),
    Ack(0),
    Ack(42),
    Ping(1),
    Query(3, "echo", {"a": [1, 2.5, None, "x"]}),
    Query(4, "noop"),
]
SERVER_FRAMES = [
    Ready("epoch-1", True, 0),
    Ready("epoch-2", False, 12),
    Event(1, "chats.delete", ["a@s.whatsapp.net"]),
    Batch(5, [BatchItem("chats.delete", ["a"]), BatchItem("groups.update", [{"id": "g"}])]),
    Offline(0),
    Offline(3),
    Pong(9),
    Oversize(6, "messaging-history.set", 20 << 20),
    Result(3, True, {"seq": 1}),
    Result(4, False, error="unknown method 'x'"),
    StreamError(503, "overloaded"),
    Failure(401, "bad token"),
]

enc = pytest.mark.parametrize("subprotocol", SUBPROTOCOLS)


def encode(subprotocol: str, obj: Any) -> bytes | str:
    """Encode a raw (possibly invalid) object the way a peer would."""
    if subprotocol == MSGPACK:
        return msgspec.msgpack.encode(obj)
    return msgspec.json.encode(obj).decode()


def open_client(subprotocol: str = MSGPACK, *, resume: int = 0, resumed: bool = True, **kw: Any):
    session = ClientSession("t1", "token1", resume=resume, subprotocol=subprotocol, **kw)
    session.hello()
    session.receive(codec_for(subprotocol).encode(Ready("e1", resumed, 0)))
    return session


def open_server(subprotocol: str = MSGPACK, *, base_seq: int = 0) -> ServerSession:
    session = ServerSession(subprotocol=subprotocol)
    session.receive(codec_for(subprotocol).encode(Hello("t1", "token1")))
    session.ready("e1", True, 0, base_seq=base_seq)
    return session


def test_protocol_module_does_no_io() -> None:
    import rsocket.protocol

    tree = ast.parse(Path(rsocket.protocol.__file__).read_text(encoding="utf-8"))
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    roots = {name.split(".")[0] for name in imported}
    assert not roots & {"asyncio", "websockets", "socket", "selectors", "trio", "anyio"}


# -- codecs ----------------------------------------------------------------------


@enc
@pytest.mark.parametrize("frame", CLIENT_FRAMES, ids=repr)
def test_client_frame_round_trip(subprotocol: str, frame: Any) -> None:
    codec = codec_for(subprotocol)
    message = codec.encode(frame)
    assert isinstance(message, bytes if subprotocol == MSGPACK else str)
    assert codec.decode_client(message) == frame


@enc
@pytest.mark.parametrize("frame", SERVER_FRAMES, ids=repr)
def test_server_frame_round_trip(subprotocol: str, frame: Any) -> None:
    codec = codec_for(subprotocol)
    assert codec.decode_server(codec.encode(frame)) == frame


def test_wire_shape_uses_spec_names() -> None:
    wire = json.loads(codec_for(JSON).encode(Batch(3, [BatchItem("x", {"k": 1})])))
    assert wire == {"op": "batch", "first": 3, "events": [{"name": "x", "data": {"k": 1}}]}
    assert json.loads(codec_for(JSON).encode(Result(1, True, 5))) == {
        "op": "result",
        "id": 1,
        "ok": True,
        "data": 5,
    }
    assert json.loads(codec_for(JSON).encode(Hello("t", "k", 2, "e", 1 << 24))) == {
        "op": "hello",
        "tenant": "t",
        "token": "k",
        "resume": 2,
        "epoch": "e",
        "max_frame": 1 << 24,
    }
    assert json.loads(codec_for(JSON).encode(Oversize(7, "messages.upsert", 5 << 20))) == {
        "op": "oversize", "seq": 7, "name": "messages.upsert", "size": 5 << 20}


def test_codecs_are_shared() -> None:
    assert codec_for(MSGPACK) is codec_for(MSGPACK)
    assert codec_for(None) is codec_for(MSGPACK)
    assert codec_for(JSON).binary is False
    with pytest.raises(ValueError, match="unknown subprotocol"):
        codec_for("rsocket.v2")


@enc
@pytest.mark.parametrize(
    ("raw", "side", "code", "match"),
    [
        ({"op": "event", "seq": 1, "name": "x", "data": 1}, "client", 1003, "not a client op"),
        ({"op": "hello", "tenant": "t", "token": "k"}, "server", 1003, "not a server op"),
        ({"op": "nope"}, "client", 1003, "op 'nope' is unknown"),
        ({"op": "nope"}, "server", 1003, "op 'nope' is unknown"),
        ({"seq": 1}, "client", 1007, "no `op` field"),
        ({"op": 5}, "server", 1007, "`op` must be a str"),
        ([1, 2], "client", 1007, "not a map"),
        ("hello", "server", 1007, "not a map"),
        ({"op": "ack", "seq": "1"}, "client", 1007, r"invalid `ack` frame: .*`\$.seq`"),
        ({"op": "ack", "seq": -1}, "client", 1007, r"`\$.seq`"),
        ({"op": "hello", "tenant": "t"}, "client", 1007, "missing required field `token`"),
        ({"op": "event", "seq": 0, "name": "x", "data": 1}, "server", 1007, r"`\$.seq`"),
        ({"op": "batch", "first": 1, "events": []}, "server", 1007, r"`\$.events`"),
        ({"op": "batch", "first": 1, "events": [{"name": 1}]}, "server", 1007, "events"),
        ({"op": "ready", "session": "s", "resumed": 1, "pending": 0}, "server", 1007, "resumed"),
    ],
)
def test_decode_rejections(subprotocol: str, raw: Any, side: str, code: int, match: str) -> None:
    codec = codec_for(subprotocol)
    decode = codec.decode_client if side == "client" else codec.decode_server
    with pytest.raises(ProtocolError, match=match) as info:
        decode(encode(subprotocol, raw))
    assert info.value.close_code == code


@pytest.mark.parametrize(
    ("subprotocol", "message", "code"),
    [
        (MSGPACK, b"\xc1", 1007),  # never used msgpack byte
        (MSGPACK, b"\x92\x01", 1007),  # truncated
        (MSGPACK, "text on a binary subprotocol", 1003),
        (JSON, "{not json", 1007),
        (JSON, b'{"op": "ping", "id": 1, "x": "\xff"}', 1007),  # invalid UTF-8
        (JSON, "[" * 100_000, 1007),  # too deep
        (MSGPACK, b"\x91" * 100_000, 1007),
    ],
)
def test_undecodable(subprotocol: str, message: Any, code: int) -> None:
    with pytest.raises(ProtocolError) as info:
        codec_for(subprotocol).decode_client(message)
    assert info.value.close_code == code


@enc
def test_too_big_is_checked_before_decoding(subprotocol: str) -> None:
    codec = codec_for(subprotocol)
    big = codec.encode(Query(1, "echo", "x" * 2000))
    assert codec.decode_client(big, max_size=len(big)) == Query(1, "echo", "x" * 2000)
    with pytest.raises(ProtocolError, match="exceeds the limit of 100 bytes") as info:
        codec.decode_client(big, max_size=100)
    assert info.value.close_code == 1009
    # Garbage is not even looked at once it is too big.
    garbage = b"\xc1" * 101 if codec.binary else "{" * 101
    with pytest.raises(ProtocolError) as info:
        codec.decode_client(garbage, max_size=100)
    assert info.value.close_code == 1009


def test_too_big_text_counts_utf8_bytes() -> None:
    message = codec_for(JSON).encode(Ping(1))[:-1] + ', "x": "' + "\u00e9" * 60 + '"}'
    assert len(message) < 100 < len(message.encode())
    with pytest.raises(ProtocolError) as info:
        codec_for(JSON).decode_client(message, max_size=100)
    assert info.value.close_code == 1009


# -- client session ----------------------------------------------------------------


@enc
def test_client_session_lifecycle(subprotocol: str) -> None:
    codec = codec_for(subprotocol)
    s = ClientSession("t1", "token1", resume=4, epoch="e1", subprotocol=subprotocol)
    assert s.state is State.CONNECTING
    assert codec.decode_client(s.hello()) == Hello("t1", "token1", 4, "e1", DEFAULT_MAX_FRAME)
    assert s.state is State.AWAITING_READY
    assert s.receive(codec.encode(Ready("e1", True, 2))) == [Ready("e1", True, 2)]
    assert (s.state, s.session, s.resumed, s.pending) == (State.OPEN, "e1", True, 2)
    assert s.receive(codec.encode(Event(5, "chats.delete", ["a"]))) == [
        Event(5, "chats.delete", ["a"])
    ]
    s.receive(codec.encode(Event(6, "chats.delete", ["b"])))
    assert s.receive(codec.encode(Offline(2))) == [Offline(2)]
    assert s.offline
    (batch,) = s.receive(codec.encode(Batch(7, [BatchItem("chats.delete", ["c"])] * 3)))
    assert batch == Batch(7, [BatchItem("chats.delete", ["c"])] * 3)
    assert s.seqs.next == 10
    assert s.receive(codec.encode(Pong(1))) == [Pong(1)]
    assert s.receive(codec.encode(Result(2, True, "x"))) == [Result(2, True, "x")]
    assert codec.decode_client(s.ack(9)) == Ack(9)
    assert codec.decode_client(s.ping(3)) == Ping(3)
    assert codec.decode_client(s.query(4, "echo", [1])) == Query(4, "echo", [1])
    assert s.receive(codec.encode(StreamError(503, "bye"))) == [StreamError(503, "bye")]
    assert s.state is State.CLOSED
    assert s.receive(codec.encode(Event(10, "x", 1))) == []


def test_client_failure_before_ready_closes() -> None:
    s = ClientSession("t1", "bad")
    s.hello()
    assert s.receive(codec_for(MSGPACK).encode(Failure(401, "bad token"))) == [
        Failure(401, "bad token")
    ]
    assert s.state is State.CLOSED


def test_client_close() -> None:
    s = open_client()
    s.close()
    assert s.state is State.CLOSED
    assert s.receive(b"\xc1") == []


def test_client_cannot_send_before_hello() -> None:
    s = ClientSession("t1", "token1")
    for send in (lambda: s.ack(1), lambda: s.ping(1), lambda: s.query(1, "echo")):
        with pytest.raises(RuntimeError, match="before `hello`"):
            send()
    s.hello()
    with pytest.raises(RuntimeError, match="already sent"):
        s.hello()
    with pytest.raises(ValueError, match="resume"):
        ClientSession("t1", "token1", resume=-1)


@pytest.mark.parametrize(
    "frame",
    [Event(1, "x", 1), Batch(1, [BatchItem("x", 1)]), Offline(0), Pong(1), Result(1, True)],
    ids=repr,
)
def test_client_rejects_frames_before_ready(frame: Any) -> None:
    s = ClientSession("t1", "token1")
    s.hello()
    with pytest.raises(ProtocolError, match="before `ready`") as info:
        s.receive(codec_for(MSGPACK).encode(frame))
    assert info.value.close_code == 1002


def test_client_rejects_frames_before_hello() -> None:
    s = ClientSession("t1", "token1")
    with pytest.raises(ProtocolError, match="before `hello`") as info:
        s.receive(codec_for(MSGPACK).encode(Ready("e", True, 0)))
    assert info.value.close_code == 1002


def test_client_rejects_second_ready_and_second_offline() -> None:
    s = open_client()
    codec = codec_for(MSGPACK)
    with pytest.raises(ProtocolError, match="second `ready`") as info:
        s.receive(codec.encode(Ready("e1", True, 0)))
    assert info.value.close_code == 1002
    s.receive(codec.encode(Offline(0)))
    with pytest.raises(ProtocolError, match="second `offline`"):
        s.receive(codec.encode(Offline(0)))


def test_client_offline_count_must_match_backlog() -> None:
    s = open_client()
    s.receive(codec_for(MSGPACK).encode(Batch(1, [BatchItem("x", 1)] * 3)))
    with pytest.raises(ProtocolError, match=r"`count` is 2 but 3 backlog events") as info:
        s.receive(codec_for(MSGPACK).encode(Offline(2)))
    assert info.value.close_code == 1002


@pytest.mark.parametrize(
    ("frames", "match"),
    [
        ([Event(3, "x", 1), Event(5, "x", 1)], r"`event` field `seq` is 5, expected 4"),
        ([Event(3, "x", 1), Event(3, "x", 1)], r"is 3, expected 4"),
        ([Batch(1, [BatchItem("x", 1)] * 2), Event(4, "x", 1)], r"is 4, expected 3"),
        ([Event(1, "x", 1), Batch(3, [BatchItem("x", 1)])], r"`batch` field `first` is 3"),
    ],
)
def test_client_rejects_seq_gaps(frames: list[Any], match: str) -> None:
    s = open_client()
    codec = codec_for(MSGPACK)
    s.receive(codec.encode(frames[0]))
    with pytest.raises(ProtocolError, match=match) as info:
        s.receive(codec.encode(frames[1]))
    assert info.value.close_code == 1002


def test_client_resumed_replay_starts_right_after_resume() -> None:
    s = open_client(resume=10)
    with pytest.raises(ProtocolError, match="expected 11"):
        s.receive(codec_for(MSGPACK).encode(Event(12, "x", 1)))
    s = open_client(resume=10)
    s.receive(codec_for(MSGPACK).encode(Event(11, "x", 1)))
    assert s.seqs.next == 12


@pytest.mark.parametrize(("resume", "resumed"), [(10, False), (0, True)])
def test_client_first_seq_is_free_without_a_known_start(resume: int, resumed: bool) -> None:
    # A gap (or nothing to resume) starts at the oldest retained seq: any seq.
    s = open_client(resume=resume, resumed=resumed)
    s.receive(codec_for(MSGPACK).encode(Event(500, "x", 1)))
    assert s.seqs.next == 501


# -- event validation -------------------------------------------------------------------


@enc
def test_an_invalid_event_inside_a_valid_batch_is_not_a_protocol_error(subprotocol: str) -> None:
    # the session only checks frames and seqs: payloads are checked once, by the buffer
    s = open_client(subprotocol)
    good = {"messages": [{"key": KEY, "extra": {"kept": True}}], "type": "notify", "x": 1}
    bad = {"messages": [{"key": {**KEY, "id": 7}}], "type": "notify"}
    items = [BatchItem("messages.upsert", good), BatchItem("messages.upsert", bad),
             BatchItem("no.such.event", {}), BatchItem("chats.delete", ["a"])]
    (batch,) = s.receive(codec_for(subprotocol).encode(Batch(1, items)))
    assert batch.events == items  # unknown keys kept
    assert [validate_event(i.name, i.data) for i in batch.events] == [
        None,
        "`messages.upsert` payload: Expected `str`, got `int` - at `$.messages[0].key.id`",
        "unknown event name 'no.such.event'",
        None,
    ]
    assert s.seqs.next == 5 and s.state is State.OPEN


def test_an_invalid_payload_names_the_path_and_the_expectation() -> None:
    assert validate_event("chats.update", {"id": "a"}) == (
        "`chats.update` payload: Expected `array`, got `object` - at `$`")


def test_baileys_other_events_pass_as_they_are() -> None:
    for name in ("presence.update", "call", "groups.upsert", "labels.edit"):
        assert validate_event(name, {"anything": [1, "x"]}) is None
    assert validate_event("presence.updat", {}) == "unknown event name 'presence.updat'"


VALID = {
    "messaging-history.set": [
        {},
        {"chats": [{"id": "c", "unreadCount": None}], "contacts": [{"id": "k"}],
         "messages": [{"key": KEY}], "isLatest": True, "syncType": 2, "progress": 50},
    ],
    "chats.upsert": [[{"id": "c", "unreadCount": 2, "name": "n"}]],
    "chats.update": [[{"id": "c", "unreadCount": -1}, {"id": "d", "unreadCount": 1.0}]],
    "chats.delete": [["c1", "c2"], []],
    "contacts.upsert": [[{"id": "k", "notify": "n", "name": None}]],
    "contacts.update": [[{"id": "k", "imgUrl": "x"}]],
    "messages.upsert": [{"messages": [{"key": {**KEY, "participant": "p"}}], "type": "append"}],
    "messages.update": [[{"key": KEY, "update": {"status": 4}}], [{"key": KEY, "update": {}}]],
    "messages.delete": [{"keys": [KEY]}, {"jid": "c", "all": True}],
    "messages.reaction": [[{"key": KEY, "reaction": {"key": {"fromMe": True}, "text": "x"}}]],
    "message-receipt.update": [[{"key": KEY, "receipt": {"userJid": "u", "readTimestamp": 1}}]],
    "groups.update": [[{"id": "g", "subject": "s"}]],
    "connection.update": [{"connection": "open"}, {"receivedPendingNotifications": True}],
}  # fmt: skip
INVALID = {
    "messaging-history.set": ({"chats": [{"name": "no id"}]}, r"`id` - at `\$.chats\[0\]`"),
    "chats.upsert": ([{"id": 1}], r"got `int` - at `\$\[0\].id`"),
    "chats.update": ([{"id": "c", "unreadCount": "3"}], r"`\$\[0\].unreadCount`"),
    "chats.delete": ([1], r"Expected `str`, got `int` - at `\$\[0\]`"),
    "contacts.upsert": ({"id": "k"}, r"Expected `array`, got `object` - at `\$`"),
    "contacts.update": ([{}], r"missing required field `id`"),
    "messages.upsert": ({"messages": [{"key": KEY}]}, r"missing required field `type`"),
    "messages.update": ([{"key": KEY, "update": 1}], r"`\$\[0\].update`"),
    "messages.delete": ({"jid": "c", "all": False}, r"or \{jid: str, all: true\}"),
    "messages.reaction": ([{"key": {**KEY, "fromMe": "no"}, "reaction": {}}], r"fromMe"),
    "message-receipt.update": ([{"key": KEY, "receipt": {}}], r"`userJid`"),
    "groups.update": (["g"], r"Expected `object`, got `str`"),
    "connection.update": ({"connection": "opening"}, r"`\$.connection`"),
}


@pytest.mark.parametrize("name", sorted(VALID))
def test_every_schema_accepts_its_shape(name: str) -> None:
    for data in VALID[name]:
        assert validate_event(name, data) is None, data


@pytest.mark.parametrize("name", sorted(INVALID))
def test_every_schema_rejects_a_wrong_shape(name: str) -> None:
    data, match = INVALID[name]
    error = validate_event(name, data)
    assert error is not None and error.startswith(f"`{name}` payload: ")
    assert re.search(match, error), error


def test_messages_delete_keys_form_is_checked() -> None:
    assert "`remoteJid`" in (validate_event("messages.delete", {"keys": [{"id": "x"}]}) or "")


def test_workload_payloads_are_valid() -> None:
    for name, data in Workload(3).take(2000):
        assert validate_event(name, data) is None, (name, data)


# -- server session -------------------------------------------------------------------------


@enc
def test_server_session_lifecycle(subprotocol: str) -> None:
    codec = codec_for(subprotocol)
    s = ServerSession(subprotocol=subprotocol)
    assert s.state is State.CONNECTING
    assert s.receive(codec.encode(Hello("t1", "k", 3, "e"))) == [Hello("t1", "k", 3, "e")]
    assert s.state is State.AWAITING_READY and s.hello == Hello("t1", "k", 3, "e")
    assert s.receive(codec.encode(Ping(1))) == [Ping(1)]  # pipelined before ready
    assert codec.decode_server(s.ready("e", True, 2, base_seq=3)) == Ready("e", True, 2)
    assert s.state is State.OPEN
    assert s.receive(codec.encode(Ack(3))) == [Ack(3)]  # the resume point
    assert codec.decode_server(s.batch(4, [("x", 1), ("y", 2)])) == Batch(
        4, [BatchItem("x", 1), BatchItem("y", 2)]
    )
    assert codec.decode_server(s.offline(2)) == Offline(2)
    assert codec.decode_server(s.event(6, "z", None)) == Event(6, "z", None)
    assert s.last_sent == 6
    s.receive(codec.encode(Ack(6)))
    s.receive(codec.encode(Ack(5)))  # cumulative: a lower ack changes nothing
    assert s.acked == 6
    assert codec.decode_server(s.pong(1)) == Pong(1)
    assert codec.decode_server(s.result(2, False, error="no")) == Result(2, False, error="no")
    assert codec.decode_server(s.stream_error(440, "replaced")) == StreamError(440, "replaced")
    assert s.state is State.CLOSED
    assert s.receive(codec.encode(Hello("t1", "k"))) == []


def test_server_failure_refuses_a_hello() -> None:
    s = ServerSession()
    s.receive(codec_for(MSGPACK).encode(Hello("t1", "bad")))
    assert codec_for(MSGPACK).decode_server(s.failure(401, "bad token")) == Failure(
        401, "bad token"
    )
    assert s.state is State.CLOSED


@pytest.mark.parametrize("frame", [Ack(0), Ping(1), Query(1, "echo")], ids=repr)
def test_server_first_frame_must_be_hello(frame: Any) -> None:
    with pytest.raises(ProtocolError, match="first frame must be `hello`") as info:
        ServerSession().receive(codec_for(MSGPACK).encode(frame))
    assert info.value.close_code == 1002


def test_server_rejects_second_hello() -> None:
    s = open_server()
    with pytest.raises(ProtocolError, match="second `hello`") as info:
        s.receive(codec_for(MSGPACK).encode(Hello("t1", "token1")))
    assert info.value.close_code == 1002


def test_server_rejects_ack_above_last_sent() -> None:
    s = open_server(base_seq=5)
    s.event(6, "x", 1)
    s.receive(codec_for(MSGPACK).encode(Ack(6)))
    with pytest.raises(ProtocolError, match="`ack` field `seq` is 7, above the last sent seq 6"):
        s.receive(codec_for(MSGPACK).encode(Ack(7)))


def test_server_rejects_client_ops_only() -> None:
    with pytest.raises(ProtocolError, match="not a client op") as info:
        open_server().receive(codec_for(MSGPACK).encode(Pong(1)))
    assert info.value.close_code == 1003


def test_server_send_checks() -> None:
    s = ServerSession()
    with pytest.raises(RuntimeError, match="cannot send `ready`"):
        s.ready("e", True, 0)
    s.receive(codec_for(MSGPACK).encode(Hello("t1", "k")))
    with pytest.raises(RuntimeError, match="cannot send `event`"):
        s.event(1, "x", 1)
    s.ready("e", True, 0, base_seq=2)
    with pytest.raises(ValueError, match="seq 5 does not follow the last sent seq 2"):
        s.event(5, "x", 1)
    with pytest.raises(ValueError, match="at least one"):
        s.batch(3, [])


# -- hypothesis ---------------------------------------------------------------------------

INT64 = st.integers(-(2**63), 2**63 - 1)
SEQ = st.integers(1, 2**63 - 1)
COUNT = st.integers(0, 2**63 - 1)
# Values that survive both encodings unchanged.
VALUES = st.recursive(
    st.none() | st.booleans() | INT64 | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)  # fmt: skip
ITEMS = st.builds(BatchItem, st.text(), VALUES)
CLIENT = st.one_of(
    st.builds(Hello, st.text(), st.text(), COUNT, st.text()),
    st.builds(Ack, COUNT),
    st.builds(Ping, INT64),
    st.builds(Query, INT64, st.text(), VALUES),
)
SERVER = st.one_of(
    st.builds(Ready, st.text(), st.booleans(), COUNT),
    st.builds(Event, SEQ, st.text(), VALUES),
    st.builds(Batch, SEQ, st.lists(ITEMS, min_size=1, max_size=4)),
    st.builds(Offline, COUNT),
    st.builds(Pong, INT64),
    st.builds(Result, INT64, st.booleans(), VALUES, st.none() | st.text()),
    st.builds(StreamError, INT64, st.text()),
    st.builds(Failure, INT64, st.text()),
)
OPS = ["hello", "ack", "ping", "query", "ready", "event", "batch", "offline", "pong", "result",
       "stream_error", "failure", "bogus"]  # fmt: skip
FIELDS = ["tenant", "token", "resume", "epoch", "seq", "id", "method", "params", "session",
          "resumed", "pending", "name", "data", "first", "events", "count", "ok", "error",
          "code", "reason"]  # fmt: skip
# Frames that look right: a known op and fields with plausible names and arbitrary values.
LOOKALIKES = st.builds(
    lambda op, fields: {"op": op, **fields},
    st.sampled_from(OPS),
    st.dictionaries(
        st.sampled_from(FIELDS),
        VALUES | st.lists(st.dictionaries(st.sampled_from(["name", "data"]), VALUES), max_size=3),
        max_size=6,
    ),
)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def feed_everything(subprotocol: str, message: Any) -> None:
    """Feed a message to every decoder and session state; only ProtocolError may escape."""
    codec = codec_for(subprotocol)
    receivers = [codec.decode_client, codec.decode_server]
    client = ClientSession("t1", "k", subprotocol=subprotocol)
    client.hello()
    receivers += [
        client.receive,
        open_client(subprotocol).receive,
        open_server(subprotocol).receive,
    ]
    receivers.append(ServerSession(subprotocol=subprotocol).receive)
    for receive in receivers:
        try:
            receive(message)
        except ProtocolError as exc:
            assert exc.close_code in (1002, 1003, 1007, 1009)


@FUZZ
@given(st.binary(max_size=64))
def test_fuzz_arbitrary_bytes(data: bytes) -> None:
    feed_everything(MSGPACK, data)
    feed_everything(JSON, data)


@FUZZ
@given(st.text(max_size=64))
def test_fuzz_arbitrary_text(text: str) -> None:
    feed_everything(JSON, text)
    feed_everything(MSGPACK, text)


@FUZZ
@given(LOOKALIKES, st.sampled_from(SUBPROTOCOLS))
def test_fuzz_valid_looking_frames(raw: dict[str, Any], subprotocol: str) -> None:
    feed_everything(subprotocol, encode(subprotocol, raw))


@FUZZ
@given(CLIENT, st.sampled_from(SUBPROTOCOLS))
def test_fuzz_client_frames_round_trip(frame: Any, subprotocol: str) -> None:
    codec = codec_for(subprotocol)
    assert codec.decode_client(codec.encode(frame)) == frame


@FUZZ
@given(SERVER, st.sampled_from(SUBPROTOCOLS))
def test_fuzz_server_frames_round_trip(frame: Any, subprotocol: str) -> None:
    codec = codec_for(subprotocol)
    assert codec.decode_server(codec.encode(frame)) == frame


@FUZZ
@given(st.lists(st.tuples(st.sampled_from([*sorted(VALID), "x"]), VALUES), min_size=1))
def test_fuzz_batches_deliver_every_event(events: list[tuple[str, Any]]) -> None:
    # Whatever the payloads, a well-formed batch yields one item per event, in order.
    s = open_client()
    server = open_server()
    (got,) = s.receive(server.batch(1, events))
    assert got.first == 1 and [(i.name, i.data) for i in got.events] == events


# -- workload -----------------------------------------------------------------------------

# md5 of the files `benchmarks/workload/gen_workload.py --events N --seed S --out F` writes
# (the 100k one is the md5 benchmarks/README.md gives for mixed-100k)
REFERENCE_MD5 = {
    (3000, 7): "4fcc15390d843ca3200985c986f0051b",
    (10_000, 1): "5d97987668047b7432151a638c23d7ca",
}


@pytest.mark.parametrize(("events", "seed"), list(REFERENCE_MD5))
def test_workload_matches_the_reference_generator(events: int, seed: int) -> None:
    digest = hashlib.md5()
    for name, data in Workload(seed).take(events):
        line = json.dumps({"event": name, "data": data}, ensure_ascii=False) + "\n"
        digest.update(line.encode())
    assert digest.hexdigest() == REFERENCE_MD5[(events, seed)]


def test_the_generator_script_writes_the_same_file(tmp_path) -> None:
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "workload" / "gen_workload.py"
    out = tmp_path / "w.jsonl"
    subprocess.run([sys.executable, str(script), "--events", "3000", "--seed", "7", "--out",
                    str(out)], check=True)
    assert hashlib.md5(out.read_bytes()).hexdigest() == REFERENCE_MD5[(3000, 7)]


def test_workload_iterates_forever_deterministically() -> None:
    a, b = Workload(5), Workload(5)
    first = [next(a) for _ in range(2500)]
    assert first == [next(b) for _ in range(2500)]
    assert {name for name, _ in first} == set(BUFFERABLE_EVENTS) - {"messages.delete"}


# -- seq accounting ------------------------------------------------------------------------


def test_seq_account_advances_over_contiguous_settled_seqs_only() -> None:
    seqs = SeqAccount(resume=10)
    assert (seqs.received, seqs.processed, seqs.acked) == (10, 10, 10)
    seqs.first(11)
    seqs.received = 20
    assert seqs.unprocessed == 10
    assert seqs.settle(range(14, 16)) is False  # 11..13 still pending
    assert seqs.settle(range(11, 14)) is True and seqs.processed == 15
    assert seqs.settle(range(12, 13)) is False  # already processed
    assert seqs.settle(range(16, 21)) is True and seqs.processed == 20
    assert seqs.count == 10 and seqs.unprocessed == 0


def test_seq_account_a_replay_starting_past_received_is_a_jump_not_a_stall() -> None:
    seqs = SeqAccount(resume=5)
    seqs.first(40)  # the log no longer holds 6..39: nothing before 40 can arrive
    assert (seqs.received, seqs.processed, seqs.acked) == (39, 39, 39)
    seqs.first(100)  # only the connection's first event can jump
    assert seqs.received == 39


def test_seq_account_restart_for_a_new_epoch() -> None:
    seqs = SeqAccount(resume=7)
    seqs.restart()
    assert (seqs.received, seqs.processed, seqs.acked) == (0, 0, 0)
