"""rsocket.whatsapp: reading messages (pure) and acting through queries (real loopback
WebSockets: the reference server, and a recording server for the bridge's methods)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve

from rsocket import QueryError, Socket, SocketConfig, TenantPool
from rsocket.protocol import JSON, MSGPACK, Ping, Query, ServerSession
from rsocket.testing import ReferenceServer
from rsocket.whatsapp import (
    MAX_MEDIA_BYTES,
    QUERY_TIMEOUT,
    WhatsApp,
    incoming_texts,
    message_text,
    reply_id,
)

JID = "5511900000001@s.whatsapp.net"
GROUP = "120363000000000001@g.us"
KEY = {"remoteJid": JID, "fromMe": False, "id": "3A5F0C1E2D"}


def received(content: dict[str, Any], *, key: dict[str, Any] = KEY) -> dict[str, Any]:
    """A message as Baileys delivers it in ``messages.upsert`` (after the bridge's convert)."""
    return {"key": key, "messageTimestamp": 1718000000, "pushName": "Ana", "broadcast": False,
            "message": {**content, "messageContextInfo": {"deviceListMetadataVersion": 2}}}


# -- message_text ---------------------------------------------------------------------------


def test_message_text_of_plain_and_extended_texts():
    assert message_text(received({"conversation": "hello"})) == "hello"
    extended = {"extendedTextMessage": {
        "text": "see https://example.com", "matchedText": "https://example.com",
        "previewType": 0, "contextInfo": {"stanzaId": "ABC", "participant": JID,
                                          "quotedMessage": {"conversation": "earlier"}}}}
    assert message_text(received(extended)) == "see https://example.com"
    # the content alone works too
    assert message_text({"conversation": "bare"}) == "bare"
    assert message_text({"extendedTextMessage": {"text": "bare too"}}) == "bare too"


def test_message_text_of_captions():
    image = {"imageMessage": {"url": "https://mmg.whatsapp.net/v/t62.7118-24/x.enc",
                              "mimetype": "image/jpeg", "caption": "my cat",
                              "fileSha256": b"\x01" * 32, "fileLength": 48213, "height": 1280,
                              "width": 960, "mediaKey": b"\x02" * 32,
                              "jpegThumbnail": b"\xff\xd8\xff"}}
    assert message_text(received(image)) == "my cat"
    assert message_text(received({"videoMessage": {"caption": "clip", "seconds": 4}})) == "clip"
    document = {"documentWithCaptionMessage": {"message": {"documentMessage": {
        "fileName": "report.pdf", "mimetype": "application/pdf", "caption": "the report"}}}}
    assert message_text(received(document)) == "the report"
    assert message_text(received({"imageMessage": {"mimetype": "image/jpeg"}})) is None


def test_message_text_unwraps_ephemeral_and_view_once():
    ephemeral = {"ephemeralMessage": {"message": {"extendedTextMessage": {
        "text": "disappearing", "contextInfo": {"expiration": 604800}}}}}
    assert message_text(received(ephemeral)) == "disappearing"
    view_once = {"viewOnceMessageV2": {"message": {"imageMessage": {
        "caption": "once", "viewOnce": True}}}}
    assert message_text(received(view_once)) == "once"
    nested = {"ephemeralMessage": {"message": {"viewOnceMessage": {"message": {
        "videoMessage": {"caption": "both", "viewOnce": True}}}}}}
    assert message_text(received(nested)) == "both"
    assert message_text(received({"viewOnceMessageV2Extension": {"message": {
        "audioMessage": {"ptt": True}}}})) is None


def test_message_text_is_none_for_what_is_not_a_text():
    assert message_text(received({"reactionMessage": {"key": KEY, "text": "👍"}})) is None
    assert message_text(received({"stickerMessage": {"mimetype": "image/webp"}})) is None
    # an edit is a protocolMessage inside editedMessage, not a new text
    edit = {"editedMessage": {"message": {"protocolMessage": {
        "key": KEY, "type": 14, "editedMessage": {"conversation": "fixed"}}}}}
    assert message_text(received(edit)) is None
    assert message_text({"key": KEY, "messageStubType": 20}) is None  # no content at all
    assert message_text({"key": KEY, "message": None}) is None
    assert message_text({"conversation": 5}) is None


# -- incoming_texts -----------------------------------------------------------------------


def upsert(messages: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    return {"messages.upsert": {"messages": messages, "type": kind}}


def test_incoming_texts_of_notify_and_append_upserts():
    a = received({"conversation": "live"})
    b = received({"extendedTextMessage": {"text": "offline"}}, key={**KEY, "id": "B"})
    assert incoming_texts(upsert([a], "notify")) == [(a, "live")]
    assert incoming_texts(upsert([a, b], "append")) == [(a, "live"), (b, "offline")]


def test_incoming_texts_skip_own_status_and_non_texts():
    mine = received({"conversation": "you said: hi"}, key={**KEY, "fromMe": True, "id": "M"})
    status = received({"extendedTextMessage": {"text": "my story"}},
                      key={"remoteJid": "status@broadcast", "fromMe": False, "id": "S",
                           "participant": JID})
    reaction = received({"reactionMessage": {"key": KEY, "text": "👍"}})
    empty = received({"conversation": ""})
    group = received({"conversation": "hi all"},
                     key={"remoteJid": GROUP, "fromMe": False, "id": "G", "participant": JID})
    batch = upsert([mine, status, reaction, empty, {"no": "key"}, None, group], "notify")
    assert incoming_texts(batch) == [(group, "hi all")]
    assert incoming_texts(upsert([group], "history")) == []  # an unknown type is not new
    assert incoming_texts({"messages.update": [{"key": KEY, "update": {"status": 4}}]}) == []
    assert incoming_texts({}) == []


# -- queries against the reference server ---------------------------------------------------


async def test_send_text_through_a_socket_on_the_reference_server(server: ReferenceServer):
    sock = Socket(server.url, "t1", "token1")
    await sock.connect()
    try:
        sent = await WhatsApp(sock).send_text(JID, "hello")
    finally:
        await sock.end()
    assert sent["key"]["remoteJid"] == JID and sent["key"]["fromMe"] is True
    [data] = [d for n, d in server.retained("t1") if n == "messages.upsert"]
    assert data["messages"][0]["key"] == sent["key"]
    assert data["messages"][0]["message"] == {"conversation": "hello"}
    assert sent["seq"] >= 1


async def test_send_text_through_a_pool_tenant(server: ReferenceServer):
    async with TenantPool() as pool:
        await pool.add("t1", server.url, "token1")
        sent = await WhatsApp.of(pool, "t1").send_text(JID, "from the pool")
    replies = [d["messages"][0] for n, d in server.retained("t1") if n == "messages.upsert"]
    assert [(r["key"]["id"], r["message"]["conversation"]) for r in replies] == [
        (sent["key"]["id"], "from the pool")]


async def test_a_reply_sent_twice_with_its_id_is_one_message(server: ReferenceServer):
    incoming = received({"conversation": "hi"})
    reply = reply_id("t1", incoming["key"])
    assert reply == reply_id("t1", dict(incoming["key"])) != reply_id("t2", incoming["key"])
    assert reply.startswith("3EB0") and len(reply) == 22 and reply.isalnum()
    sock = Socket(server.url, "t1", "token1")
    await sock.connect()
    try:
        wa = WhatsApp(sock)
        first = await wa.send_text(JID, "once", message_id=reply)
        again = await wa.send_text(JID, "once", message_id=reply)
        with pytest.raises(QueryError, match="message_id"):
            await wa.send_text(JID, "bad", message_id="not an id")
    finally:
        await sock.end()
    assert first == again and first["key"]["id"] == reply
    assert len([d for n, d in server.retained("t1") if n == "messages.upsert"]) == 1


async def test_a_refused_query_is_a_query_error(server: ReferenceServer):
    sock = Socket(server.url, "t1", "token1")
    await sock.connect()
    try:
        with pytest.raises(QueryError, match="unknown method 'me'"):
            await WhatsApp(sock).me()  # the reference server only has send_message
    finally:
        await sock.end()


# -- queries against a recording server: the exact params -------------------------------


class Recording:
    """A server that records each query's (method, params) and answers ``answers[method]``
    (an ``Exception`` answers ``ok: false`` with its text)."""

    def __init__(self, answers: dict[str, Any]) -> None:
        self.answers = answers
        self.queries: list[tuple[str, Any]] = []

    async def handler(self, ws: ServerConnection) -> None:
        session = ServerSession(subprotocol=ws.subprotocol)
        session.receive(await ws.recv())  # hello
        await ws.send(session.ready("s1", False, 0))
        await ws.send(session.offline(0))
        async for message in ws:
            for frame in session.receive(message):
                if isinstance(frame, Ping):
                    await ws.send(session.pong(frame.id))
                elif isinstance(frame, Query):
                    self.queries.append((frame.method, frame.params))
                    answer = self.answers.get(frame.method)
                    if isinstance(answer, Exception):
                        await ws.send(session.result(frame.id, False, error=str(answer)))
                    else:
                        await ws.send(session.result(frame.id, True, answer))


@asynccontextmanager
async def recorded(answers: dict[str, Any], subprotocol: str | None = None,
                   ) -> AsyncIterator[tuple[Recording, WhatsApp]]:
    """A socket connected to a :class:`Recording` server; the server and the socket's actions."""
    server = Recording(answers)
    async with serve(server.handler, "127.0.0.1", 0, subprotocols=[MSGPACK, JSON]) as ws_server:
        port = ws_server.sockets[0].getsockname()[1]
        config = SocketConfig(subprotocol=subprotocol) if subprotocol else None
        sock = Socket(f"ws://127.0.0.1:{port}", "t1", "x", config=config)
        await sock.connect()
        try:
            yield server, WhatsApp(sock)
        finally:
            await sock.end()


SENT = {"key": {"remoteJid": JID, "fromMe": True, "id": "3EB0AA"}, "seq": 7}


async def test_me_and_group_metadata():
    me = {"id": "15550000000:1@s.whatsapp.net", "lid": "99999:1@lid", "name": "Bot"}
    group = {"id": GROUP, "subject": "Team", "participants": [{"id": JID, "admin": "admin"}]}
    async with recorded({"me": me, "group_metadata": group}) as (server, wa):
        assert await wa.me() == me
        assert await wa.group_metadata(GROUP) == group
    assert server.queries == [("me", None), ("group_metadata", {"jid": GROUP})]


async def test_send_text_params():
    incoming = received({"conversation": "hi"})
    async with recorded({"send_message": SENT}) as (server, wa):
        assert await wa.send_text(JID, "plain") == SENT
        await wa.send_text(JID, "hi @5511", quoted=incoming, mentions=["5511@s.whatsapp.net"])
        await wa.send_text(JID, "no mentions", mentions=iter(()))
        with pytest.raises(TypeError, match="mentions must be a list of JIDs"):
            await wa.send_text(JID, "x", mentions="5511@s.whatsapp.net")
    assert server.queries == [
        ("send_message", {"jid": JID, "text": "plain"}),
        ("send_message", {"jid": JID, "text": "hi @5511", "quoted": incoming,
                          "mentions": ["5511@s.whatsapp.net"]}),
        ("send_message", {"jid": JID, "text": "no mentions"}),
    ]


async def test_send_media_params():
    incoming = received({"conversation": "send me the report"})
    async with recorded({"send_message": SENT}) as (server, wa):
        assert await wa.send_media(JID, "image", data=b"\xff\xd8\xff\x00", caption="look",
                                   mimetype="image/jpeg") == SENT
        await wa.send_media(JID, "document", path="/srv/report.pdf", mimetype="application/pdf",
                            file_name="report.pdf", caption="here", quoted=incoming)
        await wa.send_media(JID, "audio", data=bytearray(b"OggS"), ptt=True)
        await wa.send_media(JID, "sticker", path="https://example.com/s.webp")
        for kwargs, error in [
            ({"kind": "gif", "data": b"x"}, "unknown media kind 'gif'"),
            ({"kind": "image"}, "exactly one of data and path"),
            ({"kind": "image", "data": b"x", "path": "/x"}, "exactly one of data and path"),
            ({"kind": "audio", "data": b"x", "caption": "c"}, "a audio has no caption"),
            ({"kind": "image", "data": b"x", "file_name": "a.jpg"}, "file_name is for a document"),
            ({"kind": "video", "data": b"x", "ptt": True}, "ptt is for an audio"),
        ]:
            with pytest.raises(ValueError, match=error):
                await wa.send_media(JID, **kwargs)
    assert server.queries == [
        ("send_message", {"jid": JID, "media": {"kind": "image", "data": b"\xff\xd8\xff\x00",
                                                "mimetype": "image/jpeg", "caption": "look"}}),
        ("send_message", {"jid": JID, "media": {"kind": "document", "path": "/srv/report.pdf",
                                                "mimetype": "application/pdf", "caption": "here",
                                                "fileName": "report.pdf"},
                          "quoted": incoming}),
        ("send_message", {"jid": JID, "media": {"kind": "audio", "data": b"OggS", "ptt": True}}),
        ("send_message", {"jid": JID, "media": {"kind": "sticker",
                                                "path": "https://example.com/s.webp"}}),
    ]


async def test_react_read_and_presence_params():
    other = {"remoteJid": GROUP, "fromMe": False, "id": "G1", "participant": JID}
    async with recorded({"send_message": SENT}) as (server, wa):
        assert await wa.react(KEY, "👍") == SENT
        await wa.react(other, "")
        await wa.read([KEY, other])
        await wa.read([])  # nothing to read: nothing sent
        await wa.presence(JID, "composing")
        await wa.presence(None, "available")
        with pytest.raises(ValueError, match="unknown presence 'typing'"):
            await wa.presence(JID, "typing")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="presence 'paused' needs a chat jid"):
            await wa.presence(None, "paused")
        with pytest.raises(ValueError, match="react needs a message key with its remoteJid"):
            await wa.react({"id": "X"}, "👍")
    assert server.queries == [
        ("send_message", {"jid": JID, "reaction": {"key": KEY, "text": "👍"}}),
        ("send_message", {"jid": GROUP, "reaction": {"key": other, "text": ""}}),
        ("read_messages", {"keys": [KEY, other]}),
        ("presence", {"state": "composing", "jid": JID}),
        ("presence", {"state": "available"}),
    ]


IMAGE = received({"imageMessage": {"url": "https://mmg.whatsapp.net/x.enc", "fileLength": 4,
                                   "mediaKey": b"\x02" * 32, "mimetype": "image/jpeg"}})


async def test_download_media_params_and_bytes():
    async with recorded({"download_media": b"\xff\xd8\xff\xd9"}) as (server, wa):
        assert await wa.download_media(IMAGE) == b"\xff\xd8\xff\xd9"
        assert await wa.download_media(IMAGE, max_bytes=4) == b"\xff\xd8\xff\xd9"
        for bad in (0, -1, True, 1.5):
            with pytest.raises(ValueError, match="max_bytes must be a positive int"):
                await wa.download_media(IMAGE, max_bytes=bad)  # type: ignore[arg-type]
    assert server.queries == [
        ("download_media", {"message": IMAGE, "maxBytes": MAX_MEDIA_BYTES}),
        ("download_media", {"message": IMAGE, "maxBytes": 4}),
    ]


async def test_download_media_over_json_decodes_base64():
    async with recorded({"download_media": b"\x00\x01binary\xff"}, JSON) as (server, wa):
        assert await wa.download_media(IMAGE) == b"\x00\x01binary\xff"
    assert server.queries[0][0] == "download_media"


async def test_refusals_are_query_errors():
    refused = Exception("download_media: the media is 20000000 bytes, more than maxBytes 15728640")
    async with recorded({"download_media": refused}) as (_, wa):
        with pytest.raises(QueryError, match="more than maxBytes"):
            await wa.download_media(IMAGE)


async def test_the_query_function_gets_the_timeout():
    calls: list[tuple[str, Any, float]] = []

    async def query(method: str, params: Any, timeout: float) -> Any:
        calls.append((method, params, timeout))
        return None

    await WhatsApp(query).presence(JID, "paused")
    await WhatsApp(query, timeout=5.0).read([KEY])
    assert calls == [("presence", {"state": "paused", "jid": JID}, QUERY_TIMEOUT),
                     ("read_messages", {"keys": [KEY]}, 5.0)]
    assert QUERY_TIMEOUT > 60  # the bridge's own queryTimeout answers first
    with pytest.raises(TypeError, match="WhatsApp needs an object with query"):
        WhatsApp(42)  # type: ignore[arg-type]
    async with TenantPool() as pool:
        with pytest.raises(TypeError, match=r"WhatsApp.of\(pool, tenant\)"):
            WhatsApp(pool)  # type: ignore[arg-type]

