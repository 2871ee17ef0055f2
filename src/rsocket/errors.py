"""Exceptions raised across the package."""

from __future__ import annotations

__all__ = ["DisconnectError", "ProtocolError", "QueryError"]


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

    def __reduce__(self):  # keep close_code across pickling (multiprocessing)
        return (type(self), (str(self), self.close_code))


class DisconnectError(Exception):
    """A socket ended; ``status_code`` is a ``DisconnectReason`` value.

    A ``ProtocolError`` that ended the socket is its ``__cause__``.
    """

    def __init__(self, status_code: int, reason: str = "") -> None:
        super().__init__(status_code, reason)
        self.status_code = int(status_code)
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.status_code} {self.reason}".rstrip()

    def __reduce__(self):
        return (type(self), (self.status_code, self.reason))


class QueryError(Exception):
    """The server answered a query with ``result{ok: false}``."""

    def __init__(self, method: str, error: str) -> None:
        super().__init__(f"query {method!r} failed: {error}")
        self.method = method
        self.error = error

    def __reduce__(self):
        return (type(self), (self.method, self.error))
