"""Act as a WhatsApp bot: typed helpers over the bridge's query methods.

A bot talks to its account through queries (``Socket.query``,
``TenantPool.query``); :class:`WhatsApp` writes them for it::

    wa = WhatsApp(sock)                    # a Socket, or a tenant's ConnectionManager
    wa = WhatsApp.of(pool, "t1")           # a tenant of a TenantPool, by name
    for message, text in incoming_texts(batch):
        await wa.send_text(message["key"]["remoteJid"], f"you said: {text}", quoted=message)

and two pure helpers read what arrives: :func:`message_text` (the text of a
message, through Baileys' wrappers) and :func:`incoming_texts` (the new texts
of a batch).

The methods (``bridge/lib/methods.js``): ``me``, ``send_message`` (text,
media, reaction; ``quoted``, ``mentions``), ``read_messages``, ``presence``,
``download_media``, ``group_metadata``. The reference server
(``rsocket serve``) has ``send_message`` with text only.
"""

from __future__ import annotations

import base64
import functools
import hashlib
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal, NotRequired, Protocol, TypedDict, cast, get_args

if TYPE_CHECKING:
    from .pool import TenantPool

__all__ = [
    "MAX_MEDIA_BYTES",
    "QUERY_TIMEOUT",
    "Me",
    "MediaKind",
    "Presence",
    "QueryFunction",
    "Queryable",
    "Sent",
    "WhatsApp",
    "incoming_texts",
    "message_text",
    "reply_id",
]

#: Seconds a query waits for its result by default. Longer than the bridge's own
#: ``queryTimeout`` (60 s), so the bridge answers first, with its error if WhatsApp
#: is slow: a message is never sent after the bot was told its send timed out.
QUERY_TIMEOUT = 75.0
#: Largest media :meth:`WhatsApp.download_media` takes by default. The bytes come
#: back in one frame, which must fit the socket's ``SocketConfig.max_frame``
#: (16 MiB by default); over ``rsocket.v1.json`` base64 makes them 4/3 larger.
MAX_MEDIA_BYTES = 15 * 1024 * 1024

MediaKind = Literal["image", "video", "audio", "document", "sticker"]
Presence = Literal["available", "unavailable", "composing", "recording", "paused"]
_MEDIA_KINDS: tuple[str, ...] = get_args(MediaKind)
_PRESENCES: tuple[str, ...] = get_args(Presence)
_CHAT_PRESENCES = frozenset({"composing", "recording", "paused"})

#: ``query(method, params, timeout)``: what a :class:`WhatsApp` calls.
QueryFunction = Callable[[str, Any, float], Awaitable[Any]]

# What Baileys' normalizeMessageContent takes off a message's content (each ``{message}``).
_WRAPPERS = (
    "ephemeralMessage", "viewOnceMessage", "documentWithCaptionMessage", "viewOnceMessageV2",
    "viewOnceMessageV2Extension", "editedMessage", "associatedChildMessage",
    "groupStatusMessage", "groupStatusMessageV2",
)  # fmt: skip
_CAPTIONED = ("imageMessage", "videoMessage", "documentMessage")
_STATUS = "status@broadcast"


class Queryable(Protocol):
    """Anything that calls a server method: a ``Socket``, a ``ConnectionManager``."""

    async def query(self, method: str, params: Any, timeout: float) -> Any:
        """Call ``method`` with ``params``; its result data."""
        ...


class Me(TypedDict):
    """The account (``me``): its JID, its LID when known, its push name."""

    id: str
    lid: str | None
    name: str | None


class Sent(TypedDict):
    """A sent message (``send_message``): its key, and the seq of its
    ``messages.upsert`` when that event came before the result."""

    key: dict[str, Any]
    seq: NotRequired[int]


class WhatsApp:
    """An account's actions, as queries through ``target``.

    Args:
        target: a :class:`Queryable` (``Socket``, ``ConnectionManager``) or a
            :data:`QueryFunction`; for a tenant of a pool, :meth:`of`.
        timeout: seconds each query waits for its result (default
            :data:`QUERY_TIMEOUT`, longer than the bridge's own 60 s).

    Every method raises what ``query`` raises: ``DisconnectError`` (not
    connected), ``TimeoutError``, ``QueryError`` (the server refused: bad
    params, no Baileys socket, WhatsApp's error). Bad arguments raise
    ``ValueError``/``TypeError`` before anything is sent.
    """

    def __init__(self, target: Queryable | QueryFunction, *, timeout: float = QUERY_TIMEOUT):
        from .pool import TenantPool  # already imported with the package

        if isinstance(target, TenantPool):  # its query() takes the tenant first
            raise TypeError("a TenantPool serves several accounts: WhatsApp.of(pool, tenant)")
        query = getattr(target, "query", None)
        if callable(query):
            self._query: QueryFunction = query
        elif callable(target):
            self._query = target
        else:
            raise TypeError(f"WhatsApp needs an object with query() or a query function, "
                            f"got {type(target).__name__}")  # fmt: skip
        self.timeout = timeout

    @classmethod
    def of(cls, pool: TenantPool, tenant: str, *, timeout: float = QUERY_TIMEOUT) -> WhatsApp:
        """The actions of ``tenant`` in ``pool`` (through ``pool.query(tenant, ...)``,
        so its current socket, whichever it is after reconnects)."""
        return cls(functools.partial(pool.query, tenant), timeout=timeout)

    async def _call(self, method: str, params: Any) -> Any:
        return await self._query(method, params, self.timeout)

    async def me(self) -> Me:
        """The account: ``{id, lid, name}`` (``lid``/``name`` None when unknown)."""
        return cast(Me, await self._call("me", None))

    async def send_text(
        self,
        jid: str,
        text: str,
        *,
        quoted: Mapping[str, Any] | None = None,
        mentions: Iterable[str] = (),
        message_id: str | None = None,
    ) -> Sent:
        """Send ``text`` to chat ``jid``.

        Args:
            quoted: a message (``{key, message, ...}`` as received) to reply to.
            mentions: JIDs mentioned (their ``@number`` goes in the text).
            message_id: the message's own id (1-64 letters and digits), e.g.
                :func:`reply_id` of the message it answers: sending the same
                id again (a handler retried, a bot restarted) is the same
                message, delivered once.
        """
        params: dict[str, Any] = {"jid": jid, "text": text}
        _add_reply(params, quoted, mentions, message_id)
        return cast(Sent, await self._call("send_message", params))

    async def send_media(
        self,
        jid: str,
        kind: MediaKind,
        *,
        data: bytes | bytearray | memoryview | None = None,
        path: str | None = None,
        mimetype: str | None = None,
        caption: str | None = None,
        file_name: str | None = None,
        ptt: bool = False,
        quoted: Mapping[str, Any] | None = None,
        mentions: Iterable[str] = (),
        message_id: str | None = None,
    ) -> Sent:
        """Send an image, video, audio, document or sticker to chat ``jid``.

        Args:
            kind: ``image``, ``video``, ``audio``, ``document`` or ``sticker``.
            data: the file's bytes; or
            path: a file on the bridge's host, or an http(s) URL it fetches.
            mimetype: e.g. ``application/pdf`` (Baileys guesses one per kind).
            caption: text under an image, video or document.
            file_name: a document's name as shown.
            ptt: an audio as a voice note.
            quoted, mentions, message_id: as for :meth:`send_text`.

        Raises:
            ValueError: an unknown kind, not exactly one of data and path, or an
                option the kind does not take.
        """
        if kind not in _MEDIA_KINDS:
            raise ValueError(f"unknown media kind {kind!r}; expected one of {_MEDIA_KINDS}")
        if (data is None) == (path is None):
            raise ValueError("send_media needs exactly one of data and path")
        if caption is not None and kind in ("audio", "sticker"):
            raise ValueError(f"a {kind} has no caption")
        if file_name is not None and kind != "document":
            raise ValueError("file_name is for a document")
        if ptt and kind != "audio":
            raise ValueError("ptt is for an audio")
        media: dict[str, Any] = {"kind": kind}
        if data is not None:
            media["data"] = bytes(data)
        else:
            media["path"] = path
        for name, value in (("mimetype", mimetype), ("caption", caption), ("fileName", file_name)):
            if value is not None:
                media[name] = value
        if ptt:
            media["ptt"] = True
        params: dict[str, Any] = {"jid": jid, "media": media}
        _add_reply(params, quoted, mentions, message_id)
        return cast(Sent, await self._call("send_message", params))

    async def react(self, key: Mapping[str, Any], text: str) -> Sent:
        """React to the message ``key`` (in its chat) with ``text``, an emoji;
        ``""`` removes the reaction."""
        jid = key.get("remoteJid")
        if not isinstance(jid, str) or not jid:
            raise ValueError(f"react needs a message key with its remoteJid, got {dict(key)!r}")
        params = {"jid": jid, "reaction": {"key": dict(key), "text": text}}
        return cast(Sent, await self._call("send_message", params))

    async def read(self, keys: Iterable[Mapping[str, Any]]) -> None:
        """Mark the messages ``keys`` read (blue ticks); no keys: nothing is sent."""
        listed = [dict(key) for key in keys]
        if listed:
            await self._call("read_messages", {"keys": listed})

    async def presence(self, jid: str | None, state: Presence) -> None:
        """Show ``state`` in chat ``jid`` (``composing``, ``recording``, ``paused``),
        or the account ``available``/``unavailable`` (``jid`` may be None)."""
        if state not in _PRESENCES:
            raise ValueError(f"unknown presence {state!r}; expected one of {_PRESENCES}")
        if jid is None and state in _CHAT_PRESENCES:
            raise ValueError(f"presence {state!r} needs a chat jid")
        params: dict[str, Any] = {"state": state}
        if jid is not None:
            params["jid"] = jid
        await self._call("presence", params)

    async def download_media(
        self, message: Mapping[str, Any], max_bytes: int = MAX_MEDIA_BYTES
    ) -> bytes:
        """The bytes of ``message``'s image, video, audio, document or sticker.

        The bridge refuses (``QueryError``) a media larger than ``max_bytes``:
        before downloading when the message says its size, else when the
        download passes it. Keep ``max_bytes`` under the socket's ``max_frame``
        (see :data:`MAX_MEDIA_BYTES`).
        """
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
            raise ValueError(f"max_bytes must be a positive int, got {max_bytes!r}")
        data = await self._call("download_media", {"message": dict(message), "maxBytes": max_bytes})
        if isinstance(data, bytes):
            return data
        if isinstance(data, str):  # rsocket.v1.json carries bytes as base64 text
            return base64.b64decode(data, validate=True)
        raise TypeError(f"download_media answered {type(data).__name__}, not bytes")

    async def group_metadata(self, jid: str) -> dict[str, Any]:
        """Group ``jid``'s metadata as Baileys has it: ``subject``, ``participants``
        (``[{id, admin}]``), ``owner``, ``desc``, ..."""
        return cast(dict[str, Any], await self._call("group_metadata", {"jid": jid}))


def reply_id(tenant: str, key: Mapping[str, Any]) -> str:
    """A message id derived from the message a reply answers (its account, chat,
    sender and id): the same reply always gets the same id, so sending it again
    after a redelivery (a retried handler, a restart that replays events) is the
    same message, delivered once. Shaped like WhatsApp Web's ids."""
    parts = (tenant, key.get("remoteJid"), key.get("participant") or "", key.get("id"))
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()
    return "3EB0" + digest[:18].upper()


def _add_reply(
    params: dict[str, Any], quoted: Mapping[str, Any] | None, mentions: Iterable[str],
    message_id: str | None = None,
) -> None:
    if message_id is not None:
        params["message_id"] = message_id
    if quoted is not None:
        params["quoted"] = dict(quoted)
    if isinstance(mentions, str):  # a str is an Iterable[str] of its letters
        raise TypeError("mentions must be a list of JIDs, not a str")
    listed = list(mentions)
    if listed:
        params["mentions"] = listed


def _content(message: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """A message's content with Baileys' wrappers taken off (as normalizeMessageContent)."""
    content: Any = message.get("message") if "key" in message or "message" in message else message
    for _ in range(5):
        if not isinstance(content, Mapping):
            return None
        inner = next((content[w] for w in _WRAPPERS if isinstance(content.get(w), Mapping)), None)
        if inner is None:
            return content
        content = inner.get("message")
    return content if isinstance(content, Mapping) else None


def message_text(message: Mapping[str, Any]) -> str | None:
    """The text of a message: ``conversation``, ``extendedTextMessage.text``, or
    the caption of an image, video or document; None for anything else.

    ``message`` is a message as received (``{key, message, ...}``) or its content
    (``{conversation: ...}``). Disappearing, view-once, document-with-caption and
    edited wrappers are taken off as Baileys' ``normalizeMessageContent`` does (an
    edit itself is a ``protocolMessage``: None).
    """
    content = _content(message)
    if content is None:
        return None
    text = content.get("conversation")
    if isinstance(text, str):
        return text
    extended = content.get("extendedTextMessage")
    if isinstance(extended, Mapping) and isinstance(extended.get("text"), str):
        return cast(str, extended["text"])
    for name in _CAPTIONED:
        media = content.get(name)
        if isinstance(media, Mapping) and isinstance(media.get("caption"), str):
            return cast(str, media["caption"])
    return None


def incoming_texts(batch: Mapping[str, Any]) -> list[tuple[dict[str, Any], str]]:
    """The new texts others sent, in a batch: ``[(message, text), ...]``.

    From its ``messages.upsert`` of type ``notify`` (live) or ``append``
    (received while offline); never the account's own messages (``fromMe``: its
    sends and its replies come back as upserts too), nor status updates
    (``status@broadcast``), nor empty texts.
    """
    upsert = batch.get("messages.upsert")
    if not isinstance(upsert, Mapping) or upsert.get("type") not in ("notify", "append"):
        return []
    out: list[tuple[dict[str, Any], str]] = []
    for message in upsert.get("messages") or ():
        if not isinstance(message, dict):
            continue
        key = message.get("key")
        if not isinstance(key, Mapping) or key.get("fromMe") or key.get("remoteJid") == _STATUS:
            continue
        text = message_text(message)
        if text:
            out.append((message, text))
    return out
