"""Property tests of the event buffer (docs/BUFFER.md), over both merge cores.

Scenarios are random sequences of bufferable events interleaved with
``buffer()`` / ``flush()`` calls, run against a buffer with a small
``max_buffer_items`` (so overflow and type-change releases happen often).
Payloads are built fresh for each ``emit`` since merging mutates them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rsocket
from rsocket.buffer import BufferConfig

CHATS = [f"55119999900{i:02d}@s.whatsapp.net" for i in range(4)] + ["120363040000000001@g.us"]
USERS = [f"55119888800{i:02d}@s.whatsapp.net" for i in range(3)]
GROUPS = ["120363040000000001@g.us", "120363040000000002@g.us"]

SETTINGS = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

small = st.integers(min_value=0, max_value=50)
chat_idx = st.integers(min_value=0, max_value=len(CHATS) - 1)

UPSERT = st.tuples(
    st.just("messages.upsert"), st.integers(1, 3), st.sampled_from(["notify", "append"]),
    chat_idx, st.booleans(),
)
OPS = st.one_of(
    st.tuples(st.just("buffer")),
    st.tuples(st.just("buffer")),
    st.tuples(st.just("flush")),
    st.tuples(st.just("chats.upsert"), chat_idx, st.integers(-1, 3)),
    st.tuples(
        st.just("chats.update"), chat_idx, st.integers(-1, 3),
        st.sampled_from(["absent", True, False, None]),
    ),
    st.tuples(st.just("chats.delete"), chat_idx),
    UPSERT,
    UPSERT,
    UPSERT,  # weighted: message keys are what property (1) is about
    st.tuples(
        st.just("messaging-history.set"), st.lists(chat_idx, max_size=3), st.integers(0, 3),
        st.integers(0, 2), st.booleans(),
    ),
    st.tuples(st.just("messages.update"), small, st.integers(1, 5)),
    st.tuples(st.just("messages.delete"), st.lists(small, min_size=1, max_size=2)),
    st.tuples(st.just("messages.delete"), st.lists(small, min_size=1, max_size=2)),
    st.tuples(st.just("delete-all"), chat_idx),
    st.tuples(st.just("messages.reaction"), small, st.integers(0, 2), st.sampled_from(
        ["👍", "❤️", None])),
    st.tuples(st.just("message-receipt.update"), small, st.integers(0, 2)),
    st.tuples(st.just("contacts.upsert"), st.integers(0, 2)),
    st.tuples(st.just("contacts.update"), st.integers(0, 2)),
    st.tuples(st.just("groups.update"), st.integers(0, 1), st.integers(0, 9)),
)
SCENARIO = st.lists(OPS, min_size=8, max_size=60)
MAX_ITEMS = st.integers(min_value=1, max_value=4)


def kstr(key: dict) -> str:
    return f"{key['remoteJid']},{key['id']},{'1' if key['fromMe'] else '0'}"


@dataclass
class Run:
    ev: Any
    batches: list[dict] = field(default_factory=list)
    per_event: list[str] = field(default_factory=list)
    created: list[dict] = field(default_factory=list)  # message keys, each upserted once
    deleted: set[str] = field(default_factory=set)

    def ref(self, i: int) -> dict:
        """An existing message key (or a key never upserted when there is none)."""
        if not self.created:
            return {"remoteJid": CHATS[0], "id": f"GHOST{i}", "fromMe": False}
        return dict(self.created[i % len(self.created)])

    def new_message(self, jid: str, from_me: bool) -> dict:
        key = {"remoteJid": jid, "id": f"3EB0{len(self.created):06d}", "fromMe": from_me}
        self.created.append(dict(key))
        return {
            "key": key,
            "message": {"conversation": f"hello {key['id']}"},
            "messageTimestamp": 1_700_000_000 + len(self.created),
            "pushName": "Ana",
        }


def apply(run: Run, op: tuple) -> None:
    ev = run.ev
    kind = op[0]
    if kind == "buffer":
        ev.buffer()
    elif kind == "flush":
        ev.flush()
    elif kind == "chats.upsert":
        ev.emit("chats.upsert", [{"id": CHATS[op[1]], "unreadCount": op[2], "name": "c"}])
    elif kind == "chats.update":
        update: dict[str, Any] = {"id": CHATS[op[1]], "unreadCount": op[2]}
        if op[3] != "absent":
            answer = op[3]
            update["conditional"] = lambda data, answer=answer: answer
        ev.emit("chats.update", [update])
    elif kind == "chats.delete":
        ev.emit("chats.delete", [CHATS[op[1]]])
    elif kind == "messages.upsert":
        _, n, type_, ci, from_me = op
        msgs = [run.new_message(CHATS[ci], from_me) for _ in range(n)]
        ev.emit("messages.upsert", {"messages": msgs, "type": type_})
    elif kind == "messaging-history.set":
        _, chat_ids, n_msgs, n_contacts, latest = op
        ev.emit(
            "messaging-history.set",
            {
                "chats": [{"id": CHATS[i], "unreadCount": 1} for i in chat_ids],
                "contacts": [{"id": USERS[i], "notify": f"u{i}"} for i in range(n_contacts)],
                "messages": [
                    run.new_message(CHATS[i % len(CHATS)], False) for i in range(n_msgs)
                ],
                "isLatest": latest,
                "syncType": 2,
            },
        )
    elif kind == "messages.update":
        ev.emit("messages.update", [{"key": run.ref(op[1]), "update": {"status": op[2]}}])
    elif kind == "messages.delete":
        keys = [run.ref(i) for i in op[1]]
        run.deleted.update(kstr(k) for k in keys)
        ev.emit("messages.delete", {"keys": keys})
    elif kind == "delete-all":
        ev.emit("messages.delete", {"jid": CHATS[op[1]], "all": True})
    elif kind == "messages.reaction":
        _, i, author, text = op
        target = run.ref(i)
        by = {"remoteJid": target["remoteJid"], "id": f"R{i}{author}", "fromMe": author == 0,
              "participant": USERS[author]}
        r: dict[str, Any] = {"key": by, "senderTimestampMs": 1_700_000_000 + i}
        if text is not None:
            r["text"] = text
        ev.emit("messages.reaction", [{"key": target, "reaction": r}])
    elif kind == "message-receipt.update":
        _, i, user = op
        ev.emit(
            "message-receipt.update",
            [{"key": run.ref(i), "receipt": {"userJid": USERS[user], "readTimestamp": i}}],
        )
    elif kind == "contacts.upsert":
        ev.emit("contacts.upsert", [{"id": USERS[op[1]], "name": f"n{op[1]}", "notify": None}])
    elif kind == "contacts.update":
        ev.emit("contacts.update", [{"id": USERS[op[1]], "imgUrl": "changed"}])
    elif kind == "groups.update":
        ev.emit("groups.update", [{"id": GROUPS[op[1]], "subject": f"s{op[2]}"}])
    else:  # pragma: no cover
        raise AssertionError(op)


def run_scenario(
    event_buffer: Callable[..., Any], ops: list[tuple], max_items: int, *, destroy: bool = True
) -> Run:
    ev = event_buffer(
        config=BufferConfig(auto_flush=False, max_buffer_items=max_items, max_history_cache=8)
    )
    run = Run(ev)
    ev.process(run.batches.append)
    ev.on("messages.upsert", lambda payload: run.per_event.append("messages.upsert"))
    try:
        for op in ops:
            apply(run, op)
    finally:
        if destroy:
            ev.destroy()  # final flush of whatever is pending
    return run


def released_message_keys(batches: list[dict]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for batch in batches:
        if "messages.upsert" in batch:
            counts.update(kstr(m["key"]) for m in batch["messages.upsert"]["messages"])
        if "messaging-history.set" in batch:
            counts.update(kstr(m["key"]) for m in batch["messaging-history.set"]["messages"])
    return counts


@SETTINGS
@given(ops=SCENARIO, max_items=MAX_ITEMS)
def test_no_upserted_message_is_lost_or_duplicated(EventBuffer, ops, max_items):
    run = run_scenario(EventBuffer, ops, max_items)
    counts = released_message_keys(run.batches)
    for key in run.created:
        k = kstr(key)
        if k in run.deleted:
            assert counts[k] <= 1, k
        else:
            assert counts[k] == 1, (k, counts[k])
    assert set(counts) <= {kstr(k) for k in run.created}


@SETTINGS
@given(ops=SCENARIO, max_items=MAX_ITEMS)
def test_no_batch_upserts_and_deletes_one_chat(EventBuffer, ops, max_items):
    run = run_scenario(EventBuffer, ops, max_items)
    for batch in run.batches:
        upserted = {c["id"] for c in batch.get("chats.upsert", [])}
        deleted = set(batch.get("chats.delete", []))
        assert not upserted & deleted, batch


@SETTINGS
@given(ops=SCENARIO, max_items=MAX_ITEMS)
def test_no_handler_gets_an_empty_payload(EventBuffer, ops, max_items):
    run = run_scenario(EventBuffer, ops, max_items)
    for batch in run.batches:
        assert batch
        for name, payload in batch.items():
            if name == "messaging-history.set":
                assert payload["chats"] or payload["contacts"] or payload["messages"], batch
            elif name == "messages.upsert":
                assert payload["messages"], batch
            elif name == "messages.delete":
                assert payload.get("keys") or payload.get("all"), batch
            else:
                assert payload, batch


@SETTINGS
@given(ops=SCENARIO, after=SCENARIO, max_items=MAX_ITEMS)
def test_destroyed_buffer_never_calls_a_handler(EventBuffer, ops, after, max_items):
    run = run_scenario(EventBuffer, ops, max_items)
    assert run.ev.destroyed
    seen_batches, seen_events = len(run.batches), len(run.per_event)
    for op in after:
        apply(run, op)
    run.ev.buffer()
    assert run.ev.emit("chats.update", [{"id": CHATS[0], "unreadCount": 1}]) is False
    assert run.ev.emit("connection.update", {"connection": "open"}) is False
    assert run.ev.flush() is False
    assert run.ev.flush(force=True) is False
    run.ev.destroy()  # idempotent
    assert len(run.batches) == seen_batches
    assert len(run.per_event) == seen_events


@SETTINGS
@given(ops=SCENARIO, max_items=MAX_ITEMS)
def test_live_buffers_return_to_start(EventBuffer, ops, max_items):
    start = rsocket.live_buffers()
    run = run_scenario(EventBuffer, ops, max_items, destroy=False)
    assert rsocket.live_buffers() == start + 1
    run.ev.destroy()
    assert rsocket.live_buffers() == start
    run.ev.destroy()
    assert rsocket.live_buffers() == start


# -- re-entrant handlers ----------------------------------------------------------------

# one item per emit, each with its own id, so a batch's items count its emits
ITEM = st.sampled_from(["notify", "append", "group", "chat"])
REENTRANT_OPS = st.lists(
    st.one_of(st.tuples(st.just("buffer")), st.tuples(st.just("flush")),
              st.tuples(st.just("emit"), ITEM), st.tuples(st.just("emit"), ITEM)),
    min_size=4, max_size=40,
)
# what the batch handler emits from inside the n-th release (None: nothing)
REENTRANT_EMITS = st.lists(st.one_of(st.none(), ITEM), max_size=20)


@SETTINGS
@given(ops=REENTRANT_OPS, inner=REENTRANT_EMITS, max_items=MAX_ITEMS)
def test_reentrant_handlers_never_break_a_batchs_bounds(EventBuffer, ops, inner, max_items):
    ev = EventBuffer(
        config=BufferConfig(auto_flush=False, max_buffer_items=max_items, max_history_cache=8)
    )
    emitted: list[str] = []
    batches: list[dict] = []
    schedule = iter(inner)

    def emit(kind: str) -> None:
        item_id = f"{kind}-{len(emitted)}"
        emitted.append(item_id)
        if kind in ("notify", "append"):
            message = {"key": {"remoteJid": CHATS[0], "id": item_id, "fromMe": False},
                       "message": {"conversation": kind}}
            ev.emit("messages.upsert", {"messages": [message], "type": kind})
        elif kind == "group":
            ev.emit("groups.update", [{"id": item_id}])
        else:
            ev.emit("chats.upsert", [{"id": item_id}])

    def handler(batch: dict) -> None:
        batches.append(batch)
        kind = next(schedule, None)
        if kind is not None:
            emit(kind)

    ev.process(handler)
    for op in ops:
        if op[0] == "buffer":
            ev.buffer()
        elif op[0] == "flush":
            ev.flush()
        else:
            emit(op[1])
    ev.flush(force=True)  # (destroy would drop what a handler emits during its final flush)
    ev.destroy()
    released: list[str] = []
    for batch in batches:
        items: list[str] = []
        upserts = batch.get("messages.upsert")
        if upserts is not None:
            assert {m["message"]["conversation"] for m in upserts["messages"]} == {
                upserts["type"]}, batch  # never mixed upsert types
            items += [m["key"]["id"] for m in upserts["messages"]]
        items += [g["id"] for g in batch.get("groups.update", ())]
        items += [c["id"] for c in batch.get("chats.upsert", ())]
        assert len(items) <= max_items, batch
        released += items
    assert sorted(released) == sorted(emitted)  # each exactly once
