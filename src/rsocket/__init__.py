"""rsocket: long-lived event sockets for chat bots, without leaks or lost events.

The public API; every name also stays importable from its own module.
"""

from __future__ import annotations

import logging

from .buffer import (
    BufferConfig,
    BufferedData,
    BufferStats,
    EventBuffer,
    live_buffers,
)
from .enums import DisconnectReason, MessageStatus
from .errors import DisconnectError, ProtocolError

__version__ = "0.1.0"

__all__ = [
    "BufferConfig",
    "BufferStats",
    "BufferedData",
    "DisconnectError",
    "DisconnectReason",
    "EventBuffer",
    "MessageStatus",
    "ProtocolError",
    "__version__",
    "live_buffers",
]

logging.getLogger("rsocket").addHandler(logging.NullHandler())
