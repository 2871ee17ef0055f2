"""Pure-Python merge core of the event buffer (twin of ``_buffer.pyx``).

Everything a single event touches lives here: the dispatch from ``emit()``
(and from ``ingest()``, a received frame's events, validated) into the merge
rules of docs/BUFFER.md, consolidation at release, the calls to the handlers,
seq settlement and the history cache. ``rsocket.buffer.EventBuffer`` holds a
:class:`BufferCore` and adds the timer, logs and metrics.

The compiled core in ``_buffer.pyx`` implements the same names with the same
behaviour; the test suite runs over both.
"""

from __future__ import annotations

import logging
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Callable
from typing import Any, TypeGuard

from . import events
from ._rules import (
    FLUSH_BUCKETS,
    HISTORY_META,
    NOT_REAL,
    READ,
    SEQ_LIMIT,
    WRAPPERS,
)
from ._validate_py import validate
from .seqs import Seqs

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

BUFFERABLE_EVENTS: frozenset[str] = frozenset(events.BUFFERABLE_EVENTS)

#: a decoded payload object (chat, contact, message, key...)
Obj = dict[str, Any]

_log = logging.getLogger("rsocket.buffer")
_READ = READ
_WRAPPERS = WRAPPERS
_NOT_REAL = NOT_REAL


def key_str(key: Obj) -> str:
    """The string form of a message key: ``remoteJid,id,1|0``."""
    return f"{key['remoteJid']},{key['id']},{'1' if key.get('fromMe') else '0'}"


def _is_number(value: object) -> TypeGuard[int | float]:
    return (type(value) is int or type(value) is float) and value is not True


def merge_chat(a: Obj, b: Obj) -> Obj:
    """Merge chat ``b`` into chat ``a`` (Baileys' ``concatChats``) and return ``a``.

    A null ``unreadCount`` in ``b`` over a negative one in ``a`` drops the key
    from both; two counts add up when ``b``'s is not negative; then every key
    of ``b`` overwrites ``a``.
    """
    if "unreadCount" in b:
        bu = b["unreadCount"]
        au = a.get("unreadCount")
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


class HistoryCache:
    """Bounded FIFO set of history ids: O(1) insert, lookup and eviction.

    A set answers membership; a ring (grown lazily up to ``maxsize``, so idle
    buffers stay small) remembers insertion order for eviction.
    """

    __slots__ = ("_keys", "_maxsize", "_pos", "_ring", "evicted")

    def __init__(self, maxsize: int) -> None:
        self._keys: set[str] = set()
        self._ring: list[str] = []
        self._pos = 0
        self._maxsize = maxsize
        self.evicted = 0

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def add(self, key: str) -> None:
        """Insert ``key``; evicts the oldest entry when full; no-op if present."""
        keys = self._keys
        if key in keys or self._maxsize <= 0:
            return
        ring = self._ring
        if len(ring) < self._maxsize:
            ring.append(key)
        else:
            pos = self._pos
            keys.discard(ring[pos])
            ring[pos] = key
            self._pos = (pos + 1) % self._maxsize
            self.evicted += 1
        keys.add(key)

    def clear(self) -> None:
        # in place: an ``add`` under way (a key's ``__eq__`` may clear) holds these
        self._keys.clear()
        self._ring.clear()
        self._pos = 0


class BufferedData:
    """The pending batch: the mappings a conditional chat update may read.

    Every mapping keeps insertion order; ``chat_deletes`` is an ordered set
    (a dict whose values are None). ``chat_conditionals`` maps a chat id to
    its undecided updates in arrival order.
    """

    __slots__ = (
        "chat_conditionals",
        "chat_deletes",
        "chat_updates",
        "chat_upserts",
        "contact_updates",
        "contact_upserts",
        "group_updates",
        "history_chats",
        "history_contacts",
        "history_is_latest",
        "history_messages",
        "history_meta",
        "message_deletes",
        "message_reactions",
        "message_receipts",
        "message_updates",
        "message_upsert_type",
        "message_upserts",
    )

    def __init__(self) -> None:
        self.history_chats: dict[str, Obj] = {}
        self.history_contacts: dict[str, Obj] = {}
        self.history_messages: dict[str, Obj] = {}
        self.history_is_latest = False
        self.history_meta: dict[str, Any] = {}
        self.chat_upserts: dict[str, Obj] = {}
        self.chat_updates: dict[str, Obj] = {}
        self.chat_conditionals: dict[str, list[Obj]] = {}
        self.chat_deletes: dict[str, None] = {}
        self.contact_upserts: dict[str, Obj] = {}
        self.contact_updates: dict[str, Obj] = {}
        self.message_upserts: dict[str, Obj] = {}
        self.message_upsert_type: Any = None
        self.message_updates: dict[str, Obj] = {}
        self.message_deletes: dict[str, Obj] = {}
        self.message_reactions: dict[str, Obj] = {}
        self.message_receipts: dict[str, Obj] = {}
        self.group_updates: dict[str, Obj] = {}


# -- merge helpers ----------------------------------------------------------


def _decide(condition: Callable[[BufferedData], Any], d: BufferedData) -> Any:
    """Ask a conditional chat update; one that raises is discarded (logged), never
    taking the batch down with it."""
    try:
        return condition(d)
    except Exception:
        _log.exception("a chat update's conditional raised: update discarded")
        return False


def _absorb(d: BufferedData, chat: Obj) -> None:
    """Fold pending updates for ``chat`` (just stored in the batch) into it."""
    cid = chat["id"]
    update = d.chat_updates.pop(cid, None)
    if update is not None:
        chat.update(merge_chat(update, chat))
    conds = d.chat_conditionals.get(cid)
    if conds:
        keep = []
        for upd in conds:
            decided = _decide(upd["conditional"], d)
            if decided:
                del upd["conditional"]
                merge_chat(chat, upd)
            elif decided is None:
                keep.append(upd)
        if keep:
            d.chat_conditionals[cid] = keep
        else:
            del d.chat_conditionals[cid]


def _fold_non_null(target: Obj, src: Obj) -> None:
    for k, v in src.items():
        if v is not None:
            target[k] = v


def _truthy(value: object) -> bool:
    """JavaScript's truthiness of a decoded value (Baileys tests fields this way):
    ``{}`` and ``[]`` are true, ``None``, ``False``, ``0``, ``""`` and NaN false."""
    if value is None or value is False:
        return False
    if type(value) is str:
        return value != ""
    if type(value) is int or type(value) is float:
        return value != 0 and value == value
    return True


def _message_content(msg: Obj) -> Any:
    """Baileys' ``normalizeMessageContent``: unwrap up to 5 wrappers."""
    content = msg.get("message")
    for _ in range(5):
        if type(content) is not dict:
            break
        for wrapper in _WRAPPERS:
            inner = content.get(wrapper)
            if _truthy(inner):
                content = inner.get("message") if type(inner) is dict else None
                break
        else:
            break
    return content


def _is_real(msg: Obj) -> bool:
    """Baileys' ``isRealMessage``: content of a ``conversation`` or ``*Message`` kind
    (not a sender-key distribution), and no protocol, reaction or poll-update part."""
    content = _message_content(msg)
    if type(content) is not dict:
        return False
    for k in content:
        if type(k) is str and (
            k == "conversation" or ("Message" in k and k != "senderKeyDistributionMessage")
        ):
            break
    else:
        return False
    return not any(_truthy(content.get(k)) for k in _NOT_REAL)


def _decrement_unread(d: BufferedData, msg: Obj) -> None:
    jid = msg["key"]["remoteJid"]
    chat = d.chat_updates.get(jid)
    if chat is None:
        chat = d.chat_upserts.get(jid)
    if chat is None:
        return
    count = chat.get("unreadCount")
    if not (_is_number(count) and count > 0):
        return
    if _truthy(msg["key"].get("fromMe")) or _truthy(msg.get("messageStubType")):
        return
    if not _is_real(msg):
        return
    count -= 1
    if count:
        chat["unreadCount"] = count
    else:
        del chat["unreadCount"]


def _author(key: Any) -> str:
    if not key:
        return ""
    if key.get("fromMe"):
        return "me"
    return key.get("participant") or key.get("remoteJid") or ""


def _add_reaction(holder: Obj, reaction: Obj, removal_kept: bool) -> None:
    """One reaction per author, the newest wins (Baileys' ``updateMessageWithReaction``).

    An empty text is a removal: on a pending upsert (``removal_kept`` False)
    the author's reaction just goes; elsewhere it is kept as ``""`` so the
    removal reaches the application.
    """
    author = _author(reaction.get("key"))
    kept = [r for r in holder.get("reactions") or () if _author(r.get("key")) != author]
    if reaction.get("text"):
        kept.append(reaction)
    elif removal_kept:
        reaction["text"] = ""
        kept.append(reaction)
    holder["reactions"] = kept


def _add_receipt(holder: Obj, receipt: Obj) -> None:
    receipts = holder.get("userReceipt")
    if receipts is None:
        receipts = holder["userReceipt"] = []
    jid = receipt.get("userJid")
    for existing in receipts:
        if existing.get("userJid") == jid:
            existing.update(receipt)
            return
    receipts.append(receipt)


# -- merge rules, one per bufferable event ------------------------------------


def _history_set(d: BufferedData, cache: HistoryCache, data: Obj) -> None:
    for chat in data.get("chats") or ():
        cid = chat["id"]
        existing = d.history_chats.get(cid)
        if existing is not None:
            if "endOfHistoryTransferType" in chat:
                existing["endOfHistoryTransferType"] = chat["endOfHistoryTransferType"]
            else:
                existing.pop("endOfHistoryTransferType", None)
        elif cid not in cache:
            d.history_chats[cid] = chat
            cache.add(cid)
            _absorb(d, chat)
    for contact in data.get("contacts") or ():
        cid = contact["id"]
        existing = d.history_contacts.get(cid)
        if existing is not None:
            _fold_non_null(existing, contact)
        else:
            hid = "c:" + cid
            if (
                hid not in cache
                or contact.get("notify")
                or contact.get("name")
                or contact.get("verifiedName")
            ):
                d.history_contacts[cid] = contact
                cache.add(hid)
    for msg in data.get("messages") or ():
        ks = key_str(msg["key"])
        if ks not in d.history_messages and ks not in cache:
            d.history_messages[ks] = msg
            cache.add(ks)
    if data.get("isLatest"):
        d.history_is_latest = True
    for field in HISTORY_META:
        if field in data:
            d.history_meta[field] = data[field]


def _chats_upsert(d: BufferedData, cache: HistoryCache, data: list[Any]) -> None:
    for chat in data:
        cid = chat["id"]
        existing = d.chat_upserts.get(cid)
        if existing is None:
            existing = d.history_chats.get(cid)
        if existing is not None:
            merge_chat(existing, chat)
        else:
            d.chat_upserts[cid] = existing = chat
        if cid in d.chat_updates or cid in d.chat_conditionals:
            _absorb(d, existing)
        d.chat_deletes.pop(cid, None)


def _chats_update(d: BufferedData, cache: HistoryCache, data: list[Any]) -> None:
    for upd in data:
        cid = upd["id"]
        cond = upd.get("conditional")
        decided = True if cond is None else _decide(cond, d)
        if decided:
            upd.pop("conditional", None)
            existing = d.history_chats.get(cid)
            if existing is None:
                existing = d.chat_upserts.get(cid)
            if existing is None:
                existing = d.chat_updates.get(cid)
            if existing is None:
                d.chat_updates[cid] = merge_chat({}, upd)
            else:
                merge_chat(existing, upd)
        elif decided is None:
            conds = d.chat_conditionals.get(cid)
            if conds is None:
                d.chat_conditionals[cid] = [upd]
            else:
                conds.append(upd)
        d.chat_deletes.pop(cid, None)


def _chats_delete(d: BufferedData, cache: HistoryCache, data: list[Any]) -> None:
    for cid in data:
        d.chat_deletes[cid] = None
        d.chat_updates.pop(cid, None)
        d.chat_conditionals.pop(cid, None)
        d.chat_upserts.pop(cid, None)
        d.history_chats.pop(cid, None)


def _contacts_upsert(d: BufferedData, cache: HistoryCache, data: list[Any]) -> None:
    for contact in data:
        cid = contact["id"]
        existing = d.contact_upserts.get(cid)
        if existing is None:
            existing = d.history_contacts.get(cid)
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


def _contacts_update(d: BufferedData, cache: HistoryCache, data: list[Any]) -> None:
    for upd in data:
        cid = upd["id"]
        existing = d.history_contacts.get(cid)
        if existing is None:
            existing = d.contact_upserts.get(cid)
        if existing is None:
            existing = d.contact_updates.get(cid)
            if existing is None:
                d.contact_updates[cid] = dict(upd)
                continue
        existing.update(upd)


def _messages_upsert(d: BufferedData, cache: HistoryCache, data: Obj) -> None:
    upserts = d.message_upserts
    history = d.history_messages
    for msg in data["messages"]:
        ks = key_str(msg["key"])
        existing = upserts.get(ks)
        if existing is None:
            existing = history.get(ks)
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
    d.message_upsert_type = data.get("type")


def _messages_update(d: BufferedData, cache: HistoryCache, data: list[Any]) -> None:
    for item in data:
        key = item["key"]
        update = item["update"]
        ks = key_str(key)
        existing = d.history_messages.get(ks)
        if existing is None:
            existing = d.message_upserts.get(ks)
        if existing is not None:
            existing.update(update)
            if update.get("status") == _READ and not key.get("fromMe"):
                _decrement_unread(d, existing)
        else:
            pending = d.message_updates.get(ks)
            if pending is None:
                d.message_updates[ks] = {"key": key, "update": Obj(update)}
            else:
                pending["update"].update(update)


def _messages_delete(d: BufferedData, cache: HistoryCache, data: Obj) -> None:
    for key in data["keys"]:
        ks = key_str(key)
        if ks not in d.message_deletes:
            d.message_deletes[ks] = key
        d.message_upserts.pop(ks, None)
        d.message_updates.pop(ks, None)


def _messages_reaction(d: BufferedData, cache: HistoryCache, data: list[Any]) -> None:
    for item in data:
        key = item["key"]
        reaction = item["reaction"]
        ks = key_str(key)
        holder = d.message_upserts.get(ks)
        if holder is not None:
            _add_reaction(holder, reaction, False)
            continue
        holder = d.message_reactions.get(ks)
        if holder is None:
            holder = d.message_reactions[ks] = {"key": key, "reactions": []}
        _add_reaction(holder, reaction, True)


def _message_receipts(d: BufferedData, cache: HistoryCache, data: list[Any]) -> None:
    for item in data:
        key = item["key"]
        receipt = item["receipt"]
        ks = key_str(key)
        holder = d.message_upserts.get(ks)
        if holder is None:
            holder = d.message_receipts.get(ks)
            if holder is None:
                holder = d.message_receipts[ks] = {"key": key, "userReceipt": []}
        _add_receipt(holder, receipt)


def _groups_update(d: BufferedData, cache: HistoryCache, data: list[Any]) -> None:
    for upd in data:
        gid = upd["id"]
        existing = d.group_updates.get(gid)
        if existing is None:
            d.group_updates[gid] = dict(upd)
        else:
            existing.update(upd)


_MERGERS: dict[str, Callable[[BufferedData, HistoryCache, Any], None]] = {
    "messaging-history.set": _history_set,
    "chats.upsert": _chats_upsert,
    "chats.update": _chats_update,
    "chats.delete": _chats_delete,
    "contacts.upsert": _contacts_upsert,
    "contacts.update": _contacts_update,
    "messages.upsert": _messages_upsert,
    "messages.update": _messages_update,
    "messages.delete": _messages_delete,
    "messages.reaction": _messages_reaction,
    "message-receipt.update": _message_receipts,
    "groups.update": _groups_update,
}
events.check_covers(_MERGERS, "the pure core's merge rules")


def _is_empty(event: str, data: Any) -> bool:
    """True for a payload with nothing in it (never delivered, never merged)."""
    if data is None:
        return True
    if type(data) is list:
        return not data
    if type(data) is not dict:
        return False
    if event == "messages.upsert":
        return not data.get("messages")
    if event == "messaging-history.set":
        return not (data.get("chats") or data.get("contacts") or data.get("messages"))
    if event == "messages.delete":
        return not (data.get("keys") or data.get("all"))
    return not data


def _consolidate(d: BufferedData) -> dict[str, Any]:
    """Turn the pending batch into ``{event: payload}`` in release order, and
    empty it for the next one.

    Undecided conditional updates are asked once more; those still undecided
    stay in ``d`` (carried into the next batch, unreleased). The mappings are
    emptied in place, as the compiled core does: whoever holds one sees it empty.
    """
    carry: dict[str, list[Obj]] = {}
    if d.chat_conditionals:
        for cid, conds in d.chat_conditionals.items():
            for upd in conds:
                decided = _decide(upd["conditional"], d)
                if decided:
                    del upd["conditional"]
                    existing = d.chat_updates.get(cid)
                    if existing is None:
                        d.chat_updates[cid] = merge_chat({}, upd)
                    else:
                        merge_chat(existing, upd)
                elif decided is None:
                    carry.setdefault(cid, []).append(upd)
        d.chat_conditionals = carry
    out: dict[str, Any] = {}
    if d.history_chats or d.history_contacts or d.history_messages:
        history = {
            "chats": list(d.history_chats.values()),
            "contacts": list(d.history_contacts.values()),
            "messages": list(d.history_messages.values()),
            "isLatest": d.history_is_latest,
        }
        history.update(d.history_meta)
        out["messaging-history.set"] = history
        d.history_chats.clear()
        d.history_contacts.clear()
        d.history_messages.clear()
    # a set that deduplicated to nothing still ends here: its flags never reach the next
    d.history_is_latest = False
    d.history_meta.clear()
    if d.chat_upserts:
        out["chats.upsert"] = list(d.chat_upserts.values())
        d.chat_upserts.clear()
    if d.chat_updates:
        out["chats.update"] = list(d.chat_updates.values())
        d.chat_updates.clear()
    if d.chat_deletes:
        out["chats.delete"] = list(d.chat_deletes)
        d.chat_deletes.clear()
    if d.message_upserts:
        out["messages.upsert"] = {
            "messages": list(d.message_upserts.values()),
            "type": d.message_upsert_type,
        }
        d.message_upserts.clear()
    d.message_upsert_type = None
    if d.message_updates:
        out["messages.update"] = list(d.message_updates.values())
        d.message_updates.clear()
    if d.message_deletes:
        out["messages.delete"] = {"keys": list(d.message_deletes.values())}
        d.message_deletes.clear()
    if d.message_reactions:
        out["messages.reaction"] = [
            {"key": e["key"], "reaction": r}
            for e in d.message_reactions.values()
            for r in e["reactions"]
        ]
        d.message_reactions.clear()
    if d.message_receipts:
        out["message-receipt.update"] = [
            {"key": e["key"], "receipt": r}
            for e in d.message_receipts.values()
            for r in e["userReceipt"]
        ]
        d.message_receipts.clear()
    if d.contact_upserts:
        out["contacts.upsert"] = list(d.contact_upserts.values())
        d.contact_upserts.clear()
    if d.contact_updates:
        out["contacts.update"] = list(d.contact_updates.values())
        d.contact_updates.clear()
    if d.group_updates:
        out["groups.update"] = list(d.group_updates.values())
        d.group_updates.clear()
    return out


# -- handlers and settlement ----------------------------------------------------------


class Listener:
    """One registered handler: ``fn``, called inline, or, while ``runner`` is set
    (an async handler, or a sync one retrying), queued with ``runner.submit(args,
    settlement)``. A sync call that raises is handed to ``failed(listener, args,
    settlement, exc)``, which may set ``runner`` (the facade's retry policy)."""

    __slots__ = ("failed", "fn", "runner", "with_seqs")

    def __init__(self, fn: Callable[..., object], with_seqs: bool, runner: Any = None,
                 failed: Any = None) -> None:
        self.fn = fn
        self.with_seqs = with_seqs
        self.runner = runner
        self.failed = failed


class Settlement:
    """A release whose seqs are processed once its async handler calls finish."""

    __slots__ = ("core", "created", "pending", "seqs")

    def __init__(self, core: BufferCore, seqs: range) -> None:
        self.core = core
        self.seqs = seqs
        self.pending = 0
        self.created = time.monotonic()

    def done(self) -> None:
        """One async handler call finished with this release."""
        self.pending -= 1
        if not self.pending:
            self.core._settle_ready()


_NO_SEQS = range(0)


class BufferCore:
    """Everything one event touches: buffering state, merge, release, dispatch.

    The facade (``rsocket.buffer.EventBuffer``) holds one and adds the timer,
    logs and metrics. The core calls the application's handlers itself (sync
    ones inline, async ones through their runner), counts its releases, and
    reports processed seqs through ``on_settled``; it never calls back into
    the facade, except ``observer(reason, items)`` after a release when the
    facade asked for it (lifecycle lines).
    """

    def __init__(self, max_history_cache: int, max_buffer_items: int) -> None:
        self.depth = 0
        self.destroyed = False
        #: merged emit() calls in the pending batch
        self.items = 0
        #: when the pending batch got its first item (time.monotonic)
        self.oldest = 0.0
        self.batch_listeners: list[Listener] = []
        self.event_listeners: dict[str, list[Listener]] = {}
        self.on_settled: Callable[[range], None] | None = None
        #: the log session of the seqs, given to handlers with them (``Seqs``)
        self.epoch = ""
        #: ``fence() -> token | None``: a release is delivered only while it gives a
        #: token (a worker's lease, proven at delivery); None: no fence
        self.fence: Callable[[], int | None] | None = None
        self.observer: Callable[[str, int], None] | None = None
        #: releases that were not empty; of them forced (not a flush() at depth 0)
        self.flushes = 0
        self.forced_flushes = 0
        self.items_flushed = 0
        self.overflows = 0
        #: events emitted into the destroyed core
        self.dropped = 0
        #: release durations: counts per FLUSH_BUCKETS bound (+Inf last), and their sum
        self.flush_buckets = [0] * (len(FLUSH_BUCKETS) + 1)
        self.flush_seconds = 0.0
        self._max_items = max_buffer_items
        self._first_seq = -1
        self._last_seq = -1
        self._data = BufferedData()
        self._cache = HistoryCache(max_history_cache)
        # releases waiting to settle in order (made when one must wait)
        self._settling: deque[Settlement] | None = None

    @property
    def pending(self) -> BufferedData:
        """The batch being buffered (what a conditional update sees)."""
        return self._data

    def cache_size(self) -> int:
        return len(self._cache)

    def cache_evicted(self) -> int:
        return self._cache.evicted

    def take_counters(self) -> dict[str, Any]:
        """This core's counters (release counts, durations, drops), zeroed: the
        facade adds a destroyed buffer's to the process-wide totals."""
        taken = {"flushes": self.flushes, "forced_flushes": self.forced_flushes,
                 "items_flushed": self.items_flushed, "overflows": self.overflows,
                 "dropped": self.dropped, "flush_seconds": self.flush_seconds,
                 "flush_buckets": self.flush_buckets}
        self.flushes = self.forced_flushes = self.items_flushed = self.overflows = 0
        self.dropped = 0
        self.flush_seconds = 0.0
        self.flush_buckets = [0] * len(self.flush_buckets)
        return taken

    def oldest_settling(self) -> float:
        """When the oldest release still waiting for async handlers was made (0.0: none)."""
        return self._settling[0].created if self._settling else 0.0

    # -- the per-event path ------------------------------------------------------------

    def emit(self, event: str, data: Any, seq: int | None = None) -> bool:
        """Merge ``event`` into the pending batch, or deliver it at once.

        Returns True when the event was merged or delivered, False when it was
        dropped (destroyed buffer, or nothing in it). Handler exceptions from
        a release this call triggered are raised after the event is merged.
        """
        if self.destroyed:
            self.dropped += 1
            return False
        if seq is not None and not 0 <= seq < SEQ_LIMIT:
            raise ValueError(f"seq {seq!r} out of range: expected 0 <= seq < 2**63")
        if _is_empty(event, data):
            return False
        merge = _MERGERS.get(event) if self.depth else None
        if merge is None:
            first = -1 if seq is None else seq
            errors = self._dispatch({event: data}, first, first)
            if errors:
                _raise(errors)
            return True
        errors = []
        if event == "messages.delete" and type(data) is dict and data.get("all"):
            # what handlers emit during this release was emitted after the delete:
            # it stays pending, for the next release
            errors += self._release("barrier")
            if not self.destroyed:
                first = -1 if seq is None else seq
                errors += self._dispatch({event: data}, first, first)
            return self._after_release(errors)
        # Release until the event fits: a handler that emits during a release may
        # refill the batch or change its upsert type, so both checks run again.
        is_upsert = event == "messages.upsert" and type(data) is dict
        upsert_type = data.get("type") if is_upsert else None
        while True:
            pending = self._data
            if is_upsert and pending.message_upserts and upsert_type != pending.message_upsert_type:
                errors += self._release("type_mismatch")
            elif self.items >= self._max_items:
                errors += self._release("overflow")
            else:
                break
        if self.destroyed:  # a handler destroyed the buffer during a release
            return self._after_release(errors)
        if not self.items:
            self.oldest = time.monotonic()
        self.items += 1
        if seq is not None:
            if self._first_seq < 0:
                self._first_seq = seq
            self._last_seq = seq
        try:
            merge(self._data, self._cache, data)
        except (TypeError, KeyError, AttributeError) as exc:
            bad = TypeError(f"invalid {event!r} payload: {type(exc).__name__}: {exc}")
            bad.__cause__ = exc
            _raise([*errors, bad])
        if errors:
            _raise(errors)
        return True

    def ingest(
        self, first: int, frame_events: list[Any], scoped: bool, received: int
    ) -> tuple[int, int, list[tuple[int, str, str]] | None, list[Exception] | None]:
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
        duplicates = 0
        invalid: list[tuple[int, str, str]] | None = None
        errors: list[Exception] | None = None
        if scoped:
            self.depth += 1
        seq = first
        for item in frame_events:
            if seq <= received:
                duplicates += 1
                seq += 1
                continue
            received = seq
            name = item.name
            data = item.data
            reason = validate(name, data)
            if reason is not None:
                if invalid is None:
                    invalid = []
                invalid.append((seq, name, reason))
                if self.on_settled is not None:
                    self.on_settled(range(seq, seq + 1))
                seq += 1
                continue
            if name == events.CONNECTION_UPDATE:
                data = {**data, "upstream": True}
            try:
                merged = self.emit(name, data, seq)
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
                try:
                    self.release("flush")
                except Exception as exc:
                    errors = _collect(errors, exc)
        return received, duplicates, invalid, errors

    # -- scopes and releases --------------------------------------------------------------

    def buffer(self) -> bool:
        """Open (or nest) a scope; True when it is the outermost one."""
        if self.destroyed:
            return False
        self.depth += 1
        return self.depth == 1

    def flush(self, force: bool = False) -> bool:
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

    def release(self, reason: str) -> None:
        """Release the pending batch now (depth untouched); raise handler errors."""
        errors = self._release(reason)
        if errors:
            _raise(errors)

    def destroy(self) -> tuple[bool, list[Exception], int]:
        """Stop for good: release what is pending (a final flush, handler errors
        collected, not raised), then drop listeners, batch and history cache.

        Returns ``(had_pending, errors, undecided)``: ``undecided`` conditional
        chat updates are dropped (they can no longer be decided).
        """
        if self.destroyed:
            return False, [], 0
        self.destroyed = True  # emits from the final flush's handlers are dropped
        had_pending = bool(self.items or self._data.chat_conditionals)
        errors: list[Exception] = []
        undecided = 0
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
        return had_pending, errors, undecided

    def _after_release(self, errors: list[Exception]) -> bool:
        """End an ``emit`` whose event was delivered (or dropped, if a handler
        destroyed the buffer meanwhile): raise what the handlers raised."""
        dropped = self.destroyed
        if dropped:
            self.dropped += 1
        if errors:
            _raise(errors)
        return not dropped

    def _release(self, reason: str) -> list[Exception]:
        started = time.perf_counter()
        items, first, last = self.items, self._first_seq, self._last_seq
        self.items = 0
        self._first_seq = self._last_seq = -1
        batch = _consolidate(self._data)
        # an empty batch (e.g. only undecided conditionals) calls no handler, but its
        # seqs are still processed
        errors = self._dispatch(batch, first, last) if batch or first >= 0 else []
        if batch:
            self.flushes += 1
            if reason != "flush":
                self.forced_flushes += 1
                if reason == "overflow":
                    self.overflows += 1
            self.items_flushed += items
            elapsed = time.perf_counter() - started
            self.flush_seconds += elapsed
            self.flush_buckets[bisect_left(FLUSH_BUCKETS, elapsed)] += 1
            if self.observer is not None:
                self.observer(reason, items)
        return errors

    def _dispatch(self, batch: dict[str, Any], first: int, last: int) -> list[Exception]:
        """Call the handlers: batch handlers first, then per-event ones in release order.

        ``first``..``last`` are the release's seqs (-1: none)."""
        token = None
        if self.fence is not None:
            token = self.fence()
            if token is None:
                return []  # not ours to deliver now: unsettled, the lease's new owner will
        seqs = range(first, last + 1) if first >= 0 else _NO_SEQS
        settlement = Settlement(self, seqs) if first >= 0 and self.on_settled is not None else None
        errors: list[Exception] = []
        handed: Seqs | None = None  # what with_seqs handlers get: made once, when needed
        for listener in self.batch_listeners[:] if batch else ():  # a handler may (un)subscribe meanwhile
            args: tuple[Any, ...] = (batch,)
            if listener.with_seqs:
                if handed is None:
                    handed = Seqs(seqs.start, seqs.stop, self.epoch, token)
                args = (batch, handed)
            try:
                if listener.runner is not None:
                    listener.runner.submit(args, settlement)
                else:
                    listener.fn(*args)
            except Exception as exc:
                errors.append(exc)
                if listener.runner is None and listener.failed is not None:
                    listener.failed(listener, args, settlement, exc)
        if batch and self.event_listeners:
            for name, payload in batch.items():
                for listener in self.event_listeners.get(name, ())[:]:
                    try:
                        if listener.runner is not None:
                            listener.runner.submit((payload,), settlement)
                        else:
                            listener.fn(payload)
                    except Exception as exc:
                        errors.append(exc)
                        if listener.runner is None and listener.failed is not None:
                            listener.failed(listener, (payload,), settlement, exc)
        if settlement is not None:
            on_settled = self.on_settled
            if not settlement.pending and not self._settling and on_settled is not None:
                on_settled(seqs)  # nothing async, nothing earlier waiting: settled now
            else:
                if self._settling is None:  # made when one must wait: idle buffers hold none
                    self._settling = deque()
                self._settling.append(settlement)
                self._settle_ready()
        return errors

    def _settle_ready(self) -> None:
        settling = self._settling
        while settling and settling[0].pending == 0:
            seqs = settling.popleft().seqs
            if self.on_settled is not None:
                self.on_settled(seqs)


def _collect(errors: list[Exception] | None, exc: Exception) -> list[Exception]:
    found = list(exc.exceptions) if isinstance(exc, ExceptionGroup) else [exc]
    return found if errors is None else errors + found


def _raise(errors: list[Exception]) -> None:
    if len(errors) == 1:
        raise errors[0]
    raise ExceptionGroup(f"{len(errors)} event handlers raised", errors)
