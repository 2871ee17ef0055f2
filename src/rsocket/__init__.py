"""rsocket: long-lived event sockets for chat bots, without leaks or lost events.

The public API; every name also stays importable from its own module
(``rsocket.buffer``, ``rsocket.protocol``, ``rsocket.socket``,
``rsocket.breaker``, ``rsocket.manager``). ``rsocket.testing.ReferenceServer``
is not imported here: a client never pays for the server.
"""

from __future__ import annotations

from .breaker import CircuitBreaker
from .buffer import (
    BufferConfig,
    BufferedData,
    BufferStats,
    EventBuffer,
    live_buffers,
)
from .cursor import Cursor, FileSeqStore, MemorySeqStore, SeqStore
from .deadletters import FileDeadLetters, RedisDeadLetters
from .enums import DisconnectReason, MessageStatus
from .errors import DisconnectError, ProtocolError, QueryError
from .manager import ConnectionManager
from .pool import TenantPool
from .retry import DeadLetter, Retry
from .seqs import Seqs
from .socket import Socket, SocketConfig

__version__ = "0.1.0"

__all__ = [
    "BufferConfig",
    "BufferStats",
    "BufferedData",
    "CircuitBreaker",
    "ConnectionManager",
    "Cursor",
    "DeadLetter",
    "DisconnectError",
    "DisconnectReason",
    "EventBuffer",
    "FileDeadLetters",
    "FileSeqStore",
    "MemorySeqStore",
    "MessageStatus",
    "ProtocolError",
    "QueryError",
    "RedisDeadLetters",
    "Retry",
    "SeqStore",
    "Seqs",
    "Socket",
    "SocketConfig",
    "TenantPool",
    "__version__",
    "live_buffers",
]
