"""The wire checks of received events (``validate``) against an independent oracle.

The oracle is the payload schemas the protocol used to check every event with
(msgspec structs, a second full pass over each payload); the cores now check
the same fields where the merge reads them. For random payloads grown from
valid ones (fields dropped, retyped, nested values replaced), both twins (`_validate`
and `_validate_py`) must
accept exactly what the oracle accepts, and give the same reason.
"""

from __future__ import annotations

import enum
import importlib
from collections.abc import Callable
from functools import partial
from typing import Any, Literal

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rsocket._compat import NO_EXTENSIONS
from rsocket._rules import wire_name

# -- the oracle: the protocol's former msgspec schemas -------------------------------------


class _Key(msgspec.Struct, gc=False):
    remoteJid: str
    id: str
    fromMe: bool
    participant: str | None = None


class _Object(msgspec.Struct, gc=False):
    # Any map, contents unchecked.
    pass


class _Message(msgspec.Struct, gc=False):
    key: _Key
    message: _Object | None = None
    messageStubType: int | None = None


class _Chat(msgspec.Struct, gc=False):
    id: str
    unreadCount: int | float | None = None


class _Contact(msgspec.Struct, gc=False):
    id: str
    name: str | None = None
    notify: str | None = None
    verifiedName: str | None = None


class _Id(msgspec.Struct, gc=False):
    id: str


class _Upsert(msgspec.Struct, gc=False):
    messages: list[_Message]
    type: str


class _Status(msgspec.Struct, gc=False):
    status: int | None = None


class _MessageUpdate(msgspec.Struct, gc=False):
    key: _Key
    update: _Status


class _DeleteKeys(msgspec.Struct, gc=False):
    keys: list[_Key]


class _DeleteAll(msgspec.Struct, gc=False):
    jid: str
    all: Literal[True]


class _ReactionKey(msgspec.Struct, gc=False):
    fromMe: bool | None = None
    participant: str | None = None
    remoteJid: str | None = None


class _Reaction(msgspec.Struct, gc=False):
    key: _ReactionKey | None = None
    text: str | None = None


class _MessageReaction(msgspec.Struct, gc=False):
    key: _Key
    reaction: _Reaction


class _Receipt(msgspec.Struct, gc=False):
    userJid: str


class _MessageReceipt(msgspec.Struct, gc=False):
    key: _Key
    receipt: _Receipt


class _History(msgspec.Struct, gc=False):
    chats: list[_Chat] | None = None
    contacts: list[_Contact] | None = None
    messages: list[_Message] | None = None
    isLatest: bool | None = None


class _ConnectionUpdate(msgspec.Struct, gc=False):
    connection: Literal["connecting", "open", "close"] | None = None
    receivedPendingNotifications: bool | None = None
    isNewLogin: bool | None = None
    isOnline: bool | None = None
    qr: str | None = None


def _messages_delete(data: Any) -> Any:
    # Two shapes, told apart by `keys`: msgspec has no untagged struct unions.
    if isinstance(data, dict) and "keys" in data:
        return msgspec.convert(data, _DeleteKeys)
    try:
        return msgspec.convert(data, _DeleteAll)
    except msgspec.ValidationError as exc:
        raise msgspec.ValidationError(
            f"{exc} (expected {{keys: [key]}} or {{jid: str, all: true}})"
        ) from None


def _schema(tp: Any) -> Callable[[Any], Any]:
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        return partial(msgspec.convert, type=tp)
    # msgspec caches type info on Struct classes only: converting to list[X]
    # rebuilds it on every call (~4x slower), so wrap the list in a Struct.
    wrapper = msgspec.defstruct("_Items", [("items", tp)], gc=False)

    def check(data: Any) -> Any:
        try:
            return msgspec.convert({"items": data}, wrapper)
        except msgspec.ValidationError as exc:
            raise msgspec.ValidationError(str(exc).replace("`$.items", "`$")) from None

    return check


ORACLE: dict[str, Callable[[Any], Any]] = {
    "messaging-history.set": _schema(_History),
    "chats.upsert": _schema(list[_Chat]),
    "chats.update": _schema(list[_Chat]),
    "chats.delete": _schema(list[str]),
    "contacts.upsert": _schema(list[_Contact]),
    "contacts.update": _schema(list[_Contact]),
    "messages.upsert": _schema(_Upsert),
    "messages.update": _schema(list[_MessageUpdate]),
    "messages.delete": _messages_delete,
    "messages.reaction": _schema(list[_MessageReaction]),
    "message-receipt.update": _schema(list[_MessageReceipt]),
    "groups.update": _schema(list[_Id]),
    "connection.update": _schema(_ConnectionUpdate),
}


# -- payloads grown from valid ones ----------------------------------------------------------

KEY = {"remoteJid": "a@s.whatsapp.net", "id": "3EB0", "fromMe": False}
VALID: dict[str, Any] = {
    "messaging-history.set": {"chats": [{"id": "c", "unreadCount": 1}],
                              "contacts": [{"id": "k", "notify": "n"}],
                              "messages": [{"key": KEY, "message": {"conversation": "x"}}],
                              "isLatest": True},
    "chats.upsert": [{"id": "c", "unreadCount": 2}],
    "chats.update": [{"id": "c", "unreadCount": 1.5}],
    "chats.delete": ["c"],
    "contacts.upsert": [{"id": "k", "name": "n", "notify": None, "verifiedName": "v"}],
    "contacts.update": [{"id": "k"}],
    "messages.upsert": {"messages": [{"key": {**KEY, "participant": "p"},
                                      "messageStubType": 2}], "type": "notify"},
    "messages.update": [{"key": KEY, "update": {"status": 4}}],
    "messages.delete": {"keys": [KEY]},
    "messages.reaction": [{"key": KEY, "reaction": {"key": {"fromMe": True, "remoteJid": "r"},
                                                    "text": "x"}}],
    "message-receipt.update": [{"key": KEY, "receipt": {"userJid": "u"}}],
    "groups.update": [{"id": "g", "subject": "s"}],
    "connection.update": {"connection": "open", "isOnline": True, "qr": "q"},
}
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.floats(allow_nan=False),
                    st.sampled_from(["", "x", "open", "close"]))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=2), st.dictionaries(st.sampled_from(["id", "key", "x"]), inner,
                                                 max_size=2)), max_leaves=4)


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += paths(v, (*prefix, i))
    return out


def mutate(value: Any, path: tuple[Any, ...], action: str, new: Any) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        copy = dict(value)
        if not rest and action == "drop":
            del copy[head]
        else:
            copy[head] = mutate(value[head], rest, action, new)
        return copy
    copy = list(value)
    if not rest and action == "drop":
        del copy[head]
    else:
        copy[head] = mutate(value[head], rest, action, new)
    return copy


@st.composite
def payloads(draw: st.DrawFn) -> tuple[str, Any]:
    name = draw(st.sampled_from(sorted(VALID)))
    data = VALID[name]
    for _ in range(draw(st.integers(0, 2))):
        where = draw(st.sampled_from(paths(data)))
        action = draw(st.sampled_from(["replace", "drop"])) if where else "replace"
        data = mutate(data, where, action, draw(VALUES))
    return name, data


CORES = ["rsocket._validate_py"] + ([] if NO_EXTENSIONS else ["rsocket._validate"])


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(event=payloads())
def test_the_cores_accept_exactly_what_the_schemas_accept(event: tuple[str, Any]) -> None:
    name, data = event
    try:
        ORACLE[name](data)
        expected = True
    except (msgspec.ValidationError, TypeError):
        expected = False
    reasons = {mod: importlib.import_module(mod).validate(name, data) for mod in CORES}
    assert len(set(reasons.values())) == 1, reasons  # the twins agree to the letter
    reason = reasons["rsocket._validate_py"]
    assert (reason is None) == expected, (name, data, reason)
    if reason is not None:
        assert reason.startswith(f"`{name}` payload: ")


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(event=payloads())
def test_a_payload_as_msgspec_decodes_it_gets_the_same_answer(event: tuple[str, Any]) -> None:
    """Decoded by msgspec, field names are msgspec's own objects, which the compiled
    twin's fast paths compare by pointer: the answer is still the same, to the letter."""
    name, data = event
    try:
        decoded = msgspec.msgpack.decode(msgspec.msgpack.encode(data))
    except (TypeError, OverflowError, msgspec.EncodeError):
        return  # not something a socket could receive
    for mod in CORES:
        validate = importlib.import_module(mod).validate
        assert validate(name, decoded) == validate(name, data), (mod, name, data)


@pytest.mark.parametrize(("name", "data", "path", "field", "reason"), [
    ("messages.update", [{"key": {**KEY, "fromMe": "no"}, "update": {}}], (0, "key"), "fromMe",
     "Expected `bool`, got `str` - at `$[0].key.fromMe`"),
    ("messages.delete", {"keys": [{**KEY, "participant": 1}]}, ("keys", 0), "participant",
     "Expected `str | null`, got `int` - at `$.keys[0].participant`"),
    ("message-receipt.update", [{"key": {**KEY}, "receipt": {"userJid": "u"}}], (0, "key"),
     "remoteJid", None),
])
def test_a_decoded_key_with_one_name_under_another_str_is_still_checked(
        name: str, data: Any, path: tuple[Any, ...], field: str, reason: str | None) -> None:
    """A decoded message key's names are compared by pointer (msgspec's own objects);
    a name it did not make (its cache replaced the entry, or the key came from
    elsewhere) is still that field, valid or not."""
    decoded = msgspec.msgpack.decode(msgspec.msgpack.encode(data))
    target = decoded
    for step in path:
        target = target[step]
    other = "".join(list(field))  # equal, but neither msgspec's object nor an interned one
    target[other] = target.pop(field)
    assert other is not wire_name(field)
    expected = None if reason is None else f"`{name}` payload: {reason}"
    for mod in CORES:
        assert importlib.import_module(mod).validate(name, decoded) == expected, mod


def test_unknown_and_other_baileys_names() -> None:
    for mod in CORES:
        validate = importlib.import_module(mod).validate
        assert validate("call", [{"anything": 1}]) is None
        assert validate("chats.upsrt", []) == "unknown event name 'chats.upsrt'"
        assert validate(None, []) == "unknown event name None"


class Name(enum.StrEnum):
    UPSERT = "chats.upsert"
    DELETE = "messages.delete"


def test_a_str_subclass_name_is_checked_as_its_value() -> None:
    """A StrEnum member (what an application's own event enum holds) is the name it
    equals, in both twins: checked, not passed as one of Baileys' other events."""
    for mod in CORES:
        validate = importlib.import_module(mod).validate
        assert validate(Name.UPSERT, [1]) == (
            "`chats.upsert` payload: Expected `object`, got `int` - at `$[0]`")
        assert validate(Name.DELETE, {"keys": []}) is None


@pytest.mark.parametrize("mod", CORES)
def test_every_valid_template_is_valid(mod: str) -> None:
    validate = importlib.import_module(mod).validate
    for name, data in VALID.items():
        assert validate(name, data) is None, name
