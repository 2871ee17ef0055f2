# cython: language_level=3, boundscheck=False, wraparound=False, embedsignature=True
"""Compiled merge core of the event buffer (twin of ``_buffer_py.py``).

Same names, same behaviour; the per-event path runs without interpreter
dispatch: event names map to an int, the batch is a ``cdef class`` of typed
dicts, and payload dicts are read through the C API.
"""

cimport cython
from cpython.list cimport PyList_Append
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.object cimport Py_EQ, PyObject, PyObject_Hash, PyObject_RichCompareBool
from cpython.ref cimport Py_DECREF, Py_INCREF, Py_XDECREF
from libc.stdint cimport INT32_MAX, int32_t, uint32_t
from libc.stdlib cimport free
from libc.string cimport memcmp, memcpy, memmove, memset

cdef extern from "Python.h":
    PyObject* PyDict_GetItemWithError(object d, object key) except? NULL
    PyObject* PyDict_SetDefault(object d, object key, object value) except NULL
    int PyDict_SetItem(object d, object key, object value) except -1
    int PyDict_DelItem(object d, object key) except -1
    int PyDict_Contains(object d, object key) except -1
    int PyDict_Update(object a, object b) except -1
    void PyDict_Clear(object d)
    int PyDict_Next(object d, Py_ssize_t* pos, PyObject** key, PyObject** value)
    Py_ssize_t PyDict_GET_SIZE(object d)
    object PyDict_Keys(object d)
    object PyDict_Values(object d)
    bint PyUnicode_CheckExact(object o)
    bint PyUnicode_Check(object o)
    bint PyUnicode_IS_ASCII(object o)
    int PyUnicode_KIND(object o)
    void* PyUnicode_DATA(object o)
    Py_ssize_t PyUnicode_GET_LENGTH(object o)
    object PyUnicode_New(Py_ssize_t size, Py_UCS4 maxchar)
    ctypedef struct PyDictObject:
        void* ma_keys
    Py_ssize_t PyList_GET_SIZE(object o)
    PyObject* PyList_GET_ITEM(object o, Py_ssize_t i)
    PyObject* Py_True
    PyObject* Py_False
    PyObject* Py_None
    object PyList_New(Py_ssize_t size)
    void PyList_SET_ITEM(object o, Py_ssize_t i, PyObject* item)  # steals ``item``

cdef extern from "stdlib.h":
    int posix_memalign(void** memptr, size_t alignment, size_t size) nogil

cdef extern from *:
    """
    #define rsocket_prefetch(p) __builtin_prefetch((const void *)(p))
    """
    void rsocket_prefetch(const void* p) noexcept nogil

from collections import deque
from collections.abc import Mapping
from logging import getLogger
from os import urandom
from time import monotonic, perf_counter

_log = getLogger("rsocket.buffer")

__all__ = [
    "BUFFERABLE_EVENTS",
    "FLUSH_BUCKETS",
    "SEQ_LIMIT",
    "BufferCore",
    "BufferedData",
    "HistoryCache",
    "Listener",
    "Settlement",
    "key_str",
    "merge_chat",
]

from . import _rules, events
from ._rules import wire_name
from .seqs import Seqs

from rsocket._validate cimport check_event, event_code

BUFFERABLE_EVENTS = frozenset(events.BUFFERABLE_EVENTS)

# Event names map to small int codes (1..12, derived from the one list in
# rsocket.events); the merge rules are a table of C functions indexed by code.
cdef dict _CODES = _rules.EVENT_CODES
cdef int HISTORY_SET = _CODES["messaging-history.set"]
cdef int CHATS_UPSERT = _CODES["chats.upsert"]
cdef int CHATS_UPDATE = _CODES["chats.update"]
cdef int CHATS_DELETE = _CODES["chats.delete"]
cdef int CONTACTS_UPSERT = _CODES["contacts.upsert"]
cdef int CONTACTS_UPDATE = _CODES["contacts.update"]
cdef int MESSAGES_UPSERT = _CODES["messages.upsert"]
cdef int MESSAGES_UPDATE = _CODES["messages.update"]
cdef int MESSAGES_DELETE = _CODES["messages.delete"]
cdef int MESSAGES_REACTION = _CODES["messages.reaction"]
cdef int MESSAGE_RECEIPTS = _CODES["message-receipt.update"]
cdef int GROUPS_UPDATE = _CODES["groups.update"]
cdef str CONNECTION_UPDATE = events.CONNECTION_UPDATE

SEQ_LIMIT = _rules.SEQ_LIMIT  # seqs are 0 <= seq < 2**63 (they live in a C long long)
# Field names as the objects msgspec's decoders put in payload dicts (_rules.wire_name).


cdef object _K_all = wire_name("all")
cdef object _K_chats = wire_name("chats")
cdef object _K_conditional = wire_name("conditional")
cdef object _K_contacts = wire_name("contacts")
cdef object _K_endOfHistoryTransferType = wire_name("endOfHistoryTransferType")
cdef object _K_fromMe = wire_name("fromMe")
cdef object _K_id = wire_name("id")
cdef object _K_isLatest = wire_name("isLatest")
cdef object _K_key = wire_name("key")
cdef object _K_keys = wire_name("keys")
cdef object _K_message = wire_name("message")
cdef object _K_messageStubType = wire_name("messageStubType")
cdef object _K_messageTimestamp = wire_name("messageTimestamp")
cdef object _K_messages = wire_name("messages")
cdef object _K_name = wire_name("name")
cdef object _K_notify = wire_name("notify")
cdef object _K_participant = wire_name("participant")
cdef object _K_reaction = wire_name("reaction")
cdef object _K_reactions = wire_name("reactions")
cdef object _K_receipt = wire_name("receipt")
cdef object _K_remoteJid = wire_name("remoteJid")
cdef object _K_status = wire_name("status")
cdef object _K_text = wire_name("text")
cdef object _K_type = wire_name("type")
cdef object _K_unreadCount = wire_name("unreadCount")
cdef object _K_update = wire_name("update")
cdef object _K_userJid = wire_name("userJid")
cdef object _K_userReceipt = wire_name("userReceipt")
cdef object _K_verifiedName = wire_name("verifiedName")


cdef int _READ = _rules.READ
cdef tuple _WRAPPERS = tuple(map(wire_name, _rules.WRAPPERS))  # normalizeMessageContent order
cdef tuple _NOT_REAL = tuple(map(wire_name, _rules.NOT_REAL))
cdef tuple _HISTORY_META = tuple(map(wire_name, _rules.HISTORY_META))

# -- small helpers: dict access through the C API, method calls for other mappings ----

cdef inline object _get(object m, object key):
    """``m.get(key)``."""
    cdef PyObject* p
    if type(m) is dict:
        p = PyDict_GetItemWithError(m, key)
        return None if p == NULL else <object>p
    return m.get(key)


cdef inline object _dget(dict d, object key):
    cdef PyObject* p = PyDict_GetItemWithError(d, key)
    return None if p == NULL else <object>p


cdef inline object _item(object m, object key):
    """``m[key]``."""
    cdef PyObject* p
    if type(m) is dict:
        p = PyDict_GetItemWithError(m, key)
        if p == NULL:
            raise KeyError(key)
        return <object>p
    return m[key]


cdef inline object _dpop(dict d, object key):
    """``d.pop(key, None)``."""
    cdef PyObject* p = PyDict_GetItemWithError(d, key)
    if p == NULL:
        return None
    cdef object value = <object>p
    PyDict_DelItem(d, key)
    return value


cdef inline int _discard(object m, object key) except -1:
    """``m.pop(key, None)``, result unused."""
    if type(m) is dict:
        if PyDict_Contains(m, key):
            PyDict_DelItem(m, key)
    else:
        m.pop(key, None)
    return 0


cdef inline int _update(object target, object src) except -1:
    """``target.update(src)``."""
    if type(target) is dict and type(src) is dict:
        PyDict_Update(target, src)
    else:
        target.update(src)
    return 0


cdef inline bint _is_number(object value):
    return type(value) is int or type(value) is float


cdef inline bint _ascii(object s):
    return PyUnicode_CheckExact(s) and PyUnicode_IS_ASCII(s)


cdef str _key_str(object key):
    cdef object jid, mid
    cdef bint me
    cdef Py_ssize_t n1, n2
    cdef char* out
    jid = _item(key, _K_remoteJid)
    mid = _item(key, _K_id)
    me = _get(key, _K_fromMe)
    if not (_ascii(jid) and _ascii(mid)):
        return f"{jid},{mid},{'1' if me else '0'}"
    # ASCII fast path: one allocation, two memcpy, no format machinery
    n1 = PyUnicode_GET_LENGTH(jid)
    n2 = PyUnicode_GET_LENGTH(mid)
    s = PyUnicode_New(n1 + n2 + 3, 127)
    out = <char*>PyUnicode_DATA(s)
    memcpy(out, PyUnicode_DATA(jid), n1)
    out[n1] = b','
    memcpy(out + n1 + 1, PyUnicode_DATA(mid), n2)
    out[n1 + n2 + 1] = b','
    out[n1 + n2 + 2] = b'1' if me else b'0'
    return <str>s


cdef str _prefixed(object cid):
    """``"c:" + cid``."""
    cdef Py_ssize_t n
    cdef char* out
    if not _ascii(cid):
        return "c:" + cid
    n = PyUnicode_GET_LENGTH(cid)
    s = PyUnicode_New(n + 2, 127)
    out = <char*>PyUnicode_DATA(s)
    out[0] = b'c'
    out[1] = b':'
    memcpy(out + 2, PyUnicode_DATA(cid), n)
    return <str>s


def key_str(object key):
    """The string form of a message key: ``remoteJid,id,1|0``."""
    return _key_str(key)


cpdef dict merge_chat(dict a, dict b):
    """Merge chat ``b`` into chat ``a`` (Baileys' ``concatChats``) and return ``a``."""
    cdef object au, bu
    cdef PyObject* p = PyDict_GetItemWithError(b, _K_unreadCount)
    if p != NULL:
        bu = <object>p
        au = _dget(a, _K_unreadCount)
        if bu is None:
            if _is_number(au) and au < 0:
                PyDict_DelItem(a, _K_unreadCount)
                PyDict_DelItem(b, _K_unreadCount)
        elif _is_number(au) and _is_number(bu) and bu >= 0:
            PyDict_Update(a, b)
            PyDict_SetItem(a, "unreadCount", bu + (au if au > 0 else 0))
            return a
    PyDict_Update(a, b)
    return a


# -- message-key tables ---------------------------------------------------------------
#
# Pending state keyed by a message key ({remoteJid, id, fromMe}) lives in C tables,
# not in dicts keyed by the key's string form. A lookup writes "remoteJid,id,1|0"
# into a buffer on the C stack and hashes those bytes (our own seeded hash, which
# the history cache uses for every str too), so finding an existing entry makes no
# object. An inserted key's bytes are copied into the table's own store (and the
# history cache's): no str is made for it unless the API asks to see the key.
# Keys too long for the buffer, or not ASCII, make their str at once and keep it.

cdef enum:
    # longer keys (and non-ASCII ones) make their str at once; below 256, as a KeyTable's
    # store keeps a key's length in one byte
    PROBE_BYTES = 192

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    static uint64_t rsocket_seed;
    /* A seeded word-at-a-time hash (splitmix64's multipliers): about a fifth
       of siphash13's instructions on a 50-byte key. */
    static inline Py_hash_t rsocket_hash_bytes(const char *p, Py_ssize_t n) {
        uint64_t h = rsocket_seed ^ ((uint64_t)n * 0x9E3779B97F4A7C15ULL), w;
        for (; n >= 8; p += 8, n -= 8) {
            memcpy(&w, p, 8);
            h = (h ^ w) * 0xBF58476D1CE4E5B9ULL;
            h ^= h >> 31;
        }
        w = 0;
        memcpy(&w, p, (size_t)n);
        h = (h ^ w) * 0x94D049BB133111EBULL;
        h ^= h >> 29;
        h *= 0xBF58476D1CE4E5B9ULL;
        h ^= h >> 32;
        return (Py_hash_t)h;
    }
    """
    unsigned long long rsocket_seed
    Py_hash_t rsocket_hash_bytes(const char* p, Py_ssize_t n) noexcept


rsocket_seed = int.from_bytes(urandom(8), "little")  # per process: no chosen collisions


cdef inline Py_hash_t _str_hash(object s) noexcept:
    """Our tables' hash of a str: of its characters' bytes (equal strs, equal bytes)."""
    return rsocket_hash_bytes(<const char*>PyUnicode_DATA(s),
                              PyUnicode_GET_LENGTH(s) * PyUnicode_KIND(s))


cdef inline Py_hash_t _hash(object key) except? -1:
    """The history cache's hash: ``_str_hash`` for a str, Python's for anything else."""
    if PyUnicode_Check(key):
        return _str_hash(key)
    return PyObject_Hash(key)


cdef struct Probe:
    Py_hash_t hash
    int kind  # bytes per character of the key's string form
    Py_ssize_t size  # in bytes
    const char* data


cdef inline int _probe_str(Probe* p, object s) except -1:
    """Probe for an existing str ``s``."""
    p.kind = PyUnicode_KIND(s)
    p.size = PyUnicode_GET_LENGTH(s) * p.kind
    p.data = <const char*>PyUnicode_DATA(s)
    p.hash = _str_hash(s)
    return 0


cdef inline bint _fits(object jid, object mid):
    """Whether a key of these parts has its string form made in a probe's buffer."""
    return (_ascii(jid) and _ascii(mid)
            and PyUnicode_GET_LENGTH(jid) + PyUnicode_GET_LENGTH(mid) + 3 <= PROBE_BYTES)


cdef inline void _fill(Probe* p, char* buf, object jid, object mid, bint me) noexcept:
    """The string form ``jid,mid,1|0`` of a key that ``_fits``, into ``buf``, and its probe."""
    cdef Py_ssize_t n1 = PyUnicode_GET_LENGTH(jid), n2 = PyUnicode_GET_LENGTH(mid)
    memcpy(buf, PyUnicode_DATA(jid), n1)
    buf[n1] = b','
    memcpy(buf + n1 + 1, PyUnicode_DATA(mid), n2)
    buf[n1 + n2 + 1] = b','
    buf[n1 + n2 + 2] = b'1' if me else b'0'
    p.kind = 1
    p.size = n1 + n2 + 3
    p.data = buf
    p.hash = rsocket_hash_bytes(buf, p.size)


# -- names read by pointer ------------------------------------------------------------
#
# A message key and a message's ``key`` are read in one pass over the dict,
# comparing its keys' pointers with these names: msgspec's own objects
# (``_rules.wire_name``), and for each the last equal exact str met in its place
# (another decoder's: pickle and json make one str per name per document, Python
# code uses the interned one), so payloads from elsewhere take the same path
# after one compare of bytes.

cdef enum:
    N_KEY
    N_REMOTE_JID
    N_ID
    N_FROM_ME
    N_PARTICIPANT
    N_NAMES

cdef PyObject* _names[N_NAMES]
cdef PyObject* _aliases[N_NAMES]  # owned, or NULL
_names[N_KEY] = <PyObject*>_K_key
_names[N_REMOTE_JID] = <PyObject*>_K_remoteJid
_names[N_ID] = <PyObject*>_K_id
_names[N_FROM_ME] = <PyObject*>_K_fromMe
_names[N_PARTICIPANT] = <PyObject*>_K_participant
memset(_aliases, 0, sizeof(_aliases))


cdef bint _learn(PyObject* k, int n) noexcept:
    """Whether ``k`` is an exact ASCII str equal to name ``n``; then it becomes the
    name's alias. Runs no Python code (dropping the old alias frees a str at most)."""
    cdef object name = <object>_names[n]
    cdef PyObject* old
    if (not PyUnicode_CheckExact(<object>k) or not PyUnicode_IS_ASCII(<object>k)
            or PyUnicode_GET_LENGTH(<object>k) != PyUnicode_GET_LENGTH(name)
            or memcmp(PyUnicode_DATA(<object>k), PyUnicode_DATA(name),
                      PyUnicode_GET_LENGTH(name)) != 0):
        return False
    Py_INCREF(<object>k)
    old = _aliases[n]
    _aliases[n] = k
    Py_XDECREF(old)
    return True


cdef inline int _name_of(PyObject* k, int first, int last) noexcept:
    """Which of names ``first..last`` the dict key ``k`` is, or -1."""
    cdef int n
    for n in range(first, last + 1):
        if k == _names[n] or k == _aliases[n]:
            return n
    for n in range(first, last + 1):
        if _learn(k, n):
            return n
    return -1


cdef bint _probe_decoded(Probe* p, char* buf, PyObject* key) noexcept:
    """Probe a message key in one pass over its dict (names by pointer, above): a dict
    of ASCII strs, and ``fromMe`` a bool, None or absent. False for any other key,
    which is then read by name. Runs no Python code."""
    cdef PyObject* jid = NULL
    cdef PyObject* mid = NULL
    cdef PyObject* me = NULL
    cdef PyObject* k
    cdef PyObject* v
    cdef Py_ssize_t pos = 0
    cdef int n
    if key == NULL or type(<object>key) is not dict or PyDict_GET_SIZE(<object>key) > 4:
        return False
    while PyDict_Next(<object>key, &pos, &k, &v):
        n = _name_of(k, N_REMOTE_JID, N_PARTICIPANT)
        if n == N_REMOTE_JID:
            jid = v
        elif n == N_ID:
            mid = v
        elif n == N_FROM_ME:
            me = v
        elif n != N_PARTICIPANT:  # not part of the key's identity
            return False
    if jid == NULL or mid == NULL or not _fits(<object>jid, <object>mid):
        return False
    if me != NULL and me != Py_True and me != Py_False and me != Py_None:
        return False
    _fill(p, buf, <object>jid, <object>mid, me == Py_True)
    return True


cdef object _probe_key(Probe* p, char* buf, object key):
    """Probe for message ``key`` (its string form in ``buf``, PROBE_BYTES long).

    Returns the key's str when one had to be made (non-ASCII parts, a long key),
    else None: ``p`` then points into ``buf``."""
    cdef object jid, mid, made
    cdef bint me
    if _probe_decoded(p, buf, <PyObject*>key):
        return None
    jid = _item(key, _K_remoteJid)  # names from elsewhere: look them up
    mid = _item(key, _K_id)
    me = _get(key, _K_fromMe)
    if _fits(jid, mid):
        _fill(p, buf, jid, mid, me)
        return None
    made = _key_str(key)
    _probe_str(p, made)
    return made


cdef object _probe_prefixed(Probe* p, char* buf, object cid):
    """Probe for ``"c:" + cid`` (a contact in the history cache); like _probe_key."""
    cdef Py_ssize_t n
    cdef object made
    if _ascii(cid):
        n = PyUnicode_GET_LENGTH(cid)
        if n + 2 <= PROBE_BYTES:
            buf[0] = b'c'
            buf[1] = b':'
            memcpy(buf + 2, PyUnicode_DATA(cid), n)
            p.kind = 1
            p.size = n + 2
            p.data = buf
            p.hash = rsocket_hash_bytes(buf, p.size)
            return None
    made = _prefixed(cid)
    _probe_str(p, made)
    return made


cdef object _ascii_str(const char* data, Py_ssize_t size):
    """A new str of ``size`` ASCII bytes."""
    s = PyUnicode_New(size, 127)
    memcpy(PyUnicode_DATA(s), data, size)
    return s


cdef object _probed_str(Probe* p, object made):
    """The str a probe stands for (``made``, or a new one from the buffer)."""
    if made is not None:
        return made
    return _ascii_str(p.data, p.size)  # a probe in a buffer is ASCII


cdef inline bint _matches(PyObject* s, Probe* p):
    cdef object x = <object>s
    return (
        PyUnicode_KIND(x) == p.kind
        and PyUnicode_GET_LENGTH(x) * p.kind == p.size
        and memcmp(PyUnicode_DATA(x), p.data, p.size) == 0
    )


# -- history cache ------------------------------------------------------------------

# Both tables keep some keys as bytes, not objects, behind a tagged pointer: a
# pointer with its low bit set (no object is at an odd address) holds a number.

cdef inline bint _in_store(PyObject* k) noexcept:
    return (<size_t>k) & 1


cdef inline size_t _store_offset(PyObject* k) noexcept:
    """The number a tagged pointer holds (a key's offset, or its size)."""
    return (<size_t>k) >> 1


cdef enum:
    KEY_BYTES = 64  # a message key's string form up to this long is kept as bytes


cdef struct Slot:
    Py_hash_t hash
    # owned, or (low bit set) ``size << 1 | 1``: the key is that many ASCII bytes,
    # the ring position's KEY_BYTES in ``_bytes``
    PyObject* key


cdef enum:
    EMPTY = -1  # index slots (both kinds of table): never used, or
    REMOVED = -2  # a removed entry's (probing goes on past it)


cdef struct Mark:
    # an index slot of either table: 8 bytes, so the index stays small in cache
    uint32_t tag  # the hash's low 32 bits: finds the home slot, and skips other keys
    int32_t at  # the key's ring position (cache) or entry number (KeyTable), or EMPTY/REMOVED


cdef inline bint _same_str(PyObject* a, object b):
    # caller checked equal hashes; exact str on both sides compares bytes
    cdef object x = <object>a
    return (
        PyUnicode_GET_LENGTH(x) == PyUnicode_GET_LENGTH(b)
        and PyUnicode_KIND(x) == PyUnicode_KIND(b)
        and memcmp(PyUnicode_DATA(x), PyUnicode_DATA(b),
                   PyUnicode_GET_LENGTH(b) * PyUnicode_KIND(b)) == 0
    )


@cython.final
cdef class HistoryCache:
    """Bounded FIFO set of history ids: O(1) insert, lookup and eviction."""

    # ``_ring`` holds the keys with their hashes, in insertion order: a reference
    # each, or for a message key its string form's bytes, in ``_bytes`` at the same
    # position (made by the merge, which has those bytes at hand: no str is made).
    # ``_index`` finds them: open addressing, linear probing, backward-shift
    # deletion (no tombstones), each slot a hash tag and a ring position.
    # All grow lazily up to ``maxsize``.
    cdef Mark* _index
    cdef size_t _mask
    cdef Slot* _ring
    cdef char* _bytes  # KEY_BYTES per ring position, each in its own cache line
    cdef Py_ssize_t _cap
    cdef Py_ssize_t _len
    cdef Py_ssize_t _pos
    cdef Py_ssize_t _maxsize
    cdef size_t _changes  # bumped by every insert and release: a compare that ran code checks it
    cdef public Py_ssize_t evicted

    def __init__(self, Py_ssize_t maxsize):
        self._release()
        self._maxsize = maxsize
        self.evicted = 0

    def __dealloc__(self):
        self._release()

    cdef void _release(self) noexcept:
        cdef Py_ssize_t i
        cdef Slot* ring = self._ring
        cdef Py_ssize_t n = self._len
        self._ring = NULL
        self._len = self._cap = self._pos = 0
        self._changes += 1
        PyMem_Free(self._index)
        self._index = NULL
        self._mask = 0
        free(self._bytes)
        self._bytes = NULL
        for i in range(n):
            if not _in_store(ring[i].key):
                Py_DECREF(<object>ring[i].key)
        PyMem_Free(ring)

    def __contains__(self, key):
        return self._find(key, _hash(key)) >= 0

    def __len__(self):
        return self._len

    cdef inline const char* _bytes_at(self, Py_ssize_t at) noexcept:
        return self._bytes + at * KEY_BYTES

    cdef object _key_at(self, Py_ssize_t at):
        """The key at a ring position, as an object (a str made for bytes)."""
        cdef PyObject* k = self._ring[at].key
        if not _in_store(k):
            return <object>k
        return _ascii_str(self._bytes_at(at), _store_offset(k))

    cdef Py_ssize_t _find(self, object key, Py_hash_t h) except -2:
        """Ring position of ``key``, or -1."""
        cdef size_t i
        cdef Mark* t = self._index
        cdef Py_ssize_t at
        cdef PyObject* k
        cdef size_t changes
        cdef bint eq
        if t == NULL:
            return -1
        i = <size_t>h & self._mask
        while True:
            at = t[i].at
            if at == EMPTY:
                return -1
            if t[i].tag == <uint32_t>h:
                k = self._ring[at].key
                if k == <PyObject*>key:
                    return at
                if self._ring[at].hash == h:
                    if PyUnicode_CheckExact(key) and _in_store(k):  # exact strs: bytes
                        if (PyUnicode_KIND(key) == 1
                                and <size_t>PyUnicode_GET_LENGTH(key) == _store_offset(k)
                                and memcmp(PyUnicode_DATA(key), self._bytes_at(at),
                                           _store_offset(k)) == 0):
                            return at
                    elif PyUnicode_CheckExact(key) and PyUnicode_CheckExact(<object>k):
                        if _same_str(k, key):
                            return at
                    else:  # anything else compares with ==, which may run code
                        changes = self._changes
                        eq = PyObject_RichCompareBool(self._key_at(at), key, Py_EQ)
                        if self._changes != changes:
                            return self._find(key, h)  # an __eq__ changed the cache
                        if eq:
                            return at
            i = (i + 1) & self._mask

    cdef void _place(self, Py_hash_t h, Py_ssize_t at) noexcept:
        cdef size_t i = <size_t>h & self._mask
        while self._index[i].at != EMPTY:
            i = (i + 1) & self._mask
        self._index[i].tag = <uint32_t>h
        self._index[i].at = <int32_t>at

    cdef void _unplace(self, Py_hash_t h, Py_ssize_t at) noexcept:
        cdef Mark* t = self._index
        cdef size_t mask = self._mask
        cdef size_t i = <size_t>h & mask
        cdef size_t j, home
        while t[i].at != at:
            i = (i + 1) & mask
        j = i
        while True:  # shift later members of the cluster back over the hole
            j = (j + 1) & mask
            if t[j].at == EMPTY:
                break
            home = <size_t>t[j].tag & mask  # the mask never exceeds 32 bits
            if (j > i and (home <= i or home > j)) or (j < i and home <= i and home > j):
                t[i] = t[j]
                i = j
        t[i].at = EMPTY

    cdef int _grow(self) except -1:
        cdef Py_ssize_t cap = self._cap * 2 if self._cap else 16
        cdef size_t size = 32
        cdef Py_ssize_t i
        cdef Slot* ring
        cdef Mark* index
        cdef void* grown
        if cap > self._maxsize:
            cap = self._maxsize
        if cap > INT32_MAX:
            raise MemoryError("a history cache holds at most 2**31 - 1 ids")
        while size < <size_t>cap * 2:
            size *= 2
        if posix_memalign(&grown, KEY_BYTES, cap * KEY_BYTES) != 0:
            raise MemoryError()
        ring = <Slot*>PyMem_Realloc(self._ring, cap * sizeof(Slot))
        if ring == NULL:
            free(grown)
            raise MemoryError()
        if self._bytes != NULL:
            memcpy(grown, self._bytes, self._len * KEY_BYTES)
            free(self._bytes)
        self._bytes = <char*>grown
        self._ring = ring
        self._cap = cap
        if size != self._mask + 1:
            index = <Mark*>PyMem_Malloc(size * sizeof(Mark))
            if index == NULL:
                raise MemoryError()
            memset(index, 0xff, size * sizeof(Mark))  # every slot EMPTY (-1)
            PyMem_Free(self._index)
            self._index = index
            self._mask = size - 1
            for i in range(self._len):  # the ring has not wrapped while growing
                self._place(ring[i].hash, i)
        return 0

    cdef inline void _prefetch(self, Py_hash_t h) noexcept:
        if self._index != NULL:
            rsocket_prefetch(&self._index[<size_t>h & self._mask])

    cdef int _has_probe(self, Probe* p) noexcept:
        """Whether the str a probe stands for is cached (no str made): 1 or 0, or 2 when
        a key of another type with its hash must be compared with ``==`` (``_find``)."""
        cdef size_t i
        cdef Mark* t = self._index
        cdef Slot* e
        cdef Py_ssize_t at
        if t == NULL:
            return False
        i = <size_t>p.hash & self._mask
        while True:
            at = t[i].at
            if at == EMPTY:
                return False
            if t[i].tag == <uint32_t>p.hash:
                e = &self._ring[at]
                if e.hash == p.hash:
                    if _in_store(e.key):
                        if (p.kind == 1 and <size_t>p.size == _store_offset(e.key)
                                and memcmp(self._bytes_at(at), p.data, p.size) == 0):
                            return True
                    elif not PyUnicode_CheckExact(<object>e.key):
                        return 2
                    elif _matches(e.key, p):
                        return True
            i = (i + 1) & self._mask

    cdef int _add(self, object key, Py_hash_t h) except -1:
        if self._maxsize <= 0 or self._find(key, h) >= 0:
            return 0
        return self._insert(key, h)

    cdef Py_ssize_t _claim(self, PyObject** gone) except -1:
        """The ring position for a new key: the next free one, or the oldest key's,
        which is evicted (handed over in ``gone``, to drop once the new key is in)."""
        cdef Py_ssize_t at
        cdef PyObject* nxt
        self._changes += 1
        if self._len < self._maxsize:
            if self._len == self._cap:
                self._grow()
            at = self._len
            self._len += 1
            return at
        at = self._pos
        gone[0] = self._ring[at].key
        self._unplace(self._ring[at].hash, at)
        self._pos = (self._pos + 1) % self._maxsize
        self.evicted += 1
        # the next eviction is known (FIFO): start fetching its index slot and its
        # key, both long out of the cache, while this insert and its caller run
        self._prefetch(self._ring[self._pos].hash)
        nxt = self._ring[self._pos].key
        rsocket_prefetch(self._bytes_at(self._pos) if _in_store(nxt) else <const char*>nxt)
        return at

    cdef inline int _placed(self, Py_ssize_t at, Py_hash_t h, PyObject* gone) noexcept:
        """Index the key just written at ``at``, then drop the one it evicted. Returns 1
        when that was not an exact str: dropping it may have run Python code (a
        ``__del__``), else 0."""
        cdef bint ran
        self._ring[at].hash = h
        self._place(h, at)
        if gone == NULL or _in_store(gone):
            return 0
        ran = not PyUnicode_CheckExact(<object>gone)
        Py_DECREF(<object>gone)
        return ran

    cdef int _insert(self, object key, Py_hash_t h) except -1:
        """Add ``key``, known to be absent; returns as ``_placed``."""
        cdef PyObject* gone = NULL
        cdef Py_ssize_t at
        if self._maxsize <= 0:
            return 0
        at = self._claim(&gone)
        Py_INCREF(key)
        self._ring[at].key = <PyObject*>key
        return self._placed(at, h, gone)

    cdef int _insert_probe(self, Probe* p, object made) except -1:
        """Add the probed message key, known to be absent, as bytes when they fit
        (else as its str); returns as ``_placed``."""
        cdef PyObject* gone = NULL
        cdef Py_ssize_t at
        if made is not None or p.size > KEY_BYTES:
            return self._insert(_probed_str(p, made), p.hash)
        if self._maxsize <= 0:
            return 0
        at = self._claim(&gone)
        memcpy(self._bytes + at * KEY_BYTES, p.data, p.size)
        self._ring[at].key = <PyObject*>((<size_t>p.size << 1) | 1)
        return self._placed(at, p.hash, gone)

    cdef inline bint _has(self, object key) except -1:
        return self._find(key, _hash(key)) >= 0

    def add(self, key):
        """Insert ``key``; evicts the oldest entry when full; no-op if present."""
        self._add(key, _hash(key))

    def clear(self):
        self._release()


# -- message-key tables (continued) ------------------------------------------------

cdef struct KeyEntry:
    Py_hash_t hash
    # the key's string form: an owned str, or (low bit set) ``offset << 1 | 1`` of
    # its bytes in the table's ``_store``, a length byte then the bytes
    PyObject* ks
    PyObject* key  # owned, or NULL: the message key the entry was made for
    PyObject* value  # owned; NULL once removed


@cython.final
cdef class KeyTable:
    """Insertion-ordered map from a message key's string form to a value.

    The layout of CPython's dict (an index of slots into a dense array of
    entries), probed with a ``Probe`` instead of a str. Removal leaves a hole
    in the entries (skipped in order) and a tombstone in the index; both go at
    the next resize.
    """

    cdef KeyEntry* _entries
    # entry numbers (max_buffer_items bounds a batch far below 2**31), each with its
    # hash's low bits: a probe skips other keys' slots without reading their entries
    cdef Mark* _index
    cdef size_t _mask
    cdef Py_ssize_t _cap  # entries allocated
    cdef Py_ssize_t _used  # entries written, holes included
    cdef readonly Py_ssize_t live
    cdef char* _store  # inserted keys' bytes, each after its length byte; kept to the release
    cdef size_t _stored  # bytes written
    cdef size_t _store_cap

    def __dealloc__(self):
        self.clear()

    def __len__(self):
        return self.live

    cdef KeyEntry* _detach(self, Py_ssize_t* used) noexcept:
        """Empty the table and hand its entries (``used[0]`` of them) to the caller,
        who drops them: a ``__del__`` run meanwhile sees the table empty, never
        half-released."""
        cdef KeyEntry* entries = self._entries
        used[0] = self._used
        PyMem_Free(self._index)
        PyMem_Free(self._store)  # entries pointing into it are only dropped, never read
        self._store = NULL
        self._stored = self._store_cap = 0
        self._entries = NULL
        self._index = NULL
        self._mask = 0
        self._cap = self._used = self.live = 0
        return entries

    cdef void clear(self) noexcept:
        """Drop every entry."""
        cdef Py_ssize_t used, i
        cdef KeyEntry* entries = self._detach(&used)
        for i in range(used):
            _drop_entry(&entries[i])
        PyMem_Free(entries)

    cdef inline void _prefetch(self, Py_hash_t h) noexcept:
        if self._index != NULL:
            rsocket_prefetch(&self._index[<size_t>h & self._mask])

    cdef Py_ssize_t find(self, Probe* p) noexcept:
        """Entry index of the probed key, or -1."""
        cdef size_t i
        cdef Py_ssize_t ix
        cdef KeyEntry* e
        if self.live == 0:
            return -1
        cdef uint32_t tag = <uint32_t>p.hash
        i = <size_t>p.hash & self._mask
        while True:
            ix = self._index[i].at
            if ix == EMPTY:
                return -1
            if ix >= 0 and self._index[i].tag == tag:
                e = &self._entries[ix]
                if e.hash == p.hash and self._same(e.ks, p):
                    return ix
            i = (i + 1) & self._mask

    cdef inline bint _same(self, PyObject* ks, Probe* p) noexcept:
        """Whether an entry's key string is the probed one."""
        cdef const unsigned char* at
        if not _in_store(ks):
            return _matches(ks, p)
        at = <const unsigned char*>self._store + _store_offset(ks)
        return p.kind == 1 and at[0] == p.size and memcmp(at + 1, p.data, p.size) == 0

    cdef object _str_of(self, PyObject* ks):
        """An entry's key string as a str (made, for a key kept as bytes)."""
        cdef const unsigned char* at
        if not _in_store(ks):
            return <object>ks
        at = <const unsigned char*>self._store + _store_offset(ks)
        return _ascii_str(<const char*>at + 1, at[0])

    cdef PyObject* _keep(self, Probe* p, object made) except NULL:
        """The ``ks`` of a new entry: ``made`` (a new reference), or else the probed
        bytes (ASCII in a probe's buffer, at most PROBE_BYTES < 256) copied into the store."""
        cdef size_t need = 1 + <size_t>p.size, cap, at
        cdef char* grown
        if made is not None:
            Py_INCREF(made)
            return <PyObject*>made
        if self._stored + need > self._store_cap:
            cap = self._store_cap * 2 if self._store_cap else 4096
            while cap < self._stored + need:
                cap *= 2
            grown = <char*>PyMem_Realloc(self._store, cap)
            if grown == NULL:
                raise MemoryError()
            self._store = grown
            self._store_cap = cap
        at = self._stored
        self._store[at] = <char>p.size
        memcpy(self._store + at + 1, p.data, p.size)
        self._stored += need
        return <PyObject*>((at << 1) | 1)

    cdef object get(self, Probe* p):
        cdef Py_ssize_t ix = self.find(p)
        return None if ix < 0 else <object>self._entries[ix].value

    cdef object key_at(self, Py_ssize_t ix):
        return <object>self._entries[ix].key

    cdef object value_at(self, Py_ssize_t ix):
        return <object>self._entries[ix].value

    cdef int set_value(self, Py_ssize_t ix, object value) except -1:
        cdef PyObject* old = self._entries[ix].value
        Py_INCREF(value)
        self._entries[ix].value = <PyObject*>value
        Py_DECREF(<object>old)
        return 0

    cdef int put(self, Probe* p, object made, object value) except -1:
        """Set the probed key's value: in place if present, else appended."""
        cdef Py_ssize_t ix = self.find(p)
        if ix >= 0:
            return self.set_value(ix, value)
        return self.add(p, made, None, value)

    cdef int add(self, Probe* p, object made, object key, object value) except -1:
        """Append an entry for a key known to be absent (``key`` may be None)."""
        cdef KeyEntry* e
        cdef size_t i
        if self._used == self._cap:
            self._resize()
        e = &self._entries[self._used]
        e.ks = self._keep(p, made)
        Py_INCREF(value)
        e.hash = p.hash
        e.value = <PyObject*>value
        if key is None:
            e.key = NULL
        else:
            Py_INCREF(key)
            e.key = <PyObject*>key
        i = <size_t>p.hash & self._mask
        while self._index[i].at >= 0:
            i = (i + 1) & self._mask
        self._index[i].tag = <uint32_t>p.hash
        self._index[i].at = <int32_t>self._used
        self._used += 1
        self.live += 1
        return 0

    cdef object pop(self, Probe* p):
        """Remove the probed key; return its value (None if absent)."""
        cdef Py_ssize_t ix = self.find(p)
        cdef size_t i
        cdef KeyEntry gone
        if ix < 0:
            return None
        i = <size_t>p.hash & self._mask
        while self._index[i].at != ix:
            i = (i + 1) & self._mask
        self._index[i].at = REMOVED
        gone = self._entries[ix]
        self._entries[ix].value = NULL
        self._entries[ix].ks = NULL
        self._entries[ix].key = NULL
        self.live -= 1
        if self.live == 0:  # no entry points into the store any more: reuse it from the start
            self._stored = 0
        value = <object>gone.value  # our reference, handed over below
        _drop_ks(gone.ks)
        if gone.key != NULL:
            Py_DECREF(<object>gone.key)
        Py_DECREF(value)
        return value

    cdef int _resize(self) except -1:
        """Make room for one more entry: compact the holes, grow if still full."""
        cdef Py_ssize_t cap = self.live * 2 if self.live * 2 > 8 else 8
        cdef size_t size = 16
        cdef Py_ssize_t i, n = 0
        cdef KeyEntry* entries
        cdef Mark* index
        cdef size_t j
        if cap > INT32_MAX:
            raise MemoryError("a pending table holds at most 2**31 - 1 message keys")
        while size < <size_t>cap * 2:  # half empty at most: linear probing stays short
            size *= 2
        index = <Mark*>PyMem_Malloc(size * sizeof(Mark))
        if index == NULL:
            raise MemoryError()
        if self.live == self._used:  # no holes: grow in place (realloc may not copy)
            entries = <KeyEntry*>PyMem_Realloc(self._entries, cap * sizeof(KeyEntry))
            if entries == NULL:
                PyMem_Free(index)
                raise MemoryError()
            self._entries = entries
            n = self._used
        else:
            entries = <KeyEntry*>PyMem_Malloc(cap * sizeof(KeyEntry))
            if entries == NULL:
                PyMem_Free(index)
                raise MemoryError()
            for i in range(self._used):
                if self._entries[i].value != NULL:
                    entries[n] = self._entries[i]
                    n += 1
            PyMem_Free(self._entries)
            self._entries = entries
            self._compact_store(n)
        memset(index, 0xff, size * sizeof(Mark))  # EMPTY
        for i in range(n):
            j = <size_t>entries[i].hash & (size - 1)
            while index[j].at >= 0:
                j = (j + 1) & (size - 1)
            index[j].tag = <uint32_t>entries[i].hash
            index[j].at = <int32_t>i
        PyMem_Free(self._index)
        self._index = index
        self._mask = size - 1
        self._cap = cap
        self._used = n
        return 0

    cdef void _compact_store(self, Py_ssize_t n) noexcept:
        """Move the ``n`` (live) entries' bytes to the front of the store, dropping the
        removed keys' bytes. Entries and their bytes are in the same order, so each
        moves back or stays: in place."""
        cdef size_t to = 0, at, need
        cdef Py_ssize_t i
        for i in range(n):
            if _in_store(self._entries[i].ks):
                at = _store_offset(self._entries[i].ks)
                need = 1 + <unsigned char>self._store[at]
                memmove(self._store + to, self._store + at, need)
                self._entries[i].ks = <PyObject*>((to << 1) | 1)
                to += need
        self._stored = to

    cdef list take_values(self):
        """The live values in insertion order, moved out, leaving the table empty.

        Each value's reference passes to the list as it is: a release does not
        touch every pending payload once to count it and again to uncount it."""
        cdef Py_ssize_t live = self.live, used, i, n = 0
        cdef KeyEntry* entries = self._detach(&used)
        cdef list out
        try:
            out = PyList_New(live)  # may collect: a __del__ that emits finds the table empty
        except BaseException:
            for i in range(used):
                _drop_entry(&entries[i])
            PyMem_Free(entries)
            raise
        for i in range(used):
            if entries[i].value != NULL:
                PyList_SET_ITEM(out, n, entries[i].value)
                entries[i].value = NULL
                n += 1
        for i in range(used):  # the list is whole before any __del__ can run
            _drop_entry(&entries[i])
        PyMem_Free(entries)
        return out

    cdef list flatten(self, str field):
        """``[{"key": key, field: item} for each item of each entry's list]``."""
        cdef list out = []
        cdef Py_ssize_t i = 0
        # by index, never a held pointer: a collection triggered by the dicts made
        # here may run a __del__ that touches this table
        while i < self._used:
            if self._entries[i].value != NULL:
                key = <object>self._entries[i].key
                for item in <list>self._entries[i].value:
                    PyList_Append(out, {"key": key, field: item})
            i += 1
        return out

    cdef list strings(self):
        cdef list out = []
        cdef Py_ssize_t i
        for i in range(self._used):
            if self._entries[i].value != NULL:
                PyList_Append(out, self._str_of(self._entries[i].ks))
        return out

    def _lookup(self, str ks):
        """Entry index of key string ``ks``, or -1 (for the views)."""
        cdef Probe p
        _probe_str(&p, ks)
        return self.find(&p)

    cdef int _check(self, Py_ssize_t ix) except -1:
        if not 0 <= ix < self._used or self._entries[ix].value == NULL:
            raise IndexError(f"no entry {ix} in this table")
        return 0

    def _key_at(self, Py_ssize_t ix):
        self._check(ix)
        return self.key_at(ix) if self._entries[ix].key != NULL else None

    def _value_at(self, Py_ssize_t ix):
        self._check(ix)
        return self.value_at(ix)

    def _strings(self):
        return self.strings()


cdef inline void _drop_ks(PyObject* ks) noexcept:
    if not _in_store(ks):
        Py_XDECREF(ks)


cdef inline void _drop_entry(KeyEntry* e) noexcept:
    # a removed entry is all NULL; one whose value was moved out keeps its key
    _drop_ks(e.ks)
    Py_XDECREF(e.key)
    Py_XDECREF(e.value)


class PendingView(Mapping):
    """A read-only, live view of a message-keyed table of the pending batch.

    Keys are message keys' string forms (``remoteJid,id,1|0``), in insertion
    order; a release empties it, like the pure core's dicts. ``holder`` names
    the list field of entries that are shown as ``{"key": key, holder: [...]}``.
    """

    __slots__ = ("_table", "_holder")

    def __init__(self, KeyTable table, holder=None):
        self._table = table
        self._holder = holder

    def _shown(self, Py_ssize_t ix):
        value = self._table._value_at(ix)
        if self._holder is None:
            return value
        return {"key": self._table._key_at(ix), self._holder: value}

    def __getitem__(self, ks):
        ix = self._table._lookup(ks) if type(ks) is str else -1
        if ix < 0:
            raise KeyError(ks)
        return self._shown(ix)

    def __iter__(self):
        return iter(self._table._strings())

    def __len__(self):
        return len(self._table)

    def __repr__(self):
        return repr(dict(self.items()))


# -- the pending batch ----------------------------------------------------------------

cdef object _NOT_STR = object()


cdef dict _hashed_dict():
    # CPython keeps an all-str dict in a compact table without stored hashes,
    # so every probe dereferences the stored key; one non-str key switches the
    # table to entries that carry the hash for good (it survives the delete).
    # Only lookup speed in large batches changes, never behaviour.
    cdef dict d = {_NOT_STR: None}
    del d[_NOT_STR]
    return d


@cython.final
cdef class BufferedData:
    """The pending batch: the mappings a conditional chat update may read.

    Chat, contact and group mappings are dicts; message-keyed ones are C
    tables, shown as read-only live views (:class:`PendingView`).
    """

    cdef public dict history_chats
    cdef public dict history_contacts
    cdef KeyTable _history_messages
    cdef public bint history_is_latest
    cdef public dict history_meta
    cdef public dict chat_upserts
    cdef public dict chat_updates
    cdef public dict chat_conditionals
    cdef public dict chat_deletes
    cdef public dict contact_upserts
    cdef public dict contact_updates
    cdef KeyTable _message_upserts
    cdef public object message_upsert_type
    cdef KeyTable _message_updates
    cdef KeyTable _message_deletes
    cdef KeyTable _message_reactions  # values: reaction lists
    cdef KeyTable _message_receipts  # values: receipt lists
    cdef public dict group_updates

    def __init__(self):
        self.history_chats = _hashed_dict()
        self.history_contacts = _hashed_dict()
        self._history_messages = KeyTable()
        self.history_is_latest = False
        self.history_meta = {}
        self.chat_upserts = _hashed_dict()
        self.chat_updates = {}
        self.chat_conditionals = {}
        self.chat_deletes = {}
        self.contact_upserts = _hashed_dict()
        self.contact_updates = {}
        self._message_upserts = KeyTable()
        self.message_upsert_type = None
        self._message_updates = KeyTable()
        self._message_deletes = KeyTable()
        self._message_reactions = KeyTable()
        self._message_receipts = KeyTable()
        self.group_updates = {}

    # one property each: a cdef class's C fields have no name to look up at run time
    @property
    def history_messages(self):
        return PendingView(self._history_messages)

    @property
    def message_upserts(self):
        return PendingView(self._message_upserts)

    @property
    def message_updates(self):
        return PendingView(self._message_updates)

    @property
    def message_deletes(self):
        return PendingView(self._message_deletes)

    @property
    def message_reactions(self):
        return PendingView(self._message_reactions, "reactions")

    @property
    def message_receipts(self):
        return PendingView(self._message_receipts, "userReceipt")


# -- merge helpers ----------------------------------------------------------------

cdef object _decide(object condition, BufferedData d):
    """Ask a conditional chat update; one that raises is discarded (logged)."""
    try:
        return condition(d)
    except Exception:
        _log.exception("a chat update's conditional raised: update discarded")
        return False


cdef int _absorb(BufferedData d, dict chat) except -1:
    cdef object cid = _item(chat, _K_id)
    cdef object update, decided
    cdef object conds
    cdef list keep
    if d.chat_updates:
        update = _dpop(d.chat_updates, cid)
        if update is not None:
            _update(chat, merge_chat(update, chat))
    if not d.chat_conditionals:
        return 0
    conds = _dget(d.chat_conditionals, cid)
    if conds:
        keep = []
        for upd in conds:
            decided = _decide(upd[_K_conditional], d)
            if decided:
                del upd[_K_conditional]
                merge_chat(chat, upd)
            elif decided is None:
                keep.append(upd)
        if keep:
            d.chat_conditionals[cid] = keep
        else:
            del d.chat_conditionals[cid]
    return 0


cdef int _fold_non_null(object target, object src) except -1:
    cdef Py_ssize_t pos = 0
    cdef PyObject* k
    cdef PyObject* v
    if type(target) is dict and type(src) is dict:
        while PyDict_Next(src, &pos, &k, &v):
            if <object>v is not None:
                PyDict_SetItem(target, <object>k, <object>v)
        return 0
    for key, value in src.items():
        if value is not None:
            target[key] = value
    return 0


cdef bint _truthy(object value):
    """JavaScript's truthiness of a decoded value: {} and [] true; None, False, 0, "", NaN false."""
    if value is None or value is False:
        return False
    if type(value) is str:
        return PyUnicode_GET_LENGTH(value) != 0
    if type(value) is int or type(value) is float:
        return value != 0 and value == value
    return True


cdef object _message_content(object msg):
    """Baileys' ``normalizeMessageContent``: unwrap up to 5 wrappers."""
    cdef object content = _get(msg, _K_message)
    cdef object inner
    cdef int depth
    cdef bint found
    for depth in range(5):
        if type(content) is not dict:
            break
        found = False
        for wrapper in _WRAPPERS:
            inner = _dget(<dict>content, wrapper)
            if _truthy(inner):
                content = _dget(<dict>inner, _K_message) if type(inner) is dict else None
                found = True
                break
        if not found:
            break
    return content


cdef bint _is_real(object msg) except -1:
    """Baileys' ``isRealMessage``."""
    cdef object content = _message_content(msg)
    if type(content) is not dict:
        return False
    for k in <dict>content:
        if type(k) is str and (
            k == "conversation" or ("Message" in k and k != "senderKeyDistributionMessage")
        ):
            break
    else:
        return False
    for k in _NOT_REAL:
        if _truthy(_dget(<dict>content, k)):
            return False
    return True


cdef int _decrement_unread(BufferedData d, object msg) except -1:
    cdef object key = _item(msg, _K_key)
    cdef object jid = _item(key, _K_remoteJid)
    cdef object chat = _dget(d.chat_updates, jid)
    if chat is None:
        chat = _dget(d.chat_upserts, jid)
    if chat is None:
        return 0
    count = _get(chat, _K_unreadCount)
    if not (_is_number(count) and count > 0):
        return 0
    if _truthy(_get(key, _K_fromMe)) or _truthy(_get(msg, _K_messageStubType)):
        return 0
    if not _is_real(msg):
        return 0
    count -= 1
    if count:
        chat[_K_unreadCount] = count
    else:
        del chat[_K_unreadCount]
    return 0


cdef inline object _author(object key):
    if not key:
        return ""
    if _get(key, _K_fromMe):
        return "me"
    return _get(key, _K_participant) or _get(key, _K_remoteJid) or ""


cdef list _with_reaction(object reactions, object reaction, bint removal_kept):
    """One reaction per author; an empty text removes (kept as "" off a pending upsert)."""
    cdef object author = _author(_get(reaction, _K_key))
    cdef list kept = []
    for r in reactions or ():
        if _author(_get(r, _K_key)) != author:
            kept.append(r)
    if _get(reaction, _K_text):
        kept.append(reaction)
    elif removal_kept:
        reaction[_K_text] = ""
        kept.append(reaction)
    return kept


cdef int _add_receipt(object receipts, object receipt) except -1:
    """One receipt per user: a later one updates the user's."""
    jid = _get(receipt, _K_userJid)
    for existing in receipts:
        if _get(existing, _K_userJid) == jid:
            _update(existing, receipt)
            return 0
    receipts.append(receipt)
    return 0


# -- merge rules ----------------------------------------------------------------------

cdef inline PyObject* _peek_key(PyObject* d) noexcept:
    """``d["key"]`` when ``d`` is a dict whose ``key`` is found by pointer (above),
    else NULL: a hint that runs no code, raises nothing."""
    cdef Py_ssize_t pos = 0
    cdef PyObject* k
    cdef PyObject* v
    if d == NULL or type(<object>d) is not dict:
        return NULL
    while PyDict_Next(<object>d, &pos, &k, &v):
        if _name_of(k, N_KEY, N_KEY) == N_KEY:
            return v
    return NULL


cdef bint _probe_next(HistoryCache cache, KeyTable messages, list msgs, Py_ssize_t i,
                     Probe* p, char* buf) noexcept:
    """Probe ``msgs[i]``'s key ahead of its turn, if read in one pass (else False),
    and start fetching what merging it will read: its entries, the object after it,
    and the two index slots its key's lookups probe.

    A history set's keys are mostly new and its tables large, so each lookup would
    wait on memory; this one waits while the message before it merges. It runs no
    Python code, and the merge drops the probe if merging the message before ran
    any (an evicted cache key's ``__del__``), so nothing happens out of order."""
    cdef PyObject* msg
    if i + 1 < PyList_GET_SIZE(msgs):
        rsocket_prefetch(PyList_GET_ITEM(msgs, i + 1))
    if i >= PyList_GET_SIZE(msgs):
        return False
    msg = PyList_GET_ITEM(msgs, i)
    if type(<object>msg) is not dict:
        return False
    rsocket_prefetch((<PyDictObject*>msg).ma_keys)
    if not _probe_decoded(p, buf, _peek_key(msg)):
        return False
    cache._prefetch(p.hash)
    messages._prefetch(p.hash)
    return True


cdef int _history_messages(HistoryCache cache, KeyTable messages, object msgs) except -1:
    """A history set's messages: each one not cached nor pending is added to both."""
    cdef Probe probes[2]  # this message's, and the next one's when made ahead
    cdef char bufs[2][PROBE_BYTES]
    cdef Probe* p
    cdef PyObject* ahead = NULL  # the message probes[i & 1] was made for, ahead
    cdef Py_ssize_t i = 0
    cdef object made
    cdef int cached
    for msg in msgs:
        p = &probes[i & 1]
        made = None if <PyObject*>msg == ahead else _probe_key(p, bufs[i & 1], _item(msg, _K_key))
        i += 1
        ahead = NULL
        if type(msgs) is list and _probe_next(cache, messages, <list>msgs, i,
                                              &probes[i & 1], bufs[i & 1]):
            ahead = PyList_GET_ITEM(msgs, i)
        cached = cache._has_probe(p)
        if cached == 2:  # compared with ==, which may run code
            cached = cache._find(_probed_str(p, made), p.hash) >= 0
            ahead = NULL
        if not cached and messages.find(p) < 0:
            messages.add(p, made, None, msg)
            if cache._insert_probe(p, made):
                ahead = NULL  # the evicted key's __del__ may have changed the next message
    return 0


cdef int _history_set(BufferedData d, HistoryCache cache, object data) except -1:
    cdef object cid, made, existing
    cdef Py_hash_t h
    cdef dict chats = d.history_chats
    cdef dict contacts = d.history_contacts
    cdef KeyTable messages = d._history_messages
    cdef Probe p
    cdef char buf[PROBE_BYTES]
    cdef int cached
    for chat in _get(data, _K_chats) or ():
        cid = _item(chat, _K_id)
        existing = _dget(chats, cid)
        if existing is not None:
            if _K_endOfHistoryTransferType in chat:
                existing[_K_endOfHistoryTransferType] = chat[_K_endOfHistoryTransferType]
            else:
                _discard(existing, _K_endOfHistoryTransferType)
        else:
            h = _hash(cid)
            if cache._find(cid, h) < 0:
                PyDict_SetItem(chats, cid, chat)
                cache._add(cid, h)  # finds again: a key's __eq__ may have run meanwhile
                _absorb(d, chat)
    for contact in _get(data, _K_contacts) or ():
        cid = _item(contact, _K_id)
        existing = _dget(contacts, cid)
        if existing is not None:
            _fold_non_null(existing, contact)
        else:
            made = _probe_prefixed(&p, buf, cid)
            cached = cache._has_probe(&p)
            if cached == 2:
                cached = cache._find(_probed_str(&p, made), p.hash) >= 0
            if (
                not cached
                or _get(contact, _K_notify)
                or _get(contact, _K_name)
                or _get(contact, _K_verifiedName)
            ):
                PyDict_SetItem(contacts, cid, contact)
                if not cached:
                    cache._add(_probed_str(&p, made), p.hash)  # finds again, as above
    _history_messages(cache, messages, _get(data, _K_messages) or ())
    if _get(data, _K_isLatest):
        d.history_is_latest = True
    for field in _HISTORY_META:
        if field in data:
            d.history_meta[field] = data[field]
    return 0


cdef int _chats_upsert(BufferedData d, HistoryCache cache, object data) except -1:
    cdef object cid, existing
    for chat in data:
        cid = _item(chat, _K_id)
        existing = _dget(d.chat_upserts, cid)
        if existing is None:
            existing = _dget(d.history_chats, cid)
        if existing is not None:
            merge_chat(existing, chat)
        else:
            PyDict_SetItem(d.chat_upserts, cid, chat)
            existing = chat
        if (d.chat_updates and PyDict_Contains(d.chat_updates, cid)) or (
            d.chat_conditionals and PyDict_Contains(d.chat_conditionals, cid)
        ):
            _absorb(d, existing)
        _discard(d.chat_deletes, cid)
    return 0


cdef int _chats_update(BufferedData d, HistoryCache cache, object data) except -1:
    cdef object cid, cond, decided, existing
    cdef object conds
    for upd in data:
        cid = _item(upd, _K_id)
        cond = _get(upd, _K_conditional)
        decided = True if cond is None else _decide(cond, d)
        if decided:
            _discard(upd, _K_conditional)
            existing = _dget(d.history_chats, cid)
            if existing is None:
                existing = _dget(d.chat_upserts, cid)
            if existing is None:
                existing = _dget(d.chat_updates, cid)
            if existing is None:
                PyDict_SetItem(d.chat_updates, cid, merge_chat({}, upd))
            else:
                merge_chat(existing, upd)
        elif decided is None:
            conds = _dget(d.chat_conditionals, cid)
            if conds is None:
                PyDict_SetItem(d.chat_conditionals, cid, [upd])
            else:
                conds.append(upd)
        _discard(d.chat_deletes, cid)
    return 0


cdef int _chats_delete(BufferedData d, HistoryCache cache, object data) except -1:
    for cid in data:
        PyDict_SetItem(d.chat_deletes, cid, None)
        _discard(d.chat_updates, cid)
        _discard(d.chat_conditionals, cid)
        _discard(d.chat_upserts, cid)
        _discard(d.history_chats, cid)
    return 0


cdef int _contacts_upsert(BufferedData d, HistoryCache cache, object data) except -1:
    cdef object cid, existing, pending
    for contact in data:
        cid = _item(contact, _K_id)
        existing = _dget(d.contact_upserts, cid)
        if existing is None:
            existing = _dget(d.history_contacts, cid)
        pending = _dpop(d.contact_updates, cid) if d.contact_updates else None
        if existing is not None:
            if pending is not None:
                _update(existing, pending)
            _fold_non_null(existing, contact)
        elif pending is not None:
            _fold_non_null(pending, contact)
            PyDict_SetItem(d.contact_upserts, cid, pending)
        else:
            PyDict_SetItem(d.contact_upserts, cid, contact)
    return 0


cdef int _contacts_update(BufferedData d, HistoryCache cache, object data) except -1:
    cdef object cid, existing
    for upd in data:
        cid = _item(upd, _K_id)
        existing = _dget(d.history_contacts, cid)
        if existing is None:
            existing = _dget(d.contact_upserts, cid)
        if existing is None:
            existing = _dget(d.contact_updates, cid)
            if existing is None:
                PyDict_SetItem(d.contact_updates, cid, dict(upd))
                continue
        _update(existing, upd)
    return 0


cdef int _messages_upsert(BufferedData d, HistoryCache cache, object data) except -1:
    cdef KeyTable upserts = d._message_upserts
    cdef KeyTable history = d._history_messages
    cdef KeyTable updates = d._message_updates
    cdef object made, existing, pending
    cdef Probe p
    cdef char buf[PROBE_BYTES]
    for msg in _item(data, _K_messages):
        made = _probe_key(&p, buf, _item(msg, _K_key))
        existing = upserts.get(&p)
        if existing is None:
            existing = history.get(&p)
        if existing is not None:
            if _K_messageTimestamp in existing:
                msg[_K_messageTimestamp] = existing[_K_messageTimestamp]
            else:
                _discard(msg, _K_messageTimestamp)
        if updates.live:
            pending = updates.pop(&p)
            if pending is not None:
                _update(msg, pending[_K_update])
        (history if history.find(&p) >= 0 else upserts).put(&p, made, msg)
    d.message_upsert_type = _get(data, _K_type)
    return 0


cdef int _messages_update(BufferedData d, HistoryCache cache, object data) except -1:
    cdef object key, update, made, existing, pending
    cdef Probe p
    cdef char buf[PROBE_BYTES]
    for item in data:
        key = _item(item, _K_key)
        update = _item(item, _K_update)
        made = _probe_key(&p, buf, key)
        existing = d._history_messages.get(&p)
        if existing is None:
            existing = d._message_upserts.get(&p)
        if existing is not None:
            _update(existing, update)
            if _get(update, _K_status) == _READ and not _get(key, _K_fromMe):
                _decrement_unread(d, existing)
        else:
            pending = d._message_updates.get(&p)
            if pending is None:
                d._message_updates.add(&p, made, None, {"key": key, "update": dict(update)})
            else:
                _update(pending[_K_update], update)
    return 0


cdef int _messages_delete(BufferedData d, HistoryCache cache, object data) except -1:
    cdef object made
    cdef Probe p
    cdef char buf[PROBE_BYTES]
    for key in _item(data, _K_keys):
        made = _probe_key(&p, buf, key)
        if d._message_deletes.find(&p) < 0:
            d._message_deletes.add(&p, made, None, key)
        d._message_upserts.pop(&p)
        d._message_updates.pop(&p)
    return 0


cdef int _messages_reaction(BufferedData d, HistoryCache cache, object data) except -1:
    cdef object key, reaction, made, holder
    cdef KeyTable reactions = d._message_reactions
    cdef Probe p
    cdef char buf[PROBE_BYTES]
    for item in data:
        key = _item(item, _K_key)
        reaction = _item(item, _K_reaction)
        made = _probe_key(&p, buf, key)
        holder = d._message_upserts.get(&p)
        if holder is not None:
            holder[_K_reactions] = _with_reaction(_get(holder, _K_reactions), reaction, False)
            continue
        holder = reactions.get(&p)
        if holder is None:
            reactions.add(&p, made, key, _with_reaction(None, reaction, True))
        else:  # in place: the entry may move while _with_reaction runs
            holder[:] = _with_reaction(holder, reaction, True)
    return 0


cdef int _message_receipts(BufferedData d, HistoryCache cache, object data) except -1:
    cdef object key, receipt, made, holder, receipts
    cdef KeyTable pending = d._message_receipts
    cdef Probe p
    cdef char buf[PROBE_BYTES]
    for item in data:
        key = _item(item, _K_key)
        receipt = _item(item, _K_receipt)
        made = _probe_key(&p, buf, key)
        holder = d._message_upserts.get(&p)
        if holder is not None:
            receipts = _get(holder, _K_userReceipt)
            if receipts is None:
                receipts = []
                holder[_K_userReceipt] = receipts
            _add_receipt(receipts, receipt)
            continue
        receipts = pending.get(&p)
        if receipts is None:
            pending.add(&p, made, key, [receipt])
        else:
            _add_receipt(receipts, receipt)
    return 0


cdef int _groups_update(BufferedData d, HistoryCache cache, object data) except -1:
    cdef object gid, existing
    for upd in data:
        gid = _item(upd, _K_id)
        existing = _dget(d.group_updates, gid)
        if existing is None:
            PyDict_SetItem(d.group_updates, gid, dict(upd))
        else:
            _update(existing, upd)
    return 0


ctypedef int (*Merger)(BufferedData, HistoryCache, object) except -1


cdef Merger _rule(str name) except NULL:
    """The merge rule of a bufferable event (used once, to build the table)."""
    if name == "messaging-history.set":
        return _history_set
    if name == "chats.upsert":
        return _chats_upsert
    if name == "chats.update":
        return _chats_update
    if name == "chats.delete":
        return _chats_delete
    if name == "contacts.upsert":
        return _contacts_upsert
    if name == "contacts.update":
        return _contacts_update
    if name == "messages.upsert":
        return _messages_upsert
    if name == "messages.update":
        return _messages_update
    if name == "messages.delete":
        return _messages_delete
    if name == "messages.reaction":
        return _messages_reaction
    if name == "message-receipt.update":
        return _message_receipts
    if name == "groups.update":
        return _groups_update
    raise RuntimeError(f"the compiled core has no merge rule for {name!r}")


cdef Merger _MERGERS[16]  # indexed by code; 0 is "not bufferable"
if len(_CODES) >= 16:
    raise RuntimeError("more bufferable events than the compiled core's dispatch table holds")
for _name, _value in _CODES.items():
    _MERGERS[<int>_value] = _rule(_name)


cdef bint _is_empty(int code, object data) except -1:
    if data is None:
        return True
    if type(data) is list:
        return not data
    if type(data) is not dict:
        return False
    if code == MESSAGES_UPSERT:
        return not _dget(<dict>data, _K_messages)
    if code == HISTORY_SET:
        return not (
            _dget(<dict>data, _K_chats) or _dget(<dict>data, _K_contacts)
            or _dget(<dict>data, _K_messages)
        )
    if code == MESSAGES_DELETE:
        return not (_dget(<dict>data, _K_keys) or _dget(<dict>data, _K_all))
    return not data


cdef dict _consolidate(BufferedData d):
    """The pending batch as ``{event: payload}`` in release order; ``d`` is emptied
    for the next one (undecided conditionals stay in it)."""
    cdef dict out = {}
    cdef dict history, carry
    cdef object existing, reactions = None, receipts = None
    if d.chat_conditionals:
        carry = {}
        for cid, conds in d.chat_conditionals.items():
            for upd in conds:
                decided = _decide(upd[_K_conditional], d)
                if decided:
                    del upd[_K_conditional]
                    existing = _dget(d.chat_updates, cid)
                    if existing is None:
                        d.chat_updates[cid] = merge_chat({}, upd)
                    else:
                        merge_chat(existing, upd)
                elif decided is None:
                    carry.setdefault(cid, []).append(upd)
        d.chat_conditionals = carry
    # The flattened lists allocate one dict per item: build them before the big
    # value lists, so the young collections they trigger never traverse those.
    if d._message_reactions.live:
        reactions = d._message_reactions.flatten("reaction")
        d._message_reactions.clear()
    if d._message_receipts.live:
        receipts = d._message_receipts.flatten("receipt")
        d._message_receipts.clear()
    if d.history_chats or d.history_contacts or d._history_messages.live:
        history = {
            "chats": PyDict_Values(d.history_chats),
            "contacts": PyDict_Values(d.history_contacts),
            "messages": d._history_messages.take_values(),
            "isLatest": d.history_is_latest,
        }
        if d.history_meta:
            history.update(d.history_meta)
        out["messaging-history.set"] = history
        PyDict_Clear(d.history_chats)
        PyDict_Clear(d.history_contacts)
    # a set that deduplicated to nothing still ends here: its flags never reach the next
    d.history_is_latest = False
    if d.history_meta:
        PyDict_Clear(d.history_meta)
    if d.chat_upserts:
        out["chats.upsert"] = PyDict_Values(d.chat_upserts)
        PyDict_Clear(d.chat_upserts)
    if d.chat_updates:
        out["chats.update"] = PyDict_Values(d.chat_updates)
        PyDict_Clear(d.chat_updates)
    if d.chat_deletes:
        out["chats.delete"] = PyDict_Keys(d.chat_deletes)
        PyDict_Clear(d.chat_deletes)
    if d._message_upserts.live:
        upsert_type = d.message_upsert_type  # read before anything can run meanwhile
        out["messages.upsert"] = {"messages": d._message_upserts.take_values(),
                                  "type": upsert_type}
    d.message_upsert_type = None
    if d._message_updates.live:
        out["messages.update"] = d._message_updates.take_values()
    if d._message_deletes.live:
        out["messages.delete"] = {"keys": d._message_deletes.take_values()}
    if reactions is not None:
        out["messages.reaction"] = reactions
    if receipts is not None:
        out["message-receipt.update"] = receipts
    if d.contact_upserts:
        out["contacts.upsert"] = PyDict_Values(d.contact_upserts)
        PyDict_Clear(d.contact_upserts)
    if d.contact_updates:
        out["contacts.update"] = PyDict_Values(d.contact_updates)
        PyDict_Clear(d.contact_updates)
    if d.group_updates:
        out["groups.update"] = PyDict_Values(d.group_updates)
        PyDict_Clear(d.group_updates)
    return out


# -- handlers and settlement ----------------------------------------------------------

@cython.final
cdef class Listener:
    """One registered handler: ``fn``, called inline, or, while ``runner`` is set
    (an async handler, or a sync one retrying), queued with ``runner.submit(args,
    settlement)``. A sync call that raises is handed to ``failed(listener, args,
    settlement, exc)``, which may set ``runner`` (the facade's retry policy)."""

    cdef readonly object fn
    cdef readonly bint with_seqs
    cdef public object runner
    cdef readonly object failed

    def __init__(self, fn, bint with_seqs, runner=None, failed=None):
        self.fn = fn
        self.with_seqs = with_seqs
        self.runner = runner
        self.failed = failed


@cython.final
cdef class Settlement:
    """A release whose seqs are processed once its async handler calls finish."""

    cdef BufferCore core
    cdef readonly object seqs
    cdef public Py_ssize_t pending
    cdef readonly double created

    def __init__(self, BufferCore core, seqs):
        self.core = core
        self.seqs = seqs
        self.pending = 0
        self.created = monotonic()

    def done(self):
        """One async handler call finished with this release."""
        self.pending -= 1
        if not self.pending:
            self.core._settle_ready()


FLUSH_BUCKETS = _rules.FLUSH_BUCKETS
cdef int _N_BUCKETS = 11  # len(FLUSH_BUCKETS) + 1 (+Inf)
cdef double[10] _BOUNDS = FLUSH_BUCKETS
cdef object _NO_SEQS = range(0)


cdef class BufferCore:
    """Everything one event touches: buffering state, merge, release, dispatch.

    The facade (``rsocket.buffer.EventBuffer``) holds one and adds the timer,
    logs and metrics. The core calls the application's handlers itself (sync
    ones inline, async ones through their runner), counts its releases, and
    reports processed seqs through ``on_settled``; it never calls back into
    the facade, except ``observer(reason, items)`` after a release when the
    facade asked for it (lifecycle lines).
    """

    cdef public Py_ssize_t depth
    cdef public bint destroyed
    cdef public Py_ssize_t items
    cdef public double oldest
    cdef public list batch_listeners
    cdef public dict event_listeners
    cdef public object on_settled
    cdef public object epoch  # the log session of the seqs, given to handlers (Seqs)
    # fence() -> token | None: a release is delivered only while it gives a token
    # (a worker's lease, proven at delivery); None: no fence
    cdef public object fence
    cdef public object observer
    cdef public Py_ssize_t flushes
    cdef public Py_ssize_t forced_flushes
    cdef public Py_ssize_t items_flushed
    cdef public Py_ssize_t overflows
    cdef public Py_ssize_t dropped
    cdef public double flush_seconds
    cdef long long[11] _buckets
    cdef Py_ssize_t _max_items
    cdef long long _first_seq
    cdef long long _last_seq
    cdef BufferedData _data
    cdef HistoryCache _cache
    cdef object _settling  # collections.deque of Settlement, made when one must wait

    def __init__(self, Py_ssize_t max_history_cache, Py_ssize_t max_buffer_items):
        self.depth = 0
        self.destroyed = False
        self.items = 0
        self.oldest = 0.0
        self.batch_listeners = []
        self.event_listeners = {}
        self.on_settled = None
        self.epoch = ""
        self.fence = None
        self.observer = None
        self.flushes = self.forced_flushes = self.items_flushed = self.overflows = 0
        self.dropped = 0
        self.flush_seconds = 0.0
        memset(self._buckets, 0, sizeof(self._buckets))
        self._max_items = max_buffer_items
        self._first_seq = -1
        self._last_seq = -1
        self._data = BufferedData()
        self._cache = HistoryCache(max_history_cache)
        self._settling = None

    @property
    def pending(self):
        """The batch being buffered (what a conditional update sees)."""
        return self._data

    @property
    def flush_buckets(self):
        """Release durations: counts per FLUSH_BUCKETS bound, +Inf last."""
        return [self._buckets[i] for i in range(_N_BUCKETS)]

    def cache_size(self):
        return self._cache._len

    def cache_evicted(self):
        return self._cache.evicted

    def take_counters(self):
        """This core's counters (release counts, durations, drops), zeroed: the
        facade adds a destroyed buffer's to the process-wide totals."""
        taken = {"flushes": self.flushes, "forced_flushes": self.forced_flushes,
                 "items_flushed": self.items_flushed, "overflows": self.overflows,
                 "dropped": self.dropped, "flush_seconds": self.flush_seconds,
                 "flush_buckets": self.flush_buckets}
        self.flushes = self.forced_flushes = self.items_flushed = self.overflows = 0
        self.dropped = 0
        self.flush_seconds = 0.0
        memset(self._buckets, 0, sizeof(self._buckets))
        return taken

    def oldest_settling(self):
        """When the oldest release still waiting for async handlers was made (0.0: none)."""
        return (<Settlement>self._settling[0]).created if self._settling else 0.0

    # -- the per-event path ------------------------------------------------------------

    def emit(self, event, data, seq=None):
        """Merge ``event`` into the pending batch, or deliver it at once.

        Returns True when the event was merged or delivered, False when it was
        dropped (destroyed buffer, or nothing in it). Handler exceptions from
        a release this call triggered are raised after the event is merged.
        """
        cdef long long s = -1
        if seq is not None:
            if not 0 <= seq < SEQ_LIMIT:
                raise ValueError(f"seq {seq!r} out of range: expected 0 <= seq < 2**63")
            s = seq
        return self._emit(event, event_code(event), data, s)

    cdef bint _emit(self, object event, int code, object data, long long seq) except -1:
        cdef list errors = None
        if self.destroyed:
            self.dropped += 1
            return False
        if _is_empty(code, data):
            return False
        if not self.depth or code == 0:
            errors = self._dispatch({event: data}, seq, seq)
            if errors:
                _raise(errors)
            return True
        if code == MESSAGES_DELETE and type(data) is dict and _dget(<dict>data, _K_all):
            # what handlers emit during this release was emitted after the delete:
            # it stays pending, for the next release
            errors = self._release("barrier")
            if not self.destroyed:
                errors = _join(errors, self._dispatch({event: data}, seq, seq))
            return self._after_release(errors)
        # Release until the event fits: a handler that emits during a release may
        # refill the batch or change its upsert type, so both checks run again.
        cdef bint is_upsert = code == MESSAGES_UPSERT and type(data) is dict
        cdef object upsert_type = _dget(<dict>data, _K_type) if is_upsert else None
        while True:
            if (
                is_upsert and self._data._message_upserts.live
                and upsert_type != self._data.message_upsert_type
            ):
                errors = _join(errors, self._release("type_mismatch"))
            elif self.items >= self._max_items:
                errors = _join(errors, self._release("overflow"))
            else:
                break
        if self.destroyed:  # a handler destroyed the buffer during a release
            return self._after_release(errors)
        if not self.items:
            self.oldest = monotonic()
        self.items += 1
        if seq >= 0:
            if self._first_seq < 0:
                self._first_seq = seq
            self._last_seq = seq
        try:
            _MERGERS[code](self._data, self._cache, data)
        except (TypeError, KeyError, AttributeError) as exc:
            bad = TypeError(f"invalid {event!r} payload: {type(exc).__name__}: {exc}")
            bad.__cause__ = exc
            _raise(_join(errors, [bad]))
        if errors:
            _raise(errors)
        return True

    def ingest(self, long long first, list frame_events, bint scoped, long long received):
        """Take one frame's events (items with ``name`` and ``data``, seqs from ``first``).

        Events at or below ``received`` are duplicates (counted, skipped).
        Each other event is validated (:func:`validate`): an invalid one is
        dropped and its seq settled at once; a ``connection.update`` gets
        ``"upstream": True``; the rest are emitted with their seqs, as one
        buffering scope when ``scoped`` (a live batch). An event with nothing
        in it is settled at once. Handler exceptions are collected, never
        raised. Returns ``(received, duplicates, invalid, errors)``, the
        lists None when empty.
        """
        cdef Py_ssize_t duplicates = 0
        cdef list invalid = None
        cdef list errors = None
        cdef long long seq = first
        cdef int code
        cdef object name, data, reason
        if scoped:
            self.depth += 1
        for item in frame_events:
            if seq <= received:
                duplicates += 1
                seq += 1
                continue
            received = seq
            name = item.name
            data = item.data
            code = event_code(name)
            reason = check_event(name, code, data)
            if reason is not None:
                if invalid is None:
                    invalid = []
                invalid.append((seq, name, reason))
                if self.on_settled is not None:
                    self.on_settled(range(seq, seq + 1))
                seq += 1
                continue
            if code == 0 and name == CONNECTION_UPDATE:
                data = {**data, "upstream": True}
            try:
                merged = self._emit(name, code, data, seq)
            except Exception as exc:
                errors = _collect(errors, exc)
            else:
                if not merged and not self.destroyed and self.on_settled is not None:
                    # nothing in it: no release will carry its seq, so it is processed now
                    self.on_settled(range(seq, seq + 1))
            seq += 1
        if scoped and self.depth:
            self.depth -= 1
            if not self.depth:
                errors = _join(errors, self._release("flush"))
        return received, duplicates, invalid, errors

    # -- scopes and releases --------------------------------------------------------------

    def buffer(self):
        """Open (or nest) a scope; True when it is the outermost one."""
        if self.destroyed:
            return False
        self.depth += 1
        return self.depth == 1

    def flush(self, bint force=False):
        """Close a scope (all of them with ``force``); release when none is left.

        Returns True when the batch was released. Handler exceptions are
        raised after every handler got the batch.
        """
        if self.destroyed or not self.depth:
            return False
        if force:
            self.depth = 0
        else:
            self.depth -= 1
            if self.depth:
                return False
        self.release("forced" if force else "flush")
        return True

    def release(self, str reason):
        """Release the pending batch now (depth untouched); raise handler errors."""
        cdef list errors = self._release(reason)
        if errors:
            _raise(errors)

    def destroy(self):
        """Stop for good: release what is pending (a final flush, handler errors
        collected, not raised), then drop listeners, batch and history cache.

        Returns ``(had_pending, errors, undecided)``: ``undecided`` conditional
        chat updates are dropped (they can no longer be decided).
        """
        cdef list errors = None
        cdef Py_ssize_t undecided = 0
        if self.destroyed:
            return False, errors, 0
        self.destroyed = True  # emits from the final flush's handlers are dropped
        cdef bint had_pending = self.items or bool(self._data.chat_conditionals)
        if had_pending:
            self.depth = 0
            try:
                errors = self._release("final")
            except Exception as exc:  # defensive: destroy never raises
                errors = [exc]
            undecided = sum(len(v) for v in self._data.chat_conditionals.values())
        self.depth = 0
        self.batch_listeners.clear()
        self.event_listeners.clear()
        self._data = BufferedData()
        self._cache.clear()
        self.items = 0
        self._first_seq = self._last_seq = -1
        return had_pending, errors if errors is not None else [], undecided

    cdef bint _after_release(self, list errors) except -1:
        """End an ``emit`` whose event was delivered (or dropped, if a handler
        destroyed the buffer meanwhile): raise what the handlers raised."""
        cdef bint dropped = self.destroyed
        if dropped:
            self.dropped += 1
        if errors:
            _raise(errors)
        return not dropped

    cdef list _release(self, str reason):
        cdef double started = perf_counter()
        cdef Py_ssize_t items = self.items
        cdef long long first = self._first_seq, last = self._last_seq
        cdef int bucket
        self.items = 0
        self._first_seq = self._last_seq = -1
        cdef dict batch = _consolidate(self._data)
        # an empty batch (e.g. only undecided conditionals) calls no handler, but its
        # seqs are still processed
        cdef list errors = self._dispatch(batch, first, last) if batch or first >= 0 else None
        if batch:
            self.flushes += 1
            if reason != "flush":
                self.forced_flushes += 1
                if reason == "overflow":
                    self.overflows += 1
            self.items_flushed += items
            elapsed = perf_counter() - started
            self.flush_seconds += elapsed
            bucket = 0
            while bucket < _N_BUCKETS - 1 and elapsed > _BOUNDS[bucket]:
                bucket += 1
            self._buckets[bucket] += 1
            if self.observer is not None:
                self.observer(reason, items)
        return errors

    cdef list _dispatch(self, dict batch, long long first, long long last):
        """Call the handlers: batch handlers first, then per-event ones in release order.

        ``first``..``last`` are the release's seqs (-1: none)."""
        cdef object token = None
        cdef object seqs
        cdef Settlement settlement = None
        cdef list errors = None
        cdef object listeners
        cdef object handed = None  # what with_seqs handlers get: made once, when needed
        cdef Listener one
        if self.fence is not None:
            token = self.fence()
            if token is None:
                return None  # not ours to deliver now: unsettled, the lease's new owner will
        seqs = range(first, last + 1) if first >= 0 else _NO_SEQS
        if first >= 0 and self.on_settled is not None:
            settlement = Settlement(self, seqs)
        if batch and self.batch_listeners:
            # a copy: a handler may (un)subscribe meanwhile (one listener needs none)
            listeners = self.batch_listeners
            if len(<list>listeners) > 1:
                listeners = (<list>listeners)[:]
            for listener in <list>listeners:
                one = <Listener>listener
                if one.with_seqs and handed is None:
                    handed = Seqs(seqs.start, seqs.stop, self.epoch, token)
                try:
                    _call(one, batch, handed, settlement)
                except Exception as exc:
                    errors = _join(errors, [exc])
                    if one.runner is None and one.failed is not None:
                        one.failed(one, (batch, handed) if one.with_seqs else (batch,),
                                   settlement, exc)
        if batch and self.event_listeners:
            for name, payload in batch.items():
                listeners = _dget(self.event_listeners, name)
                if listeners is None:
                    continue
                for listener in (<list>listeners)[:]:
                    one = <Listener>listener
                    try:
                        if one.runner is not None:
                            one.runner.submit((payload,), settlement)
                        else:
                            one.fn(payload)
                    except Exception as exc:
                        errors = _join(errors, [exc])
                        if one.runner is None and one.failed is not None:
                            one.failed(one, (payload,), settlement, exc)
        if settlement is not None:
            if not settlement.pending and not self._settling and self.on_settled is not None:
                self.on_settled(seqs)  # nothing async, nothing earlier waiting: settled now
            else:
                if self._settling is None:  # made when one must wait: idle buffers hold none
                    self._settling = deque()
                self._settling.append(settlement)
                self._settle_ready()
        return errors

    def _settle_ready(self):
        settling = self._settling
        while settling and (<Settlement>settling[0]).pending == 0:
            seqs = (<Settlement>settling.popleft()).seqs
            if self.on_settled is not None:
                self.on_settled(seqs)


cdef inline object _call(Listener listener, dict batch, object seqs, Settlement settlement):
    if listener.runner is not None:
        return listener.runner.submit(
            (batch, seqs) if listener.with_seqs else (batch,), settlement)
    if listener.with_seqs:
        return listener.fn(batch, seqs)
    return listener.fn(batch)


cdef inline list _join(list errors, list more):
    """``errors`` and ``more`` (either may be None: no error, no list allocated)."""
    if not more:
        return errors
    if errors is None:
        return more
    return errors + more


cdef list _collect(list errors, object exc):
    found = list(exc.exceptions) if isinstance(exc, ExceptionGroup) else [exc]
    return found if errors is None else errors + found


cdef _raise(list errors):
    if len(errors) == 1:
        raise errors[0]
    raise ExceptionGroup(f"{len(errors)} event handlers raised", errors)
