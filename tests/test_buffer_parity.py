"""Differential test: the compiled and the pure merge core release the same batches.

Random scenarios (history sets with repeated ids, conditional chat updates,
deletes and the ``{jid, all: true}`` barrier, reactions, receipts, upsert type
changes, unbufferable events, empty payloads) interleaved with ``buffer()``,
``flush()`` and ``flush(force=True)`` run on one buffer per core, with small
``max_buffer_items`` and history caches so overflow and eviction happen often.
Each core gets its own payloads, built from the same drawn values (merging
mutates them). Released batches (equal, and equal ``repr`` at release time, so
order and types match too), ``emit()`` results, ``stats()`` and the pending
batch as ``ev.pending`` shows it after every step must be identical.
"""

from __future__ import annotations

import importlib
from typing import Any

import msgspec
import pytest

pytest.importorskip("hypothesis")

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from rsocket.buffer import BufferConfig, event_buffer_class

pytestmark = pytest.mark.c_extension

CHATS = ["5511900000000@s.whatsapp.net", "5511900000001@s.whatsapp.net", "120363000000000001@g.us"]
USERS = ["5511911111110@s.whatsapp.net", "5511911111111@s.whatsapp.net"]
N_KEYS = 6
STATUS_READ = 4

# -- payloads (pure functions of the drawn values) --------------------------------------


def message_key(k: int) -> dict[str, Any]:
    jid = CHATS[k % len(CHATS)]
    key: dict[str, Any] = {"remoteJid": jid, "id": f"M{k}", "fromMe": k % 4 == 3}
    if jid.endswith("@g.us"):
        key["participant"] = USERS[k % 2]
    return key


CONTENTS = [
    lambda k: {"conversation": f"hi {k}"},
    lambda k: {"ephemeralMessage": {"message": {"extendedTextMessage": {"text": "x"}}}},
    lambda k: {"protocolMessage": {"type": 0}},
    lambda k: {"messageContextInfo": {}},
]


def message(k: int, variant: int, stamp: int | None) -> dict[str, Any]:
    msg: dict[str, Any] = {"key": message_key(k), "message": CONTENTS[variant % 4](k)}
    if stamp is not None:
        msg["messageTimestamp"] = stamp
    if variant == 4:
        msg["messageStubType"] = 1
    return msg


def chat(i: int, unread: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"id": CHATS[i], "name": f"chat {i}"}
    if unread != "absent":
        out["unreadCount"] = unread
    return out


def _when_stored(cid: str):
    def decide(d: Any) -> bool | None:
        return True if cid in d.chat_upserts or cid in d.history_chats else None

    return decide


CONDITIONS: dict[Any, Any] = {
    True: lambda d: True,
    False: lambda d: False,
    None: lambda d: None,
    **{("stored", cid): _when_stored(cid) for cid in CHATS},
}


def payload(op: tuple) -> Any:
    """``(event, data)`` for ``op``, or a list of them."""
    kind = op[0]
    if kind == "history":
        _, chats, contacts, msgs, latest, eoh = op
        out = {
            "chats": [chat(i, u) for i, u in chats],
            "contacts": [
                {"id": USERS[c % 2], "notify": None if c > 1 else f"n{c}"} for c in contacts
            ],
            "messages": [message(k, v, 100 + k) for k, v in msgs],
            "isLatest": latest,
            "syncType": 2,
        }
        if eoh:
            for c in out["chats"]:
                c["endOfHistoryTransferType"] = 1
        return "messaging-history.set", out
    if kind == "chats.upsert":
        return kind, [chat(i, u) for i, u in op[1]]
    if kind == "chats.update":
        _, i, unread, cond = op
        upd = chat(i, unread)
        del upd["name"]
        upd["pinned"] = unread
        if cond != "absent":
            upd["conditional"] = CONDITIONS[("stored", CHATS[i]) if cond == "stored" else cond]
        return kind, [upd]
    if kind == "chats.delete":
        return kind, [CHATS[i] for i in op[1]]
    if kind == "messages.upsert":
        _, msgs, type_ = op
        return kind, {"messages": [message(k, v, s) for k, v, s in msgs], "type": type_}
    if kind == "messages.update":
        _, k, status = op
        return kind, [{"key": message_key(k), "update": {"status": status}}]
    if kind == "messages.delete":
        return kind, {"keys": [message_key(k) for k in op[1]]}
    if kind == "delete-all":
        return "messages.delete", {"jid": CHATS[op[1]], "all": True}
    if kind == "messages.reaction":
        _, k, author, text = op
        reaction: dict[str, Any] = {
            "key": {"remoteJid": USERS[author % 2], "id": f"R{k}", "fromMe": author == 2},
        }
        if text is not None:
            reaction["text"] = text
        return kind, [{"key": message_key(k), "reaction": reaction}]
    if kind == "message-receipt.update":
        _, k, user, stamp = op
        receipt = {"userJid": USERS[user], "readTimestamp": stamp}
        return kind, [{"key": message_key(k), "receipt": receipt}]
    if kind == "contacts.upsert":
        _, c, name = op
        return kind, [{"id": USERS[c], "name": name, "notify": "x"}]
    if kind == "contacts.update":
        return kind, [{"id": USERS[op[1]], "imgUrl": f"u{op[2]}"}]
    if kind == "groups.update":
        return kind, [{"id": CHATS[2], "subject": f"s{op[1]}"}]
    if kind == "presence.update":
        return kind, {"id": CHATS[0], "presences": {}}
    if kind == "unread":  # three events in a row: a chat, a message in it, a read receipt
        _, k, count, variant, via_update = op
        cid = CHATS[k % len(CHATS)]
        first = (
            ("chats.update", [{"id": cid, "unreadCount": count}])
            if via_update
            else ("chats.upsert", [{"id": cid, "unreadCount": count}])
        )
        return [
            first,
            ("messages.upsert", {"messages": [message(k, variant, None)], "type": "notify"}),
            ("messages.update", [{"key": message_key(k), "update": {"status": STATUS_READ}}]),
        ]
    if kind == "empty":
        return op[1], [] if op[1] != "messages.upsert" else {"messages": [], "type": "notify"}
    raise AssertionError(kind)


# -- strategies ----------------------------------------------------------------------------

key_idx = st.integers(0, N_KEYS - 1)
chat_idx = st.integers(0, len(CHATS) - 1)
unread = st.sampled_from(["absent", None, -1, 0, 2, 3])
msg_ref = st.tuples(key_idx, st.integers(0, 4))

OPS = st.one_of(
    st.just(("buffer",)),
    st.just(("buffer",)),
    st.just(("flush",)),
    st.just(("force",)),
    st.tuples(
        st.just("history"),
        st.lists(st.tuples(chat_idx, unread), max_size=4),
        st.lists(st.integers(0, 3), max_size=3),
        st.lists(msg_ref, max_size=4),
        st.booleans(),
        st.booleans(),
    ),
    st.tuples(
        st.just("chats.upsert"), st.lists(st.tuples(chat_idx, unread), min_size=1, max_size=2)
    ),
    st.tuples(
        st.just("chats.update"),
        chat_idx,
        unread,
        st.sampled_from(["absent", True, False, None, "stored"]),
    ),
    st.tuples(st.just("chats.delete"), st.lists(chat_idx, min_size=1, max_size=2)),
    st.tuples(
        st.just("messages.upsert"),
        st.lists(
            st.tuples(key_idx, st.integers(0, 4), st.sampled_from([None, 7, 9])),
            min_size=1,
            max_size=2,
        ),
        st.sampled_from(["notify", "append"]),
    ),
    st.tuples(st.just("messages.update"), key_idx, st.sampled_from([2, 3, 5])),
    st.tuples(st.just("messages.update"), key_idx, st.just(STATUS_READ)),
    st.tuples(st.just("messages.update"), key_idx, st.just(STATUS_READ)),
    st.tuples(st.just("messages.delete"), st.lists(key_idx, min_size=1, max_size=2)),
    st.tuples(st.just("delete-all"), chat_idx),
    st.tuples(
        st.just("messages.reaction"), key_idx, st.integers(0, 2), st.sampled_from(["👍", "", None])
    ),
    st.tuples(st.just("message-receipt.update"), key_idx, st.integers(0, 1), st.integers(0, 3)),
    st.tuples(st.just("contacts.upsert"), st.integers(0, 1), st.sampled_from([None, "Ana"])),
    st.tuples(st.just("contacts.update"), st.integers(0, 1), st.integers(0, 2)),
    st.tuples(st.just("groups.update"), st.integers(0, 2)),
    st.tuples(st.just("unread"), key_idx, st.integers(0, 2), st.integers(0, 4), st.booleans()),
    st.just(("presence.update",)),
    st.tuples(st.just("empty"), st.sampled_from(["chats.upsert", "messages.upsert"])),
)


# -- the differential run ------------------------------------------------------------------


PENDING = ("history_chats", "history_contacts", "history_messages", "chat_upserts",
           "chat_updates", "chat_deletes", "contact_upserts", "contact_updates",
           "message_upserts", "message_updates", "message_deletes", "message_reactions",
           "message_receipts", "group_updates")


def pending_state(ev: Any) -> tuple[Any, ...]:
    """What the API shows of the pending batch (``ev.pending``), as plain values."""
    d = ev.pending
    return (*(repr(getattr(d, name)) for name in PENDING),
            {cid: len(conds) for cid, conds in d.chat_conditionals.items()},
            d.history_is_latest, d.message_upsert_type)


def as_received(data: Any) -> Any:
    """``data`` as a socket hands it over: decoded by msgspec, whose field-name
    objects the compiled core compares by pointer (a payload holding a
    conditional's callable cannot travel, and stays as it is)."""
    try:
        return msgspec.msgpack.decode(msgspec.msgpack.encode(data))
    except TypeError:
        return data


def run(core: Any, ops: list[tuple], max_items: int, max_cache: int,
        decoded: bool = False) -> list[Any]:
    """Feed ``ops`` to a fresh buffer on ``core``; return everything observable."""
    ev = event_buffer_class(core)(
        config=BufferConfig(
            max_buffer_items=max_items, max_history_cache=max_cache, auto_flush=False
        ),
    )
    seen: list[Any] = []
    ev.process(lambda batch: seen.append((repr(batch), batch)))
    for op in ops:
        if op[0] == "buffer":
            result: Any = ev.buffer()
        elif op[0] in ("flush", "force"):
            result = ev.flush(force=op[0] == "force")
        else:
            events = payload(op)
            if isinstance(events, tuple):
                events = [events]
            result = [ev.emit(name, as_received(data) if decoded else data)
                      for name, data in events]
        seen.append((op[0], result, ev.stats(), pending_state(ev)))
    ev.flush(force=True)
    seen.append(("end", ev.stats(), repr(ev.pending.chat_conditionals)))
    ev.destroy()
    return seen


@pytest.fixture(scope="module")
def cores() -> tuple[Any, Any]:
    return importlib.import_module("rsocket._buffer"), importlib.import_module("rsocket._buffer_py")


# one differential case: ops on a fresh buffer of each core, small limits so that
# overflows and cache evictions happen
differential = given(
    ops=st.lists(OPS, min_size=10, max_size=60),
    max_items=st.integers(1, 5),
    max_cache=st.integers(0, 6),
)


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@differential
def test_compiled_and_pure_cores_release_identical_batches(
    cores: tuple[Any, Any], ops: list[tuple], max_items: int, max_cache: int
) -> None:
    compiled, pure = cores
    assert run(compiled, ops, max_items, max_cache) == run(pure, ops, max_items, max_cache)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@differential
def test_the_cores_agree_on_payloads_as_msgspec_decodes_them(
    cores: tuple[Any, Any], ops: list[tuple], max_items: int, max_cache: int
) -> None:
    """The compiled core reads a decoded message key in one pointer-comparing pass,
    a key from elsewhere by lookups: both roads lead to what the pure core does."""
    compiled, pure = cores
    assert (run(compiled, ops, max_items, max_cache, decoded=True)
            == run(pure, ops, max_items, max_cache, decoded=True))


# -- the history cache on its own ------------------------------------------------------------

class Tagged(str):
    """A str subclass: equal to the str of its characters, kept as an object."""


# Colliding hashes on purpose: ints that are multiples of 2**k share their low bits
# (one probe cluster), ints ending in 31 ones fill the index's last slots and wrap
# around to its start, hash(-1) == hash(-2), and equal values of different types.
# The compiled cache hashes a str's bytes and compares two exact strs by their
# bytes, anything else with ``==``: strs of one, two and four bytes a character,
# long ones, and a str subclass equal to a str it must find (and be found by).
CACHE_KEYS = [
    *range(0, 4096, 512),
    *range(31, 4096, 1024),
    2**32 + 31,  # the same low 32 bits as 31: the index keeps only those
    -1,
    -2,
    1.0,
    "a",
    "b",
    "c:a",
    "5511900000000@s.whatsapp.net,M1,0",
    "x" * 300,
    "caf\u00e9",
    "\u0436",
    "\U0001f600",
    Tagged("a"),
    Tagged("y" * 300),
    "y" * 300,
]


@settings(max_examples=300, deadline=None)
# evicting 31 must shift 1055, which wrapped around to the index's first slot
@example(maxsize=2, ops=[31, 1055, 0])
@given(
    maxsize=st.integers(0, 20),
    ops=st.lists(st.one_of(st.sampled_from(CACHE_KEYS), st.just(None)), max_size=120),
)
def test_history_caches_agree(cores: tuple[Any, Any], maxsize: int, ops: list[Any]) -> None:
    caches = [core.HistoryCache(maxsize) for core in cores]
    for key in ops:
        for cache in caches:
            if key is None:
                cache.clear()
            else:
                cache.add(key)
        states = [([k in c for k in CACHE_KEYS], len(c), c.evicted) for c in caches]
        assert states[0] == states[1]



class Meddler:
    """A cache key whose first ``==`` changes the cache it is compared in."""

    def __init__(self, meddle: Any) -> None:
        self.meddle = meddle

    def __hash__(self) -> int:
        return 7

    def __eq__(self, other: object) -> bool:
        meddle, self.meddle = self.meddle, None
        if meddle is not None:
            meddle()
        return False


def changer(cache: Any, change: str, make: Any) -> Any:
    """What a meddling key's ``==`` does to ``cache``: clear it, or add ``make(i)``
    for 15 more ids (the ring and index grow) or 40 (the first keys are evicted)."""
    def meddle() -> None:
        if change == "clear":
            cache.clear()
        else:
            for i in range(1000, 1015 if change == "grow" else 1040):
                cache.add(make(i))
    return meddle


@pytest.mark.parametrize("change", ["clear", "grow", "evict"])
def test_a_key_whose_eq_changes_the_cache_leaves_both_caches_alike(
        cores: tuple[Any, Any], change: str) -> None:
    states = []
    for core in cores:
        cache = core.HistoryCache(20)
        cache.add(Meddler(changer(cache, change, int)))
        cache.add(7)  # same hash: compared with the meddler
        states.append(([k in cache for k in (7, *range(1000, 1040))], len(cache), cache.evicted))
    assert states[0] == states[1]
    assert states[0][0][0]  # 7 was added whatever happened meanwhile


class MeddlingStr(str):
    """A str whose first ``==`` changes the cache it is compared in."""

    meddle: Any = None

    def __hash__(self) -> int:
        return str.__hash__(self)

    def __eq__(self, other: object) -> bool:
        meddle, self.meddle = self.meddle, None
        if meddle is not None:
            meddle()
        return False


@pytest.mark.parametrize("change", ["clear", "grow", "evict"])
def test_a_str_key_whose_eq_changes_the_cache_leaves_both_caches_alike(
        cores: tuple[Any, Any], change: str) -> None:
    """A str subclass is compared with ``==`` (not by its bytes), and its
    ``__eq__`` may clear, grow or evict the cache meanwhile."""
    states = []
    for core in cores:
        cache = core.HistoryCache(20)
        cache.add("a")
        key = MeddlingStr("a")
        key.meddle = changer(cache, change, str)
        cache.add(key)  # equal hash: compared with "a", and says it differs
        states.append(([k in cache for k in ("a", *map(str, range(1000, 1040)))],
                       len(cache), cache.evicted))
    assert states[0] == states[1]
    assert states[0][1] >= 1  # the meddling key was added whatever happened meanwhile


# -- ingest: a received frame's events, validated, with seqs ----------------------------------

# payloads that fail the wire checks, one shape per rule
BAD = [
    ("chats.upsert", [{"id": 1}]),
    ("chats.update", {"id": "x"}),
    ("messages.upsert", {"messages": [{"key": {"remoteJid": "a", "id": "b"}}], "type": "notify"}),
    ("messages.update", [{"key": message_key(0), "update": 4}]),
    ("messages.delete", {"jid": "a", "all": False}),
    ("messages.reaction", [{"key": message_key(0), "reaction": {"text": 3}}]),
    ("message-receipt.update", [{"key": message_key(0), "receipt": {}}]),
    ("groups.update", ["g"]),
    ("messaging-history.set", {"chats": [{"id": "c", "unreadCount": "2"}]}),
    ("connection.update", {"connection": "opening"}),
    ("no.such.event", {}),
]


class Item:
    """What a decoded frame's events look like to ingest (``name`` and ``data``)."""

    __slots__ = ("data", "name")

    def __init__(self, name: str, data: Any) -> None:
        self.name = name
        self.data = data


FRAME_OPS = st.one_of(
    st.tuples(st.just("frame"), st.lists(st.one_of(
        OPS.filter(lambda op: op[0] not in ("buffer", "flush", "force")),
        st.tuples(st.just("bad"), st.integers(0, len(BAD) - 1)),
        st.just(("connection.update",)),
    ), min_size=1, max_size=6), st.booleans(), st.integers(0, 3)),
    st.just(("buffer",)),
    st.just(("flush",)),
)


def frame_events(ops: list[tuple]) -> list[Item]:
    items = []
    for op in ops:
        if op[0] == "bad":
            items.append(Item(*BAD[op[1]]))
        elif op[0] == "connection.update":
            items.append(Item("connection.update", {"connection": "open", "isOnline": True}))
        else:
            events = payload(op)
            for name, data in [events] if isinstance(events, tuple) else events:
                items.append(Item(name, data))
    return items


def ingest_run(core: Any, ops: list[tuple], max_items: int) -> list[Any]:
    ev = event_buffer_class(core)(config=BufferConfig(max_buffer_items=max_items,
                                                      max_history_cache=4, auto_flush=False))
    seen: list[Any] = []
    ev.process(lambda batch, seqs: seen.append(("batch", repr(batch), seqs)), with_seqs=True)
    ev.on_settled = lambda seqs: seen.append(("settled", seqs))
    received = 0
    for op in ops:
        if op[0] == "buffer":
            ev.buffer()
        elif op[0] == "flush":
            ev.flush()
        else:
            _, inner, scoped, replay = op
            first = max(1, received + 1 - replay)  # a replay overlapping what was received
            received, duplicates, invalid, errors = ev.ingest(
                first, frame_events(inner), scoped, received)
            seen.append(("ingested", received, duplicates, invalid, errors))
    ev.flush(force=True)
    ev.destroy()
    return seen


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(FRAME_OPS, min_size=1, max_size=25), max_items=st.integers(1, 5))
def test_compiled_and_pure_cores_ingest_frames_identically(
    cores: tuple[Any, Any], ops: list[tuple], max_items: int
) -> None:
    compiled, pure = cores
    assert ingest_run(compiled, ops, max_items) == ingest_run(pure, ops, max_items)


@settings(max_examples=300, deadline=None)
@given(ops=st.lists(FRAME_OPS.filter(lambda op: op[0] == "frame"), min_size=1, max_size=25))
def test_every_ingested_seq_is_settled(cores: tuple[Any, Any], ops: list[tuple]) -> None:
    # (a release's range spans its first and last merged seqs: an event delivered at once
    # in between, e.g. presence.update, is settled by both)
    for core in cores:
        seen = ingest_run(core, ops, 3)
        settled = {s for kind, *rest in seen if kind == "settled" for s in rest[0]}
        received = max((rest[0] for kind, *rest in seen if kind == "ingested"), default=0)
        assert settled == set(range(1, received + 1)), core.__name__
