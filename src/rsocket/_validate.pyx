# cython: language_level=3, boundscheck=False, wraparound=False, embedsignature=True
"""Compiled payload validation (twin of ``_validate_py.py``).

A received event is checked for exactly the fields the merge rules read, once,
before it reaches the merge core (docs/PROTOCOL.md, "Payloads"). Validation is
a wire concern: it lives here, apart from the merge rules, and the compiled
core reaches it through ``_validate.pxd`` (a C call, no Python dispatch).
Messages follow msgspec's wording.
"""

cimport cython
from cpython.object cimport PyObject
from libc.string cimport memcmp

cdef extern from "Python.h":
    PyObject* PyDict_GetItemWithError(object d, object key) except? NULL
    int PyDict_Contains(object d, object key) except -1
    int PyDict_Next(object d, Py_ssize_t* pos, PyObject** key, PyObject** value)
    Py_ssize_t PyDict_GET_SIZE(object d)
    bint PyUnicode_CheckExact(object o)
    bint PyUnicode_IS_ASCII(object o)
    void* PyUnicode_DATA(object o)
    Py_ssize_t PyUnicode_GET_LENGTH(object o)

from . import _rules, events
from ._rules import wire_name

__all__ = ["validate"]

# The keys it reads, as C globals of its own (the compiled core holds its own set:
# module-level objects cannot be cimported), each msgspec's interned str.
cdef object _K_all = wire_name("all")
cdef object _K_chats = wire_name("chats")
cdef object _K_connection = wire_name("connection")
cdef object _K_contacts = wire_name("contacts")
cdef object _K_fromMe = wire_name("fromMe")
cdef object _K_id = wire_name("id")
cdef object _K_isLatest = wire_name("isLatest")
cdef object _K_isNewLogin = wire_name("isNewLogin")
cdef object _K_isOnline = wire_name("isOnline")
cdef object _K_jid = wire_name("jid")
cdef object _K_key = wire_name("key")
cdef object _K_keys = wire_name("keys")
cdef object _K_message = wire_name("message")
cdef object _K_messageStubType = wire_name("messageStubType")
cdef object _K_messages = wire_name("messages")
cdef object _K_name = wire_name("name")
cdef object _K_notify = wire_name("notify")
cdef object _K_participant = wire_name("participant")
cdef object _K_qr = wire_name("qr")
cdef object _K_reaction = wire_name("reaction")
cdef object _K_receipt = wire_name("receipt")
cdef object _K_receivedPendingNotifications = wire_name("receivedPendingNotifications")
cdef object _K_remoteJid = wire_name("remoteJid")
cdef object _K_status = wire_name("status")
cdef object _K_text = wire_name("text")
cdef object _K_type = wire_name("type")
cdef object _K_unreadCount = wire_name("unreadCount")
cdef object _K_update = wire_name("update")
cdef object _K_userJid = wire_name("userJid")
cdef object _K_verifiedName = wire_name("verifiedName")


cdef inline object _dget(dict d, object key):
    cdef PyObject* p = PyDict_GetItemWithError(d, key)
    return None if p == NULL else <object>p


cdef dict _TYPE_NAMES = _rules.TYPE_NAMES


@cython.final
cdef class _Err:
    cdef public str message
    cdef list path

    def __init__(self, str message):
        self.message = message
        self.path = []

    cdef _Err at(self, str piece):
        self.path.append(piece)
        return self

    cdef str text(self):
        return f"{self.message} - at `${''.join(reversed(self.path))}`"


cdef _Err _expected(object value, str what):
    got = _TYPE_NAMES.get(type(value), type(value).__name__)
    return _Err(f"Expected `{what}`, got `{got}`")


cdef _Err _field(dict obj, str name, type kind, bint optional):
    cdef PyObject* p = PyDict_GetItemWithError(obj, name)
    if p == NULL:
        return None if optional else _Err(f"Object missing required field `{name}`")
    value = <object>p
    if type(value) is kind or (optional and value is None):
        return None
    what = <str>_TYPE_NAMES[kind]
    return _expected(value, f"{what} | null" if optional else what).at(f".{name}")


cdef _Err _number(dict obj, str name):
    value = _dget(obj, name)
    if value is None or type(value) is int or type(value) is float:
        return None
    return _expected(value, "int | float | null").at(f".{name}")


cdef bint _plain_key(dict key):
    """Whether ``key`` holds exactly a valid ``remoteJid``, ``id``, ``fromMe`` and
    maybe ``participant``, under msgspec's own name objects: one pass comparing
    pointers instead of four hashed lookups. False means "not shown here", and
    the lookups decide."""
    cdef Py_ssize_t pos = 0
    cdef PyObject* k
    cdef PyObject* v
    cdef int found = 0
    if PyDict_GET_SIZE(key) > 4:
        return False
    while PyDict_Next(key, &pos, &k, &v):
        if k == <PyObject*>_K_remoteJid and PyUnicode_CheckExact(<object>v):
            found |= 1
        elif k == <PyObject*>_K_id and PyUnicode_CheckExact(<object>v):
            found |= 2
        elif k == <PyObject*>_K_fromMe and type(<object>v) is bool:
            found |= 4
        elif k == <PyObject*>_K_participant and (
            <object>v is None or PyUnicode_CheckExact(<object>v)
        ):
            pass
        else:
            return False
    return found == 7


cdef _Err _check_key(object key):
    if type(key) is not dict:
        return _expected(key, "object")
    if _plain_key(<dict>key):
        return None
    err = _field(<dict>key, _K_remoteJid, str, False)
    if err is None:
        err = _field(<dict>key, _K_id, str, False)
    if err is None:
        err = _field(<dict>key, _K_fromMe, bool, False)
    if err is None:
        err = _field(<dict>key, _K_participant, str, True)
    return err


cdef _Err _check_keyed(dict obj):
    cdef PyObject* p = PyDict_GetItemWithError(obj, _K_key)
    if p == NULL:
        return _Err("Object missing required field `key`")
    err = _check_key(<object>p)
    return err.at(".key") if err is not None else None


cdef _Err _check_chat(object chat):
    if type(chat) is not dict:
        return _expected(chat, "object")
    err = _field(<dict>chat, _K_id, str, False)
    return err if err is not None else _number(<dict>chat, _K_unreadCount)


cdef _Err _check_contact(object contact):
    if type(contact) is not dict:
        return _expected(contact, "object")
    err = _field(<dict>contact, _K_id, str, False)
    if err is None:
        err = _field(<dict>contact, _K_name, str, True)
    if err is None:
        err = _field(<dict>contact, _K_notify, str, True)
    if err is None:
        err = _field(<dict>contact, _K_verifiedName, str, True)
    return err


cdef _Err _check_message(object msg):
    if type(msg) is not dict:
        return _expected(msg, "object")
    err = _check_keyed(<dict>msg)
    if err is None:
        err = _field(<dict>msg, _K_message, dict, True)
    if err is None:
        err = _field(<dict>msg, _K_messageStubType, int, True)
    return err


cdef _Err _check_id(object obj):
    if type(obj) is not dict:
        return _expected(obj, "object")
    return _field(<dict>obj, _K_id, str, False)


cdef _Err _check_str(object value):
    return None if type(value) is str else _expected(value, "str")


cdef _Err _check_nested(dict item, str name, str field, type kind, bint optional):
    """``item[name]`` is an object whose ``field`` is of ``kind``."""
    cdef PyObject* p = PyDict_GetItemWithError(item, name)
    if p == NULL:
        return _Err(f"Object missing required field `{name}`")
    inner = <object>p
    if type(inner) is not dict:
        return _expected(inner, "object").at(f".{name}")
    err = _field(<dict>inner, field, kind, optional)
    return err.at(f".{name}") if err is not None else None


cdef _Err _check_update(object item):
    if type(item) is not dict:
        return _expected(item, "object")
    err = _check_keyed(<dict>item)
    return err if err is not None else _check_nested(<dict>item, _K_update, _K_status, int, True)


cdef _Err _check_receipt(object item):
    if type(item) is not dict:
        return _expected(item, "object")
    err = _check_keyed(<dict>item)
    return err if err is not None else _check_nested(<dict>item, _K_receipt, _K_userJid, str, False)


cdef _Err _check_reaction(object item):
    if type(item) is not dict:
        return _expected(item, "object")
    err = _check_keyed(<dict>item)
    if err is not None:
        return err
    cdef PyObject* p = PyDict_GetItemWithError(<dict>item, _K_reaction)
    if p == NULL:
        return _Err("Object missing required field `reaction`")
    reaction = <object>p
    if type(reaction) is not dict:
        return _expected(reaction, "object").at(".reaction")
    err = _field(<dict>reaction, _K_text, str, True)
    by = _dget(<dict>reaction, _K_key)
    if err is None and by is not None:
        if type(by) is not dict:
            err = _expected(by, "object | null").at(".key")
        else:
            err = _field(<dict>by, _K_fromMe, bool, True)
            if err is None:
                err = _field(<dict>by, _K_participant, str, True)
            if err is None:
                err = _field(<dict>by, _K_remoteJid, str, True)
            if err is not None:
                err.at(".key")
    return err.at(".reaction") if err is not None else None


ctypedef _Err (*Check)(object)


cdef _Err _each(object items, Check check):
    cdef Py_ssize_t i
    if type(items) is not list:
        return _expected(items, "array")
    for i in range(len(<list>items)):
        err = check((<list>items)[i])
        if err is not None:
            return err.at(f"[{i}]")
    return None


cdef _Err _optional_list(dict obj, str name, Check check):
    items = _dget(obj, name)
    if items is None:
        return None
    if type(items) is not list:
        return _expected(items, "array | null").at(f".{name}")
    err = _each(items, check)
    return err.at(f".{name}") if err is not None else None


cdef _Err _check_history(object data):
    if type(data) is not dict:
        return _expected(data, "object")
    err = _optional_list(<dict>data, _K_chats, _check_chat)
    if err is None:
        err = _optional_list(<dict>data, _K_contacts, _check_contact)
    if err is None:
        err = _optional_list(<dict>data, _K_messages, _check_message)
    if err is None:
        err = _field(<dict>data, _K_isLatest, bool, True)
    return err


cdef _Err _check_upsert(object data):
    if type(data) is not dict:
        return _expected(data, "object")
    cdef PyObject* p = PyDict_GetItemWithError(<dict>data, _K_messages)
    if p == NULL:
        return _Err("Object missing required field `messages`")
    err = _each(<object>p, _check_message)
    if err is not None:
        return err.at(".messages")
    return _field(<dict>data, _K_type, str, False)


cdef _Err _check_delete(object data):
    cdef _Err err = None
    if type(data) is dict and PyDict_Contains(<dict>data, _K_keys):
        err = _each((<dict>data)[_K_keys], _check_key)
        return err.at(".keys") if err is not None else None
    if type(data) is not dict:
        err = _expected(data, "object")
    else:
        err = _field(<dict>data, _K_jid, str, False)
        if err is None and _dget(<dict>data, _K_all) is not True:
            if PyDict_Contains(<dict>data, _K_all):
                err = _Err("Expected `true`").at(".all")
            else:
                err = _Err("Object missing required field `all`")
    if err is not None:
        err.message += " (expected {keys: [key]} or {jid: str, all: true})"
    return err


cdef frozenset _CONNECTION_STATES = _rules.CONNECTION_STATES


cdef _Err _check_connection(object data):
    if type(data) is not dict:
        return _expected(data, "object")
    state = _dget(<dict>data, _K_connection)
    if state is not None and (type(state) is not str or state not in _CONNECTION_STATES):
        return _Err(f"Invalid enum value {state!r}").at(".connection")
    err = _field(<dict>data, _K_receivedPendingNotifications, bool, True)
    if err is None:
        err = _field(<dict>data, _K_isNewLogin, bool, True)
    if err is None:
        err = _field(<dict>data, _K_isOnline, bool, True)
    if err is None:
        err = _field(<dict>data, _K_qr, str, True)
    return err


# -- dispatch: a table indexed by event code, as the pure twin's is keyed by name ----

cdef struct Rule:
    Check whole  # checks the whole payload, or (when NULL)
    Check item   # checks each item of a list payload

cdef dict _CODES = _rules.EVENT_CODES
if len(_CODES) >= 16:  # the C tables below (and the core's) hold codes 1..15
    raise RuntimeError(f"{len(_CODES)} bufferable events: the compiled tables hold 15")
cdef Rule _RULES[16]  # indexed by code; 0 is "not bufferable"


cdef set _COVERED = set()


cdef void _rule(str name, Check whole, Check item) except *:
    _RULES[<int>_CODES[name]].whole = whole
    _RULES[<int>_CODES[name]].item = item
    _COVERED.add(name)


_rule("messaging-history.set", _check_history, NULL)
_rule("chats.upsert", NULL, _check_chat)
_rule("chats.update", NULL, _check_chat)
_rule("chats.delete", NULL, _check_str)
_rule("contacts.upsert", NULL, _check_contact)
_rule("contacts.update", NULL, _check_contact)
_rule("messages.upsert", _check_upsert, NULL)
_rule("messages.update", NULL, _check_update)
_rule("messages.delete", _check_delete, NULL)
_rule("messages.reaction", NULL, _check_reaction)
_rule("message-receipt.update", NULL, _check_receipt)
_rule("groups.update", NULL, _check_id)
events.check_covers(_COVERED, "the compiled payload checks")


cdef struct Name:
    Py_ssize_t length
    const char* data
    int code


cdef tuple _NAME_STRS = tuple(_CODES)  # keeps the bytes _NAMES points at
cdef Name _NAMES[16]
cdef int _N_NAMES = len(_NAME_STRS)
# A name's slot: its length, first byte and fourth-last byte (distinct for the event
# names); 0 is "no name". If a new name ever collides, the scan below is used.
cdef unsigned char _SLOTS[64]
cdef bint _SLOTTED = True


cdef inline int _slot(Py_ssize_t n, const char* data) noexcept:
    return (n + <unsigned char>data[0] + <unsigned char>data[n - 4]) & 63


for _i, _name in enumerate(_NAME_STRS):
    _NAMES[_i].length = PyUnicode_GET_LENGTH(_name)
    _NAMES[_i].data = <const char*>PyUnicode_DATA(_name)
    _NAMES[_i].code = _CODES[_name]
    if _NAMES[_i].length < 4:
        _SLOTTED = False  # no fourth-last byte: the scan finds it
        continue
    _j = _slot(_NAMES[_i].length, _NAMES[_i].data)
    if _SLOTS[_j]:
        _SLOTTED = False
    _SLOTS[_j] = _i + 1

cdef str CONNECTION_UPDATE = events.CONNECTION_UPDATE
cdef frozenset _BAILEYS_EVENTS = events.BAILEYS_EVENTS


cdef int event_code(object event) except -1:
    """The event's code (0: not bufferable), by length and bytes: a received name's
    hash is never computed (it is not the same str object as ours). One slot and
    one memcmp per name; a str subclass (a StrEnum member) by equality, as the pure
    twin's dict finds it."""
    cdef Py_ssize_t n
    cdef const char* data
    cdef int i
    if not PyUnicode_CheckExact(event):
        return _CODES.get(event, 0) if isinstance(event, str) else 0
    if not PyUnicode_IS_ASCII(event):
        return 0
    n = PyUnicode_GET_LENGTH(event)
    data = <const char*>PyUnicode_DATA(event)
    if _SLOTTED:
        if n < 4:
            return 0
        i = _SLOTS[_slot(n, data)] - 1
        if i >= 0 and _NAMES[i].length == n and memcmp(_NAMES[i].data, data, n) == 0:
            return _NAMES[i].code
        return 0
    for i in range(_N_NAMES):
        if _NAMES[i].length == n and memcmp(_NAMES[i].data, data, n) == 0:
            return _NAMES[i].code
    return 0


cdef object check_event(object name, int code, object data):
    cdef _Err err
    cdef Rule rule
    if code:
        rule = _RULES[code]
        err = rule.whole(data) if rule.whole != NULL else _each(data, rule.item)
    elif name == CONNECTION_UPDATE:
        err = _check_connection(data)
    elif name in _BAILEYS_EVENTS:
        return None
    else:
        return f"unknown event name {name!r}"
    return None if err is None else f"`{name}` payload: {err.text()}"


def validate(name, data):
    """Why a received event is invalid (``"`name` payload: ..."``), or None.

    Bufferable events are checked for exactly what the merge rules read;
    ``connection.update`` for its fields; Baileys' other events pass as they
    are; any other name is unknown.
    """
    return check_event(name, event_code(name), data)
