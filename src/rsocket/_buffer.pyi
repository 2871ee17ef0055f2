"""Stub for the compiled merge core (``_buffer.pyx``); kept by hand, mirrors ``_buffer_py.py``."""

from typing import Any

__all__ = [
    "BUFFERABLE_EVENTS",
    "BufferCore",
    "BufferedData",
    "HistoryCache",
    "key_str",
    "merge_chat",
]

BUFFERABLE_EVENTS: frozenset[str]

def key_str(key: dict) -> str: ...
def merge_chat(a: dict, b: dict) -> dict: ...

class HistoryCache:
    evicted: int
    def __init__(self, maxsize: int) -> None: ...
    def __contains__(self, key: object) -> bool: ...
    def __len__(self) -> int: ...
    def add(self, key: str) -> None: ...
    def clear(self) -> None: ...

class BufferedData:
    history_chats: dict[str, dict]
    history_contacts: dict[str, dict]
    history_messages: dict[str, dict]
    history_is_latest: bool
    history_meta: dict[str, Any]
    chat_upserts: dict[str, dict]
    chat_updates: dict[str, dict]
    chat_conditionals: dict[str, list[dict]]
    chat_deletes: dict[str, None]
    contact_upserts: dict[str, dict]
    contact_updates: dict[str, dict]
    message_upserts: dict[str, dict]
    message_upsert_type: Any
    message_updates: dict[str, dict]
    message_deletes: dict[str, dict]
    message_reactions: dict[str, dict]
    message_receipts: dict[str, dict]
    group_updates: dict[str, dict]
    def __init__(self) -> None: ...

class BufferCore:
    _depth: int
    _destroyed: bool
    _items: int
    _max_items: int
    _first_seq: int
    _last_seq: int
    _oldest: float
    def __init__(self, max_history_cache: int, max_buffer_items: int) -> None: ...
    @property
    def pending(self) -> BufferedData: ...
    def emit(self, event: str, data: Any, seq: int | None = None) -> bool: ...
    def _take(self) -> tuple[dict[str, Any], int, int, int]: ...
    def _cache_size(self) -> int: ...
    def _cache_evicted(self) -> int: ...
    def _reset(self) -> None: ...
