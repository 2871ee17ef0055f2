"""The constants both merge cores read: written once, so the twins cannot drift.

``_buffer_py`` uses them as they are; ``_buffer.pyx`` copies them into C-typed
module globals at import (interned keys, a C array of bucket bounds), which
costs nothing per event.
"""

from __future__ import annotations

from .enums import MessageStatus

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
