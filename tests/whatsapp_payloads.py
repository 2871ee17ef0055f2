"""WhatsApp payloads at real sizes, shaped as the Baileys bridge delivers them.

The shapes are Baileys' decoded protobufs (``WebMessageInfo``, ``Conversation``,
``Contact``) after the bridge's conversion: bytes as bytes, Longs as ints. The
bridge's own tests build the same payloads with Baileys' ``WAProto`` classes;
these stand in for them where a Python test needs a first login's history sync
(several MB) or a reconnect's offline media.
"""

from __future__ import annotations

import random
from typing import Any

T0 = 1_733_000_000


def jid(n: int) -> str:
    return f"55119{n:08d}@s.whatsapp.net"


def key(n: int, *, chat: int | None = None, from_me: bool = False) -> dict[str, Any]:
    return {"remoteJid": jid(chat if chat is not None else n % 97), "fromMe": from_me,
            "id": f"3EB0{n:016X}"}


def message(n: int, *, text: int = 60, thumbnail: int = 0, chat: int | None = None) -> dict[str, Any]:
    """A ``WebMessageInfo``: a text (``extendedTextMessage`` of ``text`` characters)
    or, with ``thumbnail`` bytes, an image with its JPEG thumbnail."""
    if thumbnail:
        content: dict[str, Any] = {"imageMessage": {
            "url": f"https://mmg.whatsapp.net/v/t62.7118-24/{n}.enc",
            "mimetype": "image/jpeg", "caption": "photo", "fileSha256": bytes(32),
            "fileLength": 184_512 + n, "height": 1280, "width": 960, "mediaKey": bytes(32),
            "fileEncSha256": bytes(32), "directPath": f"/v/t62.7118-24/{n}.enc",
            "mediaKeyTimestamp": T0 + n,
            "jpegThumbnail": random.Random(n).randbytes(thumbnail),
        }}
    else:
        content = {"extendedTextMessage": {
            "text": ("lorem ipsum dolor sit amet " * (text // 27 + 1))[:text],
            "contextInfo": {"expiration": 0, "ephemeralSettingTimestamp": T0},
        }}
    return {"key": key(n, chat=chat), "message": content, "messageTimestamp": T0 + n,
            "pushName": f"Contact {n % 97}", "status": 2,
            "messageSecret": bytes(32)}


def history_set(*, chats: int = 500, contacts: int = 800, messages: int = 11_000,
                text: int = 60, progress: int = 50, seed: int = 0) -> dict[str, Any]:
    """A first login's ``messaging-history.set`` (the defaults encode to about 5 MB)."""
    return {
        "chats": [{"id": jid(i), "conversationTimestamp": T0 + i, "unreadCount": i % 5,
                   "name": f"Chat {i}", "endOfHistoryTransferType": 0,
                   "ephemeralExpiration": 0, "archived": False, "pinned": 0}
                  for i in range(seed, seed + chats)],
        "contacts": [{"id": jid(i), "name": f"Contact {i}", "notify": f"C{i}"}
                     for i in range(seed, seed + contacts)],
        "messages": [message(seed * 100_000 + i, text=text + i % 200, chat=i % max(chats, 1))
                     for i in range(messages)],
        "isLatest": True, "syncType": 2, "progress": progress,
    }


def image_upsert(count: int, *, thumbnail: int = 15_000, type: str = "append") -> dict[str, Any]:
    """A reconnect's offline media: ``count`` images with JPEG thumbnails in one upsert."""
    return {"messages": [message(i, thumbnail=thumbnail) for i in range(count)], "type": type}
