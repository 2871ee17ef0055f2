"""Pure-Python merge core of the event buffer (twin of ``_buffer.pyx``).

Everything a single buffered event touches lives here: the dispatch from
``emit()`` into the merge rules of SPEC section 4, consolidation at release and
the history cache. ``rsocket.buffer.EventBuffer`` subclasses :class:`BufferCore`
and adds handlers, timers and logging, which only run at releases.

The compiled core in ``_buffer.pyx`` implements the same names with the same
behaviour; the test suite runs over both.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeGuard

from . import events

__all__ = [
    "BUFFERABLE_EVENTS",
    "SEQ_LIMIT",
    "BufferCore",
    "BufferedData",
    "HistoryCache",
    "key_str",
    "merge_chat",
]

BUFFERABLE_EVENTS = frozenset(events.BUFFERABLE_EVENTS)

#: a decoded payload object (chat, contact, message, key...)
Obj = dict[str, Any]

_log = logging.getLogger("rsocket.buffer")
SEQ_LIMIT = 1 << 63  # seqs are 0 <= seq < 2**63 (a C long long in the compiled core)
_READ = 4  # MessageStatus.READ
# Baileys' normalizeMessageContent unwraps the first present of these, in this order
_WRAPPERS = (
    "ephemeralMessage",
    "viewOnceMessage",
    "documentWithCaptionMessage",
    "viewOnceMessageV2",
    "viewOnceMessageV2Extension",
    "editedMessage",
)
_NOT_REAL = ("protocolMessage", "reactionMessage", "pollUpdateMessage")


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
        self._keys = set()
        self._ring = []
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
    for field in ("syncType", "progress", "peerDataRequestSessionId"):
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


def _consolidate(d: BufferedData, carry: BufferedData) -> dict[str, Any]:
    """Turn the pending batch into ``{event: payload}`` in release order.

    Undecided conditional updates are asked once more; those still undecided
    move to ``carry`` (the next pending batch).
    """
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
                    carry.chat_conditionals.setdefault(cid, []).append(upd)
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
    if d.chat_upserts:
        out["chats.upsert"] = list(d.chat_upserts.values())
    if d.chat_updates:
        out["chats.update"] = list(d.chat_updates.values())
    if d.chat_deletes:
        out["chats.delete"] = list(d.chat_deletes)
    if d.message_upserts:
        out["messages.upsert"] = {
            "messages": list(d.message_upserts.values()),
            "type": d.message_upsert_type,
        }
    if d.message_updates:
        out["messages.update"] = list(d.message_updates.values())
    if d.message_deletes:
        out["messages.delete"] = {"keys": list(d.message_deletes.values())}
    if d.message_reactions:
        out["messages.reaction"] = [
            {"key": e["key"], "reaction": r}
            for e in d.message_reactions.values()
            for r in e["reactions"]
        ]
    if d.message_receipts:
        out["message-receipt.update"] = [
            {"key": e["key"], "receipt": r}
            for e in d.message_receipts.values()
            for r in e["userReceipt"]
        ]
    if d.contact_upserts:
        out["contacts.upsert"] = list(d.contact_upserts.values())
    if d.contact_updates:
        out["contacts.update"] = list(d.contact_updates.values())
    if d.group_updates:
        out["groups.update"] = list(d.group_updates.values())
    return out


class BufferCore:
    """Buffering state and the per-event path of ``EventBuffer``.

    Subclasses provide the release-time hooks ``_release(reason)``,
    ``_deliver(event, data, seq)`` (both return the handler exceptions they
    collected), ``_raise(errors)`` and ``_dropped(event)``.
    """

    _depth: int
    _destroyed: bool
    _items: int
    _oldest: float

    def __init__(self, max_history_cache: int, max_buffer_items: int) -> None:
        self._depth = 0
        self._destroyed = False
        self._items = 0
        self._max_items = max_buffer_items
        self._first_seq = -1
        self._last_seq = -1
        self._oldest = 0.0
        self._data = BufferedData()
        self._cache = HistoryCache(max_history_cache)

    # hooks implemented by the facade
    def _release(self, reason: str) -> list[BaseException]:
        raise NotImplementedError

    def _deliver(self, event: str, data: Any, seq: int | None) -> list[BaseException]:
        raise NotImplementedError

    def _raise(self, errors: list[BaseException]) -> None:
        raise NotImplementedError

    def _dropped(self, event: str) -> None:
        raise NotImplementedError

    @property
    def pending(self) -> BufferedData:
        """The batch being buffered (what a conditional update sees)."""
        return self._data

    def emit(self, event: str, data: Any, seq: int | None = None) -> bool:
        """Merge ``event`` into the pending batch, or deliver it at once.

        Returns True when the event was merged or delivered, False when it was
        dropped (destroyed buffer, or nothing in it). Handler exceptions from
        a release this call triggered are raised after the event is merged.
        """
        if self._destroyed:
            self._dropped(event)
            return False
        if seq is not None and not 0 <= seq < SEQ_LIMIT:
            raise ValueError(f"seq {seq!r} out of range: expected 0 <= seq < 2**63")
        if _is_empty(event, data):
            return False
        merge = _MERGERS.get(event) if self._depth else None
        if merge is None:
            delivered = self._deliver(event, data, seq)
            if delivered:
                self._raise(delivered)
            return True
        errors: list[BaseException] = []
        if event == "messages.delete" and type(data) is dict and data.get("all"):
            errors += self._release("barrier")
            while self._items:  # a handler emitted during that release: it goes first
                errors += self._release("barrier")
            if not self._destroyed:
                errors += self._deliver(event, data, seq)
            return self._after_release(event, errors)
        # Release until the event fits: a handler that emits during a release may
        # refill the batch or change its upsert type, so both checks run again.
        is_upsert = event == "messages.upsert" and type(data) is dict
        upsert_type = data.get("type") if is_upsert else None
        while True:
            pending = self._data
            if is_upsert and pending.message_upserts and upsert_type != pending.message_upsert_type:
                errors += self._release("type_mismatch")
            elif self._items >= self._max_items:
                errors += self._release("overflow")
            else:
                break
        if self._destroyed:  # a handler destroyed the buffer during a release
            return self._after_release(event, errors)
        if not self._items:
            self._oldest = time.monotonic()
        self._items += 1
        if seq is not None:
            if self._first_seq < 0:
                self._first_seq = seq
            self._last_seq = seq
        try:
            merge(self._data, self._cache, data)
        except (TypeError, KeyError, AttributeError) as exc:
            bad = TypeError(f"invalid {event!r} payload: {type(exc).__name__}: {exc}")
            bad.__cause__ = exc
            self._raise([*errors, bad])
        if errors:
            self._raise(errors)
        return True

    def _after_release(self, event: str, errors: list[BaseException]) -> bool:
        """End an ``emit`` whose event was delivered (or dropped, if a handler
        destroyed the buffer meanwhile): raise what the handlers raised."""
        dropped = self._destroyed
        if dropped:
            self._dropped(event)
        if errors:
            self._raise(errors)
        return not dropped

    def _take(self) -> tuple[dict[str, Any], int, int, int]:
        """Swap the pending batch out; return (batch, items, first_seq, last_seq)."""
        data = self._data
        self._data = carry = BufferedData()
        items, first, last = self._items, self._first_seq, self._last_seq
        self._items = 0
        self._first_seq = self._last_seq = -1
        return _consolidate(data, carry), items, first, last

    def _cache_size(self) -> int:
        return len(self._cache)

    def _cache_evicted(self) -> int:
        return self._cache.evicted

    def _reset(self) -> None:
        """Forget the pending batch and the history cache (destroy)."""
        self._data = BufferedData()
        self._cache.clear()
        self._items = 0
        self._first_seq = self._last_seq = -1
