"""Exceptions raised across the package."""

from __future__ import annotations

import errno
from typing import Any

__all__ = ["REJECTED_CLOSE_CODES", "DisconnectError", "ProtocolError", "QueryError"]


class ProtocolError(Exception):
    """A peer broke the rsocket.v1 protocol.

    Attributes:
        close_code: the WebSocket close code to end the connection with
            (1002 protocol violation, 1003 unsupported op, 1007 invalid
            payload, 1008 policy, 1009 message too big).
    """

    def __init__(self, message: str, close_code: int = 1002) -> None:
        super().__init__(message)
        self.close_code = close_code

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:  # keep close_code across pickling (multiprocessing)
        return (type(self), (str(self), self.close_code))


#: WebSocket close codes with which a server rejects a client's own frames
#: (protocol violation, unsupported data, invalid payload, policy, too big):
#: sending the same frames again cannot succeed.
REJECTED_CLOSE_CODES = frozenset({1002, 1003, 1007, 1008, 1009})
_AUTH_REFUSED = frozenset({401, 403})  # DisconnectReason.loggedOut, forbidden


class DisconnectError(Exception):
    """A socket ended; ``status_code`` is a ``DisconnectReason`` value.

    A ``ProtocolError`` that ended the socket is its ``__cause__``.

    Attributes:
        status_code: why, as a ``DisconnectReason`` value.
        reason: the text that came with it.
        close_code: the WebSocket close code of a close the server started,
            None when there was none (a drop, a timeout, a close we started).
        unserved: no server serves the tenant at this moment (a fleet's
            resolver found none: an account between two bridges).
    """

    def __init__(self, status_code: int, reason: str = "", close_code: int | None = None,
                 *, unserved: bool = False) -> None:
        super().__init__(status_code, reason)
        self.status_code = int(status_code)
        self.reason = reason
        self.close_code = close_code
        self.unserved = unserved

    def __str__(self) -> str:
        text = f"{self.status_code} {self.reason}".rstrip()
        return f"{text} (rejected: close {self.close_code})" if self.rejected else text

    @property
    def rejected(self) -> bool:
        """True when the server closed with a code that rejects our own frames
        (:data:`REJECTED_CLOSE_CODES`): retrying the same frames cannot succeed.
        A refused login (401/403, closed with 1008 policy) is not that: it is a
        logout, whatever the close code."""
        return (self.close_code in REJECTED_CLOSE_CODES
                and self.status_code not in _AUTH_REFUSED)

    @property
    def out_of_files(self) -> bool:
        """True when connecting failed because this process (EMFILE) or the
        system (ENFILE) has no file descriptor left: a local limit, not the
        server's fault (see ``ulimit -n``)."""
        cause = self.__cause__
        return isinstance(cause, OSError) and cause.errno in (errno.EMFILE, errno.ENFILE)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (type(self), (self.status_code, self.reason, self.close_code))


class QueryError(Exception):
    """The server answered a query with ``result{ok: false}``."""

    def __init__(self, method: str, error: str) -> None:
        super().__init__(f"query {method!r} failed: {error}")
        self.method = method
        self.error = error

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (type(self), (self.method, self.error))
