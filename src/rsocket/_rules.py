"""The constants both merge cores read: written once, so the twins cannot drift.

``_buffer_py`` uses them as they are; ``_buffer.pyx`` copies them into C-typed
module globals at import (interned keys, a C array of bucket bounds), which
costs nothing per event.
"""

from __future__ import annotations

import msgspec

from . import events
from .enums import MessageStatus

#: event name -> small int code (1..12), the index of the compiled tables
EVENT_CODES: dict[str, int] = {name: code for code, name in enumerate(events.BUFFERABLE_EVENTS, 1)}

#: seqs are 0 <= seq < 2**63 (a C long long in the compiled core)
SEQ_LIMIT = 1 << 63
#: a ``messages.update`` with this status may decrement a chat's unread count
READ = int(MessageStatus.READ)
#: Baileys' normalizeMessageContent unwraps the first present of these, in this order
WRAPPERS = (
    "ephemeralMessage",
    "viewOnceMessage",
    "documentWithCaptionMessage",
    "viewOnceMessageV2",
    "viewOnceMessageV2Extension",
    "editedMessage",
)
#: content with one of these (not null) is not a "real" message (isRealMessage)
NOT_REAL = ("protocolMessage", "reactionMessage", "pollUpdateMessage")
#: fields of a history set copied to the released set when present
HISTORY_META = ("syncType", "progress", "peerDataRequestSessionId")
#: payload validation: JSON type names for error messages (msgspec's wording)
TYPE_NAMES = {str: "str", int: "int", float: "float", bool: "bool", dict: "object",
              list: "array", type(None): "null"}
#: what a ``connection.update``'s ``connection`` may be
CONNECTION_STATES = frozenset({"connecting", "open", "close"})
#: upper bounds (seconds) of the release-duration histogram's buckets
FLUSH_BUCKETS: tuple[float, ...] = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0)


def wire_name(name: str) -> str:
    """``name`` as the very str object msgspec's decoders put in the dicts they build.

    msgspec keeps one str per key (a cache shared by its decoders), so a lookup
    with that object matches the stored key by identity, with no hash read and
    no memcmp. Any equal str still works (a payload from elsewhere, or after
    msgspec's cache replaced an entry): only the fast path is lost.
    """
    key: str = next(iter(msgspec.msgpack.decode(msgspec.msgpack.encode({name: None}))))
    return key
