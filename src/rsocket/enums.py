"""Status enums shared by every layer (Baileys' values)."""

from __future__ import annotations

from enum import IntEnum

__all__ = ["DisconnectReason", "MessageStatus"]


class MessageStatus(IntEnum):
    """Delivery status of a message (``messages.update`` ``status``)."""

    ERROR = 0
    PENDING = 1
    SERVER_ACK = 2
    DELIVERY_ACK = 3
    READ = 4
    PLAYED = 5


class DisconnectReason(IntEnum):
    """Why a socket ended: the status code carried by ``DisconnectError``."""

    connectionClosed = 428
    connectionLost = 408
    timedOut = 408  # alias of connectionLost
    connectionReplaced = 440
    loggedOut = 401
    badSession = 500
    restartRequired = 515
    multideviceMismatch = 411
    forbidden = 403
    unavailableService = 503
