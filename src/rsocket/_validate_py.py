"""Pure-Python payload validation (twin of ``_validate.pyx``).

A received event is checked for exactly the fields the merge rules read, once,
before it reaches the merge core (docs/PROTOCOL.md, "Payloads"): an event that
fails is dropped by the core's ``ingest()`` (counted, its seq still processed)
and never reaches a handler. Validation is a wire concern, kept apart from the
merge rules; both twins dispatch through a table keyed by event. Messages
follow msgspec's wording.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import events
from ._rules import CONNECTION_STATES, TYPE_NAMES

__all__ = ["validate"]

#: a decoded payload object (chat, contact, message, key...)
Obj = dict[str, Any]

_TYPE_NAMES = TYPE_NAMES


class _Err:
    """A validation failure and the path to it (collected innermost first)."""

    __slots__ = ("message", "path")

    def __init__(self, message: str) -> None:
        self.message = message
        self.path: list[str] = []

    def at(self, piece: str) -> _Err:
        self.path.append(piece)
        return self

    def text(self) -> str:
        return f"{self.message} - at `${''.join(reversed(self.path))}`"


def _expected(value: object, what: str) -> _Err:
    got = _TYPE_NAMES.get(type(value), type(value).__name__)
    return _Err(f"Expected `{what}`, got `{got}`")


def _field(obj: Obj, name: str, kind: type, optional: bool) -> _Err | None:
    if name not in obj:
        return None if optional else _Err(f"Object missing required field `{name}`")
    value = obj[name]
    if type(value) is kind or (optional and value is None):
        return None
    what = _TYPE_NAMES[kind]
    return _expected(value, f"{what} | null" if optional else what).at(f".{name}")


def _number(obj: Obj, name: str) -> _Err | None:
    value = obj.get(name)
    if value is None or type(value) is int or type(value) is float:
        return None
    return _expected(value, "int | float | null").at(f".{name}")


def _check_key(key: Any) -> _Err | None:
    if type(key) is not dict:
        return _expected(key, "object")
    return (_field(key, "remoteJid", str, False) or _field(key, "id", str, False)
            or _field(key, "fromMe", bool, False) or _field(key, "participant", str, True))


def _check_keyed(obj: Obj) -> _Err | None:
    if "key" not in obj:
        return _Err("Object missing required field `key`")
    err = _check_key(obj["key"])
    return err.at(".key") if err is not None else None


def _check_chat(chat: Any) -> _Err | None:
    if type(chat) is not dict:
        return _expected(chat, "object")
    return _field(chat, "id", str, False) or _number(chat, "unreadCount")


def _check_contact(contact: Any) -> _Err | None:
    if type(contact) is not dict:
        return _expected(contact, "object")
    return (_field(contact, "id", str, False) or _field(contact, "name", str, True)
            or _field(contact, "notify", str, True) or _field(contact, "verifiedName", str, True))


def _check_message(msg: Any) -> _Err | None:
    if type(msg) is not dict:
        return _expected(msg, "object")
    return (_check_keyed(msg) or _field(msg, "message", dict, True)
            or _field(msg, "messageStubType", int, True))


def _check_id(obj: Any) -> _Err | None:
    if type(obj) is not dict:
        return _expected(obj, "object")
    return _field(obj, "id", str, False)


def _check_str(value: Any) -> _Err | None:
    return None if type(value) is str else _expected(value, "str")


def _check_nested(item: Obj, name: str, field: str, kind: type, optional: bool) -> _Err | None:
    """``item[name]`` is an object whose ``field`` is of ``kind``."""
    if name not in item:
        return _Err(f"Object missing required field `{name}`")
    inner = item[name]
    if type(inner) is not dict:
        return _expected(inner, "object").at(f".{name}")
    err = _field(inner, field, kind, optional)
    return err.at(f".{name}") if err is not None else None


def _check_update(item: Any) -> _Err | None:
    if type(item) is not dict:
        return _expected(item, "object")
    return _check_keyed(item) or _check_nested(item, "update", "status", int, True)


def _check_reaction(item: Any) -> _Err | None:
    if type(item) is not dict:
        return _expected(item, "object")
    err = _check_keyed(item)
    if err is not None:
        return err
    if "reaction" not in item:
        return _Err("Object missing required field `reaction`")
    reaction = item["reaction"]
    if type(reaction) is not dict:
        return _expected(reaction, "object").at(".reaction")
    err = _field(reaction, "text", str, True)
    by = reaction.get("key")
    if err is None and by is not None:
        if type(by) is not dict:
            err = _expected(by, "object | null").at(".key")
        else:
            err = (_field(by, "fromMe", bool, True) or _field(by, "participant", str, True)
                   or _field(by, "remoteJid", str, True))
            if err is not None:
                err.at(".key")
    return err.at(".reaction") if err is not None else None


def _check_receipt(item: Any) -> _Err | None:
    if type(item) is not dict:
        return _expected(item, "object")
    return _check_keyed(item) or _check_nested(item, "receipt", "userJid", str, False)


def _each(items: Any, check: Callable[[Any], _Err | None]) -> _Err | None:
    if type(items) is not list:
        return _expected(items, "array")
    for i, item in enumerate(items):
        err = check(item)
        if err is not None:
            return err.at(f"[{i}]")
    return None


def _optional_list(obj: Obj, name: str, check: Callable[[Any], _Err | None]) -> _Err | None:
    items = obj.get(name)
    if items is None:
        return None
    if type(items) is not list:
        return _expected(items, "array | null").at(f".{name}")
    err = _each(items, check)
    return err.at(f".{name}") if err is not None else None


def _check_history(data: Any) -> _Err | None:
    if type(data) is not dict:
        return _expected(data, "object")
    return (_optional_list(data, "chats", _check_chat)
            or _optional_list(data, "contacts", _check_contact)
            or _optional_list(data, "messages", _check_message)
            or _field(data, "isLatest", bool, True))


def _check_upsert(data: Any) -> _Err | None:
    if type(data) is not dict:
        return _expected(data, "object")
    if "messages" not in data:
        return _Err("Object missing required field `messages`")
    err = _each(data["messages"], _check_message)
    if err is not None:
        return err.at(".messages")
    return _field(data, "type", str, False)


def _check_delete(data: Any) -> _Err | None:
    if type(data) is dict and "keys" in data:
        err = _each(data["keys"], _check_key)
        return err.at(".keys") if err is not None else None
    if type(data) is not dict:
        err = _expected(data, "object")
    elif (err := _field(data, "jid", str, False)) is None and data.get("all") is not True:
        err = _Err("Expected `true`" if "all" in data else "Object missing required field `all`")
        if "all" in data:
            err.at(".all")
    if err is not None:
        err.message += " (expected {keys: [key]} or {jid: str, all: true})"
    return err


_CONNECTION_STATES = CONNECTION_STATES


def _check_connection(data: Any) -> _Err | None:
    if type(data) is not dict:
        return _expected(data, "object")
    state = data.get("connection")
    if state is not None and (type(state) is not str or state not in _CONNECTION_STATES):
        return _Err(f"Invalid enum value {state!r}").at(".connection")
    return (_field(data, "receivedPendingNotifications", bool, True)
            or _field(data, "isNewLogin", bool, True) or _field(data, "isOnline", bool, True)
            or _field(data, "qr", str, True))


Check = Callable[[Any], "_Err | None"]

#: event -> (check of the whole payload, or None; check of each item of a list payload)
_RULES: dict[str, tuple[Check | None, Check | None]] = {
    "messaging-history.set": (_check_history, None),
    "chats.upsert": (None, _check_chat),
    "chats.update": (None, _check_chat),
    "chats.delete": (None, _check_str),
    "contacts.upsert": (None, _check_contact),
    "contacts.update": (None, _check_contact),
    "messages.upsert": (_check_upsert, None),
    "messages.update": (None, _check_update),
    "messages.delete": (_check_delete, None),
    "messages.reaction": (None, _check_reaction),
    "message-receipt.update": (None, _check_receipt),
    "groups.update": (None, _check_id),
}
events.check_covers(_RULES, "the pure payload checks")


def validate(name: str, data: Any) -> str | None:
    """Why a received event is invalid (``"`name` payload: ..."``), or None.

    Bufferable events are checked for exactly what the merge rules read;
    ``connection.update`` for its fields; Baileys' other events pass as they
    are; any other name is unknown.
    """
    rule = _RULES.get(name)
    if rule is not None:
        whole, item = rule
        err = whole(data) if whole is not None else _each(data, item)  # type: ignore[arg-type]
    elif name == events.CONNECTION_UPDATE:
        err = _check_connection(data)
    elif name in events.BAILEYS_EVENTS:
        return None
    else:
        return f"unknown event name {name!r}"
    return None if err is None else f"`{name}` payload: {err.text()}"
