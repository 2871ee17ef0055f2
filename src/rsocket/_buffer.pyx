# cython: language_level=3, boundscheck=False, wraparound=False, embedsignature=True
"""Compiled merge core of the event buffer (twin of ``_buffer_py.py``).

Same names, same behaviour; the per-event path runs without interpreter
dispatch: event names map to an int, the batch is a ``cdef class`` of typed
dicts, and payload dicts are read through the C API.
"""

from cpython.dict cimport PyDict_Keys, PyDict_Values
from cpython.object cimport PyObject
from cpython.list cimport PyList_Append

cdef extern from "Python.h":
    PyObject* PyDict_GetItemWithError(object d, object key) except? NULL

from time import monotonic

__all__ = [
    "BUFFERABLE_EVENTS",
    "BufferCore",
    "BufferedData",
    "HistoryCache",
    "key_str",
    "merge_chat",
]

BUFFERABLE_EVENTS = frozenset({
    "messaging-history.set", "chats.upsert", "chats.update", "chats.delete",
    "contacts.upsert", "contacts.update", "messages.upsert", "messages.update",
    "messages.delete", "messages.reaction", "message-receipt.update", "groups.update",
})

cdef enum Code:
    HISTORY_SET = 1
    CHATS_UPSERT
    CHATS_UPDATE
    CHATS_DELETE
    CONTACTS_UPSERT
    CONTACTS_UPDATE
    MESSAGES_UPSERT
    MESSAGES_UPDATE
    MESSAGES_DELETE
    MESSAGES_REACTION
    MESSAGE_RECEIPTS
    GROUPS_UPDATE

cdef dict _CODES = {
    "messaging-history.set": HISTORY_SET,
    "chats.upsert": CHATS_UPSERT,
    "chats.update": CHATS_UPDATE,
    "chats.delete": CHATS_DELETE,
    "contacts.upsert": CONTACTS_UPSERT,
    "contacts.update": CONTACTS_UPDATE,
    "messages.upsert": MESSAGES_UPSERT,
    "messages.update": MESSAGES_UPDATE,
    "messages.delete": MESSAGES_DELETE,
    "messages.reaction": MESSAGES_REACTION,
    "message-receipt.update": MESSAGE_RECEIPTS,
    "groups.update": GROUPS_UPDATE,
}

cdef int _READ = 4
cdef tuple _WRAPPERS = (
    "ephemeralMessage", "viewOnceMessage", "viewOnceMessageV2",
    "documentWithCaptionMessage", "editedMessage",
)
cdef frozenset _NOT_CONTENT = frozenset({"senderKeyDistributionMessage", "messageContextInfo"})
cdef tuple _NOT_REAL = ("protocolMessage", "reactionMessage", "pollUpdateMessage")
cdef tuple _HISTORY_META = ("syncType", "progress", "peerDataRequestSessionId")

# -- small helpers ---------------------------------------------------------------

cdef inline object _get(object m, object key):
    """``m.get(key)``; borrowed lookup for exact dicts."""
    cdef PyObject* p
    if type(m) is dict:
        p = PyDict_GetItemWithError(m, key)
        return None if p == NULL else <object>p
    return m.get(key)


cdef inline object _dget(dict d, object key):
    cdef PyObject* p = PyDict_GetItemWithError(d, key)
    return None if p == NULL else <object>p


cdef inline bint _is_number(object value):
    return type(value) is int or type(value) is float


cpdef str key_str(object key):
    """The string form of a message key: ``remoteJid,id,1|0``."""
    return f"{key['remoteJid']},{key['id']},{'1' if _get(key, 'fromMe') else '0'}"


cpdef dict merge_chat(dict a, dict b):
    """Merge chat ``b`` into chat ``a`` (Baileys' ``concatChats``) and return ``a``."""
    cdef object au, bu
    if "unreadCount" in b:
        bu = b["unreadCount"]
        au = _dget(a, "unreadCount")
        if bu is None:
            if _is_number(au) and au < 0:
                del a["unreadCount"]
                del b["unreadCount"]
        elif _is_number(au) and _is_number(bu) and bu >= 0:
            a.update(b)
            a["unreadCount"] = bu + (au if au > 0 else 0)
            return a
    a.update(b)
    return a


cdef class HistoryCache:
    """Bounded FIFO set of history ids: O(1) insert, lookup and eviction."""

    cdef set _keys
    cdef list _ring
    cdef Py_ssize_t _pos
    cdef Py_ssize_t _maxsize
    cdef public Py_ssize_t evicted

    def __init__(self, Py_ssize_t maxsize):
        self._keys = set()
        self._ring = []
        self._pos = 0
        self._maxsize = maxsize
        self.evicted = 0

    def __contains__(self, key):
        return key in self._keys

    def __len__(self):
        return len(self._keys)

    cpdef add(self, key):
        """Insert ``key``; evicts the oldest entry when full; no-op if present."""
        cdef Py_ssize_t pos
        if key in self._keys or self._maxsize <= 0:
            return
        if len(self._ring) < self._maxsize:
            PyList_Append(self._ring, key)
        else:
            pos = self._pos
            self._keys.discard(self._ring[pos])
            self._ring[pos] = key
            self._pos = (pos + 1) % self._maxsize
            self.evicted += 1
        self._keys.add(key)

    cpdef clear(self):
        self._keys = set()
        self._ring = []
        self._pos = 0


cdef class BufferedData:
    """The pending batch: the mappings a conditional chat update may read."""

    cdef public dict history_chats
    cdef public dict history_contacts
    cdef public dict history_messages
    cdef public bint history_is_latest
    cdef public dict history_meta
    cdef public dict chat_upserts
    cdef public dict chat_updates
    cdef public dict chat_conditionals
    cdef public dict chat_deletes
    cdef public dict contact_upserts
    cdef public dict contact_updates
    cdef public dict message_upserts
    cdef public object message_upsert_type
    cdef public dict message_updates
    cdef public dict message_deletes
    cdef public dict message_reactions
    cdef public dict message_receipts
    cdef public dict group_updates

    def __init__(self):
        self.history_chats = {}
        self.history_contacts = {}
        self.history_messages = {}
        self.history_is_latest = False
        self.history_meta = {}
        self.chat_upserts = {}
        self.chat_updates = {}
        self.chat_conditionals = {}
        self.chat_deletes = {}
        self.contact_upserts = {}
        self.contact_updates = {}
        self.message_upserts = {}
        self.message_upsert_type = None
        self.message_updates = {}
        self.message_deletes = {}
        self.message_reactions = {}
        self.message_receipts = {}
        self.group_updates = {}


# -- merge helpers ----------------------------------------------------------------

cdef int _absorb(BufferedData d, dict chat) except -1:
    cdef object cid = chat["id"]
    cdef object update = d.chat_updates.pop(cid, None)
    cdef list conds, keep
    if update is not None:
        chat.update(merge_chat(update, chat))
    conds = _dget(d.chat_conditionals, cid)
    if conds:
        keep = []
        for upd in conds:
            decided = upd["conditional"](d)
            if decided:
                del upd["conditional"]
                merge_chat(chat, upd)
            elif decided is None:
                keep.append(upd)
        if keep:
            d.chat_conditionals[cid] = keep
        else:
            del d.chat_conditionals[cid]
    return 0


cdef int _fold_non_null(dict target, object src) except -1:
    for k, v in src.items():
        if v is not None:
            target[k] = v
    return 0


cdef object _message_content(object msg):
    cdef object content = _get(msg, "message")
    cdef object inner
    cdef int depth
    cdef bint found
    for depth in range(5):
        if type(content) is not dict:
            return content
        found = False
        for wrapper in _WRAPPERS:
            inner = _dget(<dict>content, wrapper)
            if type(inner) is dict:
                content = _dget(<dict>inner, "message")
                found = True
                break
        if not found:
            return content
    return content


cdef bint _is_real(object msg) except -1:
    cdef object content = _message_content(msg)
    if type(content) is not dict:
        return False
    for k in <dict>content:
        if k not in _NOT_CONTENT:
            break
    else:
        return False
    for k in _NOT_REAL:
        if k in <dict>content:
            return False
    return True


cdef int _decrement_unread(BufferedData d, object msg) except -1:
    cdef object key = msg["key"]
    cdef object jid = key["remoteJid"]
    cdef object chat = _dget(d.chat_updates, jid)
    if chat is None:
        chat = _dget(d.chat_upserts, jid)
    if chat is None:
        return 0
    count = _get(chat, "unreadCount")
    if not (_is_number(count) and count > 0):
        return 0
    if _get(key, "fromMe") or _get(msg, "messageStubType") or not _is_real(msg):
        return 0
    count -= 1
    if count:
        chat["unreadCount"] = count
    else:
        del chat["unreadCount"]
    return 0


cdef inline object _author(object key):
    if not key:
        return ""
    if _get(key, "fromMe"):
        return "me"
    return _get(key, "participant") or _get(key, "remoteJid") or ""


cdef int _add_reaction(object holder, object reaction) except -1:
    cdef object author = _author(_get(reaction, "key"))
    cdef list kept = []
    for r in _get(holder, "reactions") or ():
        if _author(_get(r, "key")) != author:
            kept.append(r)
    if not _get(reaction, "text"):
        reaction["text"] = ""
    kept.append(reaction)
    holder["reactions"] = kept
    return 0


cdef int _add_receipt(object holder, object receipt) except -1:
    cdef object receipts = _get(holder, "userReceipt")
    if receipts is None:
        receipts = []
        holder["userReceipt"] = receipts
    jid = _get(receipt, "userJid")
    for existing in receipts:
        if _get(existing, "userJid") == jid:
            existing.update(receipt)
            return 0
    receipts.append(receipt)
    return 0


# -- merge rules ----------------------------------------------------------------------

cdef int _history_set(BufferedData d, HistoryCache cache, object data) except -1:
    cdef object cid, hid, ks, existing
    cdef set held = cache._keys
    for chat in _get(data, "chats") or ():
        cid = chat["id"]
        existing = _dget(d.history_chats, cid)
        if existing is not None:
            if "endOfHistoryTransferType" in chat:
                existing["endOfHistoryTransferType"] = chat["endOfHistoryTransferType"]
            else:
                existing.pop("endOfHistoryTransferType", None)
        elif cid not in held:
            d.history_chats[cid] = chat
            cache.add(cid)
            _absorb(d, chat)
    for contact in _get(data, "contacts") or ():
        cid = contact["id"]
        existing = _dget(d.history_contacts, cid)
        if existing is not None:
            _fold_non_null(existing, contact)
        else:
            hid = "c:" + cid
            if (
                hid not in held
                or _get(contact, "notify")
                or _get(contact, "name")
                or _get(contact, "verifiedName")
            ):
                d.history_contacts[cid] = contact
                cache.add(hid)
    for msg in _get(data, "messages") or ():
        ks = key_str(msg["key"])
        if ks not in d.history_messages and ks not in held:
            d.history_messages[ks] = msg
            cache.add(ks)
    if _get(data, "isLatest"):
        d.history_is_latest = True
    for field in _HISTORY_META:
        if field in data:
            d.history_meta[field] = data[field]
    return 0


cdef int _chats_upsert(BufferedData d, object data) except -1:
    cdef object cid, existing
    for chat in data:
        cid = chat["id"]
        existing = _dget(d.chat_upserts, cid)
        if existing is None:
            existing = _dget(d.history_chats, cid)
        if existing is not None:
            merge_chat(existing, chat)
        else:
            d.chat_upserts[cid] = chat
            existing = chat
        if cid in d.chat_updates or cid in d.chat_conditionals:
            _absorb(d, existing)
        d.chat_deletes.pop(cid, None)
    return 0


cdef int _chats_update(BufferedData d, object data) except -1:
    cdef object cid, cond, decided, existing
    cdef object conds
    for upd in data:
        cid = upd["id"]
        cond = _get(upd, "conditional")
        decided = True if cond is None else cond(d)
        if decided:
            upd.pop("conditional", None)
            existing = _dget(d.history_chats, cid)
            if existing is None:
                existing = _dget(d.chat_upserts, cid)
            if existing is None:
                existing = _dget(d.chat_updates, cid)
            if existing is None:
                d.chat_updates[cid] = merge_chat({}, upd)
            else:
                merge_chat(existing, upd)
        elif decided is None:
            conds = _dget(d.chat_conditionals, cid)
            if conds is None:
                d.chat_conditionals[cid] = [upd]
            else:
                conds.append(upd)
        d.chat_deletes.pop(cid, None)
    return 0


cdef int _chats_delete(BufferedData d, object data) except -1:
    for cid in data:
        d.chat_deletes[cid] = None
        d.chat_updates.pop(cid, None)
        d.chat_conditionals.pop(cid, None)
        d.chat_upserts.pop(cid, None)
        d.history_chats.pop(cid, None)
    return 0


cdef int _contacts_upsert(BufferedData d, object data) except -1:
    cdef object cid, existing, pending
    for contact in data:
        cid = contact["id"]
        existing = _dget(d.contact_upserts, cid)
        if existing is None:
            existing = _dget(d.history_contacts, cid)
        pending = d.contact_updates.pop(cid, None) if d.contact_updates else None
        if existing is not None:
            if pending is not None:
                existing.update(pending)
            _fold_non_null(existing, contact)
        elif pending is not None:
            _fold_non_null(pending, contact)
            d.contact_upserts[cid] = pending
        else:
            d.contact_upserts[cid] = contact
    return 0


cdef int _contacts_update(BufferedData d, object data) except -1:
    cdef object cid, existing
    for upd in data:
        cid = upd["id"]
        existing = _dget(d.history_contacts, cid)
        if existing is None:
            existing = _dget(d.contact_upserts, cid)
        if existing is None:
            existing = _dget(d.contact_updates, cid)
            if existing is None:
                d.contact_updates[cid] = dict(upd)
                continue
        existing.update(upd)
    return 0


cdef int _messages_upsert(BufferedData d, object data) except -1:
    cdef dict upserts = d.message_upserts
    cdef dict history = d.history_messages
    cdef object ks, existing, pending
    for msg in data["messages"]:
        ks = key_str(msg["key"])
        existing = _dget(upserts, ks)
        if existing is None:
            existing = _dget(history, ks)
        if existing is not None:
            if "messageTimestamp" in existing:
                msg["messageTimestamp"] = existing["messageTimestamp"]
            else:
                msg.pop("messageTimestamp", None)
        if d.message_updates:
            pending = d.message_updates.pop(ks, None)
            if pending is not None:
                msg.update(pending["update"])
        if ks in history:
            history[ks] = msg
        else:
            upserts[ks] = msg
    d.message_upsert_type = _get(data, "type")
    return 0


cdef int _messages_update(BufferedData d, object data) except -1:
    cdef object key, update, ks, existing, pending
    for item in data:
        key = item["key"]
        update = item["update"]
        ks = key_str(key)
        existing = _dget(d.history_messages, ks)
        if existing is None:
            existing = _dget(d.message_upserts, ks)
        if existing is not None:
            existing.update(update)
            if _get(update, "status") == _READ and not _get(key, "fromMe"):
                _decrement_unread(d, existing)
        else:
            pending = _dget(d.message_updates, ks)
            if pending is None:
                d.message_updates[ks] = {"key": key, "update": dict(update)}
            else:
                pending["update"].update(update)
    return 0


cdef int _messages_delete(BufferedData d, object data) except -1:
    cdef object ks
    for key in data["keys"]:
        ks = key_str(key)
        if ks not in d.message_deletes:
            d.message_deletes[ks] = key
        d.message_upserts.pop(ks, None)
        d.message_updates.pop(ks, None)
    return 0


cdef int _messages_reaction(BufferedData d, object data) except -1:
    cdef object key, reaction, ks, holder
    for item in data:
        key = item["key"]
        reaction = item["reaction"]
        ks = key_str(key)
        holder = _dget(d.message_upserts, ks)
        if holder is None:
            holder = _dget(d.message_reactions, ks)
            if holder is None:
                holder = {"key": key, "reactions": []}
                d.message_reactions[ks] = holder
        _add_reaction(holder, reaction)
    return 0


cdef int _message_receipts(BufferedData d, object data) except -1:
    cdef object key, receipt, ks, holder
    for item in data:
        key = item["key"]
        receipt = item["receipt"]
        ks = key_str(key)
        holder = _dget(d.message_upserts, ks)
        if holder is None:
            holder = _dget(d.message_receipts, ks)
            if holder is None:
                holder = {"key": key, "userReceipt": []}
                d.message_receipts[ks] = holder
        _add_receipt(holder, receipt)
    return 0


cdef int _groups_update(BufferedData d, object data) except -1:
    cdef object gid, existing
    for upd in data:
        gid = upd["id"]
        existing = _dget(d.group_updates, gid)
        if existing is None:
            d.group_updates[gid] = dict(upd)
        else:
            existing.update(upd)
    return 0


cdef int _merge(int code, BufferedData d, HistoryCache cache, object data) except -1:
    if code == MESSAGES_UPSERT:
        return _messages_upsert(d, data)
    if code == MESSAGES_UPDATE:
        return _messages_update(d, data)
    if code == MESSAGE_RECEIPTS:
        return _message_receipts(d, data)
    if code == CHATS_UPDATE:
        return _chats_update(d, data)
    if code == CONTACTS_UPSERT:
        return _contacts_upsert(d, data)
    if code == MESSAGES_REACTION:
        return _messages_reaction(d, data)
    if code == HISTORY_SET:
        return _history_set(d, cache, data)
    if code == CHATS_UPSERT:
        return _chats_upsert(d, data)
    if code == CHATS_DELETE:
        return _chats_delete(d, data)
    if code == CONTACTS_UPDATE:
        return _contacts_update(d, data)
    if code == GROUPS_UPDATE:
        return _groups_update(d, data)
    return _messages_delete(d, data)


cdef bint _is_empty(int code, object data) except -1:
    if data is None:
        return True
    if type(data) is list:
        return not data
    if type(data) is not dict:
        return False
    if code == MESSAGES_UPSERT:
        return not _dget(<dict>data, "messages")
    if code == HISTORY_SET:
        return not (
            _dget(<dict>data, "chats") or _dget(<dict>data, "contacts")
            or _dget(<dict>data, "messages")
        )
    if code == MESSAGES_DELETE:
        return not (_dget(<dict>data, "keys") or _dget(<dict>data, "all"))
    return not data


cdef list _flatten(dict holders, str field, str name):
    cdef list out = []
    for entry in holders.values():
        key = entry["key"]
        for item in entry[field]:
            PyList_Append(out, {"key": key, name: item})
    return out


cdef dict _consolidate(BufferedData d, BufferedData carry):
    cdef dict out = {}
    cdef dict history
    cdef object existing
    if d.chat_conditionals:
        for cid, conds in d.chat_conditionals.items():
            for upd in conds:
                decided = upd["conditional"](d)
                if decided:
                    del upd["conditional"]
                    existing = _dget(d.chat_updates, cid)
                    if existing is None:
                        d.chat_updates[cid] = merge_chat({}, upd)
                    else:
                        merge_chat(existing, upd)
                elif decided is None:
                    carry.chat_conditionals.setdefault(cid, []).append(upd)
    if d.history_chats or d.history_contacts or d.history_messages:
        history = {
            "chats": PyDict_Values(d.history_chats),
            "contacts": PyDict_Values(d.history_contacts),
            "messages": PyDict_Values(d.history_messages),
            "isLatest": d.history_is_latest,
        }
        history.update(d.history_meta)
        out["messaging-history.set"] = history
    if d.chat_upserts:
        out["chats.upsert"] = PyDict_Values(d.chat_upserts)
    if d.chat_updates:
        out["chats.update"] = PyDict_Values(d.chat_updates)
    if d.chat_deletes:
        out["chats.delete"] = PyDict_Keys(d.chat_deletes)
    if d.message_upserts:
        out["messages.upsert"] = {
            "messages": PyDict_Values(d.message_upserts),
            "type": d.message_upsert_type,
        }
    if d.message_updates:
        out["messages.update"] = PyDict_Values(d.message_updates)
    if d.message_deletes:
        out["messages.delete"] = {"keys": PyDict_Values(d.message_deletes)}
    if d.message_reactions:
        out["messages.reaction"] = _flatten(d.message_reactions, "reactions", "reaction")
    if d.message_receipts:
        out["message-receipt.update"] = _flatten(d.message_receipts, "userReceipt", "receipt")
    if d.contact_upserts:
        out["contacts.upsert"] = PyDict_Values(d.contact_upserts)
    if d.contact_updates:
        out["contacts.update"] = PyDict_Values(d.contact_updates)
    if d.group_updates:
        out["groups.update"] = PyDict_Values(d.group_updates)
    return out


cdef class BufferCore:
    """Buffering state and the per-event path of ``EventBuffer``.

    Subclasses provide the release-time hooks ``_release(reason)``,
    ``_deliver(event, data, seq)`` (both return the handler exceptions they
    collected), ``_raise(errors)`` and ``_dropped(event)``.
    """

    cdef public Py_ssize_t _depth
    cdef public bint _destroyed
    cdef public Py_ssize_t _items
    cdef public Py_ssize_t _max_items
    cdef public long long _first_seq
    cdef public long long _last_seq
    cdef public double _oldest
    cdef BufferedData _data
    cdef HistoryCache _cache

    def __init__(self, Py_ssize_t max_history_cache, Py_ssize_t max_buffer_items):
        self._depth = 0
        self._destroyed = False
        self._items = 0
        self._max_items = max_buffer_items
        self._first_seq = -1
        self._last_seq = -1
        self._oldest = 0.0
        self._data = BufferedData()
        self._cache = HistoryCache(max_history_cache)

    @property
    def pending(self):
        """The batch being buffered (what a conditional update sees)."""
        return self._data

    def emit(self, event, data, seq=None):
        """Merge ``event`` into the pending batch, or deliver it at once.

        Returns True when the event was merged or delivered, False when it was
        dropped (destroyed buffer, or nothing in it). Handler exceptions from
        a release this call triggered are raised after the event is merged.
        """
        cdef PyObject* found
        cdef int code = 0
        cdef list errors = None
        cdef list more
        if self._destroyed:
            self._dropped(event)
            return False
        found = PyDict_GetItemWithError(_CODES, event) if type(event) is str else NULL
        if found != NULL:
            code = <int><object>found
        if _is_empty(code, data):
            return False
        if not self._depth or code == 0:
            errors = self._deliver(event, data, seq)
            if errors:
                self._raise(errors)
            return True
        if code == MESSAGES_UPSERT:
            if (
                self._data.message_upserts
                and type(data) is dict
                and _dget(<dict>data, "type") != self._data.message_upsert_type
            ):
                errors = self._release("type_mismatch")
        elif code == MESSAGES_DELETE and type(data) is dict and _dget(<dict>data, "all"):
            errors = self._release("barrier")
            errors += self._deliver(event, data, seq)
            if errors:
                self._raise(errors)
            return True
        if self._items >= self._max_items:
            more = self._release("overflow")
            errors = more if errors is None else errors + more
        if not self._items:
            self._oldest = monotonic()
        self._items += 1
        if seq is not None:
            if self._first_seq < 0:
                self._first_seq = seq
            self._last_seq = seq
        try:
            _merge(code, self._data, self._cache, data)
        except (TypeError, KeyError, AttributeError) as exc:
            bad = TypeError(f"invalid {event!r} payload: {type(exc).__name__}: {exc}")
            bad.__cause__ = exc
            self._raise([*(errors or ()), bad])
        if errors:
            self._raise(errors)
        return True

    def _take(self):
        """Swap the pending batch out; return (batch, items, first_seq, last_seq)."""
        cdef BufferedData data = self._data
        cdef BufferedData carry = BufferedData()
        cdef tuple counts = (self._items, self._first_seq, self._last_seq)
        self._data = carry
        self._items = 0
        self._first_seq = -1
        self._last_seq = -1
        return (_consolidate(data, carry),) + counts

    def _cache_size(self):
        return len(self._cache)

    def _cache_evicted(self):
        return self._cache.evicted

    def _reset(self):
        """Forget the pending batch and the history cache (destroy)."""
        self._data = BufferedData()
        self._cache.clear()
        self._items = 0
        self._first_seq = -1
        self._last_seq = -1
